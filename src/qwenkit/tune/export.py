"""From a peft adapter to what llama.cpp and Ollama run: a GGUF LoRA, a merged GGUF, a Modelfile.

All conversions use llama.cpp's own scripts and quantizer from `qwenkit.engines.llamacpp.vendor`
(the one copy of llama.cpp's source qwenkit keeps). The GGUF LoRA is applied at run time to the
very GGUF the adapter was trained on (dequantized), so it sees the weights it learned against.
A merged model is merged in full precision (the dequantized base plus the adapter in float32)
and only then quantized: never merged into already-quantized weights.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from qwenkit.errors import QwenkitError
from qwenkit.tune.trainer import ADAPTER_INFO, Base, resolve_base

QUANTS = ("q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16", "bf16", "f32")


def adapter_dir(path: Path) -> Path:
    """The peft adapter directory `path` is, or holds as `adapter/` (the run directory `qwenkit tune
    --out` writes)."""
    path = Path(path)
    for candidate in (path, path / "adapter"):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise QwenkitError(
        f"{path} is not a peft adapter directory (no adapter_config.json), nor a `qwenkit tune --out` "
        "run directory with one in adapter/"
    )


def adapter_base(adapter: Path, model: str | None) -> Base:
    """The base to export `adapter` against: `model` if given, else the one it was trained on."""
    adapter = adapter_dir(adapter)
    if model is None:
        info = adapter / ADAPTER_INFO
        if not info.is_file():
            raise QwenkitError(f"{adapter} does not say which model it was trained on: pass --model")
        model = json.loads(info.read_text(encoding="utf-8"))["base_path"]
    return resolve_base(model)


def _check_adapter(adapter: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA":
        raise QwenkitError(f"{adapter} is a {config.get('peft_type')} adapter; only LoRA converts to GGUF")
    if config.get("modules_to_save") or config.get("use_dora"):
        raise QwenkitError(f"{adapter}: llama.cpp applies plain LoRA on linear layers only (no DoRA, no saved modules)")
    if config.get("use_rslora") or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise QwenkitError(f"{adapter}: rsLoRA and per-layer ranks are not carried by GGUF LoRA (one alpha / rank)")
    return config


def _clean_config_dir(checkpoint: Path, into: Path) -> Path:
    """A copy of the checkpoint's config.json that llama.cpp's converters accept: `architectures`
    set, no `quantization_config` (what a GGUF loaded by transformers leaves behind)."""
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    config.pop("quantization_config", None)
    if not config.get("architectures"):
        model_type = str(config.get("model_type", ""))
        names = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}
        if model_type not in names:
            raise QwenkitError(f"cannot tell the architecture of {checkpoint} (model_type {model_type!r})")
        config["architectures"] = [names[model_type]]
    into.mkdir(parents=True, exist_ok=True)
    (into / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    return into


def _run_script(script: str, args: list[str]) -> None:
    from qwenkit.engines.llamacpp import vendor

    try:
        path = vendor.source() / script
    except (subprocess.CalledProcessError, OSError) as exc:
        raise QwenkitError(f"cannot get llama.cpp's {script}: {exc}") from None
    done = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise QwenkitError(f"{script} failed: {lines[-1] if lines else f'exit code {done.returncode}'}")


def export_lora(adapter: Path, out: Path, *, model: str | None = None, outtype: str = "f32") -> Path:
    """Write `adapter` as a GGUF LoRA for its base model's GGUF; returns `out`."""
    adapter = adapter_dir(adapter)
    base = adapter_base(adapter, model)
    _check_adapter(adapter)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qwenkit-export-") as tmp:
        config_dir = _clean_config_dir(base.checkpoint, Path(tmp) / "base")
        _run_script(
            "convert_lora_to_gguf.py",
            ["--base", str(config_dir), "--outtype", outtype, "--outfile", str(out), str(adapter)],
        )
    return out


def merge_full_precision(adapter: Path, base: Base, into: Path) -> Path:
    """The base (dequantized, float32) with the adapter merged in, saved as a checkpoint at `into`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(base.checkpoint), dtype=torch.float32)
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(str(into))
    AutoTokenizer.from_pretrained(str(base.checkpoint)).save_pretrained(str(into))
    _clean_config_dir(into, into)
    return into


def export_merged(adapter: Path, out: Path, *, model: str | None = None, quant: str = "q4_k_m") -> Path:
    """Merge in float32, convert with llama.cpp's converter, then quantize to `quant`."""
    from qwenkit.engines.llamacpp import vendor

    quant = quant.lower()
    if quant not in QUANTS:
        raise QwenkitError(f"unknown quantization {quant!r} (one of: {', '.join(QUANTS)})")
    adapter = adapter_dir(adapter)
    base = adapter_base(adapter, model)
    _check_adapter(adapter)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qwenkit-merge-", dir=out.parent) as tmp:
        merged = merge_full_precision(adapter, base, Path(tmp) / "merged")
        direct = quant in ("f16", "bf16", "f32")
        f32 = out if direct else Path(tmp) / "merged-f32.gguf"
        _run_script(
            "convert_hf_to_gguf.py", [str(merged), "--outtype", quant if direct else "f32", "--outfile", str(f32)]
        )
        if not direct:
            quantize = vendor.tool("llama-quantize")
            if quantize is None:
                raise QwenkitError("llama-quantize could not be built here (see the message above)")
            done = subprocess.run([str(quantize), str(f32), str(out), quant.upper()], capture_output=True, text=True)
            if done.returncode != 0:
                raise QwenkitError(f"llama-quantize failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return out


def ollama_modelfile(base_gguf: Path, adapter_gguf: Path | None, template_source: str | None) -> str:
    """An Ollama Modelfile: the base GGUF, the GGUF LoRA, Qwen's ChatML template and stop tokens."""
    lines = [f"FROM {base_gguf.resolve()}"]
    if adapter_gguf is not None:
        lines.append(f"ADAPTER {adapter_gguf.resolve()}")
    lines.append('TEMPLATE """' + OLLAMA_CHATML + '"""')
    if template_source and "You are Qwen, created by Alibaba Cloud" in template_source:
        lines.append('SYSTEM """You are Qwen, created by Alibaba Cloud. You are a helpful assistant."""')
    lines += ['PARAMETER stop "<|im_end|>"', 'PARAMETER stop "<|endoftext|>"', 'PARAMETER stop "<|im_start|>"']
    return "\n".join(lines) + "\n"


# Ollama's Go-template rendering of Qwen's ChatML (as in Ollama's own qwen2.5 Modelfile, without tools).
OLLAMA_CHATML = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}"
    '{{- if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
    '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}<|im_end|>\n'
    "{{ end }}{{ end }}<|im_start|>assistant\n"
)
