"""Cheap GGUF header reads: the magic bytes and `general.file_type`, without loading tensors."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAGIC = b"GGUF"
# GGUF value types -> struct format of a scalar; 8 (string) and 9 (array) are variable-length.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_SHARD = re.compile(r"^(.*)-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


def shard_names(name: str) -> list[str]:
    """All files of a split GGUF (`x-00001-of-00003.gguf` -> three names), else `[name]`."""
    m = _SHARD.match(name)
    if m is None:
        return [name]
    total = int(m[3])
    return [f"{m[1]}-{i:05d}-of-{total:05d}.gguf" for i in range(1, total + 1)]


def match_gguf(names: list[str], wanted: str) -> str | None:
    """`wanted` as it appears in `names`: itself, or the first shard of a split copy of it (or the
    single file where `wanted` names a first shard), compared case-insensitively; else None."""
    stem = _unsplit(wanted).lower()
    exact = [n for n in names if n.lower() == wanted.lower()]
    if exact:
        return exact[0]
    same = [n for n in names if _unsplit(n).lower() == stem and is_first_shard(n) and n.lower().endswith(".gguf")]
    return min(same, default=None)


def _unsplit(name: str) -> str:
    m = _SHARD.match(name)
    return f"{m[1]}.gguf" if m else name


def is_first_shard(name: str) -> bool:
    """False for the 2nd.. files of a split GGUF (llama.cpp loads a split model from the first)."""
    m = _SHARD.match(name)
    return m is None or int(m[2]) == 1


def is_gguf(path: Path) -> bool:
    """True if `path` starts with the GGUF magic bytes."""
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


def quant(path: Path) -> str | None:
    """The quantization name from `general.file_type` (e.g. "Q4_K_M"), or None if unknown."""
    try:
        file_type = _read_key(path, "general.file_type")
    except (OSError, ValueError, struct.error):
        return None
    if not isinstance(file_type, int):
        return None
    try:
        from gguf import LlamaFileType

        name = LlamaFileType(file_type).name
    except (ImportError, ValueError):
        return None
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's header entry: name, dimensions (ne0 first) and GGML type id."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int


def scan(path: Path) -> tuple[dict[str, object], list[TensorInfo]]:
    """Every scalar and string metadata value (arrays as their length) and the tensor table."""
    values: dict[str, object] = {}
    tensors: list[TensorInfo] = []
    with open(path, "rb", buffering=1 << 16) as f:
        if f.read(4) != MAGIC:
            raise ValueError("not a GGUF file")
        version, n_tensors, n_kv = struct.unpack("<IQQ", f.read(20))
        if version < 2:
            raise ValueError(f"unsupported GGUF version {version}")
        for _ in range(n_kv):
            name = _string(f)
            (vtype,) = struct.unpack("<I", f.read(4))
            if vtype == _ARRAY:
                pos = f.tell()
                _etype, count = struct.unpack("<IQ", f.read(12))
                f.seek(pos)
                _value(f, vtype)
                values[name] = count
            else:
                values[name] = _value(f, vtype)
        for _ in range(n_tensors):
            name = _string(f)
            (n_dims,) = struct.unpack("<I", f.read(4))
            dims = struct.unpack(f"<{n_dims}Q", f.read(8 * n_dims))
            ggml_type, _offset = struct.unpack("<IQ", f.read(12))
            tensors.append(TensorInfo(name, dims, ggml_type))
    return values, tensors


def _read_key(path: Path, key: str) -> object:
    """The value of metadata `key`, scanning key/value pairs until it is found (None if absent)."""
    with open(path, "rb", buffering=1 << 16) as f:
        if f.read(4) != MAGIC:
            raise ValueError("not a GGUF file")
        version, _n_tensors, n_kv = struct.unpack("<IQQ", f.read(20))
        if version < 2:
            raise ValueError(f"unsupported GGUF version {version}")
        for _ in range(n_kv):
            name = _string(f)
            (vtype,) = struct.unpack("<I", f.read(4))
            value = _value(f, vtype)
            if name == key:
                return value
    return None


def _string(f: BinaryIO) -> str:
    (n,) = struct.unpack("<Q", f.read(8))
    if n > 1 << 24:
        raise ValueError("implausible GGUF string length")
    return f.read(n).decode("utf-8", "replace")


def _value(f: BinaryIO, vtype: int) -> object:
    """Read one value; arrays are skipped (returned as None)."""
    if vtype in _SCALARS:
        fmt = _SCALARS[vtype]
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
    if vtype == _STRING:
        return _string(f)
    if vtype == _ARRAY:
        etype, count = struct.unpack("<IQ", f.read(12))
        if etype in _SCALARS:
            f.seek(count * struct.calcsize(_SCALARS[etype]), 1)
        else:
            for _ in range(count):
                _value(f, etype)
        return None
    raise ValueError(f"unknown GGUF value type {vtype}")
