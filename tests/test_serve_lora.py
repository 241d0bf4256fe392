"""`qwenkit serve --lora NAME=FILE`: two adapters and the base, in concurrent requests through the
`openai` client, each get their own behaviour (what that target answers alone)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from serve_helpers import assert_openai_error

pytest.importorskip("peft")

PROMPT = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def adapters(tiny_loras):
    """Two GGUF LoRAs (random, so each changes the tiny model's answers its own way)."""
    return tiny_loras


@pytest.fixture(scope="module")
def server(app_server, tiny_qwen2, adapters):
    return app_server(tiny_qwen2, parallel=3, lora=tuple((name, str(path)) for name, path in adapters.items()))


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


# ----- runtime load/unload (--allow-runtime-lora, behind an API key) --------------------------

KEY = "lora-key"


@pytest.fixture(scope="module")
def runtime_server(app_server, tiny_qwen2, adapters):
    lora = (("alpha", str(adapters["alpha"])),)
    return app_server(tiny_qwen2, parallel=2, lora=lora, api_keys=frozenset({KEY}), allow_runtime_lora=True)


def _post(server, path: str, body: dict, key: str = KEY):
    with server.http(headers={"Authorization": f"Bearer {key}"}) as h:
        return h.post(path, json=body)


def test_runtime_adapter_behaves_as_the_same_adapter_given_at_start(runtime_server, adapters):
    loaded = _post(
        runtime_server, "/v1/load_lora_adapter", {"lora_name": "alpha2", "lora_path": str(adapters["alpha"])}
    )
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["id"] == "alpha2" and loaded.json()["parent"]
    with runtime_server.client(KEY) as c:
        cards = {m.id: m for m in c.models.list().data}
        assert cards["alpha2"].parent == cards["alpha"].parent
        assert _answer(c, "alpha2")[1] == _answer(c, "alpha")[1]
        base_name = cards["alpha"].parent
        assert _answer(c, "alpha2")[1] != _answer(c, base_name)[1]

    gone = _post(runtime_server, "/v1/unload_lora_adapter", {"lora_name": "alpha2"})
    assert gone.status_code == 200, gone.text
    with runtime_server.client(KEY) as c:
        assert "alpha2" not in {m.id for m in c.models.list().data}
        with pytest.raises(openai.NotFoundError):
            _answer(c, "alpha2")
    # the engine keeps an unloaded adapter until restart: its name is not loaded again
    again = _post(runtime_server, "/v1/load_lora_adapter", {"lora_name": "alpha2", "lora_path": str(adapters["alpha"])})
    assert "until the server restarts" in assert_openai_error(again, 400)["message"]
    assert_openai_error(_post(runtime_server, "/v1/unload_lora_adapter", {"lora_name": "alpha2"}), 404)


def test_runtime_load_refuses_bad_paths_taken_names_and_missing_keys(runtime_server, adapters, tmp_path):
    missing = _post(runtime_server, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(tmp_path / "no.gguf")})
    assert "not found" in assert_openai_error(missing, 400)["message"]
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf")
    assert (
        "GGUF LoRA"
        in assert_openai_error(
            _post(runtime_server, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(junk)}), 400
        )["message"]
    )
    taken = _post(runtime_server, "/v1/load_lora_adapter", {"lora_name": "alpha", "lora_path": str(adapters["beta"])})
    assert assert_openai_error(taken, 400)["param"] == "lora_name"
    base = _post(runtime_server, "/v1/unload_lora_adapter", {"lora_name": "default"})
    assert assert_openai_error(base, 400)["param"] == "lora_name"
    anonymous = _post(runtime_server, "/v1/load_lora_adapter", {"lora_name": "y", "lora_path": str(junk)}, key="wrong")
    assert_openai_error(anonymous, 401)
    with runtime_server.client(KEY) as c:
        assert "x" not in {m.id for m in c.models.list().data}


def test_without_the_flag_the_routes_do_not_exist(server, adapters):
    with server.http() as h:
        for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            assert_openai_error(h.post(path, json={"lora_name": "z", "lora_path": str(adapters["beta"])}), 404)


def test_the_flag_without_an_api_key_is_refused(tiny_qwen2, monkeypatch):
    from typer.testing import CliRunner

    from qwenkit.cli import app
    from qwenkit.errors import QwenkitError

    monkeypatch.delenv("QWENKIT_API_KEYS", raising=False)
    res = CliRunner().invoke(app, ["serve", "-m", str(tiny_qwen2), "--allow-runtime-lora"])
    assert isinstance(res.exception, QwenkitError)
    assert "--allow-runtime-lora needs --api-key" in str(res.exception)


def test_runtime_routes_document_their_statuses(runtime_server, server):
    with runtime_server.http() as h:
        paths = h.get("/openapi.json").json()["paths"]
    assert set(paths["/v1/load_lora_adapter"]["post"]["responses"]) >= {"200", "400", "401"}
    assert set(paths["/v1/unload_lora_adapter"]["post"]["responses"]) >= {"200", "400", "401", "404"}
    with server.http() as h:
        assert "/v1/load_lora_adapter" not in h.get("/openapi.json").json()["paths"]
