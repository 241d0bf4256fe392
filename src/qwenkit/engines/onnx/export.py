"""Checkpoint directory or GGUF -> an ONNX Runtime GenAI model directory, built once and cached.

The export is ONNX Runtime GenAI's own model builder (`onnxruntime_genai.models.builder`), run
in a child process (its memory is returned when it ends; its output drives the progress
display). The builder reads a Hugging Face checkpoint; a GGUF is first dequantized into one by
the transformers engine's cached conversion (the builder itself reads only f16/f32 GGUFs).
The result is published atomically, in the store's cache of converted artifacts
(`qwenkit.store.converted`), under `$QWENKIT_HOME/converted/onnx/<name>-<precision>-<key>/`
(or `--out DIR`): `model.onnx` + `model.onnx.data`, `genai_config.json`, the tokenizer and chat
template. The key covers the source's content (a GGUF's verified sha256, or a checkpoint's
files), the precision and the builder's version, so a changed source is exported again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO

from qwenkit.errors import ModelLoadError, QwenkitError
from qwenkit.store.converted import content_key, converted_root, publish
from qwenkit.store.gguf_header import read_key

log = logging.getLogger("qwenkit.onnx")

PRECISIONS = ("int4", "int8", "fp32")
#: Bump when what `export_onnx` writes changes (older exports are then rebuilt).
EXPORT_VERSION = 1
#: Qwen architectures the 0.18 builder has no text model for: refused before any work.
UNSUPPORTED = {
    "Qwen3MoeForCausalLM": "Qwen3-MoE",
    "Qwen2MoeForCausalLM": "Qwen2-MoE",
    "qwen3moe": "Qwen3-MoE",  # GGUF general.architecture
    "qwen2moe": "Qwen2-MoE",
}
STAMP = "qwenkit-onnx.json"
_NEEDS = ("torch", "transformers", "onnx", "onnx_ir", "onnxruntime_genai")

#: progress(description, done, total): called from the exporting thread.
Progress = Callable[[str, int, int], None]


def is_exported(directory: Path) -> bool:
    """True if `directory` is a finished export (published whole, by rename, with this stamp)."""
    return (directory / STAMP).is_file()


def exported_dir(source: Path, precision: str) -> Path:
    """Where `export_onnx` caches the export of `source` at `precision`."""
    return converted_root() / "onnx" / f"{_name(source)}-{precision}-{_key(source, precision)}"


def export_onnx(
    source: str | os.PathLike[str],
    precision: str = "int4",
    *,
    out: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> Path:
    """The ONNX Runtime GenAI model of `source` (a GGUF file or a checkpoint directory), exported
    on first use at `precision` and then reused; into `out` when given."""
    src = Path(source)
    if precision not in PRECISIONS:
        raise QwenkitError(f"unknown precision {precision!r} (available: {', '.join(PRECISIONS)})")
    if not src.exists():
        raise ModelLoadError(f"model not found: {src}")
    _refuse_unsupported(src)
    target = Path(out).expanduser().resolve() if out is not None else exported_dir(src, precision)
    if is_exported(target):
        return target
    if target.exists() and any(target.iterdir()):
        raise QwenkitError(f"{target} exists and is not an ONNX export by qwenkit; give an empty or new --out")
    missing = [m for m in _NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelLoadError(f"exporting to ONNX needs {', '.join(missing)}: pip install 'qwenkit[onnx,transformers]'")
    log.warning("exporting %s to ONNX at %s (once; later loads reuse %s)", src.name, precision, target)
    report = progress or (lambda description, done, total: None)
    checkpoint = src
    if src.is_file():
        from qwenkit.engines.transformers.convert import convert_gguf

        report(f"dequantizing {src.name} to a checkpoint (once)", 0, 1)
        checkpoint = convert_gguf(src)

    def build(tmp: Path) -> None:
        started = time.monotonic()
        _run_builder(checkpoint, tmp, precision, report)
        stamp = {
            "precision": precision,
            "builder": version("onnxruntime-genai"),
            "checkpoint": str(checkpoint),
            "builder_seconds": round(time.monotonic() - started, 1),
            # the largest child this process has waited for: the builder, unless an earlier one was bigger
            "builder_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        }
        (tmp / STAMP).write_text(json.dumps(stamp, indent=1))

    return publish(target, build, what=f"{src.name} ({precision})", source=src, version=EXPORT_VERSION)


def _run_builder(checkpoint: Path, tmp: Path, precision: str, report: Progress) -> None:
    """Run the model builder on `checkpoint` into `tmp`, reporting its stages."""
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    config = config.get("text_config", config) if "num_hidden_layers" not in config else config
    layers = int(config.get("num_hidden_layers", 0))
    total = layers + 4  # embedding, the layers, final norm, LM head, then quantize + save
    tail: deque[str] = deque(maxlen=40)
    with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=".onnx-builder-cache.") as cache:
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(tmp)]
        cmd += ["-p", precision, "-e", "cpu", "-c", cache]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        report("starting the ONNX Runtime GenAI model builder", 0, total)
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) as proc:
            assert proc.stdout is not None
            for line in _lines(proc.stdout):
                tail.append(line)
                step = _stage(line, layers, precision)
                if step is not None:
                    report(step[0], step[1], total)
            code = proc.wait()
    if code != 0:
        text = "\n".join(tail)
        unsupported = re.search(r"The (.+) model is not currently supported", text)
        if unsupported:
            raise ModelLoadError(f"the ONNX Runtime GenAI model builder does not support {unsupported.group(1)}")
        last = next((line for line in reversed(tail) if line.strip()), f"exit status {code}")
        raise ModelLoadError(f"the ONNX Runtime GenAI model builder failed: {last.strip()}")
    report("exported", total, total)


def _lines(stream: IO[bytes]) -> Iterator[str]:
    """Lines of a child's output, splitting on carriage returns too (tqdm redraws with them)."""
    buffer = b""
    while chunk := os.read(stream.fileno(), 4096):
        buffer += chunk
        *lines, buffer = re.split(rb"[\r\n]", buffer)
        yield from (line.decode("utf-8", "replace") for line in lines if line)
    if buffer:
        yield buffer.decode("utf-8", "replace")


def _stage(line: str, layers: int, precision: str) -> tuple[str, int] | None:
    """The builder's progress lines as (description, steps done)."""
    if line.startswith("Reading embedding"):
        return "reading the embedding", 0
    if match := re.match(r"Reading layer (\d+)", line):
        n = int(match.group(1))
        return f"reading layer {n + 1}/{layers}", n + 1
    if line.startswith("Reading final norm"):
        return "reading the final norm", layers + 1
    if line.startswith("Reading LM head"):
        return "reading the LM head", layers + 2
    if line.startswith("Saving ONNX model"):
        return (f"quantizing to {precision} and saving" if precision != "fp32" else "saving"), layers + 3
    if line.startswith("Saving GenAI config"):
        return "writing genai_config.json and the tokenizer", layers + 3
    return None


def _refuse_unsupported(src: Path) -> None:
    """A clear error for architectures the builder refuses, before dequantizing anything."""
    if src.is_file():
        try:
            arch = read_key(src, "general.architecture")
        except (OSError, ValueError):
            arch = None
    else:
        config = src / "config.json"
        if not config.is_file():
            raise ModelLoadError(f"{src} is neither a GGUF file nor a checkpoint directory with config.json")
        arch = (json.loads(config.read_text(encoding="utf-8")).get("architectures") or [None])[0]
    if isinstance(arch, str) and arch in UNSUPPORTED:
        raise ModelLoadError(
            f"cannot export {src.name} to ONNX: the ONNX Runtime GenAI model builder has no {UNSUPPORTED[arch]} "
            f"support ({arch}); run it with --engine llamacpp or --engine transformers"
        )


def _name(source: Path) -> str:
    return source.stem if source.is_file() else source.name


def _key(source: Path, precision: str) -> str:
    """A short key for the content of `source`, the precision and the builder's version."""
    if source.is_file():
        basis = content_key(source, version=EXPORT_VERSION)
    else:
        files = sorted(p for p in source.rglob("*") if p.is_file() and ".cache" not in p.relative_to(source).parts)
        basis = ";".join(f"{p.relative_to(source)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
        basis = f"{source.resolve()}|{basis}"
    try:
        builder = version("onnxruntime-genai")
    except PackageNotFoundError:
        builder = "none"
    blob = f"{basis}|{precision}|{builder}|v{EXPORT_VERSION}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
