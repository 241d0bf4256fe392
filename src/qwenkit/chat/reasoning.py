"""Separating `<think>` reasoning from the answer, as the text streams.

Rules, identical for streamed and whole text:
- a `<think>` at the very start of the output opens reasoning (it is dropped when the prompt
  already opened the block); anywhere else it is plain text;
- `starts_in_thinking` output is reasoning from the first character;
- the first `</think>` inside reasoning ends it, and everything after it is the answer
  (a text that has already been streamed as the answer cannot be taken back, so a later
  `</think>` is answer text, not a second end of reasoning);
- newlines touching the tags belong to the markup: they are dropped, like the official parse
  and template do (`<think>\\n...\\n</think>\\n\\n`);
- output that ends inside reasoning (for instance cut by max_tokens) is all reasoning.
"""

from __future__ import annotations

from enum import Enum, auto

from qwenkit.chat.tags import held_suffix

OPEN, CLOSE = "<think>", "</think>"


class _State(Enum):
    START = auto()  # nothing consumed: a <think> may still open the output
    REASONING_LEAD = auto()  # just after an opening: drop newlines
    REASONING = auto()
    CONTENT_LEAD = auto()  # just after </think>: drop newlines
    CONTENT = auto()


class ReasoningParser:
    """Streaming splitter of model output into (reasoning, content) deltas."""

    def __init__(self, starts_in_thinking: bool) -> None:
        self.starts_in_thinking = starts_in_thinking
        self._state = _State.START
        self._buf = ""

    def feed(self, text: str) -> tuple[str, str]:
        """The (reasoning, content) text that `text` completes; only a possible tag is held."""
        self._buf += text
        return self._drain(final=False)

    def finish(self) -> tuple[str, str]:
        """Whatever was held back, at the end of the output."""
        return self._drain(final=True)

    @property
    def in_reasoning(self) -> bool:
        """Inside reasoning (after `finish`: the output ended there, never closed)."""
        return self._state in (_State.REASONING_LEAD, _State.REASONING)

    def _drain(self, final: bool) -> tuple[str, str]:
        reasoning: list[str] = []
        content: list[str] = []
        while self._buf:
            buf, state = self._buf, self._state
            if state is _State.START:
                if buf.startswith(OPEN):
                    self._buf, self._state = buf[len(OPEN) :], _State.REASONING_LEAD
                elif OPEN.startswith(buf) and not final:
                    break
                else:
                    self._state = _State.REASONING_LEAD if self.starts_in_thinking else _State.CONTENT
            elif state in (_State.REASONING_LEAD, _State.CONTENT_LEAD):
                self._buf = buf.lstrip("\n")
                if self._buf:
                    self._state = _State.REASONING if state is _State.REASONING_LEAD else _State.CONTENT
            elif state is _State.REASONING:
                at = buf.find(CLOSE)
                if at >= 0:
                    reasoning.append(buf[:at].rstrip("\n"))
                    self._buf, self._state = buf[at + len(CLOSE) :], _State.CONTENT_LEAD
                    continue
                keep = 0 if final else held_suffix(buf, CLOSE, "\n")
                reasoning.append(buf[: len(buf) - keep])
                self._buf = buf[len(buf) - keep :]
                break
            else:
                content.append(buf)
                self._buf = ""
        return "".join(reasoning), "".join(content)


def split_reasoning(text: str, starts_in_thinking: bool) -> tuple[str, str]:
    """(reasoning, content) of a whole output, by the same rules as the streaming parser."""
    parser = ReasoningParser(starts_in_thinking)
    r1, c1 = parser.feed(text)
    r2, c2 = parser.finish()
    return r1 + r2, c1 + c2
