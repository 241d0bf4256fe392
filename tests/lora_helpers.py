"""LoRA test helpers: random peft adapters on a tiny checkpoint, and last-token logits from peft
and from llama.cpp (GGUF base + GGUF LoRA) to compare."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np


def random_adapter(checkpoint: Path, out: Path, *, seed: int, rank: int = 8) -> Path:
    """A peft LoRA on all linear layers with random (non-zero) A and B: a visible change of behaviour."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(str(out))
    return out


def peft_logits(checkpoint: Path, tokens: list[int], adapter: Path | None = None) -> np.ndarray:
    """Last-token logits of the checkpoint, with the peft adapter applied when given."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    with torch.no_grad():
        out = model(torch.tensor([tokens]))
    return out.logits[0, -1].float().numpy()


def llama_logits(gguf: Path, tokens: list[int], adapter: Path | None = None) -> np.ndarray:
    """Last-token logits from llama.cpp, with the GGUF LoRA applied (scale 1) when given."""
    import llama_cpp as C

    from qwenkit.engines.llamacpp.model import LlamaModel

    model = LlamaModel(gguf)
    params = C.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = 256
    params.n_threads = params.n_threads_batch = 2
    ctx = C.llama_init_from_model(model.ptr, params)
    try:
        if adapter is not None:
            handle = model.load_adapter(adapter)
            handles = (C.llama_adapter_lora_p_ctypes * 1)(handle)
            assert C.llama_set_adapters_lora(ctx, handles, 1, (ctypes.c_float * 1)(1.0)) == 0
        ids = (C.llama_token * len(tokens))(*tokens)
        assert C.llama_decode(ctx, C.llama_batch_get_one(ids, len(tokens))) == 0
        row = C.llama_get_logits_ith(ctx, -1)
        return np.ctypeslib.as_array(row, shape=(model.n_vocab,)).copy()
    finally:
        C.llama_free(ctx)
        model.close()


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])


def gguf_loras(base: Path, cache: Path, names: tuple[str, ...] = ("alpha", "beta")) -> dict[str, Path]:
    """Random GGUF LoRAs for the GGUF `base`, one per name (seeds 0, 1, ...: each changes the model
    its own way), built once per machine under `cache` (keyed by base, names and builders' source)."""
    from qwenkit.engines.transformers import convert_gguf
    from qwenkit.testing.build_cache import build_once, source_digest
    from qwenkit.tune import export

    key = source_digest(Path(__file__), Path(export.__file__))
    out = cache / f"lora-{base.stem}-{'-'.join(names)}-{key}"

    def build(tmp: Path) -> Path:
        checkpoint = convert_gguf(base)
        for seed, name in enumerate(names):
            export.export_lora(random_adapter(checkpoint, tmp / name, seed=seed), tmp / f"{name}.gguf", model=str(base))
        (tmp / "done").touch()
        return tmp

    build_once(out, out / "done", build)
    return {name: out / f"{name}.gguf" for name in names}
