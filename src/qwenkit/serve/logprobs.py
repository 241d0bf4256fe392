"""Engine logprobs in OpenAI's shapes: chat (`token`, `logprob`, `bytes`, `top_logprobs`) and
legacy completions (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from qwenkit.engines.base import TokenLogprob
from qwenkit.serve.protocol.common import ChatTokenLogprob, ChoiceLogprobs, CompletionLogprobs, TopLogprob

TokenBytes = Callable[[int], bytes]


FLOOR = -9999.0  # for a token the (edited) logits rule out: JSON has no -inf (vLLM reports the same)


def _finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else (0.0 if logprob > 0 else FLOOR)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")  # a token that splits a character: U+FFFD (`bytes` is exact)


def _top(token_bytes: TokenBytes, token: int, logprob: float) -> TopLogprob:
    raw = token_bytes(token)
    return TopLogprob(token=_text(raw), logprob=_finite(logprob), bytes=list(raw))


def chat_logprobs(token_bytes: TokenBytes, logprobs: Sequence[TokenLogprob]) -> ChoiceLogprobs:
    """`choices[].logprobs` of a chat completion (or of one streamed chunk)."""
    content = []
    for lp in logprobs:
        head = _top(token_bytes, lp.token, lp.logprob)
        top = [_top(token_bytes, t, v) for t, v in lp.top]
        content.append(ChatTokenLogprob(token=head.token, logprob=head.logprob, bytes=head.bytes, top_logprobs=top))
    return ChoiceLogprobs(content=content)


def completion_logprobs(
    token_bytes: TokenBytes, logprobs: Sequence[TokenLogprob | None], tokens: Sequence[int], offset: int = 0
) -> CompletionLogprobs:
    """`choices[].logprobs` of a text completion for `tokens` (their logprobs; None for a prompt's
    first token), with character offsets into the choice's text counted from `offset`."""
    out = CompletionLogprobs()
    for token, lp in zip(tokens, logprobs, strict=True):
        text = _text(token_bytes(token))
        out.tokens.append(text)
        out.token_logprobs.append(None if lp is None else _finite(lp.logprob))
        out.top_logprobs.append(None if lp is None else {_text(token_bytes(t)): _finite(v) for t, v in lp.top})
        out.text_offset.append(offset)
        offset += len(text)
    return out
