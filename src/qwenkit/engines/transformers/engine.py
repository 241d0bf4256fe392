"""`TransformersEngine`: the engine protocol on Hugging Face transformers (`AutoModelForCausalLM`)."""

from __future__ import annotations

from pathlib import Path

import torch

from qwenkit.engines.base import EngineStats, Request
from qwenkit.engines.common import VocabEngine
from qwenkit.engines.hf_vocab import Vocab
from qwenkit.engines.transformers.convert import convert_gguf
from qwenkit.engines.transformers.loading import (
    TransformersSettings,
    is_vision,
    load_checkpoint,
    load_image_processor,
)
from qwenkit.engines.transformers.vision import ImagePreprocessor
from qwenkit.engines.transformers.worker import Worker
from qwenkit.errors import ModelLoadError, QwenkitError

DEFAULT_CTX = 8192


class TransformersEngine(VocabEngine):
    """Loads a checkpoint directory, or a GGUF file (converted once, dequantized, and cached)."""

    name = "transformers"

    def __init__(self, path: str | Path, settings: TransformersSettings | None = None) -> None:
        s = settings or TransformersSettings()
        self.settings = s
        path = Path(path)
        if path.is_file():
            self.source = path
            path = convert_gguf(path)
        elif not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is neither a GGUF file nor a checkpoint directory with config.json")
        else:
            self.source = path
        self.path = path
        self.model, self.tokenizer = load_checkpoint(path, s)
        config = self.model.config.get_text_config()
        trained = getattr(config, "max_position_embeddings", None) or DEFAULT_CTX
        self.n_ctx = min(s.n_ctx or DEFAULT_CTX, trained)
        self.vocab = Vocab(self.tokenizer, int(config.vocab_size), path / "tokenizer.json")
        self._eos = self._end_of_generation_ids()
        self.images: ImagePreprocessor | None = None
        if is_vision(path):
            self.images = ImagePreprocessor(
                load_image_processor(path), self._single_token("<|image_pad|>"), s.image_max_tokens
            )
        self.worker: Worker | None = Worker(
            self.model,
            self.vocab,
            n_ctx=self.n_ctx,
            max_batch=s.n_parallel,
            max_waiting=s.max_waiting,
            eos_ids=self._eos,
            n_threads=s.n_threads,
            vision=self.images,
            prefix_cache_tokens=2 * self.n_ctx if s.prefix_cache_tokens is None else s.prefix_cache_tokens,
            speculative=s.speculative == "ngram",
            draft_max=s.draft_max,
        )
        self._n_vocab = self.worker.n_vocab  # kept past close(), like the other metadata

    def _end_of_generation_ids(self) -> set[int]:
        ids: set[int] = set()
        for value in (
            getattr(self.model.generation_config, "eos_token_id", None),
            getattr(self.model.config, "eos_token_id", None),
            self.tokenizer.eos_token_id,
        ):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids

    def _single_token(self, text: str) -> int:
        ids = self.vocab.tokenize(text, special=True)
        if len(ids) != 1:
            raise ModelLoadError(f"{self.path}: a vision model whose vocabulary has no {text} token")
        return ids[0]

    def _running(self) -> Worker:
        if self.worker is None:
            raise QwenkitError("the engine is closed")
        return self.worker

    @property
    def device(self) -> torch.device:
        return self._running().device

    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    def chat_template(self) -> str | None:
        return self.vocab.chat_template()

    def architecture(self) -> str | None:
        return getattr(self.model.config, "model_type", None)

    def vision(self) -> bool:
        """True for a Qwen2.5-VL checkpoint (images through its processor and vision tower)."""
        return self.images is not None

    def _enqueue(self, request: Request) -> Request:
        return self._running().submit(request)

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load a peft LoRA adapter directory (before serving); requests name it in `adapters`."""
        self._running().add_adapter(name, Path(path))

    def adapter_names(self) -> list[str]:
        return list(self._running().adapter_names)

    def stats(self) -> EngineStats:
        return self._running().stats()

    def close(self) -> None:
        worker = getattr(self, "worker", None)  # None too when __init__ failed before the worker
        if worker is not None:
            worker.close()
            self.worker = None
            self.model = None
