"""Token ids <-> text with a Hugging Face `tokenizer.json`, with llama.cpp's conventions.

Shared by the transformers and ONNX Runtime engines (it needs only the `tokenizers` package).

- `tokenize(text, special=True)` parses control tokens such as `<|im_start|>`; with
  `special=False` they are plain text. Tokens that are not "special" in the tokenizer
  (`<tool_call>`, `<think>`...) are matched either way, as llama.cpp matches user-defined ones.
  No BOS/EOS is ever added.
- `piece(id)` is the exact bytes a token stands for (a byte-level BPE token may be half of a
  UTF-8 character); control tokens are b"" unless `special`. The engine streams these bytes
  through `IncrementalDecoder`, as the llama.cpp engine does.

The pipeline is the checkpoint's `tokenizer.json` exactly as written. (transformers 5's
`Qwen2Tokenizer` class rebuilds it with an NFC normalizer whatever the file says.) So a GGUF's
conversion, whose file has no normalizer, tokenizes exactly as llama.cpp does, decomposed
accents included, and an official Qwen checkpoint, whose file declares NFC, as Qwen's own
tokenizer does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the character standing for each byte value."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=False)}


class Vocab:
    """Wraps a transformers tokenizer or, with `hf_tokenizer=None`, `tokenizer_file` alone
    (its `tokenizers` backend does the work)."""

    def __init__(self, hf_tokenizer: Any, n_vocab: int, tokenizer_file: Path | None = None) -> None:
        self.hf = hf_tokenizer
        backend: Tokenizer | None
        if tokenizer_file is not None and tokenizer_file.is_file():
            backend = Tokenizer.from_file(str(tokenizer_file))
        else:
            backend = getattr(hf_tokenizer, "backend_tokenizer", None) or getattr(hf_tokenizer, "_tokenizer", None)
        if backend is None:
            raise TypeError("a fast (tokenizers-backed) tokenizer is required")
        self._special = backend
        self._plain: Tokenizer | None = None  # a copy that reads control tokens as text, made on first use
        self.n_vocab = n_vocab
        decoder = backend.decoder
        self._byte_level = decoder is not None and type(decoder).__name__ == "ByteLevel"
        self._control: set[int] = set()
        self._added: dict[int, str] = {}
        for token_id, token in backend.get_added_tokens_decoder().items():
            self._added[token_id] = token.content
            if token.special:
                self._control.add(token_id)
        self._pieces: dict[int, bytes] = {}

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        if special:
            return self._special.encode(text, add_special_tokens=False).ids
        if self._plain is None:
            plain = Tokenizer.from_str(self._special.to_str())
            plain.encode_special_tokens = True
            self._plain = plain
        return self._plain.encode(text, add_special_tokens=False).ids

    def piece(self, token: int, *, special: bool = False) -> bytes:
        if token in self._control and not special:
            return b""
        key = ~token if special else token
        cached = self._pieces.get(key)
        if cached is None:
            cached = self._pieces[key] = self._piece(token)
        return cached

    def _piece(self, token: int) -> bytes:
        added = self._added.get(token)
        if added is not None:
            return added.encode("utf-8")
        text = self._special.id_to_token(token)
        if text is None:  # ids past the tokenizer's vocabulary (the model's matrix is padded)
            return b""
        if self._byte_level:
            table = _byte_decoder()
            try:
                return bytes(table[c] for c in text)
            except KeyError:
                pass
        return self._special.decode([token], skip_special_tokens=False).encode("utf-8")

    def detokenize(self, ids: Sequence[int], *, special: bool = True) -> str:
        return b"".join(self.piece(t, special=special) for t in ids).decode("utf-8", errors="replace")

    def chat_template(self) -> str | None:
        template = getattr(self.hf, "chat_template", None)
        if isinstance(template, dict):
            template = template.get("default") or next(iter(template.values()), None)
        return template or None


def directory_chat_template(path: Path) -> str | None:
    """The chat template a model directory carries: `chat_template.jinja`, else the
    `chat_template` string of `tokenizer_config.json`."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = path / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        return template if isinstance(template, str) else None
    return None
