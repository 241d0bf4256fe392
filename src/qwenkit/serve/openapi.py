"""The OpenAPI document as the server behaves: every status a route answers, in OpenAI's error
shape, the real content types, and the limits this server was started with.

FastAPI derives the request and response schemas from the `protocol` package; this module adds what it
cannot know: the errors (from authorization, the body limit, the rate limits, the model's
loading), streaming (`text/event-stream`), `/metrics`' Prometheus text, the bearer scheme when
keys are configured, and the limits that depend on settings or on the loaded model
(`max_tokens`, `n`, message count, vocabulary size, context length, whether images are taken).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from qwenkit.serve.protocol.server import ErrorResponse
from qwenkit.serve.settings import ServeSettings

_ERROR_TEXT = {
    400: "The request is invalid (OpenAI error shape; `param` names the field).",
    401: "A valid API key is required.",
    404: "The requested model (or other resource) does not exist (`code`: `model_not_found`).",
    413: "The request body is over the server's size limit.",
    429: "Rate limited, or the wait queue is full (`Retry-After` says when to retry).",
    500: "An internal error (logged with the request id).",
    503: "The model is still loading or failed to load, or generation failed.",
}


@dataclass(frozen=True)
class ModelLimits:
    """What the loaded model bounds: token ids and the prompt's length in tokens."""

    n_vocab: int
    max_prompt_tokens: int
    vision: bool = False  # the model takes images (else image parts are not in the document)


def route_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status with the OpenAI error body."""
    return {status: {"model": ErrorResponse, "description": _ERROR_TEXT[status]} for status in statuses}


def streamed(model: type, description: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route whose 200 is JSON, or server-sent events with `stream: true`."""
    data = {"type": "string", "description": "a chunk's JSON, or `[DONE]` last"}
    events = {"schema": {"type": "object", "required": ["data"], "properties": {"data": data}}}  # one event
    return {200: {"model": model, "description": description, "content": {"text/event-stream": events}}}


def install(app: FastAPI, settings: ServeSettings, limits: Callable[[], ModelLimits | None]) -> None:
    """Serve the honest document at /openapi.json (final once the model has loaded)."""
    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if "doc" in cached:
            return cached["doc"]
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        _drop_fastapi_422(doc)
        if settings.api_keys:
            _secure(doc)
        _settings_limits(doc, settings)
        known = limits()
        if known is not None:
            _model_limits(doc, known)
            cached["doc"] = doc  # nothing left to learn
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _operations(doc: dict[str, Any]):
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            yield path, method, op


def _drop_fastapi_422(doc: dict[str, Any]) -> None:
    """Validation errors are 400 here (OpenAI's status), never FastAPI's 422."""
    for _, _, op in _operations(doc):
        op.get("responses", {}).pop("422", None)
    schemas = doc.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def _secure(doc: dict[str, Any]) -> None:
    doc.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {"type": "http", "scheme": "bearer"}
    for _, _, op in _operations(doc):
        if "401" in op.get("responses", {}):
            op["security"] = [{"bearer": []}]


def _settings_limits(doc: dict[str, Any], s: ServeSettings) -> None:
    schemas = doc.get("components", {}).get("schemas", {})
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        props = schemas.get(name, {}).get("properties", {})
        for key in ("max_tokens", "max_completion_tokens"):
            _bound(props.get(key), "integer", maximum=s.max_tokens_cap)
        for key in ("n", "best_of"):
            _bound(props.get(key), "integer", maximum=s.max_n)
    _bound(
        schemas.get("ResponsesRequest", {}).get("properties", {}).get("max_output_tokens"),
        "integer",
        maximum=s.max_tokens_cap,
    )
    messages = schemas.get("ChatCompletionRequest", {}).get("properties", {}).get("messages")
    if messages is not None:
        messages["maxItems"] = s.max_messages
    # llama-server's `lora` ids count the --lora adapters (none loaded: no id is valid)
    _bound(schemas.get("LoraScale", {}).get("properties", {}).get("id"), "integer", minimum=0, maximum=len(s.lora) - 1)


def _model_limits(doc: dict[str, Any], limits: ModelLimits) -> None:
    schemas = doc.get("components", {}).get("schemas", {})
    if not limits.vision:
        _text_only(schemas)
    bias = _range_pattern(limits.n_vocab - 1)
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        props = schemas.get(name, {}).get("properties", {})
        for branch in _branches(props.get("logit_bias")):
            if branch.get("type") == "object":
                branch.setdefault("propertyNames", {})["pattern"] = bias
    tokens = schemas.get("DetokenizeRequest", {}).get("properties", {}).get("tokens", {})
    if tokens.get("items", {}).get("type") == "integer":
        tokens["items"]["maximum"] = limits.n_vocab - 1
    prompt = schemas.get("CompletionRequest", {}).get("properties", {}).get("prompt")
    for branch in _branches(prompt):
        ids = branch if branch.get("items", {}).get("type") == "integer" else branch.get("items", {})
        if ids.get("type") == "array" and ids.get("items", {}).get("type") == "integer":
            ids["items"]["maximum"] = limits.n_vocab - 1
            ids["maxItems"] = limits.max_prompt_tokens


_IMAGE_PARTS = ("ImagePart", "InputImage")


def _text_only(schemas: dict[str, Any]) -> None:
    """Drop the image content parts from every union (the loaded model takes text only)."""
    refs = {f"#/components/schemas/{name}" for name in _IMAGE_PARTS}

    def prune(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("anyOf", "oneOf"):
                if isinstance(node.get(key), list):
                    node[key] = [b for b in node[key] if not (isinstance(b, dict) and b.get("$ref") in refs)]
            mapping = (
                node.get("discriminator", {}).get("mapping") if isinstance(node.get("discriminator"), dict) else None
            )
            if isinstance(mapping, dict):
                for tag in [t for t, ref in mapping.items() if ref in refs]:
                    del mapping[tag]
            for value in node.values():
                prune(value)
        elif isinstance(node, list):
            for value in node:
                prune(value)

    for name in _IMAGE_PARTS:
        schemas.pop(name, None)
    schemas.pop("ImageUrl", None)
    prune(schemas)


def _branches(schema: dict[str, Any] | None) -> list[dict[str, Any]]:
    if schema is None:
        return []
    return list(schema.get("anyOf", [])) or [schema]


def _bound(schema: dict[str, Any] | None, kind: str, **bounds: int) -> None:
    for branch in _branches(schema):
        if branch.get("type") == kind:
            branch.update(bounds)


def _range_pattern(top: int) -> str:
    """A regular expression for the decimal integers 0..`top` (no leading zeros)."""
    digits = str(top)
    k = len(digits)
    alternatives = ["[0-9]"] if k > 1 else []
    if k > 2:
        alternatives.append(f"[1-9][0-9]{{1,{k - 2}}}")
    for i, d in enumerate(digits):
        low = 1 if i == 0 else 0
        if int(d) > low:
            high = int(d) - 1
            alternatives.append(digits[:i] + f"[{low}-{high}]" + ("[0-9]" * (k - i - 1)))
    alternatives.append(digits)
    if k == 1:
        alternatives = [f"[0-{top}]"]
    return "^(" + "|".join(alternatives) + ")$"
