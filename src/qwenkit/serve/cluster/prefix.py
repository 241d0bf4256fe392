"""The routing key of a request: hashes of its growing prefixes (messages, or prompt text blocks)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

PROMPT_BLOCK_CHARS = 256  # a completion prompt is keyed per block of this many characters
MAX_KEYS = 256


def _digest(h: Any) -> str:
    return h.copy().hexdigest()[:16]


def prefix_keys(path: str, body: bytes) -> list[str]:
    """Hashes of the request's prefixes, shortest first; two requests sharing the first k keys share a prompt prefix.

    Chat: one key per leading message (a follow-up turn repeats the conversation so far, so it
    matches every key of the turn before). Completions: one per block of the prompt text. A body
    that does not parse has no keys (it is routed on load alone and answered 400 by the replica).
    """
    try:
        data = json.loads(body)
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    h = hashlib.sha256(str(data.get("model", "")).encode())
    keys: list[str] = []
    if path.endswith("/chat/completions") and isinstance(data.get("messages"), list):
        for message in data["messages"][:MAX_KEYS]:
            h.update(json.dumps(message, sort_keys=True, separators=(",", ":")).encode() + b"\x00")
            keys.append(_digest(h))
    elif path.endswith("/completions") and isinstance(data.get("prompt"), str):
        prompt: str = data["prompt"]
        for start in range(0, min(len(prompt), PROMPT_BLOCK_CHARS * MAX_KEYS), PROMPT_BLOCK_CHARS):
            h.update(prompt[start : start + PROMPT_BLOCK_CHARS].encode())
            keys.append(_digest(h))
    return keys
