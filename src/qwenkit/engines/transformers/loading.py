"""From settings to `from_pretrained` arguments: dtype, device map, attention, quantization."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
)

from qwenkit.engines.speculation import DEFAULT_DRAFT_MAX, Speculation
from qwenkit.errors import ModelLoadError, QwenkitError

DTYPES = {
    "auto": "auto",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
}
QUANTIZATIONS = (None, "8bit", "4bit")


@dataclass(frozen=True)
class TransformersSettings:
    """How to load and run a checkpoint with transformers.

    dtype: "auto" (on a GPU the checkpoint's own dtype; on CPU float32, since half-precision
        matmuls are slow or missing there), "bf16", "fp16" or "fp32".
    device_map: passed to `from_pretrained` ("auto", "cpu", "cuda:0", a dict...); None means
        "auto" when CUDA is present, else the CPU.
    quantization: None, "8bit" or "4bit" (bitsandbytes; CUDA only).
    attn_implementation: "sdpa" (default), "eager", or any other transformers knows.
    n_parallel: most sequences decoded together; more wait (up to `max_waiting`, then QueueFull).
    image_max_tokens: Qwen2.5-VL only: the most LLM tokens one image may take (its pixels are
        scaled down to at most this many 28x28 cells); None: the checkpoint's `max_pixels`.
    prefix_cache_tokens: the most tokens of finished sequences' KV kept to start requests that
        share a prefix with them (0: none); None: twice the context length.
    speculative, draft_max: prompt-lookup speculation, the default for requests ("ngram" or
        "off"), and the most tokens a row drafts per step (0: never).
    """

    dtype: str = "auto"
    device_map: Any = None
    quantization: str | None = None
    attn_implementation: str = "sdpa"
    n_ctx: int | None = None
    n_parallel: int = 8
    max_waiting: int = 64
    n_threads: int | None = None
    image_max_tokens: int | None = None
    prefix_cache_tokens: int | None = None
    speculative: Speculation = "ngram"
    draft_max: int = DEFAULT_DRAFT_MAX

    def __post_init__(self) -> None:
        if str(self.dtype).lower() not in DTYPES:
            raise QwenkitError(f"unknown dtype {self.dtype!r} (use one of: auto, bf16, fp16, fp32)")
        if self.quantization not in QUANTIZATIONS:
            raise QwenkitError(f"unknown quantization {self.quantization!r} (use 8bit or 4bit, or none)")
        if self.n_parallel < 1:
            raise QwenkitError("n_parallel must be at least 1")
        if self.image_max_tokens is not None and self.image_max_tokens < 4:
            raise QwenkitError("image_max_tokens must be at least 4")
        if self.prefix_cache_tokens is not None and self.prefix_cache_tokens < 0:
            raise QwenkitError("prefix_cache_tokens must be 0 (no prefix cache) or more")


def cuda_available() -> bool:
    return bool(torch.cuda.is_available())


def torch_dtype(settings: TransformersSettings) -> torch.dtype | str:
    """The dtype to load in (a torch.dtype, or "auto")."""
    name = DTYPES[str(settings.dtype).lower()]
    if name == "auto":
        on_gpu = cuda_available() and settings.device_map not in ("cpu", {"": "cpu"})
        return "auto" if on_gpu else torch.float32
    return getattr(torch, name)


def quantization_config(settings: TransformersSettings) -> BitsAndBytesConfig | None:
    """A BitsAndBytesConfig for "8bit"/"4bit", after checking that it can work here."""
    if settings.quantization is None:
        return None
    if not cuda_available():
        raise QwenkitError(
            f"{settings.quantization} quantization uses bitsandbytes, which needs a CUDA GPU, and none "
            "is available here; load without quantization (or use a quantized GGUF on the llama.cpp engine)"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise QwenkitError(
            f"{settings.quantization} quantization needs bitsandbytes: pip install bitsandbytes"
        ) from None
    if settings.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute, bnb_4bit_use_double_quant=True
    )


def load_checkpoint(path: Path, settings: TransformersSettings) -> tuple[PreTrainedModel, Any]:
    """(model, tokenizer) from a checkpoint directory, per `settings`."""
    if settings.n_threads:
        torch.set_num_threads(settings.n_threads)
    quant = quantization_config(settings)
    device_map = settings.device_map
    if device_map is None and (cuda_available() or quant is not None):
        device_map = "auto"
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype(settings),
        "attn_implementation": settings.attn_implementation,
    }
    if device_map is not None:
        kwargs["device_map"] = device_map
    if quant is not None:
        kwargs["quantization_config"] = quant
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"no usable tokenizer in {path}: {exc}") from None
    try:
        auto = AutoModelForImageTextToText if is_vision(path) else AutoModelForCausalLM
        model = auto.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as exc:
        raise ModelLoadError(f"transformers could not load {path}: {_first_line(exc)}") from None
    model.eval()
    return model, tokenizer


# Natively multimodal checkpoints whose vision tower this engine does not run: loaded as their
# text model (`AutoModelForCausalLM` takes the language half of a conditional-generation checkpoint).
TEXT_HALF_ONLY = frozenset({"qwen3_5", "qwen3_5_moe"})


def is_vision(path: Path) -> bool:
    """A checkpoint with a vision tower this engine runs (Qwen2.5-VL)."""
    try:
        config = AutoConfig.from_pretrained(str(path))
        return getattr(config, "vision_config", None) is not None and config.model_type not in TEXT_HALF_ONLY
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"transformers cannot read {path / 'config.json'}: {_first_line(exc)}") from None


def load_image_processor(path: Path) -> Any:
    """The checkpoint's image processor (preprocessor_config.json), for a vision model."""
    try:
        return AutoImageProcessor.from_pretrained(str(path))
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise ModelLoadError(f"no usable image processor in {path}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
