"""How to start vLLM: context, batch, parallelism, executor, LoRA and reasoning markers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from qwenkit.errors import QwenkitError

Executor = Literal["mp", "ray"]


@dataclass(frozen=True)
class ReasoningMarkers:
    """The strings that open and close reasoning, and what to force when its budget is spent.

    With them vLLM enforces a `ThinkingLimit` controller's budget natively
    (`thinking_token_budget`). The engine uses them only when `start` and `end` are single tokens
    of the model's vocabulary; `parser` names vLLM's reasoning parser for them."""

    start: str
    end: str
    forced_end: str
    parser: str


@dataclass(frozen=True)
class VllmSettings:
    """`n_ctx` (default: the model's, capped at 8192), `n_parallel` (vLLM's `max_num_seqs`),
    the three parallel sizes and the executor vLLM distributes over (None: its choice)."""

    n_ctx: int | None = None
    n_parallel: int = 8
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    data_parallel: int = 1
    executor: Executor | None = None
    dtype: str = "auto"
    max_loras: int = 0  # >0 starts vLLM with LoRA support (adapters are loaded by path, per request)
    max_lora_rank: int = 64
    reasoning: ReasoningMarkers | None = None
    enforce_eager: bool = True  # no graph capture / torch.compile warm-up (minutes on a CPU)

    def __post_init__(self) -> None:
        for name in ("n_parallel", "tensor_parallel", "pipeline_parallel", "data_parallel"):
            if getattr(self, name) < 1:
                raise QwenkitError(f"{name.replace('_', '-')} must be at least 1")
        if self.executor not in (None, "mp", "ray"):
            raise QwenkitError(f"the distributed executor backend is ray or mp, not {self.executor!r}")

    def engine_args(self, model: str, n_ctx: int) -> dict[str, Any]:
        """Keyword arguments for vLLM's `AsyncEngineArgs` (the reasoning ones are the engine's)."""
        args: dict[str, Any] = dict(
            model=model,
            max_model_len=n_ctx,
            max_num_seqs=self.n_parallel,
            tensor_parallel_size=self.tensor_parallel,
            pipeline_parallel_size=self.pipeline_parallel,
            data_parallel_size=self.data_parallel,
            dtype=self.dtype,
            enforce_eager=self.enforce_eager,
            enable_prefix_caching=True,
            max_logprobs=20,
            disable_log_stats=True,
        )
        if self.executor is not None:
            args["distributed_executor_backend"] = self.executor
        if self.max_loras:
            args.update(enable_lora=True, max_loras=self.max_loras, max_lora_rank=self.max_lora_rank)
        return args
