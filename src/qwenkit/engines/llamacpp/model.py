"""A GGUF model loaded through llama.cpp's C API: weights, vocabulary, metadata."""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeAlias, cast

import llama_cpp as C
from llama_cpp import mtmd_cpp

from qwenkit.errors import ModelLoadError, QwenkitError

log = logging.getLogger("qwenkit.llamacpp")

_GGML_LOG_LEVEL_ERROR = 4

#: A loaded `llama_adapter_lora *` (what `llama_set_adapters_lora` takes an array of).
AdapterHandle: TypeAlias = "ctypes._Pointer[ctypes.c_void_p]"


def _route_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    """Send llama.cpp's chatter to Python logging: errors as errors, the rest at debug."""
    message = text.decode("utf-8", errors="replace").rstrip()
    if message:
        errors: list[str] | None = getattr(_collected, "errors", None)
        if level == _GGML_LOG_LEVEL_ERROR and errors is not None:
            errors.append(message)
        log.log(logging.ERROR if level == _GGML_LOG_LEVEL_ERROR else logging.DEBUG, message)


_log_callback = C.llama_log_callback(_route_log)  # one C function pointer, kept alive for llama.cpp
# llama.cpp's error lines inside `collect_errors`, per thread: libmtmd preprocesses images on request
# threads while the scheduler thread encodes and decodes, and each must see only its own errors
_collected = threading.local()


@contextmanager
def collect_errors() -> Iterator[list[str]]:
    """llama.cpp's (and libmtmd's) error lines logged inside the block, for a load failure's message."""
    errors: list[str] = []
    outer: list[str] | None = getattr(_collected, "errors", None)
    _collected.errors = errors
    try:
        yield errors
    finally:
        _collected.errors = outer


def route_mtmd_log() -> None:
    """Send libmtmd's chatter (image preprocessing and encoding) to Python logging as well."""
    mtmd_cpp.mtmd_log_set(_log_callback, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_helper_log_set(_log_callback, ctypes.c_void_p(0))


_backend_ready = False


def _init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        C.llama_log_set(_log_callback, ctypes.c_void_p(0))
        C.llama_backend_init()
        _backend_ready = True


def default_threads() -> int:
    """Cores this process may use (llama.cpp is fastest with one thread per physical core)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class LlamaModel:
    """Owns a `llama_model`: tokenization, detokenization pieces and GGUF metadata."""

    def __init__(self, path: str | Path, *, n_gpu_layers: int = 0) -> None:
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        _init_backend()
        params = C.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        with collect_errors() as errors:
            self.ptr = C.llama_model_load_from_file(str(path).encode(), params)
        if not self.ptr:
            reason = f" ({errors[0]})" if errors else ""
            raise ModelLoadError(
                f"llama.cpp could not load {path}{reason}: not a valid GGUF file, truncated, "
                "or an architecture this llama.cpp build does not know"
            )
        self.path = path
        self.vocab: C.llama_vocab_p = C.llama_model_get_vocab(self.ptr)
        self.n_vocab = C.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = C.llama_model_n_ctx_train(self.ptr)
        self.n_embd_inp = C.llama_model_n_embd_inp(self.ptr)  # the width of input embeddings (images)
        self._pieces: dict[int, bytes] = {}

    def _vocab(self) -> C.llama_vocab_p:
        """The vocabulary, refusing use after `close` (llama.cpp would read freed memory)."""
        if not self.ptr:
            raise QwenkitError("the model is closed")
        return self.vocab

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as a string, or None when the file lacks the key."""
        self._vocab()
        size = 256
        while True:
            buf = ctypes.create_string_buffer(size)
            n = C.llama_model_meta_val_str(self.ptr, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", errors="replace")
            size = n + 1

    def chat_template(self) -> str | None:
        self._vocab()
        raw = C.llama_model_chat_template(self.ptr, None)
        return raw.decode("utf-8") if raw else None

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (C.llama_token * capacity)()
        n = C.llama_tokenize(self._vocab(), data, len(data), buf, capacity, False, special)
        if n < 0:  # cannot happen for BPE (at most one token per byte), kept for safety
            capacity = -n
            buf = (C.llama_token * capacity)()
            n = C.llama_tokenize(self.vocab, data, len(data), buf, capacity, False, special)
        return list(buf[:n])

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes of one token; control tokens render as b'' unless `special`."""
        key = token if not special else ~token
        cached = self._pieces.get(key)
        if cached is None:
            buf = ctypes.create_string_buffer(64)
            n = C.llama_token_to_piece(self._vocab(), token, buf, 64, 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = C.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
            cached = self._pieces[key] = buf.raw[:n]
        return cached

    def detokenize(self, ids: Sequence[int], *, special: bool = True) -> str:
        return b"".join(self.piece(t, special=special) for t in ids).decode("utf-8", errors="replace")

    def load_adapter(self, path: str | Path) -> AdapterHandle:
        """A GGUF LoRA for this model (freed with the model)."""
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"LoRA adapter file not found: {path}")
        self._vocab()
        with collect_errors() as errors:
            raw = C.llama_adapter_lora_init(self.ptr, str(path).encode())  # NULL (falsy) on failure
        if not raw:
            reason = f" ({errors[-1]})" if errors else ""
            raise ModelLoadError(
                f"llama.cpp could not load the LoRA adapter {path}{reason}: it must be a GGUF LoRA "
                "made for this model (qwenkit export lora)"
            )
        return cast(AdapterHandle, raw)

    def eog_ids(self) -> set[int]:
        return {t for t in range(self.n_vocab) if C.llama_vocab_is_eog(self.vocab, t)}

    def close(self) -> None:
        if self.ptr:
            C.llama_model_free(self.ptr)
            self.ptr = None
