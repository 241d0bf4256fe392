"""Schemathesis hooks for tests/test_serve_openapi.py: the two request rules the OpenAPI document
states in words only, because JSON Schema generators cannot follow them.

- A tool call's `arguments` (chat messages, Responses input items), when a string, holds a
  JSON object (`contentMediaType` and `contentSchema` say so; generators do not read them): a
  generated string that is not one is replaced by a JSON object holding it.
- A named `tool_choice` names one of the request's `tools` (a reference between two values):
  a generated name is replaced by the first tool's name.

Everything else the server enforces is in the schema itself.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis


def _json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Every phase calls through here (the coverage phase skips the body-generation hooks)."""
    _conform(case.body)
    if isinstance(kwargs.get("json"), dict):
        _conform(kwargs["json"])


def _conform(body: Any) -> None:
    if not isinstance(body, dict):
        return
    # chat messages' tool calls, and Responses' function_call input items
    calls = [
        call.get("function") for message in _dicts(body.get("messages")) for call in _dicts(message.get("tool_calls"))
    ] + [item for item in _dicts(body.get("input")) if item.get("type") == "function_call"]
    for call in calls:
        arguments = call.get("arguments") if isinstance(call, dict) else None
        if isinstance(arguments, str) and not _json_object(arguments):
            call["arguments"] = json.dumps({"text": arguments})
    # a named tool choice: chat's {"function": {"name"}} or Responses' {"name"}
    choice = body.get("tool_choice")
    named = choice.get("function") if isinstance(choice, dict) and "function" in choice else choice
    names = [
        t.get("function", t).get("name") for t in _dicts(body.get("tools")) if isinstance(t.get("function", t), dict)
    ]
    names = [n for n in names if isinstance(n, str)]
    if isinstance(named, dict) and isinstance(named.get("name"), str) and names and named["name"] not in names:
        named["name"] = names[0]


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
