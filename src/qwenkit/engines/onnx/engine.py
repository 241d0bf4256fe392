"""`OnnxEngine`: the engine protocol on ONNX Runtime GenAI (`onnxruntime_genai`), on the CPU.

A model directory is what `qwenkit export onnx` (the GenAI model builder) writes:
`genai_config.json`, `model.onnx(.data)`, `tokenizer.json` and the chat template. qwenkit
tokenizes with the directory's `tokenizer.json` itself (`engines.hf_vocab`), renders its own
chat template, and drives the runtime one token at a time:

    generator.append_tokens(prompt)                 # prefill
    loop: [get_logits -> edit -> set_logits]        # only for what the runtime cannot sample
          generate_next_token(); get_next_tokens()  # the runtime's search: greedy, or top-k/p
          RequestOutput.on_token(...)               # end ids, stop strings, max_tokens
          rewind_to(n - 1); append_tokens([token, *forced])  # a StepController's tokens

Batching: one stream. Requests are decoded one at a time, in arrival order; the others wait in
a bounded queue (`max_waiting`). The `n` choices of a request are decoded one after the other,
each on a generator of its own (so each prefills the prompt again). The CPU runtime batches only
static batches (rows prefilled and advanced together, none joining or leaving), which neither
forced tokens per request nor requests arriving at different times fit, and its
continuous-batching `Engine` needs a paged-attention model that the builder makes only for
CUDA. `max_length` is always set to the request's prompt plus `max_tokens` (capped at the
context): the runtime sizes the KV buffer by it. Cancellation is honoured between tokens.

Logprobs come from the logits row the loop reads anyway (`get_logits`), prompt logprobs from the
prefill's logits of every position (`get_output("logits")`), once per request.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime_genai as og

from qwenkit.engines.base import Chunk, EngineStats, QueueFull, Request, RequestHandle, TokenLogprob, check_request
from qwenkit.engines.common import StepLoop, VocabEngine
from qwenkit.engines.hf_vocab import Vocab, directory_chat_template
from qwenkit.engines.logprobs import logprob_of
from qwenkit.engines.onnx.grammar import gbnf_to_lark
from qwenkit.engines.onnx.sampling import (
    LogitEdits,
    check_params,
    prompt_logprobs,
    runtime_repetition,
    search_options,
)
from qwenkit.engines.output import RequestOutput
from qwenkit.errors import ModelLoadError, QwenkitError

log = logging.getLogger("qwenkit.onnx")

DEFAULT_CTX = 8192


@dataclass(frozen=True)
class OnnxSettings:
    """How to load an ONNX model: context size (capped at the model's), threads, queue bound."""

    n_ctx: int | None = None
    n_threads: int | None = None
    max_waiting: int = 64


def is_onnx_dir(path: Path) -> bool:
    """True for a directory ONNX Runtime GenAI can load (it has genai_config.json)."""
    return path.is_dir() and (path / "genai_config.json").is_file()


class OnnxEngine(VocabEngine):
    """Loads an ONNX Runtime GenAI model directory and decodes one request at a time."""

    name = "onnx"

    def __init__(self, path: str | Path, settings: OnnxSettings | None = None) -> None:
        s = settings or OnnxSettings()
        self.settings = s
        self.path = Path(path)
        if not is_onnx_dir(self.path):
            raise ModelLoadError(
                f"{self.path} is not an ONNX Runtime GenAI model directory (no genai_config.json); "
                "make one with `qwenkit export onnx`"
            )
        self.genai = json.loads((self.path / "genai_config.json").read_text(encoding="utf-8"))["model"]
        config = og.Config(str(self.path))
        config.clear_providers()  # the CPU
        if s.n_threads:
            options = {"intra_op_num_threads": s.n_threads, "inter_op_num_threads": 1}
            config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        try:
            self.model = og.Model(config)
        except Exception as exc:  # the runtime raises bare RuntimeErrors
            raise ModelLoadError(f"ONNX Runtime GenAI cannot load {self.path}: {exc}") from None
        trained = int(self.genai.get("context_length") or DEFAULT_CTX)
        self.n_ctx = min(s.n_ctx or DEFAULT_CTX, trained)
        self.n_vocab = int(self.genai["vocab_size"])
        self.vocab = Vocab(None, self.n_vocab, self.path / "tokenizer.json")
        eos = self.genai.get("eos_token_id")
        self._eos = {int(t) for t in (eos if isinstance(eos, list) else [eos] if eos is not None else [])}
        self._worker = _Worker(self)

    def chat_template(self) -> str | None:
        return directory_chat_template(self.path)

    def architecture(self) -> str | None:
        kind = self.genai.get("type")
        return str(kind) if kind else None

    def vision(self) -> bool:
        return False

    def _enqueue(self, request: Request) -> RequestHandle:
        """Its `n` choices are decoded one after the other. No LoRA adapters: naming one is a BadRequest."""
        return self._worker.submit(request)

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Refused: this engine runs no LoRA adapters (merge one first: `qwenkit export merged`)."""
        raise QwenkitError(
            f"the ONNX engine cannot load the LoRA adapter {name!r}; use --engine llamacpp or transformers"
        )

    def adapter_names(self) -> list[str]:
        return []

    def stats(self) -> EngineStats:
        return self._worker.stats()

    def close(self) -> None:
        self._worker.close()


class _Worker(StepLoop):
    """The engine's thread: takes requests in arrival order and decodes each to its end."""

    def __init__(self, engine: OnnxEngine) -> None:
        super().__init__()  # no prefix cache: `_prefix_hit_tokens` stays 0
        self.engine = engine
        self._running: Request | None = None
        self._used = 0  # context positions the running request fills
        self._start_thread("qwenkit-onnx")

    def submit(self, request: Request) -> Request:
        check_request(request, n_ctx=self.engine.n_ctx, n_vocab=self.engine.n_vocab)
        check_params(request.params)
        with self._cv:
            if self._closed:
                raise QwenkitError("the engine is closed")
            if len(self._waiting) >= self.max_waiting and self._running is not None:
                raise QueueFull(f"server busy: {len(self._waiting)} requests already waiting")
            self._waiting.append(request)
            self._cv.notify()
        return request

    @property
    def max_waiting(self) -> int:
        return self.engine.settings.max_waiting

    def _occupancy(self) -> tuple[int, int, int]:
        return int(self._running is not None), self._used, self.engine.n_ctx

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._closed and not self._waiting:
                    self._cv.wait()
                if self._closed:
                    break
                request = self._running = self._waiting.popleft()
                self._prompt_tokens += len(request.prompt)
            scored: list[TokenLogprob | None] | None = None  # the prompt's logprobs, for every choice
            choices = request.choices()
            for choice in choices:
                out = self._output(choice, last=choice is choices[-1])
                out.prompt_logprobs = scored
                try:
                    if choice.cancelled:
                        out.finish("abort")
                    elif self._closed:
                        out.finish("abort", error="the engine is shutting down")
                    else:
                        scored = self._decode(choice, out)
                except Exception as exc:  # a failed request must not kill the thread
                    log.exception("onnx generation failed")
                    out.finish("abort", error=f"generation failed: {exc}")
        with self._cv:
            waiting, self._waiting = list(self._waiting), deque()
        for request in waiting:
            request.emit(Chunk("", finish_reason="abort", error="the engine is shutting down"))

    def _output(self, request: Request, *, last: bool) -> RequestOutput:
        def release() -> None:
            with self._cv:
                if last:  # the request's last choice: the stream is free
                    self._running = None
                self._used = 0

        return RequestOutput(
            request.emit,
            request.params,
            request.controller,
            piece=self.engine.vocab.piece,
            end_ids=self.engine.eos_token_ids(),
            n_ctx=self.engine.n_ctx,
            on_finish=release,
        )

    def _decode(self, request: Request, out: RequestOutput) -> list[TokenLogprob | None] | None:
        """Run one choice to its end on a generator of its own; returns the prompt's logprobs
        (taken from this prefill unless `out` already holds them), None when not asked for."""
        params = request.params
        max_length = min(self.engine.n_ctx, len(request.prompt) + params.max_tokens + 1)
        generator_params = og.GeneratorParams(self.engine.model)
        generator_params.set_search_options(**search_options(params, max_length))
        if params.grammar:
            generator_params.set_guidance("lark_grammar", gbnf_to_lark(params.grammar))
        generator = og.Generator(self.engine.model, generator_params)
        edits = LogitEdits(params)
        generator.append_tokens(np.asarray(request.prompt, dtype=np.int32))
        if params.prompt_logprobs is not None and out.prompt_logprobs is None:
            rows = np.asarray(generator.get_output("logits"), dtype=np.float32)
            out.prompt_logprobs = prompt_logprobs(
                request.prompt, rows.reshape(-1, rows.shape[-1]), params.prompt_logprobs
            )
            del rows
        scored = out.prompt_logprobs
        top = params.logprobs
        used = len(request.prompt)
        while not out.finished:
            if request.cancelled or self._closed:
                out.finish("abort", error=None if request.cancelled else "the engine is shutting down")
                return scored
            scores: np.ndarray | None = None  # the row logprobs are taken from
            if edits.active or top is not None:
                logits = np.array(generator.get_logits(), dtype=np.float32).reshape(-1)
                edits.adjust(logits, out.generated)
                if top is not None:
                    scores = logits.copy() if edits.min_p > 0 else logits
                    if params.grammar:  # the runtime penalizes repeats itself, after this row
                        scores = runtime_repetition(
                            scores, [*request.prompt, *out.generated], params.repetition_penalty
                        )
                if edits.active:
                    generator.set_logits(edits.filter(logits)[None, None, :])
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            self._used = used
            logprob = None if scores is None or top is None else logprob_of(scores, token, top)
            feed = out.on_token(token, used, logprob)
            used += 1
            if len(feed) > 1:  # forced tokens follow the sampled one
                # appended after `generate_next_token`, they would leave the sampled token out of
                # the KV cache (0.18): take it back and append it with them
                generator.rewind_to(generator.token_count() - 1)
                generator.append_tokens(np.asarray(feed, dtype=np.int32))
                used += len(feed) - 1
        return scored
