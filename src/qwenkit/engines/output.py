"""One request's output, engine-neutral: stop rules, text, forced tokens, the final chunk.

Every engine samples tokens its own way; what happens to a sampled token is the same for all:
an end-of-generation or stop token id ends it, text is decoded whole characters at a time and
checked for stop strings, `max_tokens` and the context bound it, and a `StepController` may
force the tokens that follow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from qwenkit.engines.base import Chunk, FinishReason, SamplingParams, StepController, TokenLogprob
from qwenkit.engines.text import IncrementalDecoder, StopMatcher


class RequestOutput:
    """Turns one request's sampled tokens into chunks sent to `emit`."""

    def __init__(
        self,
        emit: Callable[[Chunk], None],
        params: SamplingParams,
        controller: StepController | None,
        *,
        piece: Callable[[int], bytes],
        end_ids: set[int],
        n_ctx: int,
        on_finish: Callable[[], None] = lambda: None,
    ) -> None:
        self.emit = emit
        self.on_finish = on_finish  # runs before the last chunk is sent (e.g. free the slot)
        self.params = params
        self.controller = controller
        self.piece = piece
        self.end_ids = end_ids | set(params.stop_token_ids)
        self.n_ctx = n_ctx
        self.generated: list[int] = []
        self.finished = False
        self.cached_prompt_tokens = 0
        self.prompt_tokens = 0  # the prompt as the model attended it (images expanded), for the last chunk
        self.prompt_logprobs: list[TokenLogprob | None] | None = None  # sent with the first chunk
        self.drafted_tokens = 0  # speculation: drafted tokens verified for this request
        self.accepted_draft_tokens = 0  # of those, the ones kept
        self._decoder = IncrementalDecoder()
        self._stopper = StopMatcher(params.stop)

    def on_token(self, token: int, used: int, logprob: TokenLogprob | None = None) -> list[int]:
        """Handle a sampled token; `used` is the number of context positions already filled.

        Returns the tokens to decode next (the token, then any forced ones), or [] when the
        request has finished (its last chunk sent).
        """
        self.generated.append(token)
        logprobs = None if logprob is None else [logprob]
        if token in self.end_ids:
            self.finish("stop", token_ids=[token], logprobs=logprobs)
            return []
        text, stop = self._stopper.feed(self._decoder.feed(self.piece(token)))
        if stop is not None:
            self.finish("stop", text=text, token_ids=[token], stop=stop, logprobs=logprobs)
            return []
        if self._full(used):
            self.finish("length", text=text, token_ids=[token], logprobs=logprobs)
            return []
        self._send(Chunk(text, [token], logprobs=logprobs))
        forced = list(self.controller.after_token(self.generated)) if self.controller else []
        if not forced:
            return [token]
        room = min(self.params.max_tokens - len(self.generated), self.n_ctx - used - 2)
        forced = forced[: max(room, 0)]
        self.generated.extend(forced)
        text, stop = self._stopper.feed(self._decoder.feed(b"".join(self.piece(t) for t in forced)))
        self._send(Chunk(text, forced, forced=True))
        if stop is not None:
            self.finish("stop", stop=stop)
        elif self._full(used + 1 + len(forced)):
            self.finish("length")
        return [] if self.finished else [token, *forced]

    def finish(
        self,
        reason: FinishReason,
        *,
        text: str = "",
        token_ids: Sequence[int] = (),
        stop: str | None = None,
        error: str | None = None,
        logprobs: list[TokenLogprob] | None = None,
    ) -> None:
        """Send the last chunk (flushing held text unless aborted)."""
        if self.finished:
            return
        self.finished = True
        if stop is None and reason != "abort":
            tail, late_stop = self._stopper.feed(self._decoder.flush())
            text += tail if late_stop else tail + self._stopper.flush()
            stop = late_stop
        self.on_finish()
        self._send(
            Chunk(
                text,
                list(token_ids),
                finish_reason=reason,
                stop_sequence=stop,
                error=error,
                cached_prompt_tokens=self.cached_prompt_tokens,
                prompt_tokens=self.prompt_tokens,
                logprobs=logprobs,
                accepted_draft_tokens=self.accepted_draft_tokens,
                rejected_draft_tokens=self.drafted_tokens - self.accepted_draft_tokens,
            )
        )

    def _send(self, chunk: Chunk) -> None:
        if self.prompt_logprobs is not None:
            chunk.prompt_logprobs, self.prompt_logprobs = self.prompt_logprobs, None
        self.emit(chunk)

    def _full(self, used: int) -> bool:
        """No room for another token: `max_tokens` reached, or the context (`used` + the last
        sampled token) filled."""
        return len(self.generated) >= self.params.max_tokens or used + 1 >= self.n_ctx
