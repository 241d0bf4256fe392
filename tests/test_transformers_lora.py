"""Mixed LoRA adapters in one transformers batch (peft `adapter_names`): each request decodes as
it does alone on its own adapter, while sharing the batch with the base and another adapter."""

from __future__ import annotations

import pytest
from lora_helpers import random_adapter

from qwenkit.engines.base import SamplingParams
from qwenkit.errors import BadRequest

pytest.importorskip("peft")

PROMPT = "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"


def _text(chunks) -> str:
    return "".join(c.text for c in chunks)


def test_base_and_two_adapters_in_one_batch_keep_their_own_outputs(tiny_hf_qwen2, tmp_path):
    import threading

    from qwenkit.engines.transformers import TransformersEngine, TransformersSettings

    engine = TransformersEngine(tiny_hf_qwen2, TransformersSettings(n_parallel=6, n_threads=2))
    try:
        for seed, name in enumerate(("alpha", "beta")):
            engine.load_adapter(name, random_adapter(tiny_hf_qwen2, tmp_path / name, seed=seed))
        assert engine.adapter_names() == ["alpha", "beta"]
        prompt = engine.tokenize(PROMPT)
        params = SamplingParams(max_tokens=12, temperature=0.0)
        targets = [(), (("alpha", 1.0),), (("beta", 1.0),)]
        alone = [_text(engine.generate(prompt, params, adapters=t)) for t in targets]
        assert len(set(alone)) == 3
        together: dict[int, list] = {i: [] for i in range(6)}
        done = threading.Semaphore(0)
        for i in range(6):

            def emit(chunk, i=i):
                together[i].append(chunk)
                if chunk.finish_reason is not None:
                    done.release()

            engine.submit(prompt, params, emit, None, targets[i % 3])
        for _ in range(6):
            assert done.acquire(timeout=120)
        assert [_text(together[i]) for i in range(6)] == alone * 2
        with pytest.raises(BadRequest, match="unknown LoRA adapter 'gamma'"):
            engine.submit(prompt, params, lambda c: None, None, (("gamma", 1.0),))
        with pytest.raises(BadRequest, match="at scale 1"):
            engine.submit(prompt, params, lambda c: None, None, (("alpha", 0.5),))
    finally:
        engine.close()


def test_the_prefix_cache_is_kept_per_adapter(tiny_hf_qwen2, tmp_path):
    from qwenkit.engines.transformers import TransformersEngine, TransformersSettings

    engine = TransformersEngine(tiny_hf_qwen2, TransformersSettings(n_parallel=2, n_threads=2))
    try:
        engine.load_adapter("alpha", random_adapter(tiny_hf_qwen2, tmp_path / "alpha", seed=3))
        prompt = engine.tokenize(PROMPT * 3)
        params = SamplingParams(max_tokens=8, temperature=0.0)
        targets = [(), (("alpha", 1.0),)]
        first = [list(engine.generate(prompt, params, adapters=t)) for t in targets]
        assert [c[-1].cached_prompt_tokens for c in first] == [0, 0]  # the base's KV is not alpha's
        again = [list(engine.generate(prompt, params, adapters=t)) for t in targets]
        assert [c[-1].cached_prompt_tokens for c in again] == [len(prompt) - 1] * 2
        assert [_text(c) for c in again] == [_text(c) for c in first]
        assert _text(first[0]) != _text(first[1])
    finally:
        engine.close()
