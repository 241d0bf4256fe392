"""The OpenAPI document tells the truth: schemathesis, with all its checks, against a live server.

Schemathesis generates requests from /openapi.json (valid and invalid ones), sends them to a
tiny-model server started with an API key and small caps, and checks every answer: no server
error, only documented statuses, content types and headers, responses that match their
schemas, invalid requests refused, valid ones accepted, authentication enforced. The seed is
fixed so the cases are the same on every run; `tests/schemathesis_hooks.py` holds the two rules
a JSON Schema generator cannot follow (they are stated in the document in words).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from serve_helpers import start_server

from qwenkit.serve.openapi import _range_pattern

KEY = "schema-key"
CASES_PER_ROUTE = int(os.environ.get("QWENKIT_SCHEMATHESIS_CASES", "15"))  # plus the coverage phase's boundary cases
SEED = 1
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def server(tiny_qwen2):
    # --allow-runtime-lora: the runtime adapter routes are in the document and tested too
    args = ("--api-key", KEY, "--max-tokens-cap", "8", "--max-n", "2", "--allow-runtime-lora")
    with start_server(tiny_qwen2, *args, parallel=2, ctx=4096) as s:
        yield s


def _schemathesis() -> str:
    found = Path(sys.executable).with_name("schemathesis")
    if not found.exists():
        pytest.skip("schemathesis is not installed (the dev extra)")
    return str(found)


def _run_schemathesis(server, *extra: str) -> None:
    cmd = [
        _schemathesis(),
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(CASES_PER_ROUTE),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--header",
        f"Authorization: Bearer {KEY}",
        "--request-timeout",
        "60",
        "--no-color",
        # the seed alone decides the cases: no examples replayed from an earlier run's database
        "--generation-database",
        "none",
        *extra,
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks", "PYTHONPATH": str(TESTS)}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=str(TESTS))
    report = run.stdout[-12000:] + run.stderr[-3000:]
    assert run.returncode == 0, report
    done = re.search(r"(\d+) generated, \1 passed", run.stdout)
    assert done and int(done[1]) > 0, report


def test_schemathesis_finds_no_mismatch(server):
    _run_schemathesis(server, "--exclude-path-regex", "lora_adapter")


def test_schemathesis_runtime_lora_routes(server):
    """The runtime adapter routes, with every check but one: a schema-valid `lora_path` names no
    adapter file on this machine (the schema cannot say which exist), so its documented 400 is not
    a mismatch (`positive_data_acceptance` wants valid-looking data accepted)."""
    _run_schemathesis(server, "--include-path-regex", "lora_adapter", "--exclude-checks", "positive_data_acceptance")


def test_document_states_errors_content_types_and_limits(server):
    doc = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert set(chat["responses"]) == {"200", "400", "401", "404", "413", "429", "500", "503"}
    assert chat["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert chat["security"] == [{"bearer": []}]
    assert set(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    request = doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert {"type": "integer", "minimum": 1, "maximum": 8} in request["max_tokens"]["anyOf"]
    assert request["n"]["maximum"] == 2
    assert "HTTPValidationError" not in doc["components"]["schemas"]


@pytest.mark.parametrize("top", [0, 7, 9, 10, 99, 100, 151935, 200000])
def test_token_id_pattern_is_exactly_the_vocabulary(top):
    pattern = re.compile(_range_pattern(top))
    for value in {*range(min(top, 2000) + 1), top - 1, top, top + 1, top * 10, 10 ** len(str(top))}:
        assert bool(pattern.match(str(value))) == (0 <= value <= top), value
    assert not pattern.match("01") and not pattern.match("-1") and not pattern.match("")
