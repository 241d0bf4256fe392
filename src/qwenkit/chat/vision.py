"""Image slots in a Qwen-VL prompt, safe from injection (the randomized media marker).

The template renders a per-request random marker where the official template writes
`<|vision_start|><|image_pad|><|vision_end|>`; the text between markers is tokenized on its own and
refused when it holds any vision token, so only the template's own slots ever become image slots:
a user who types the vision tokens (or guesses at a marker) gets a 400 or plain text, never an image.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from qwenkit.errors import BadRequest, TemplateError

IMAGE_SLOT = "<|vision_start|><|image_pad|><|vision_end|>"
#: tokens only the chat layer may place in a prompt (video is not supported: never in a prompt)
VISION_TOKENS = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>")

Tokenize = Callable[..., list[int]]


def new_marker() -> str:
    """A marker no user can predict, fresh for each request."""
    return f"<__qwenkit_media_{secrets.token_hex(16)}__>"


def vision_token_ids(tokenize: Tokenize) -> tuple[int, ...]:
    """The ids of `VISION_TOKENS` in a vocabulary (each must be one token)."""
    ids = []
    for name in VISION_TOKENS:
        found = tokenize(name, special=True)
        if len(found) != 1:
            raise TemplateError(f"this vocabulary has no single {name} token, so it cannot take images")
        ids.append(found[0])
    return tuple(ids)


def tokenize_with_images(text: str, marker: str, n_images: int, tokenize: Tokenize) -> list[int]:
    """Token ids of `text` with each `marker` replaced by the three image-slot tokens.

    The pieces between markers are tokenized with special tokens parsed (the template's control
    tokens must be) and refused when they contain a vision token."""
    pieces = text.split(marker)
    if len(pieces) != n_images + 1:
        raise TemplateError(f"the chat template rendered {len(pieces) - 1} image slots for {n_images} images")
    forbidden = set(vision_token_ids(tokenize))
    slot = tokenize(IMAGE_SLOT, special=True)
    ids: list[int] = []
    for i, piece in enumerate(pieces):
        if i:
            ids += slot
        tokens = tokenize(piece, special=True) if piece else []
        if forbidden.intersection(tokens):
            raise BadRequest(
                f"message text may not contain the vision tokens {', '.join(VISION_TOKENS)}; send images as image parts"
            )
        ids += tokens
    return ids
