"""Parse a model reference: an embedded name, `hf:OWNER/REPO[/FILE]`, or a local path."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from qwenkit.errors import ModelNotFound
from qwenkit.store.embedded import DEFAULT_MODEL, EMBEDDED
from qwenkit.store.gguf_header import is_gguf

FORMS = "hf:OWNER/REPO[/FILE.gguf], a path to a .gguf file, a checkpoint directory or an ONNX model directory"
_HF_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Ref:
    """A parsed reference. `name` is the embedded name, `OWNER/REPO` for hf, or the path stem."""

    text: str
    kind: Literal["embedded", "hf", "local"]
    name: str
    file: str | None = None  # hf: the file inside the repo, if given
    path: Path | None = None  # local: the resolved file or directory
    format: Literal["gguf", "hf", "onnx"] | None = None  # local only


def parse(ref: str) -> Ref:
    """Classify and validate `ref`; raise ModelNotFound with a one-line reason if it is bad."""
    text = ref.strip()
    if not text:
        raise ModelNotFound(f"empty model reference; give a known name ({_names()}) or {FORMS}")
    key = text.lower()
    if key == "default":
        key = DEFAULT_MODEL
    if key in EMBEDDED:
        return Ref(text, "embedded", key)
    if key.startswith("hf:"):
        return _parse_hf(text)
    if any(c in text for c in "/\\") or text.startswith((".", "~")) or key.endswith(".gguf") or Path(text).exists():
        return _parse_local(text)
    raise ModelNotFound(f"unknown model {text!r}; known names: {_names()}; or give {FORMS}")


def _names() -> str:
    return ", ".join(["default", *EMBEDDED])


def _parse_hf(text: str) -> Ref:
    parts = text[3:].strip("/").split("/")
    if len(parts) < 2 or not all(_HF_PART.fullmatch(p) for p in parts[:2]):
        raise ModelNotFound(f"bad reference {text!r}: expected hf:OWNER/REPO[/FILE.gguf]")
    file = "/".join(parts[2:]) or None
    if file is not None and (any(p in ("", ".", "..") for p in parts[2:]) or not file.lower().endswith(".gguf")):
        raise ModelNotFound(f"bad reference {text!r}: FILE must be a .gguf path inside the repo")
    return Ref(text, "hf", "/".join(parts[:2]), file=file)


def _parse_local(text: str) -> Ref:
    path = Path(text).expanduser().resolve()
    if path.is_dir():
        if (path / "genai_config.json").is_file():  # what `qwenkit export onnx` writes
            return Ref(text, "local", path.name, path=path, format="onnx")
        if not (path / "config.json").is_file():
            raise ModelNotFound(
                f"{text!r} is a directory without config.json or genai_config.json, not a checkpoint or ONNX model"
            )
        return Ref(text, "local", path.name, path=path, format="hf")
    if not path.is_file():
        raise ModelNotFound(f"no such model file or directory: {text!r}")
    try:
        gguf = is_gguf(path)
    except OSError as e:
        raise ModelNotFound(f"cannot read {text!r}: {e.strerror}") from None
    if not gguf:
        raise ModelNotFound(f"{text!r} is not a GGUF file (bad magic bytes)")
    return Ref(text, "local", path.stem, path=path, format="gguf")
