"""Finding markup tags in streamed text without emitting the beginning of one too early."""

from __future__ import annotations

WHITESPACE = " \t\r\n"


def held_suffix(text: str, tag: str, pad: str = "") -> int:
    """How many trailing characters of `text` may still turn out to be markup.

    That is an incomplete `tag` at the very end (possibly none) together with the run of `pad`
    characters just before it, which belongs to the markup when the tag completes.
    """
    n = min(len(text), len(tag) - 1)
    while n and not tag.startswith(text[-n:]):
        n -= 1
    start = len(text) - n
    while start and text[start - 1] in pad:
        start -= 1
    return len(text) - start
