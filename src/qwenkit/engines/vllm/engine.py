"""`VllmEngine`: the engine protocol on vLLM's v1 `AsyncLLM`.

qwenkit renders and tokenizes (the checkpoint's `tokenizer.json`, `engines.hf_vocab`) and hands
vLLM token ids (`tokens_input`). `AsyncLLM` is asyncio-only while the protocol's `submit`/`emit`
are thread-based: one daemon thread runs an asyncio loop that owns the `AsyncLLM`; `submit`
schedules a task per choice on it and `cancel` cancels those tasks, which aborts their vLLM
requests (vLLM's `generate` aborts on `CancelledError`/`GeneratorExit`).

Each token of each delta goes through `engines.output.RequestOutput` (end ids, stop strings,
whole characters, `max_tokens`, the step controller), so requests end as on the other engines.
A `ThinkingLimit` controller (the chat layer's thinking budget) is enforced natively by vLLM
(`thinking_token_budget`, with the stop phrase as the forced end string) when the engine was
given `ReasoningMarkers` that the vocabulary has and the prompt itself opens reasoning; any other
controller (and that one where the model is to open reasoning itself) is emulated per delta:
when it forces tokens, the running vLLM request is aborted and a new one continues from prompt +
generated + forced (vLLM's prefix cache keeps that re-prefill cheap).

`n` choices are separate vLLM requests of one prompt (the prefix cache computes its prefill
once). LoRA: peft adapter directories, one per request at scale 1 (`LoRARequest`), when started
with `max_loras > 0`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from vllm import AsyncEngineArgs
from vllm.config.reasoning import ReasoningConfig
from vllm.inputs.engine import tokens_input
from vllm.lora.request import LoRARequest
from vllm.v1.engine.async_llm import AsyncLLM

from qwenkit.engines.base import (
    Adapters,
    EngineStats,
    FinishReason,
    Request,
    RequestHandle,
    SamplingParams,
    ThinkingLimit,
    TokenLogprob,
    check_request,
)
from qwenkit.engines.common import VocabEngine
from qwenkit.engines.hf_vocab import Vocab, directory_chat_template
from qwenkit.engines.output import RequestOutput
from qwenkit.engines.vllm.params import prompt_logprobs, to_vllm, token_logprob
from qwenkit.engines.vllm.settings import VllmSettings
from qwenkit.errors import BadRequest, ModelLoadError, QwenkitError

log = logging.getLogger("qwenkit.vllm")

DEFAULT_CTX = 8192
T = TypeVar("T")


class VllmEngine(VocabEngine):
    """Loads a Hugging Face checkpoint directory into vLLM and streams its requests."""

    name = "vllm"

    def __init__(self, path: str | Path, settings: VllmSettings | None = None) -> None:
        s = settings or VllmSettings()
        self.settings = s
        self.path = Path(path)
        config_file = self.path / "config.json"
        if not config_file.is_file():
            raise ModelLoadError(
                f"{self.path} is not a checkpoint directory (no config.json); the vLLM engine loads "
                "Hugging Face checkpoints (`qwenkit.load` and --engine vllm convert a GGUF to one first)"
            )
        self.config: dict[str, Any] = json.loads(config_file.read_text(encoding="utf-8"))
        text_config = self.config.get("text_config") or self.config
        trained = int(text_config.get("max_position_embeddings") or DEFAULT_CTX)
        self.n_ctx = min(s.n_ctx or DEFAULT_CTX, trained)
        self._n_vocab = int(text_config["vocab_size"])
        self.vocab = Vocab(None, self._n_vocab, self.path / "tokenizer.json")
        self._eos = self._end_of_generation_ids()
        self._think_ids = self._reasoning_ids()
        self._adapters: dict[str, LoRARequest] = {}
        self._lora_ids = itertools.count(1)
        self._lock = threading.Lock()
        self._running = 0
        self._prompt_tokens = 0
        self._cached_tokens = 0
        self._closed = False
        self._tasks: dict[asyncio.Task[None], Request] = {}  # the loop thread's only
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="qwenkit-vllm", daemon=True)
        self._thread.start()
        try:
            self.llm: AsyncLLM = self._call(self._start())
        except Exception as exc:
            self._stop_loop()
            raise ModelLoadError(f"vLLM cannot load {self.path}: {exc}") from None

    # ----- metadata ------------------------------------------------------------------------

    def _end_of_generation_ids(self) -> set[int]:
        ids: set[int] = set()
        for file in ("config.json", "generation_config.json"):
            if (self.path / file).is_file():
                value = json.loads((self.path / file).read_text(encoding="utf-8")).get("eos_token_id")
                ids.update(value if isinstance(value, list) else [value] if isinstance(value, int) else [])
        return ids

    def _reasoning_ids(self) -> tuple[int, int] | None:
        """The reasoning markers' token ids, if the vocabulary has each as a single token."""
        markers = self.settings.reasoning
        if markers is None:
            return None
        start, end = (self.vocab.tokenize(m) for m in (markers.start, markers.end))
        return (start[0], end[0]) if len(start) == 1 and len(end) == 1 else None

    def _reasoning_config(self) -> ReasoningConfig | None:
        """vLLM's reasoning config for the markers (None without them)."""
        markers = self.settings.reasoning
        if markers is None or self._think_ids is None:
            return None
        return ReasoningConfig(
            reasoning_parser=markers.parser, reasoning_start_str=markers.start, reasoning_end_str=markers.forced_end
        )

    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    def chat_template(self) -> str | None:
        return directory_chat_template(self.path)

    def architecture(self) -> str | None:
        kind = self.config.get("model_type")
        return str(kind) if kind else None

    # ----- the loop thread -------------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the engine's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _start(self) -> AsyncLLM:
        args = self.settings.engine_args(str(self.path), self.n_ctx)
        reasoning = self._reasoning_config()
        if reasoning is not None:
            args.update(reasoning_parser=reasoning.reasoning_parser, reasoning_config=reasoning)
        llm: AsyncLLM = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
        return llm

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)

    # ----- requests --------------------------------------------------------------------------

    def _enqueue(self, request: Request) -> RequestHandle:
        """Chunks go to `emit` on the engine's loop thread; `cancel` aborts the request's vLLM
        requests. Text only: a request with images is refused."""
        check_request(request, n_ctx=self.n_ctx, n_vocab=self.n_vocab, adapters=self._adapters)
        if request.n > self.settings.n_parallel:
            raise QwenkitError(
                f"n={request.n} needs as many parallel sequences; this engine runs {self.settings.n_parallel}"
            )
        lora = self._lora(request.adapters)
        # checked and scheduled under the lock close() sets `_closed` under: a request scheduled
        # here is on the loop before close() schedules its shutdown, which then ends it with a
        # final chunk; the loop never stops with a request that will not run
        with self._lock:
            if self._closed:
                raise QwenkitError("the engine is closed")
            self._prompt_tokens += len(request.prompt)
            for choice in request.choices():
                asyncio.run_coroutine_threadsafe(self._run(choice, lora), self._loop)
        return _Handle(self, request)

    def _cancel_cancelled(self) -> None:
        """On the loop: cancel the tasks of cancelled requests (vLLM aborts their requests)."""
        for task, request in self._tasks.items():
            if request.cancelled:
                task.cancel()

    def _lora(self, adapters: Adapters) -> LoRARequest | None:
        if not adapters:
            return None
        if len(adapters) > 1 or adapters[0][1] != 1.0:
            raise BadRequest("the vLLM engine applies one LoRA adapter per request, at scale 1")
        return self._adapters[adapters[0][0]]

    async def _run(self, request: Request, lora: LoRARequest | None) -> None:
        out = RequestOutput(
            request.emit,
            request.params,
            request.controller,
            piece=self.vocab.piece,
            end_ids=self._eos,
            n_ctx=self.n_ctx,
        )
        task = asyncio.current_task()
        assert task is not None
        self._tasks[task] = request
        with self._lock:
            self._running += 1
        try:
            if not request.cancelled:
                await self._decode(request, out, lora)
            out.finish("abort")  # cancelled before it started (a no-op once finished)
        except asyncio.CancelledError:
            out.finish("abort", error="the engine is shutting down" if self._closed else None)
        except Exception as exc:  # a failed request must not take the loop down
            log.exception("vLLM generation failed")
            out.finish("abort", error=f"generation failed: {exc}")
        finally:
            del self._tasks[task]
            with self._lock:
                self._running -= 1

    async def _decode(self, request: Request, out: RequestOutput, lora: LoRARequest | None) -> None:
        """Stream vLLM's tokens into `out` until it finishes; a forced token restarts the vLLM
        request from everything generated so far."""
        params = request.params
        controller = request.controller
        budget = None
        if isinstance(controller, ThinkingLimit) and self.opens_reasoning(request.prompt):
            budget = controller.reasoning_token_limit
            out.controller = None  # vLLM forces the closing itself
        first = True
        while not out.finished:
            prompt = request.prompt + out.generated
            sampling = to_vllm(
                params if first else _without_prompt_logprobs(params),
                max_tokens=params.max_tokens - len(out.generated),
                thinking_budget=budget,
            )
            stream = self.llm.generate(
                tokens_input(prompt),
                sampling,
                _request_id(),
                lora_request=lora,
                # a grammar constrains the whole output, as on the other engines (with a reasoning
                # parser, vLLM would otherwise wait for `</think>` before applying it)
                reasoning_ended=True if params.grammar else None,
            )
            try:
                restart = await self._consume(stream, request, out, len(prompt), first)
            finally:
                await stream.aclose()  # aborts the vLLM request if it is still running
            first = False
            if not restart and not out.finished:
                out.finish("abort", error="vLLM ended the request without a finish reason")

    def opens_reasoning(self, prompt: Sequence[int]) -> bool:
        """Whether `prompt` leaves reasoning open (its last start marker follows its last end
        marker): then vLLM counts the budget from the prompt, as qwenkit does. Where the model is
        to open reasoning itself (Qwen3's hybrid templates), vLLM would count only once it does,
        and not at all if it never does: the controller is emulated there."""
        if self._think_ids is None:
            return False
        start, end = self._think_ids
        last = {token: i for i, token in enumerate(prompt) if token in (start, end)}
        return last.get(start, -1) > last.get(end, -1)

    async def _consume(self, stream: Any, request: Request, out: RequestOutput, used: int, first: bool) -> bool:
        """Feed one vLLM request's deltas to `out`; True when forced tokens need a new request."""
        top = request.params.logprobs
        counted = not first  # prefix-cache hits: the request's own prompt, counted once
        async for result in stream:
            if not counted and result.num_cached_tokens is not None:
                counted = True
                out.cached_prompt_tokens = int(result.num_cached_tokens)
                with self._lock:
                    self._cached_tokens += out.cached_prompt_tokens
            if result.prompt_logprobs is not None and request.params.prompt_logprobs is not None:
                out.prompt_logprobs = prompt_logprobs(
                    request.prompt, result.prompt_logprobs, request.params.prompt_logprobs
                )
            completion = result.outputs[0]
            rows = completion.logprobs or []
            for i, token in enumerate(completion.token_ids):
                logprob: TokenLogprob | None = token_logprob(rows[i] if i < len(rows) else None, token, top)
                feed = out.on_token(int(token), used, logprob)
                used += 1
                if out.finished:
                    return False
                if len(feed) > 1:
                    return True
            if result.finished:
                out.finish(_finish_reason(completion.finish_reason))
                return False
        return False

    def vision(self) -> bool:
        """Images are not wired to vLLM's multimodal inputs yet."""
        return False

    # ----- adapters, stats, lifecycle --------------------------------------------------------

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Register a peft LoRA adapter directory (vLLM loads it on first use)."""
        if not self.settings.max_loras:
            raise QwenkitError("this vLLM engine was started without LoRA support (max_loras = 0)")
        if not (Path(path) / "adapter_config.json").is_file():
            raise QwenkitError(f"{path} is not a peft LoRA adapter directory (no adapter_config.json)")
        self._adapters[name] = LoRARequest(name, next(self._lora_ids), str(path))

    def adapter_names(self) -> list[str]:
        return list(self._adapters)

    def stats(self) -> EngineStats:
        with self._lock:
            return EngineStats(
                running=self._running,
                waiting=0,  # vLLM's scheduler queues internally
                prefix_hit_tokens=self._cached_tokens,
                prompt_tokens=self._prompt_tokens,
            )

    def close(self) -> None:
        with self._lock:  # see _enqueue
            if self._closed:
                return
            self._closed = True
        self._call(self._shutdown())
        self._stop_loop()

    async def _shutdown(self) -> None:
        """On the loop: end running requests (abort chunks), then stop vLLM's engine process."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.llm.shutdown()
        del self.llm  # now, not at interpreter exit (AsyncLLM.__del__ shuts down again, half torn down)


class _Handle:
    """Cancels a request's choices: each task's cancellation aborts its vLLM request."""

    def __init__(self, engine: VllmEngine, request: Request) -> None:
        self.engine = engine
        self.request = request

    def cancel(self) -> None:
        self.request.cancel()
        if not self.engine._closed:
            self.engine._loop.call_soon_threadsafe(self.engine._cancel_cancelled)


_ids = itertools.count()


def _request_id() -> str:
    return f"qwenkit-{next(_ids)}"


def _finish_reason(reason: str | None) -> FinishReason:
    return "length" if reason == "length" else "stop" if reason == "stop" else "abort"


def _without_prompt_logprobs(params: SamplingParams) -> SamplingParams:
    return replace(params, prompt_logprobs=None)
