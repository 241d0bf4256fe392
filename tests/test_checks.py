"""`make lint` bites: on a copy of src/, each check passes as committed and fails on a planted slip.

The copy (src/ and pyproject.toml) lives in a temporary directory; each test plants one slip
(a file edited or added), runs the check that must catch it, and takes the slip out again. The
clean copy runs first, so a check that fails for another reason cannot pass a test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's ruff, mypy and lint-imports (the `dev` extra)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("checks")
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    if (REPO / ".mypy_cache").is_dir():  # `make lint`'s (make test runs it first): mypy re-checks only what differs
        shutil.copytree(REPO / ".mypy_cache", root / ".mypy_cache")
    return root


def check(tree: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """Run a check as `make lint` does, in the copy, with its caches in the copy too."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "NO_COLOR": "1"}
    args = [str(BIN / command[0]), *command[1:]]
    return subprocess.run(args, cwd=tree, env=env, capture_output=True, text=True, timeout=300)


def ruff_format(tree: Path) -> subprocess.CompletedProcess[str]:
    return check(tree, "ruff", "format", "--check", "--no-cache", "src")


def ruff_lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return check(tree, "ruff", "check", "--no-cache", "src")


def mypy(tree: Path) -> subprocess.CompletedProcess[str]:
    return check(tree, "mypy", "--cache-dir", str(tree / ".mypy_cache"))


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    return check(tree, "lint-imports", "--no-logo", "--no-cache")


@contextmanager
def planted(tree: Path, path: str, text: str, *, append: bool = True) -> Iterator[None]:
    """`text` appended to (or written as) src/qwenkit/`path` for the duration."""
    target = tree / "src" / "qwenkit" / path
    new_package = not target.parent.exists()
    before = target.read_text(encoding="utf-8") if target.exists() else None
    if new_package:  # a package still to come, such as catalog/
        target.parent.mkdir()
        (target.parent / "__init__.py").touch()
    target.write_text((before or "") + text if append else text, encoding="utf-8")
    try:
        yield
    finally:
        if new_package:
            shutil.rmtree(target.parent)
        elif before is None:
            target.unlink()
        else:
            target.write_text(before, encoding="utf-8")


def failed(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    """The output of a check that must have failed, and named each of `expected`."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    for text in expected:
        assert text in output, output
    return output


@pytest.mark.parametrize("run", [ruff_format, ruff_lint, mypy, lint_imports])
def test_the_clean_copy_passes(tree: Path, run) -> None:
    result = run(tree)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_formatting_slip_fails_ruff_format(tree: Path) -> None:
    with planted(tree, "errors.py", "\n\nSLIP = {'a':1}\n"):
        failed(ruff_format(tree), "errors.py")


def test_an_unused_import_fails_ruff_check(tree: Path) -> None:
    with planted(tree, "errors.py", "\nimport json\n"):
        failed(ruff_lint(tree), "F401")


def test_a_type_error_fails_mypy(tree: Path) -> None:
    with planted(tree, "model.py", '\n\ndef slip() -> int:\n    return "not an int"\n'):
        failed(mypy(tree), "model.py", "[return-value]")


@pytest.mark.parametrize("package", ["engines", "chat", "store", "catalog"])
def test_strict_packages_refuse_unannotated_code(tree: Path, package: str) -> None:
    # catalog/ does not exist yet: the strict setting covers it all the same
    with planted(tree, f"{package}/slip_module.py", "def slip(x):\n    return x\n", append=False):
        failed(mypy(tree), f"{package}/slip_module.py", "[no-untyped-def]")


def test_the_baseline_accepts_unannotated_code(tree: Path) -> None:
    # the counterpart of the test above: outside the strict packages, this is allowed
    with planted(tree, "slip_module.py", "def slip(x):\n    return x\n", append=False):
        result = mypy(tree)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("path", "line", "contract"),
    [
        ("engines/base.py", "from qwenkit.serve import http_errors", "The stack"),
        ("engines/text.py", "import qwenkit.chat.tags", "The stack"),
        ("store/refs.py", "from qwenkit.engines import base", "The stack"),
        ("store/cache.py", "import qwenkit.model", "The stack"),
        ("catalog/__init__.py", "import qwenkit.api", "The stack"),  # a package still to come
        ("chat/sampling.py", "import qwenkit.engines.llamacpp", "chat knows Qwen, not engines"),
        ("chat/tags.py", "from qwenkit.engines.transformers import vocab", "chat knows Qwen, not engines"),
    ],
)
def test_an_import_against_the_layers_fails_lint_imports(tree: Path, path: str, line: str, contract: str) -> None:
    with planted(tree, path, f"\n{line}  # noqa: F401\n"):
        failed(lint_imports(tree), contract, "BROKEN")


def test_an_import_cycle_fails_lint_imports(tree: Path) -> None:
    # chat/output.py imports chat/reasoning.py; the reverse closes a circle inside one layer
    with planted(tree, "chat/reasoning.py", "\nimport qwenkit.chat.output  # noqa: F401\n"):
        failed(lint_imports(tree), "No cycles are allowed in qwenkit.chat", ".reasoning -> .output", "BROKEN")
