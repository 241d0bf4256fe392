"""`LlamaCppEngine`: the engine protocol on llama.cpp (GGUF, CPU first)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qwenkit.engines.base import EngineStats, Request
from qwenkit.engines.common import EngineBase
from qwenkit.engines.llamacpp.model import LlamaModel, default_threads
from qwenkit.engines.llamacpp.scheduler import Scheduler
from qwenkit.engines.llamacpp.vision import VisionTower
from qwenkit.engines.speculation import DEFAULT_DRAFT_MAX, Speculation
from qwenkit.errors import QwenkitError

DEFAULT_CTX = 8192


@dataclass(frozen=True)
class LlamaCppSettings:
    """How to run a GGUF: context per sequence, parallel sequences, threads, batch size."""

    n_ctx: int | None = None  # per sequence; None: min(DEFAULT_CTX, the model's training context)
    n_parallel: int = 1
    n_threads: int | None = None  # None: every core this process may use
    n_batch: int = 512
    n_gpu_layers: int = 0
    max_waiting: int = 64
    mmproj: Path | None = None  # a Qwen-VL model's vision projector GGUF: the engine then takes images
    image_max_tokens: int | None = None  # LLM tokens per image at most (None: the projector's default)
    image_cache: int = 16  # encoded images kept, by sha256
    speculative: Speculation = "ngram"  # the default for requests; each may turn it on or off
    draft_max: int = DEFAULT_DRAFT_MAX  # drafted tokens per sequence and step at most (0: never speculate)
    # Models with recurrent layers (Qwen3.5, Qwen3-Next) keep context checkpoints per slot, at
    # most `ctx_checkpoints`, one before each prompt's end and one after each `turn_start`
    # (a chat template's assistant-turn opening, e.g. "<|im_start|>assistant\n") in a prompt.
    turn_start: str | None = None
    ctx_checkpoints: int = 8


class LlamaCppEngine(EngineBase):
    name = "llamacpp"

    def __init__(self, path: str | Path, settings: LlamaCppSettings | None = None) -> None:
        s = settings or LlamaCppSettings()
        self.settings = s
        self.model = LlamaModel(path, n_gpu_layers=s.n_gpu_layers)
        self.n_ctx = min(s.n_ctx or DEFAULT_CTX, self.model.n_ctx_train or DEFAULT_CTX)
        self.vision_tower: VisionTower | None = None
        try:
            threads = s.n_threads or default_threads()
            if s.mmproj is not None:
                self.vision_tower = VisionTower(
                    self.model,
                    s.mmproj,
                    n_threads=threads,
                    use_gpu=s.n_gpu_layers > 0,
                    image_max_tokens=s.image_max_tokens,
                    max_cached=s.image_cache,
                )
            self.scheduler = Scheduler(
                self.model,
                n_ctx=self.n_ctx,
                n_parallel=s.n_parallel,
                n_batch=s.n_batch,
                n_threads=threads,
                max_waiting=s.max_waiting,
                vision=self.vision_tower,
                speculative=s.speculative == "ngram",
                draft_max=s.draft_max,
                turn_start=tuple(self.model.tokenize(s.turn_start, special=True)) if s.turn_start else (),
                max_checkpoints=s.ctx_checkpoints,
            )
        except BaseException:
            if self.vision_tower is not None:
                self.vision_tower.close()
            self.model.close()
            raise

    @property
    def n_vocab(self) -> int:
        return int(self.model.n_vocab)

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return self.model.tokenize(text, special=special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.model.detokenize(ids)

    def token_bytes(self, token: int) -> bytes:
        return self.model.piece(token, special=True)

    def chat_template(self) -> str | None:
        return self.model.chat_template()

    def architecture(self) -> str | None:
        return self.model.meta("general.architecture")

    def eos_token_ids(self) -> set[int]:
        return set(self.scheduler.eog_ids)

    def vision(self) -> bool:
        return self.vision_tower is not None

    def _enqueue(self, request: Request) -> Request:
        return self.scheduler.submit(request)

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load a GGUF LoRA for this model; requests name it in `adapters`. The file is read on the
        scheduler's thread, between decode steps, so a load while serving never races a decode."""
        if name in self.scheduler.adapter_names():
            raise QwenkitError(f"a LoRA adapter named {name!r} is already loaded")
        self.scheduler.add_adapter(name, self.scheduler.call(lambda: self.model.load_adapter(path)))

    def adapter_names(self) -> list[str]:
        return self.scheduler.adapter_names()

    def stats(self) -> EngineStats:
        return self.scheduler.stats()

    def close(self) -> None:
        if self.model.ptr:
            self.scheduler.close()
            if self.vision_tower is not None:
                self.vision_tower.close()
            self.model.close()
