"""`TransformersEngine`: the engine protocol on Hugging Face transformers (`AutoModelForCausalLM`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from qwenkit.engines.base import Adapters, Chunk, EngineStats, Request, SamplingParams, StepController, iterate
from qwenkit.engines.transformers.loading import TransformersSettings, load_checkpoint
from qwenkit.errors import ModelLoadError

DEFAULT_CTX = 8192


class TransformersEngine:
    """Loads a checkpoint directory, or a GGUF file (converted once, dequantized, and cached)."""

    name = "transformers"

    def __init__(self, path: str | Path, settings: TransformersSettings | None = None) -> None:
        from qwenkit.engines.transformers.convert import convert_gguf
        from qwenkit.engines.transformers.vocab import Vocab
        from qwenkit.engines.transformers.worker import Worker

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
        self.worker = Worker(
            self.model,
            self.vocab,
            n_ctx=self.n_ctx,
            max_batch=s.n_parallel,
            max_waiting=s.max_waiting,
            eos_ids=self._eos,
            n_threads=s.n_threads,
        )

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

    @property
    def device(self):
        return self.worker.device

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return self.vocab.tokenize(text, special=special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.vocab.detokenize(ids)

    def chat_template(self) -> str | None:
        return self.vocab.chat_template()

    def architecture(self) -> str | None:
        return getattr(self.model.config, "model_type", None)

    def eos_token_ids(self) -> set[int]:
        return set(self._eos)

    def submit(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        emit: Callable[[Chunk], None],
        controller: StepController | None = None,
        adapters: Adapters = (),
    ):
        """Queue a request whose chunks are passed to `emit` on the engine's thread."""
        return self.worker.submit(Request(list(prompt), params, emit, controller, tuple(adapters)))

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load a peft LoRA adapter directory (before serving); requests name it in `adapters`."""
        self.worker.add_adapter(name, Path(path))

    def adapter_names(self) -> list[str]:
        return list(self.worker.adapter_names)

    def generate(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        controller: StepController | None = None,
        adapters: Adapters = (),
    ) -> Iterator[Chunk]:
        return iterate(self, prompt, params, controller, adapters)

    def stats(self) -> EngineStats:
        return self.worker.stats()

    def close(self) -> None:
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.close()
            self.worker = None
            self.model = None
