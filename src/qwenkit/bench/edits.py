"""The code-edit workload: a 200-400 line module of Python's standard library and an instruction to
change one thing in it, the work where most output tokens repeat the prompt (speculation's case).

The files come from the running interpreter's own standard library, so every machine has them;
each case records the file's sha256, since patch releases of Python edit these files now and then.
"""

from __future__ import annotations

import ast
import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from qwenkit.errors import QwenkitError

#: Modules of 200-400 lines in CPython 3.11's standard library, in the order cases are taken.
MODULES = (
    "copy.py",
    "glob.py",
    "graphlib.py",
    "getopt.py",
    "queue.py",
    "shlex.py",
    "timeit.py",
    "hmac.py",
    "filecmp.py",
    "bz2.py",
)


@dataclass(frozen=True)
class EditCase:
    name: str  # the module's file name
    sha256: str  # of the file as read
    lines: int
    instruction: str
    message: str  # the user message: the instruction and the whole file

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "sha256": self.sha256, "lines": self.lines, "instruction": self.instruction}


def edit_cases(n: int = len(MODULES)) -> list[EditCase]:
    """The first `n` cases: each renames the module's first public top-level function or class."""
    if not 1 <= n <= len(MODULES):
        raise QwenkitError(f"there are {len(MODULES)} code-edit cases; asked for {n}")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return [_case(stdlib / name) for name in MODULES[:n]]


def _case(path: Path) -> EditCase:
    source = path.read_text(encoding="utf-8")
    names = [
        node.name
        for node in ast.parse(source).body
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_")
    ]
    if not names:
        raise QwenkitError(f"{path} defines no public function or class to rename")
    old = names[0]
    instruction = f"Rename `{old}` to `{old}_v2` everywhere in this file (definition and every use)."
    message = (
        f"{instruction} Change nothing else. Reply with the whole changed file only, in one ```python block.\n\n"
        f"```python\n{source}```"
    )
    return EditCase(
        name=path.name,
        sha256=hashlib.sha256(source.encode()).hexdigest(),
        lines=len(source.splitlines()),
        instruction=instruction,
        message=message,
    )
