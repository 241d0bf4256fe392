"""The engine protocol: what every backend (llama.cpp, transformers, vLLM) offers.

Engines know tokens, not Qwen. The chat layer renders a conversation to token ids, hands them
to `Engine.generate` with `SamplingParams`, and parses what comes back.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from qwenkit.errors import BadRequest, QwenkitError

FinishReason = Literal["stop", "length", "abort"]

#: LoRA adapters applied to a request: (name of an adapter loaded on the engine, scale) pairs.
#: The empty tuple is the base model.
Adapters = tuple[tuple[str, float], ...]


class QueueFull(QwenkitError):
    """Every slot is busy and the wait queue is at its bound (the server answers 429)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token and when to stop.

    `temperature <= 0` means greedy. `top_k = 0`, `top_p = 1`, `min_p = 0` and penalties of
    1 (repetition) or 0 (presence, frequency) disable those samplers.
    """

    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()
    grammar: str | None = None  # a GBNF grammar constraining the output, where supported
    logprobs: int | None = None  # per generated token: its logprob and this many alternatives (None: off)
    prompt_logprobs: int | None = None  # the same for every prompt token after the first (None: off)
    speculative: bool | None = None  # draft from the context and verify (None: the engine's default)
    draft_max: int | None = None  # drafted tokens per step at most (None: the engine's; capped by it)

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
            if not math.isfinite(getattr(self, name)):  # NaN passes every range check below
                raise ValueError(f"{name} must be a finite number")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if self.top_p <= 0 or self.top_p > 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not 0 <= self.min_p <= 1:
            raise ValueError("min_p must be in [0, 1]")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")
        if self.draft_max is not None and self.draft_max < 0:
            raise ValueError("draft_max must be >= 0")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_TOP_LOGPROBS:
                raise ValueError(f"{name} must be in [0, {MAX_TOP_LOGPROBS}]")


MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability and the most likely alternatives at its position.

    Log-probabilities are the log-softmax of the logits after `logit_bias` and the penalties,
    before temperature and the top-k/top-p/min-p filters: the distribution greedy decoding takes
    its maximum of, independent of how hot a request samples (as OpenAI and vLLM report them).
    """

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token, logprob), most likely first


class StepController(Protocol):
    """A per-step hook that may force the next tokens (the chat layer's thinking budget uses it).

    After each sampled token the engine calls `after_token` with the ids generated so far
    (forced ones included); a non-empty return is fed to the model as if it had produced those
    tokens, and they are reported with `forced=True`.
    """

    def after_token(self, generated: Sequence[int]) -> Sequence[int]: ...


@runtime_checkable
class ThinkingLimit(StepController, Protocol):
    """A step controller whose only forcing is to close reasoning after `reasoning_token_limit`
    reasoning tokens. An engine with a native reasoning budget (vLLM's `thinking_token_budget`)
    may apply that limit itself instead of running `after_token`."""

    @property
    def reasoning_token_limit(self) -> int: ...


@dataclass
class Chunk:
    """One step of output: the token(s) produced and the text they completed.

    `text` may be empty while a multi-byte character is incomplete, or while text that could be
    the start of a stop string is held back. The last chunk of a generation has
    `finish_reason` set (its `token_ids` may be empty).
    """

    text: str
    token_ids: list[int] = field(default_factory=list)
    forced: bool = False
    finish_reason: FinishReason | None = None
    stop_sequence: str | None = None  # the stop string that ended generation
    error: str | None = None  # set with finish_reason "abort" when the engine failed the request
    cached_prompt_tokens: int = 0  # on the last chunk: prompt tokens reused from a cache
    prompt_tokens: int = 0  # on the last chunk: prompt positions the model attended, images expanded (0: unknown)
    accepted_draft_tokens: int = 0  # on the last chunk: drafted tokens the sampler agreed with (speculation)
    rejected_draft_tokens: int = 0  # on the last chunk: drafted tokens verified and dropped
    index: int = 0  # which of a request's `n` choices this chunk belongs to
    logprobs: list[TokenLogprob] | None = None  # one per sampled token in `token_ids` (forced ones have none)
    prompt_logprobs: list[TokenLogprob | None] | None = None  # on a choice's first chunk; None for token 0


@dataclass
class EngineStats:
    """A snapshot of an engine's load, for metrics and health."""

    running: int = 0
    waiting: int = 0
    kv_used_cells: int = 0
    kv_total_cells: int = 0
    prefix_hit_tokens: int = 0  # prompt tokens served from cache, since start
    prompt_tokens: int = 0  # prompt tokens submitted, since start
    drafted_tokens: int = 0  # tokens drafted by speculation and verified, since start
    accepted_draft_tokens: int = 0  # of those, the ones kept, since start
    prefix_cache_off: str | None = None  # why the prefix cache asked for is off for this model (None: it is not)


@dataclass(frozen=True)
class ImageInput:
    """An image for a vision model: validated encoded bytes (PNG, JPEG, WebP, GIF's first frame...)
    and the hex sha256 of those bytes (the key engines cache encoder output under)."""

    data: bytes
    sha256: str
    width: int
    height: int


class RequestHandle(Protocol):
    def cancel(self) -> None: ...


@dataclass
class Request:
    """A submitted generation, as engines queue it; `cancel` is honoured at the next step.

    With `n > 1` the engine samples `n` choices of the one prompt, computing its prefill once;
    `choices()` splits such a request into one request per choice, whose chunks carry their
    `index` and whose cancellation follows the parent's.
    """

    prompt: list[int]
    params: SamplingParams
    emit: Callable[[Chunk], None]  # called on the engine's thread; must not block
    controller: StepController | None = None
    adapters: Adapters = ()  # LoRA adapters (name, scale) loaded on the engine; () is the base model
    images: tuple[ImageInput, ...] = ()  # one per image_pad token of `prompt`, in order
    n: int = 1
    index: int = 0
    parent: Request | None = None
    _cancelled: bool = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled or (self.parent is not None and self.parent.cancelled)

    def cancel(self) -> None:
        self._cancelled = True

    def choices(self) -> list[Request]:
        """One request per choice (itself when n == 1); each has its own copy of the controller."""
        if self.n == 1:
            return [self]
        return [
            Request(
                self.prompt,
                self.params,
                _indexed(self.emit, i),
                copy.deepcopy(self.controller),
                self.adapters,
                self.images,
                index=i,
                parent=self,
            )
            for i in range(self.n)
        ]


def _indexed(emit: Callable[[Chunk], None], index: int) -> Callable[[Chunk], None]:
    def send(chunk: Chunk) -> None:
        chunk.index = index
        emit(chunk)

    return send


def check_request(
    request: Request, *, n_ctx: int, n_vocab: int, adapters: Collection[str] = (), image_pad: int | None = None
) -> None:
    """Refuse, before queueing, what would otherwise fail (or abort) on the engine's thread.

    `image_pad`: the engine's `<|image_pad|>` token id when it takes images (`vision()`), else None;
    a vision engine needs exactly one image_pad token in the prompt per image."""
    for name, scale in request.adapters:
        if name not in adapters:
            known = ", ".join(sorted(adapters)) or "none loaded"
            raise BadRequest(f"unknown LoRA adapter {name!r} (available: {known})")
        if not math.isfinite(scale):
            raise BadRequest(f"the scale of LoRA adapter {name!r} must be a finite number")
    prompt = request.prompt
    if not prompt:
        raise BadRequest("the prompt is empty")
    if len(prompt) >= n_ctx:
        raise BadRequest(f"the prompt has {len(prompt)} tokens; this model was loaded with a context of {n_ctx} tokens")
    bad = [t for t in prompt if not 0 <= t < n_vocab]
    if bad:
        raise BadRequest(f"the prompt holds token {bad[0]}, outside the vocabulary (0..{n_vocab - 1})")
    if request.images and image_pad is None:
        raise BadRequest("this model takes text only; it does not accept images")
    if image_pad is not None:
        slots = prompt.count(image_pad)
        if slots != len(request.images):
            raise BadRequest(f"the prompt has {slots} image slots for {len(request.images)} images")
    if request.n < 1:
        raise BadRequest("n must be at least 1")
    for token, _bias in request.params.logit_bias:
        if not 0 <= token < n_vocab:
            raise BadRequest(f"logit_bias names token {token}, outside the vocabulary (0..{n_vocab - 1})")


@runtime_checkable
class Engine(Protocol):
    """A loaded model that turns token ids into a stream of `Chunk`s."""

    name: str
    n_ctx: int

    @property
    def n_vocab(self) -> int:
        """Token ids are 0..n_vocab-1."""
        ...

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids for `text`; `special` parses control tokens like `<|im_start|>`."""
        ...

    def detokenize(self, ids: Sequence[int]) -> str: ...

    def token_bytes(self, token: int) -> bytes:
        """The bytes of one token as the model writes it (control tokens by their name)."""
        ...

    def chat_template(self) -> str | None:
        """The Jinja chat template the model file carries, if any."""
        ...

    def architecture(self) -> str | None:
        """The model's architecture name (e.g. "qwen2", "qwen3"), if known."""
        ...

    def eos_token_ids(self) -> set[int]:
        """Token ids that end a generation by themselves."""
        ...

    def vision(self) -> bool:
        """Whether this engine takes images."""
        ...

    def generate(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        controller: StepController | None = None,
        adapters: Adapters = (),
        *,
        images: Sequence[ImageInput] = (),
    ) -> Iterator[Chunk]:
        """Stream the continuation of `prompt`; closing the iterator cancels the request."""
        ...

    def submit(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        emit: Callable[[Chunk], None],
        controller: StepController | None = None,
        adapters: Adapters = (),
        *,
        n: int = 1,
        images: Sequence[ImageInput] = (),
    ) -> RequestHandle:
        """Queue a request; its chunks go to `emit` (from the engine's thread, must not block).

        `adapters`: LoRA adapters (name, scale) loaded with `load_adapter`; () is the base model.
        `n > 1` samples that many choices sharing one prefill (chunks carry their `index`; each
        choice runs on its own copy of `controller`); `cancel` stops them all.
        `images`: one per `<|image_pad|>` token of `prompt`, in order (only where `vision()`)."""
        ...

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load a LoRA adapter that requests may then name in `adapters`."""
        ...

    def adapter_names(self) -> list[str]:
        """The LoRA adapters loaded, by name."""
        ...

    def stats(self) -> EngineStats: ...

    def close(self) -> None: ...
