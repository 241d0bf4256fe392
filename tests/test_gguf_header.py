"""qwenkit's one GGUF metadata reader (`store.gguf_header`), checked against the `gguf` package's own reader."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from qwenkit.store.gguf_header import ARRAY, STRING, decoded, quant, read_key, read_metadata

VT = gguf.GGUFValueType
# key -> (value, GGUF type): every scalar type the Qwen files use, strings, and arrays of each kind
VALUES: dict[str, tuple[object, gguf.GGUFValueType]] = {
    "general.name": ("tiny 你好", VT.STRING),
    "general.file_type": (int(gguf.LlamaFileType.MOSTLY_Q4_K_M), VT.UINT32),
    "qwen3.block_count": (2, VT.UINT32),
    "qwen3.rope.freq_base": (1_000_000.0, VT.FLOAT32),
    "test.u8": (200, VT.UINT8),
    "test.i16": (-3, VT.INT16),
    "test.u64": (2**40, VT.UINT64),
    "test.f64": (0.125, VT.FLOAT64),
    "test.flag": (True, VT.BOOL),
    "tokenizer.ggml.tokens": (["a", "bc", "<|im_end|>", "é"], VT.ARRAY),
    "tokenizer.ggml.token_type": ([1, 1, 3, 1], VT.ARRAY),
    "tokenizer.ggml.scores": ([0.0, -1.5, 2.25, 3.0], VT.ARRAY),
    "test.flags": ([True, False, True], VT.ARRAY),
}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "meta.gguf"
    w = gguf.GGUFWriter(path, "qwen3")  # writes general.architecture itself
    for key, (value, vtype) in VALUES.items():
        w.add_key_value(key, value, vtype)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_agrees_with_the_gguf_package(written: Path) -> None:
    theirs = gguf.GGUFReader(written)
    ours = read_metadata(written)
    assert set(ours) == {k for k in theirs.fields if not k.startswith("GGUF.")}
    for key, kv in ours.items():
        field = theirs.fields[key]
        assert kv.vtype == field.types[0], key
        assert decoded(kv.value) == field.contents(), key
        if kv.vtype == ARRAY:
            assert kv.sub_type == field.types[1], key
    assert ours["tokenizer.ggml.tokens"].sub_type == STRING
    assert ours["tokenizer.ggml.tokens"].value[3] == "é".encode()  # strings stay bytes, exact


def test_prefixes_and_single_keys(written: Path) -> None:
    assert set(read_metadata(written, ("tokenizer.",))) == {k for k in VALUES if k.startswith("tokenizer.")}
    assert read_metadata(written)["general.architecture"].value == b"qwen3"
    assert read_key(written, "general.name") == "tiny 你好"
    assert read_key(written, "qwen3.block_count") == 2
    assert read_key(written, "test.flags") == [True, False, True]
    assert read_key(written, "no.such.key") is None
    assert quant(written) == "Q4_K_M"


def test_bad_files_are_value_errors_naming_the_file(written: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(written.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cut\.gguf: (truncated|malformed) GGUF metadata"):
        read_metadata(cut)
    assert quant(cut) == "Q4_K_M"  # read_key stops at its key, before the cut
    cut.write_bytes(written.read_bytes()[:30])
    assert quant(cut) is None
    other = tmp_path / "other.gguf"
    other.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(ValueError, match=r"other\.gguf is not a GGUF file"):
        read_key(other, "general.architecture")
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    assert quant(empty) is None
