"""How a model is loaded, described once: `qwenkit.load`'s keywords, the CLI's flags and the Ray
config's `args` are all derived from `LoadOptions` (and, above it, `serve.options.ServeOptions`
and `serve.cluster.options.ClusterOptions`).

A field made with `option(default, "--flag", ...)` is also a command-line flag: `cli/flags.py`
turns its flags, default, help and bounds into a typer option. `alias` is the field's name in a
config file where that is not its Python name (`ctx` for `n_ctx`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qwenkit.engines.speculation import DEFAULT_DRAFT_MAX, speculation
from qwenkit.errors import QwenkitError

ENGINE_HELP = (
    "auto (llama.cpp for a .gguf, transformers for a checkpoint directory, onnx for an ONNX model "
    "directory), llamacpp, transformers, onnx (a .gguf or checkpoint is exported to int4 once) or vllm "
    "(its own environment: make vllm-env)."
)


def option(
    default: Any,
    *flags: str,
    help: str | None = None,
    alias: str | None = None,
    ge: float | None = None,
    le: float | None = None,
) -> Any:
    """A settings field; with `flags` ("--ctx", "-c"), also a command-line flag whose help is `help`."""
    extra: dict[str, Any] | None = {"flags": list(flags)} if flags else None
    return Field(default, description=help, alias=alias, ge=ge, le=le, json_schema_extra=extra)


def flags_of(name: str, cls: type[BaseModel]) -> list[str]:
    """The command-line flags of field `name` of `cls` (none: not on the command line)."""
    extra = cls.model_fields[name].json_schema_extra
    found = extra.get("flags", []) if isinstance(extra, dict) else []
    return [str(flag) for flag in found] if isinstance(found, list) else []


class Options(BaseModel):
    """Settings data: frozen, unknown names refused, set by field name or by config alias."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True, arbitrary_types_allowed=True
    )

    @classmethod
    def of(cls, **values: Any) -> Self:
        """Validated options; an unknown name is a TypeError (as for a function's keywords), a bad
        value a one-line QwenkitError."""
        unknown = sorted(set(values) - set(cls.model_fields))
        if unknown:
            raise TypeError(f"unexpected keyword argument {unknown[0]!r} (known: {', '.join(cls.model_fields)})")
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise QwenkitError(first_error(exc)) from None


def first_error(exc: ValidationError) -> str:
    """A validation error in one line: where, then what."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


class LoadOptions(Options):
    """`qwenkit.load`'s keywords (see its docstring for what each does)."""

    engine: str = option("auto", "--engine", "-e", help=ENGINE_HELP)
    n_ctx: int | None = option(
        None, "--ctx", alias="ctx", help="Context size in tokens (default: 8192, capped at the model's)."
    )
    n_threads: int | None = option(None, "--threads", "-t", alias="threads", help="CPU threads (default: all cores).")
    n_parallel: int | None = option(None, alias="parallel")  # None: 1 on llama.cpp, 8 on transformers and vLLM
    max_waiting: int = option(64, alias="max_queue", ge=0)
    progress: bool = True
    dtype: str = option("auto", "--dtype", help="Transformers engine: auto, bf16, fp16 or fp32.")
    device_map: Any = None
    quantization: str | None = option(
        None, "--quantization", "-q", help="Transformers engine: 8bit or 4bit (bitsandbytes, CUDA only)."
    )
    attn_implementation: str = "sdpa"
    lora: dict[str, str | Path] | None = None
    mmproj: Path | None = option(
        None, "--mmproj", help="A Qwen-VL GGUF's vision projector (llama.cpp); catalogue names bring their own."
    )
    image_max_tokens: int | None = option(
        None, "--image-max-tokens", ge=4, help="Most tokens one image may take (vision models; 28x28 px each)."
    )
    prefix_cache_tokens: int | None = option(
        None,
        "--prefix-cache-tokens",
        ge=0,
        help="Transformers engine: tokens of finished requests' KV kept for prompts that share a prefix "
        "(default: twice --ctx; 0: off).",
    )
    tensor_parallel: int = option(1, "--tensor-parallel", ge=1, help="vLLM: GPUs each layer is split over.")
    pipeline_parallel: int = option(1, "--pipeline-parallel", ge=1, help="vLLM: stages the layers are split into.")
    data_parallel: int = option(1, "--data-parallel", ge=1, help="vLLM: replicas of the model it schedules over.")
    distributed_executor_backend: str | None = option(
        None,
        "--distributed-executor-backend",
        help="vLLM: mp (one machine) or ray (a Ray cluster); default: vLLM's.",
    )
    speculative: str = option(
        "ngram",
        "--speculative",
        help="Speculative decoding for requests that do not say: ngram (draft from the context, verify in one "
        "batch; lossless) or off.",
    )
    draft_max: int = option(
        DEFAULT_DRAFT_MAX, "--draft-max", ge=0, le=64, help="Drafted tokens per sequence and step at most."
    )

    @field_validator("speculative")
    @classmethod
    def _known_speculation(cls, value: str) -> str:
        return speculation(value)
