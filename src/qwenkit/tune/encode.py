"""Examples to token ids and a loss mask, rendered exactly as qwenkit serves the model.

Each assistant turn is trained on the prompt qwenkit would send for it: `build_prompt` over the
conversation before that turn (Qwen2.5's injected default system prompt, tools, Qwen3's thinking
switch and empty think block included). The loss covers what the model must produce after that
prompt: the turn's text, its `<think>` block when it has reasoning, and the `<|im_end|>` that
closes it (without which a fine-tune never learns to stop), not the newline the template adds
after `<|im_end|>`, which the next prompt supplies.

Turns whose full rendering is a continuation of their prompt share one sequence. Where the
template rewrites history (Qwen3 drops earlier turns' reasoning), a turn gets a sequence of its
own ending at that turn, so every target is conditioned on the prompt as served.

Pieces are tokenized separately (prompt, target, next prompt...), so the prompt's ids are exactly
the ids the server feeds the model and the mask is exact by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qwenkit.chat.template import ChatTemplate
from qwenkit.chat.thinking import build_prompt
from qwenkit.tune.data import ChatExample, Example, TextExample

END_OF_TURN = "<|im_end|>"

Tokenize = Callable[[str], list[int]]


@dataclass(frozen=True)
class Encoded:
    """Token ids and a 0/1 loss mask of the same length."""

    input_ids: list[int]
    mask: list[int]

    @property
    def n_target(self) -> int:
        return sum(self.mask)


@dataclass(frozen=True)
class Segment:
    """One training text and the character spans `[start, end)` the loss covers."""

    text: str
    spans: list[tuple[int, int]]


def chat_segments(template: ChatTemplate, example: ChatExample) -> list[Segment]:
    """The training texts for a conversation, each with its assistant target spans."""
    messages, tools = example.messages, example.tools
    segments: list[Segment] = []
    for i in reversed([i for i, m in enumerate(messages) if m["role"] == "assistant" and i > 0]):
        flag = example.enable_thinking
        if flag is None:
            turn = messages[i]
            flag = bool(turn.get("reasoning_content")) or "</think>" in turn["content"]
        prompt = build_prompt(template, messages[:i], tools=tools, enable_thinking=flag).text
        full = build_prompt(
            template, messages[: i + 1], tools=tools, enable_thinking=flag, add_generation_prompt=False
        ).text
        if not full.startswith(prompt):
            raise ValueError(f"the chat template does not render message {i} as a continuation of its prompt")
        end = full.find(END_OF_TURN, len(prompt))
        end = end + len(END_OF_TURN) if end >= 0 else len(full.rstrip())
        span = (len(prompt), end)
        if segments and segments[-1].text.startswith(full):
            segments[-1].spans.insert(0, span)
        else:
            segments.append(Segment(full, [span]))
    segments.reverse()
    return segments


def encode_segment(segment: Segment, tokenize: Tokenize) -> Encoded:
    """Tokenize `segment` piece by piece (untrained, trained, untrained...) into ids and a mask."""
    ids: list[int] = []
    mask: list[int] = []
    at = 0
    for start, end in [*segment.spans, (len(segment.text), len(segment.text))]:
        for text, trained in ((segment.text[at:start], 0), (segment.text[start:end], 1)):
            if text:
                piece = tokenize(text)
                ids += piece
                mask += [trained] * len(piece)
        at = end
    return Encoded(ids, mask)


def encode(example: Example, template: ChatTemplate, tokenize: Tokenize) -> list[Encoded]:
    """The training sequences of one example."""
    if isinstance(example, TextExample):
        ids = tokenize(example.text)
        return [Encoded(ids, [1] * len(ids))]
    return [encode_segment(segment, tokenize) for segment in chat_segments(template, example)]


@dataclass(frozen=True)
class EncodedSet:
    """Sequences ready to train on, and what was cut or dropped to fit `max_length`."""

    sequences: list[Encoded]
    truncated: int
    dropped: int

    @property
    def n_tokens(self) -> int:
        return sum(len(s.input_ids) for s in self.sequences)


def encode_all(
    examples: Sequence[Example], template: ChatTemplate, tokenize: Tokenize, *, max_length: int
) -> EncodedSet:
    """Encode every example, cutting sequences at `max_length` and dropping those left with no target."""
    out: list[Encoded] = []
    truncated = dropped = 0
    for example in examples:
        for seq in encode(example, template, tokenize):
            if len(seq.input_ids) > max_length:
                truncated += 1
                seq = Encoded(seq.input_ids[:max_length], seq.mask[:max_length])
            if seq.n_target == 0:
                dropped += 1
                continue
            out.append(seq)
    return EncodedSet(out, truncated, dropped)
