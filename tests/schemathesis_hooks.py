"""Schemathesis hooks for tests/test_serve_openapi.py: the two request rules the OpenAPI document
states in words only, because JSON Schema generators cannot follow them.

- A tool call's `arguments`, when a string, holds a JSON object (`contentMediaType` and
  `contentSchema` say so; generators do not read them): a generated string that is not one is
  replaced by a JSON object holding it.
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
    for message in body.get("messages") if isinstance(body.get("messages"), list) else ():
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        for call in calls if isinstance(calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            arguments = function.get("arguments") if isinstance(function, dict) else None
            if isinstance(arguments, str) and not _json_object(arguments):
                function["arguments"] = json.dumps({"text": arguments})
    choice, tools = body.get("tool_choice"), body.get("tools")
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict) and isinstance(tools, list) and tools:
        first = tools[0].get("function") if isinstance(tools[0], dict) else None
        if isinstance(first, dict) and isinstance(first.get("name"), str):
            names = [t.get("function", {}).get("name") for t in tools if isinstance(t, dict)]
            if choice["function"].get("name") not in names:
                choice["function"]["name"] = first["name"]
