"""A loaded Qwen model: render a conversation (chat), generate (engine), parse the output (chat).

`Model.prepare` and `Model.decoder` (a `turn.TurnDecoder`) are the two halves every front end
shares: the Python API below runs them synchronously, the server runs them around the engine's
own thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from qwenkit.chat import ChatTemplate, build_prompt, sampling_defaults, tool_format
from qwenkit.chat.budget import EFFORT_BUDGETS, ThinkingBudget, closing_text, resolve_budget, room_to_think
from qwenkit.chat.media import LOCAL_POLICY, MediaPolicy, load_image
from qwenkit.chat.messages import image_sources, normalize_messages
from qwenkit.chat.vision import new_marker, tokenize_with_images
from qwenkit.engines.base import Adapters, Engine, ImageInput, SamplingParams
from qwenkit.errors import BadRequest
from qwenkit.generation import merge_options
from qwenkit.results import ChatDelta, ChatResult
from qwenkit.streaming import AsyncTurn, collect, run_batch
from qwenkit.turn import PreparedTurn, TurnDecoder

Messages = Sequence[Mapping[str, Any]]


class Model:
    """A Qwen model on an engine. Use `chat` (or `chat(..., stream=True)`)."""

    def __init__(self, engine: Engine, template: ChatTemplate, *, name: str, architecture: str | None) -> None:
        self.engine = engine
        self.template = template
        self.name = name
        self.architecture = architecture
        ids = engine.tokenize("<think></think>", special=True)
        self._think_ids = (ids[0], ids[1]) if len(ids) == 2 else None  # single tokens in Qwen3 only
        self._closing = engine.tokenize(closing_text(), special=True)
        self.effort_budgets: dict[str, int | None] = dict(EFFORT_BUDGETS)
        self.media = LOCAL_POLICY  # where images may come from (the server sets its own per request)

    def prepare(
        self,
        messages: Messages | str,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        think: bool | None = None,
        max_tokens: int = 1024,
        thinking_budget: int | None = None,
        reasoning_effort: str | None = None,
        adapters: Adapters = (),
        media: MediaPolicy | None = None,
        add_vision_id: bool = False,
        **sampling: Any,
    ) -> PreparedTurn:
        """Render, tokenize and pick sampling settings (Qwen's defaults for what is unset).

        `thinking_budget` caps reasoning tokens; `reasoning_effort` ("none", "low", "medium",
        "high") maps to thinking off or to a budget (see `chat.budget.EFFORT_BUDGETS`).
        `adapters`: LoRA adapters loaded on the engine, as (name, scale) pairs.
        Images (content parts; see `chat.messages`) are loaded under `media` (default
        `self.media`); `add_vision_id` writes "Picture N: " before each (Qwen-VL templates).
        """
        effort_think, thinking_budget = resolve_budget(thinking_budget, reasoning_effort, self.effort_budgets)
        if effort_think is not None and think is not False:
            think = effort_think
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if not messages:
            raise BadRequest("the conversation has no messages")
        messages = normalize_messages(messages)
        images = self._images(messages, media or self.media)
        # the randomized media marker, where this model takes images and its template renders them
        marker = new_marker() if self.engine.vision() and self.template.takes_images else None
        extra: dict[str, Any] = {"media_marker": marker, "add_vision_id": add_vision_id} if marker else {}
        chat = build_prompt(self.template, messages, tools=tools or None, enable_thinking=think, **extra)
        if chat.thinking and self._think_ids and not room_to_think(max_tokens, len(self._closing)):
            # too few tokens to think, close thinking and still answer: answer directly
            chat = build_prompt(self.template, messages, tools=tools or None, enable_thinking=False, **extra)
        if marker is None:
            prompt = self.engine.tokenize(chat.text, special=True)
        else:
            prompt = tokenize_with_images(chat.text, marker, len(images), self.engine.tokenize)
        return PreparedTurn(
            prompt=prompt,
            params=self._params(max_tokens, sampling, thinking=chat.thinking),
            thinking=chat.thinking,
            starts_in_thinking=chat.starts_in_thinking,
            tool_format=tool_format(self.template) if tools else None,
            tools=tools or None,
            thinking_budget=thinking_budget,
            adapters=tuple((str(name), float(scale)) for name, scale in adapters),
            images=images,
        )

    def _images(self, messages: list[dict[str, Any]], policy: MediaPolicy) -> tuple[ImageInput, ...]:
        """The conversation's images, loaded and validated; their parts keep no source."""
        sources = image_sources(messages)
        if not sources:
            return ()
        if not self.engine.vision():
            raise BadRequest(f"model {self.name} takes text only; it does not accept images")
        policy.check_count(len(sources))
        images = tuple(load_image(source, policy) for source in sources)
        for message in messages:
            if isinstance(message["content"], list):
                message["content"] = [{"type": "image"} if p["type"] == "image" else p for p in message["content"]]
        return images

    def prepare_completion(
        self, text: str | Sequence[int], *, max_tokens: int = 16, adapters: Adapters = (), **sampling: Any
    ) -> PreparedTurn:
        """A raw prompt (no chat template), text or token ids, for plain completions."""
        if not text:
            raise BadRequest("the prompt is empty")
        return PreparedTurn(
            prompt=self.engine.tokenize(text, special=True) if isinstance(text, str) else list(text),
            params=self._params(max_tokens, sampling, thinking=False),
            thinking=False,
            starts_in_thinking=False,
            tool_format=None,
            tools=None,
            raw=True,
            adapters=tuple((str(name), float(scale)) for name, scale in adapters),
        )

    def _params(self, max_tokens: int, sampling: Mapping[str, Any], *, thinking: bool) -> SamplingParams:
        values = sampling_defaults(sampling, thinking=thinking, architecture=self.architecture)
        for key in ("stop", "stop_token_ids"):
            value = values.get(key) or ()
            # one stop string (as the OpenAI API allows), not a tuple of its characters
            values[key] = (value,) if isinstance(value, (str, int)) else tuple(value)
        if isinstance(values.get("logit_bias"), Mapping):
            values["logit_bias"] = tuple((int(k), float(v)) for k, v in values["logit_bias"].items())
        try:
            return SamplingParams(max_tokens=max_tokens, **values)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None

    def decoder(self, turn: PreparedTurn) -> TurnDecoder:
        return TurnDecoder(self.name, turn, self._think_ids)

    def controller(self, turn: PreparedTurn) -> ThinkingBudget | None:
        """A fresh per-request thinking budget when the turn thinks (Qwen3 vocabularies only)."""
        if not turn.thinking or self._think_ids is None:
            return None
        return ThinkingBudget(
            budget=turn.thinking_budget,
            max_tokens=turn.params.max_tokens,
            closing=self._closing,
            think_open=self._think_ids[0],
            think_close=self._think_ids[1],
            starts_in_thinking=turn.starts_in_thinking,
            token_text=lambda t: self.engine.detokenize([t]),
        )

    def chat(self, messages: Messages | str, *, stream: bool = False, config: Any = None, **options: Any):
        """One assistant turn: a `ChatResult`, or with `stream=True` an iterator of `ChatDelta`
        whose last item carries `finish_reason` and the whole `result`. `config`: a
        `GenerationConfig` (or dict) of settings, which keyword `options` override."""
        deltas = self._stream(self.prepare(messages, **merge_options(config, options)))
        if stream:
            return deltas
        for delta in deltas:
            if delta.result is not None:
                return delta.result
        raise RuntimeError("the engine ended without a final chunk")  # engines always send one

    def _stream(self, turn: PreparedTurn) -> Iterator[ChatDelta]:
        decoder = self.decoder(turn)
        for chunk in self.engine.generate(
            turn.prompt, turn.params, self.controller(turn), turn.adapters, images=turn.images
        ):
            yield decoder.feed(chunk)

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- streaming, async and batched turns (for services and notebooks) -------------

    def stream(self, messages: Messages | str, *, config: Any = None, **options: Any) -> Iterator[ChatDelta]:
        """`ChatDelta`s as they are produced (the last carries `result`); closing the iterator
        cancels the request."""
        return self.chat(messages, stream=True, config=config, **options)

    def astream(self, messages: Messages | str, *, config: Any = None, **options: Any) -> AsyncTurn:
        """`async for delta in model.astream(...)`: the engine works on its own thread, the event
        loop only receives deltas. Leaving the loop early (or `aclose()`) cancels the request."""
        return AsyncTurn(self, self.prepare(messages, **merge_options(config, options)))

    async def achat(self, messages: Messages | str, *, config: Any = None, **options: Any) -> ChatResult:
        """`await model.achat(...)`: one turn without blocking the event loop; cancelling the
        awaiting task cancels the request."""
        async with self.astream(messages, config=config, **options) as deltas:
            return await collect(deltas)

    def batch(self, conversations: Sequence[Messages | str], *, config: Any = None, **options: Any) -> list[ChatResult]:
        """One turn for each conversation, submitted together so the engine decodes them as a
        batch (up to its `n_parallel`; the rest queue). Results come back in order."""
        merged = merge_options(config, options)
        return run_batch(self, [self.prepare(c, **merged) for c in conversations])

    async def abatch(
        self, conversations: Sequence[Messages | str], *, config: Any = None, **options: Any
    ) -> list[ChatResult]:
        """`batch` for async code: the turns run concurrently, the event loop stays free."""
        return list(await asyncio.gather(*(self.achat(c, config=config, **options) for c in conversations)))
