"""`qwenkit serve --lora NAME=FILE`: two adapters and the base, in concurrent requests through the
`openai` client, each get their own behaviour (what that target answers alone)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from lora_helpers import random_adapter
from serve_helpers import start_server

pytest.importorskip("peft")

PROMPT = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def adapters(tiny_qwen2, tmp_path_factory):
    """Two GGUF LoRAs (random, so each changes the tiny model's answers its own way)."""
    from qwenkit.engines.transformers import convert_gguf
    from qwenkit.tune.export import export_lora

    tmp = tmp_path_factory.mktemp("serve-lora")
    checkpoint = convert_gguf(tiny_qwen2)
    files = {}
    for seed, name in enumerate(("alpha", "beta")):
        peft_dir = random_adapter(checkpoint, tmp / name, seed=seed)
        files[name] = export_lora(peft_dir, tmp / f"{name}.gguf", model=str(tiny_qwen2))
    return files


@pytest.fixture(scope="module")
def server(tiny_qwen2, adapters):
    lora = [arg for name, path in adapters.items() for arg in ("--lora", f"{name}={path}")]
    with start_server(tiny_qwen2, *lora, parallel=3) as s:
        yield s


def _answer(client: openai.OpenAI, model: str, **extra) -> tuple[str, str]:
    reply = client.chat.completions.create(
        model=model, messages=PROMPT, max_tokens=16, temperature=0, extra_body=extra or None
    )
    return reply.model, reply.choices[0].message.content


def test_models_lists_each_adapter_with_its_parent(server, adapters):
    with server.client() as c:
        cards = {m.id: m for m in c.models.list().data}
    base = next(name for name, card in cards.items() if getattr(card, "parent", None) is None)
    assert {"alpha", "beta"} <= cards.keys()
    for name in ("alpha", "beta"):
        assert cards[name].parent == base and cards[name].root == str(adapters[name])


def test_two_adapters_and_the_base_concurrently_each_keep_their_behaviour(server):
    with server.client() as c:
        base_name = next(m.id for m in c.models.list().data if getattr(m, "parent", None) is None)
        alone = {name: _answer(c, name)[1] for name in (base_name, "alpha", "beta")}
        assert len(set(alone.values())) == 3, alone  # three distinct behaviours
        wanted = [base_name, "alpha", "beta"] * 2
        with ThreadPoolExecutor(max_workers=6) as pool:
            together = list(pool.map(lambda name: _answer(c, name), wanted))
    for name, (reported, text) in zip(wanted, together, strict=True):
        assert reported == name
        assert text == alone[name], f"{name} changed when mixed with other adapters"


def test_llama_server_lora_field_selects_by_position(server):
    with server.client() as c:
        by_name = _answer(c, "beta")[1]
        by_id = _answer(c, "default", lora=[{"id": 1, "scale": 1.0}])[1]
        off = _answer(c, "beta", lora=[{"id": 1, "scale": 0.0}])[1]
        base_name = next(m.id for m in c.models.list().data if getattr(m, "parent", None) is None)
        assert by_id == by_name
        assert off == _answer(c, base_name)[1]  # scale 0: the base model
        with pytest.raises(openai.BadRequestError, match="lora id 7"):
            _answer(c, base_name, lora=[{"id": 7}])
