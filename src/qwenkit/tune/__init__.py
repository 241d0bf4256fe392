"""Adapting a Qwen model: LoRA fine-tuning on chat data (`trainer`), rendered and masked exactly
as qwenkit serves the model (`data`, `encode`). The trainer needs the `tune` extra (peft, trl)."""

from qwenkit.tune.data import ChatExample, Example, TextExample, load_jsonl, parse_row
from qwenkit.tune.encode import Encoded, chat_segments, encode, encode_all

__all__ = [
    "ChatExample",
    "Encoded",
    "Example",
    "TextExample",
    "chat_segments",
    "encode",
    "encode_all",
    "load_jsonl",
    "parse_row",
]
