"""Responses API follow-ups on a cluster: a stored response lives on the replica that made it, so
a request that names one (`previous_response_id`, `GET /v1/responses/{id}`) is routed there."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

RESPONSES_PATH = "/v1/responses"


def named_response(method: str, path: str, body: bytes) -> str | None:
    """The stored response a request needs, if any."""
    if method == "GET" and path.startswith(RESPONSES_PATH + "/"):
        return path.removeprefix(RESPONSES_PATH + "/") or None
    if method != "POST" or path != RESPONSES_PATH:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    previous = data.get("previous_response_id") if isinstance(data, dict) else None
    return previous if isinstance(previous, str) else None


def made_response(body: bytes, sse: bool) -> str | None:
    """The id of the response a `POST /v1/responses` answer carries: a whole response's `id`, or
    the `response.id` of a stream's first event."""
    text = body.decode("utf-8", "replace")
    if sse:
        text = next((line[5:] for line in text.splitlines() if line.startswith("data:")), "")
    try:
        data: Any = json.loads(text)
    except ValueError:
        return None
    if isinstance(data, dict) and sse:
        data = data.get("response")
    rid = data.get("id") if isinstance(data, dict) else None
    return rid if isinstance(rid, str) else None


class ResponseOwners:
    """Which replica made each recent response (the oldest forgotten beyond `capacity`)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._owner: OrderedDict[str, str] = OrderedDict()

    def learn(self, response_id: str, replica: str) -> None:
        self._owner[response_id] = replica
        self._owner.move_to_end(response_id)
        while len(self._owner) > self.capacity:
            self._owner.popitem(last=False)

    def owner(self, response_id: str | None) -> str | None:
        return self._owner.get(response_id) if response_id else None
