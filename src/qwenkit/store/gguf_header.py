"""The GGUF header: magic bytes, metadata key/values and `general.file_type`, without touching tensors.

The one GGUF metadata reader of qwenkit (the store, the transformers converter and the tiny test
models all use it). `gguf.GGUFReader` maps every tensor and every array element, which takes
seconds on a 0.5 GB file; this reads the key/value section through `mmap` and stops before the
tensor infos (or at the key asked for), in about a tenth of a second with a 151k-token
vocabulary. Strings stay undecoded bytes in `KV`, so copying them into another file is exact.
"""

from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import LlamaFileType

MAGIC = b"GGUF"
# GGUF value types: struct format and numpy dtype of the scalars; strings and arrays are variable-length.
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
NUMPY_DTYPES = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "<u1",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}
STRING, ARRAY = 8, 9
_BOOL = 7
_SHARD = re.compile(r"^(.*)-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class KV:
    """One metadata value as stored: its GGUF type, the value (bytes for strings), an array's item type."""

    vtype: int
    value: Any  # int, float, bool, bytes, or a list of those
    sub_type: int | None = None


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
        file_type = read_key(path, "general.file_type")
    except (OSError, ValueError):
        return None
    if not isinstance(file_type, int):
        return None
    try:
        name = LlamaFileType(file_type).name
    except ValueError:
        return None
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def read_metadata(path: Path, prefixes: tuple[str, ...] = ("",)) -> dict[str, KV]:
    """The metadata keys of a GGUF (v2/v3, little-endian) that start with one of `prefixes`."""
    with _mapped(path) as buf:
        return dict(_scan(buf, path, prefixes))


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's header entry: name, dimensions (ne0 first) and GGML type id."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int


def scan(path: Path) -> tuple[dict[str, object], list[TensorInfo]]:
    """Every scalar and string metadata value (arrays as their length, strings decoded) and the tensor table."""
    values: dict[str, object] = {}
    tensors: list[TensorInfo] = []
    with _mapped(path) as buf:
        entries = _scan(buf, path, ("",), array_lengths=True)
        while True:
            try:
                key, kv = next(entries)
            except StopIteration as done:
                pos: int = done.value
                break
            values[key] = decoded(kv.value)
        (n_tensors,) = struct.unpack_from("<Q", buf, 8)
        for _ in range(n_tensors):
            (n,) = struct.unpack_from("<Q", buf, pos)
            name = bytes(buf[pos + 8 : pos + 8 + n]).decode("utf-8")
            pos += 8 + n
            (n_dims,) = struct.unpack_from("<I", buf, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
            pos += 4 + 8 * n_dims
            ggml_type, _offset = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            tensors.append(TensorInfo(name, tuple(dims), ggml_type))
    return values, tensors


def read_key(path: Path, key: str) -> Any:
    """The value of metadata `key` (strings decoded), reading only as far as it; None if absent."""
    with _mapped(path) as buf:
        found = next(_scan(buf, path, (key,), exact=True), None)
    return None if found is None else decoded(found[1].value)


class _mapped:
    """The file as a read-only memoryview; malformed contents raise ValueError naming the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> memoryview:
        with open(self.path, "rb") as f:
            if f.read(4) != MAGIC:
                raise ValueError(f"{self.path} is not a GGUF file")
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._buf = memoryview(self._mm)
        return self._buf

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self._buf.release()
        self._mm.close()
        if isinstance(exc, (struct.error, IndexError, KeyError)):
            raise ValueError(f"{self.path}: malformed GGUF metadata ({exc!r})") from exc


def _scan(
    buf: memoryview, path: Path, wanted: tuple[str, ...], *, exact: bool = False, array_lengths: bool = False
) -> Generator[tuple[str, KV], None, int]:
    """(key, value) for each wanted key in file order; the others are skipped without being built.

    With `array_lengths`, an array's value is its length, not its items. Returns where the tensor table starts.
    """
    version, _n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version < 2:
        raise ValueError(f"{path}: GGUF version {version} is not supported")
    pos = 24

    def string_end(at: int) -> int:
        n: int = struct.unpack_from("<Q", buf, at)[0]
        return at + 8 + n

    for _ in range(n_kv):
        end = string_end(pos)
        key = bytes(buf[pos + 8 : end]).decode("utf-8")
        (vtype,) = struct.unpack_from("<I", buf, end)
        pos = end + 4
        keep = key in wanted if exact else key.startswith(wanted)
        if vtype == ARRAY:
            sub_type, n = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            build = keep and not array_lengths
            if sub_type == STRING:
                items: list[Any] = []
                for _ in range(n):
                    end = string_end(pos)
                    if build:
                        items.append(bytes(buf[pos + 8 : end]))
                    pos = end
            elif sub_type in NUMPY_DTYPES:
                dtype = np.dtype(NUMPY_DTYPES[sub_type])
                if build:
                    array = np.frombuffer(buf, dtype=dtype, count=n, offset=pos)
                    items = array.astype(bool).tolist() if sub_type == _BOOL else array.tolist()
                pos += dtype.itemsize * n
            else:
                raise ValueError(f"{path}: {key} is an array of GGUF type {sub_type}, which is not supported")
            value: KV | None = None
            if keep:
                value = KV(vtype, n, sub_type) if array_lengths else KV(vtype, items, sub_type)
        elif vtype == STRING:
            end = string_end(pos)
            value = KV(vtype, bytes(buf[pos + 8 : end])) if keep else None
            pos = end
        else:
            fmt = _SCALAR_FORMATS[vtype]
            value = KV(vtype, struct.unpack_from(fmt, buf, pos)[0]) if keep else None
            pos += struct.calcsize(fmt)
        if pos > len(buf):
            raise ValueError(f"{path}: truncated GGUF metadata")
        if value is not None:
            yield key, value
    return pos


def decoded(value: Any) -> Any:
    """A stored value with its strings (bytes) decoded as UTF-8."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list):
        return [decoded(v) for v in value]
    return value
