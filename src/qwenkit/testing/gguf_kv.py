"""A minimal GGUF metadata reader: the key/value section only, fast.

`gguf.GGUFReader` maps every tensor and every array element and takes seconds on a 0.5 GB
file; this reads only the key/value section and stops before the tensor infos. Strings stay
undecoded bytes, so copying them into another file is exact.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

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


@dataclass(frozen=True)
class KV:
    vtype: int  # GGUFValueType
    value: Any  # scalar, bytes (strings stay undecoded) or list
    sub_type: int | None = None  # element type of an array


def _read_gguf_kv(path: Path, wanted_prefixes: tuple[str, ...]) -> dict[str, KV]:
    """The metadata keys of a GGUF (v2/v3, little-endian) that start with one of the prefixes."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        buf = memoryview(mm)
        try:
            return _parse_kv(buf, path, wanted_prefixes)
        except (struct.error, IndexError, KeyError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: malformed GGUF metadata ({e})") from e
        finally:
            buf.release()


def _parse_kv(buf: memoryview, path: Path, wanted_prefixes: tuple[str, ...]) -> dict[str, KV]:
    if bytes(buf[:4]) != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file")
    version, _n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version < 2:
        raise ValueError(f"{path}: GGUF version {version} is not supported")
    pos = 24

    def read_string() -> bytes:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", buf, pos)
        s = bytes(buf[pos + 8 : pos + 8 + n])
        pos += 8 + n
        return s

    def read_value(vtype: int) -> Any:
        nonlocal pos
        if vtype == STRING:
            return read_string()
        fmt = _SCALAR_FORMATS[vtype]
        (v,) = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return v

    out: dict[str, KV] = {}
    for _ in range(n_kv):
        key = read_string().decode("utf-8")
        (vtype,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        keep = key.startswith(wanted_prefixes)
        if vtype == ARRAY:
            sub_type, n = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            if sub_type == STRING:
                items: list[Any] = [read_string() for _ in range(n)]
            elif sub_type == ARRAY:
                raise ValueError(f"{path}: nested array in {key} is not supported")
            else:
                dt = np.dtype(NUMPY_DTYPES[sub_type])
                arr = np.frombuffer(buf, dtype=dt, count=n, offset=pos)
                pos += dt.itemsize * n
                items = arr.astype(bool).tolist() if sub_type == 7 else arr.tolist()
            if keep:
                out[key] = KV(vtype, items, sub_type)
        else:
            v = read_value(vtype)
            if keep:
                out[key] = KV(vtype, v)
        if pos > len(buf):
            raise ValueError(f"{path}: truncated GGUF metadata")
    return out


@lru_cache(maxsize=4)
def _tokenizer_metadata_cached(path: str, _size: int, _mtime_ns: int) -> dict[str, KV]:
    kv = _read_gguf_kv(Path(path), ("tokenizer.", "general.architecture"))
    if "tokenizer.ggml.tokens" not in kv:
        raise ValueError(f"{path} has no tokenizer metadata")
    return kv


def read_tokenizer_metadata(source_gguf: os.PathLike[str] | str) -> dict[str, Any]:
    """The source GGUF's ``tokenizer.*`` keys, decoded (for inspection and tests)."""
    kv = tokenizer_metadata(Path(source_gguf))

    def dec(v: Any) -> Any:
        if isinstance(v, bytes):
            return v.decode("utf-8", errors="replace")
        if isinstance(v, list):
            return [dec(x) for x in v]
        return v

    return {k: dec(v.value) for k, v in kv.items() if k.startswith("tokenizer.")}


def tokenizer_metadata(source: Path) -> dict[str, KV]:
    st = source.stat()
    return _tokenizer_metadata_cached(str(source.resolve()), st.st_size, st.st_mtime_ns)
