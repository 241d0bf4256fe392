"""`qwenkit.load`: a model reference in, a ready `Model` out."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal

from qwenkit.catalog.fetch import resolve
from qwenkit.chat import load_template
from qwenkit.engines.base import Engine
from qwenkit.engines.speculation import speculation
from qwenkit.errors import QwenkitError
from qwenkit.model import Model
from qwenkit.options import LoadOptions

ENGINES = ("auto", "llamacpp", "transformers", "onnx", "vllm")


# Where Qwen's chat templates open an assistant turn: a hybrid model's llama.cpp slots keep a
# checkpoint there, so a conversation's next turn resumes where the last answer starts.
ASSISTANT_TURN = "<|im_start|>assistant\n"


def pick_engine(engine: str, fmt: str) -> str:
    """The engine to run weights of format `fmt` ("gguf", "hf" or "onnx") on: `auto` picks
    llama.cpp for a GGUF file, transformers for a checkpoint directory and ONNX Runtime GenAI
    for an ONNX model directory. `onnx` on a GGUF or checkpoint exports it (int4, cached); `vllm`
    on a GGUF dequantizes it to a checkpoint once (cached)."""
    if engine not in ENGINES:
        raise QwenkitError(f"unknown engine {engine!r} (available: {', '.join(ENGINES)})")
    if engine == "auto":
        return {"gguf": "llamacpp", "onnx": "onnx"}.get(fmt, "transformers")
    if fmt == "onnx" and engine != "onnx":
        raise QwenkitError("this is an ONNX model directory; it runs on the onnx engine (use --engine onnx)")
    if engine == "llamacpp" and fmt != "gguf":
        raise QwenkitError(
            "this is a checkpoint directory; the llama.cpp engine needs a .gguf file (use --engine transformers)"
        )
    return engine


def load(ref: str = "default", **options: Any) -> Model:
    """Fetch (if needed) and load a model.

    `engine`: "auto" (llama.cpp for a GGUF file, transformers for a checkpoint directory, ONNX
    Runtime GenAI for an ONNX model directory), "llamacpp", "transformers" (a GGUF is then
    dequantized once and cached as a checkpoint) or "onnx" (a GGUF or checkpoint is then
    exported to int4 once and cached, as `qwenkit export onnx` does).
    `n_parallel`: requests decoded together (default 1 on llama.cpp, 8 on transformers; the
    onnx engine decodes one at a time and queues the rest).
    Transformers only: `dtype` ("auto", "bf16", "fp16", "fp32"), `device_map`,
    `quantization` (None, "8bit", "4bit": bitsandbytes, CUDA only), `attn_implementation`.
    `lora`: GGUF LoRA adapters to load, by name (llama.cpp); a turn applies them with
    `adapters=[(name, scale)]`.
    `image_max_tokens`: vision models (Qwen2.5-VL): the most tokens one image may take (its pixels
    are scaled to at most that many 28x28 cells); None: the model's own limit.
    `prefix_cache_tokens`: transformers only: the most tokens of finished requests' KV kept to
    start later requests sharing their prompt prefix (None: twice the context; 0: no prefix cache).
    `mmproj`: a Qwen-VL GGUF's vision projector (llama.cpp); a catalogue name brings its own.
    vLLM only (`engine="vllm"`, its own environment): `tensor_parallel`, `pipeline_parallel`,
    `data_parallel` and `distributed_executor_backend` ("mp" or "ray") go to vLLM's engine args;
    `lora` there names peft adapter directories.
    `speculative`: "ngram" (prompt lookup: a sequence drafts the tokens that followed its last
    tokens' earlier occurrence in its context and verifies them in one batched step; lossless, the
    output is the one without it) or "off", the default for requests (each may say otherwise);
    `draft_max`: drafted tokens per sequence and step at most (llama.cpp, transformers).

    >>> model = qwenkit.load()  # the embedded Qwen2.5-Coder-0.5B-Instruct
    >>> print(model.chat("Write a haiku about tea").content)
    """
    return load_with(ref, LoadOptions.of(**options))


# the keywords are LoadOptions' fields: help(qwenkit.load) and editors show them
load.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        inspect.Parameter("ref", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="default", annotation=str),
        *(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=field.default, annotation=field.annotation)
            for name, field in LoadOptions.model_fields.items()
        ),
    ],
    return_annotation=Model,
)


def load_with(ref: str, options: LoadOptions) -> Model:
    """`load` with its options as one `LoadOptions` (or a subclass: `ServeOptions`, `ClusterOptions`)."""
    o = options
    if o.engine not in ENGINES:  # before any download
        raise QwenkitError(f"unknown engine {o.engine!r} (available: {', '.join(ENGINES)})")
    local = resolve(ref, progress=o.progress)  # a catalogue name, or any store reference
    chosen = pick_engine(o.engine, local.format)
    if o.mmproj is not None and chosen != "llamacpp":
        raise QwenkitError("an mmproj (vision projector GGUF) goes with a GGUF on the llama.cpp engine")
    if o.prefix_cache_tokens is not None and chosen != "transformers":
        raise QwenkitError(f"prefix_cache_tokens sizes the transformers engine's prefix cache, not {chosen}'s")
    parallel = (o.tensor_parallel, o.pipeline_parallel, o.data_parallel)
    if chosen != "vllm" and (parallel != (1, 1, 1) or o.distributed_executor_backend is not None):
        raise QwenkitError("tensor, pipeline and data parallelism and the executor backend apply to --engine vllm")
    eng: Engine
    if chosen == "vllm":
        if o.quantization is not None or o.device_map is not None:
            raise QwenkitError("quantization and device_map apply to the transformers engine, not vLLM")
        eng = _load_vllm(
            local.path if local.format == "hf" else _converted(local.path),
            dtype=o.dtype,
            n_ctx=o.n_ctx,
            n_parallel=o.n_parallel or 8,
            lora=bool(o.lora),
            tensor_parallel=o.tensor_parallel,
            pipeline_parallel=o.pipeline_parallel,
            data_parallel=o.data_parallel,
            executor=o.distributed_executor_backend,
        )
    elif chosen == "transformers":
        from qwenkit.engines.transformers import TransformersEngine, TransformersSettings

        settings = TransformersSettings(
            dtype=o.dtype,
            device_map=o.device_map,
            quantization=o.quantization,
            attn_implementation=o.attn_implementation,
            n_ctx=o.n_ctx,
            n_parallel=o.n_parallel or 8,
            max_waiting=o.max_waiting,
            n_threads=o.n_threads,
            image_max_tokens=o.image_max_tokens,
            prefix_cache_tokens=o.prefix_cache_tokens,
            speculative=speculation(o.speculative),
            draft_max=o.draft_max,
        )
        eng = TransformersEngine(local.path, settings)
    elif chosen == "onnx":
        if o.quantization is not None or o.dtype.lower() != "auto" or o.device_map is not None:
            raise QwenkitError(
                "dtype, device_map and quantization apply to the transformers engine; "
                "an ONNX model keeps the precision it was exported at (qwenkit export onnx --precision)"
            )
        from qwenkit.engines.onnx import OnnxEngine, OnnxSettings, export_onnx

        path = local.path if local.format == "onnx" else export_onnx(local.path, "int4")
        eng = OnnxEngine(path, OnnxSettings(n_ctx=o.n_ctx, n_threads=o.n_threads, max_waiting=o.max_waiting))
    else:
        if o.quantization is not None or o.dtype.lower() != "auto" or o.device_map is not None:
            raise QwenkitError(
                "dtype, device_map and quantization apply to the transformers engine; "
                "a GGUF on llama.cpp keeps its own quantization (use --engine transformers)"
            )
        from qwenkit.engines.llamacpp import LlamaCppEngine, LlamaCppSettings

        eng = LlamaCppEngine(
            local.path,
            LlamaCppSettings(
                n_ctx=o.n_ctx,
                n_threads=o.n_threads,
                n_parallel=o.n_parallel or 1,
                max_waiting=o.max_waiting,
                mmproj=o.mmproj or local.mmproj,
                image_max_tokens=o.image_max_tokens,
                speculative=speculation(o.speculative),
                draft_max=o.draft_max,
                turn_start=ASSISTANT_TURN,
            ),
        )
    try:
        for name, adapter_path in (o.lora or {}).items():
            eng.load_adapter(name, adapter_path)
        architecture = eng.architecture()
        template = load_template(eng.chat_template(), architecture=architecture, name_hint=local.name)
    except BaseException:
        eng.close()
        raise
    return Model(eng, template, name=local.name, architecture=architecture)


def _converted(gguf: Path) -> Path:
    """A GGUF dequantized once into a cached checkpoint directory (vLLM loads checkpoints)."""
    from qwenkit.engines.transformers import convert_gguf

    return convert_gguf(gguf)


EXECUTORS: dict[str | None, Literal["mp", "ray"] | None] = {None: None, "mp": "mp", "ray": "ray"}


def _load_vllm(path: Path, *, dtype: str, lora: bool, executor: str | None, **sizes: Any) -> Engine:
    """The vLLM engine, with Qwen's reasoning markers so it enforces thinking budgets natively."""
    from qwenkit.chat.budget import closing_text
    from qwenkit.engines.vllm import ReasoningMarkers, VllmEngine, VllmSettings

    if executor not in EXECUTORS:
        raise QwenkitError(f"--distributed-executor-backend is mp or ray, not {executor!r}")
    settings = VllmSettings(
        dtype={"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(dtype.lower(), dtype.lower()),
        max_loras=4 if lora else 0,
        executor=EXECUTORS[executor],
        reasoning=ReasoningMarkers(start="<think>", end="</think>", forced_end=closing_text(), parser="qwen3"),
        **sizes,
    )
    return VllmEngine(path, settings)
