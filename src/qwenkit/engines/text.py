"""Turning a token stream into text safely: whole UTF-8 characters, stop strings held back."""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class IncrementalDecoder:
    """Decodes token byte pieces to text without ever emitting half a character.

    A Chinese character or an emoji is often split over two or three tokens; the bytes of an
    incomplete character are kept until the rest arrives.
    """

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, piece: bytes) -> str:
        return self._utf8.decode(piece)

    def flush(self) -> str:
        """Whatever is left at the end (an incomplete character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)


class StopMatcher:
    """Finds stop strings in streamed text, holding back text that may begin one.

    `feed` returns the text that is safe to emit and the stop string matched, if any; text from
    the stop string on is never emitted.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._longest = max((len(s) for s in self._stops), default=0)
        self._held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        if not self._stops:
            return text, None
        buf = self._held + text
        first: tuple[int, str] | None = None
        for stop in self._stops:
            at = buf.find(stop)
            if at >= 0 and (first is None or at < first[0]):
                first = (at, stop)
        if first is not None:
            self._held = ""
            return buf[: first[0]], first[1]
        keep = self._partial_suffix(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], None

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest suffix of `buf` that is a proper prefix of some stop string."""
        for n in range(min(len(buf), self._longest - 1), 0, -1):
            tail = buf[-n:]
            if any(stop.startswith(tail) for stop in self._stops):
                return n
        return 0
