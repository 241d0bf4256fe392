"""Validating OpenAI-shaped messages and tools into the plain form Qwen templates read."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from qwenkit.errors import BadRequest

ROLES = ("system", "user", "assistant", "tool")


def normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Checked copies of `messages`: text content, tool-call arguments as objects.

    Content given as a list of `{"type": "text", "text": ...}` parts is joined with newlines,
    unless it holds images (OpenAI `image_url` parts, Responses `input_image` parts, or
    `{"type": "image", "image": source}`): then it stays a list of text and
    `{"type": "image", "image": source}` parts, as Qwen-VL templates read it;
    `null` assistant content becomes `""`; a `developer` message is a system message;
    `reasoning` is accepted as a name for `reasoning_content`. Unknown keys are dropped.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise BadRequest("messages must be a list of message objects")
    if not messages:
        raise BadRequest("messages must not be empty")
    return [_message(i, m) for i, m in enumerate(messages)]


def normalize_tools(tools: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Checked copies of OpenAI tool definitions; `None` for no tools."""
    if not tools:
        return None
    if isinstance(tools, (str, bytes)) or not isinstance(tools, Sequence):
        raise BadRequest("tools must be a list of tool objects")
    out = []
    for i, tool in enumerate(tools):
        spec = tool.get("function", tool) if isinstance(tool, Mapping) else None
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise BadRequest(f"tools[{i}]: expected {{'type': 'function', 'function': {{'name': ...}}}}")
        out.append(dict(tool))
    return out


def _message(i: int, message: Any) -> dict[str, Any]:
    where = f"messages[{i}]"
    if not isinstance(message, Mapping):
        raise BadRequest(f"{where}: expected an object with 'role' and 'content'")
    role = message.get("role")
    role = "system" if role == "developer" else role
    if role not in ROLES:
        raise BadRequest(f"{where}: unknown role {role!r} (expected one of {', '.join(ROLES)})")
    out: dict[str, Any] = {"role": role, "content": _content(where, role, message.get("content"))}
    for key in ("name", "tool_call_id"):
        if message.get(key) is not None:
            if not isinstance(message[key], str):
                raise BadRequest(f"{where}: '{key}' must be a string")
            out[key] = message[key]
    if role == "assistant":
        reasoning = message.get("reasoning_content", message.get("reasoning"))
        if reasoning is not None:
            if not isinstance(reasoning, str):
                raise BadRequest(f"{where}: 'reasoning_content' must be a string")
            out["reasoning_content"] = reasoning
        if message.get("tool_calls"):
            out["tool_calls"] = _tool_calls(where, message["tool_calls"])
    elif message.get("tool_calls"):
        raise BadRequest(f"{where}: only assistant messages may have tool_calls")
    return out


def _content(where: str, role: str, content: Any) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if content is None:
        if role == "assistant":
            return ""
        raise BadRequest(f"{where}: a {role} message needs content")
    if isinstance(content, Sequence) and not isinstance(content, bytes):
        parts = [_part(f"{where}.content[{j}]", part) for j, part in enumerate(content)]
        if any(part["type"] == "image" for part in parts):
            return parts
        return "\n".join(part["text"] for part in parts)
    raise BadRequest(f"{where}: content must be a string or a list of text and image parts")


def _part(where: str, part: Any) -> dict[str, Any]:
    """A text part, or an image part as `{"type": "image", "image": source}` (source: a URL or path
    string, bytes or a PIL image; loaded by `chat.media`)."""
    kind = part.get("type") if isinstance(part, Mapping) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind in ("image_url", "input_image"):
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, Mapping) else url
        if not isinstance(url, str):
            raise BadRequest(f"{where}: an {kind} part needs image_url.url (a data URI, an http(s) URL or a path)")
        return {"type": "image", "image": url}
    if kind == "image" or (kind is None and isinstance(part, Mapping) and "image" in part):
        return {"type": "image", "image": part.get("image", part.get("url", part.get("path")))}
    if kind in ("video", "video_url", "input_audio", "audio", "file", "input_file"):
        raise BadRequest(f"{where}: content parts of type {kind!r} are not supported (text and images only)")
    raise BadRequest(f"{where}: content part of type {kind!r} is not supported (text and image parts only)")


def image_sources(messages: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The image sources of normalized `messages`, in the order the template renders them."""
    return [
        part["image"]
        for message in messages
        if isinstance(message["content"], list)
        for part in message["content"]
        if part["type"] == "image"
    ]


def message_text(content: str | Sequence[Mapping[str, Any]]) -> str:
    """A normalized message's text (its text parts joined, images left out)."""
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content if part["type"] == "text")


def _tool_calls(where: str, calls: Any) -> list[dict[str, Any]]:
    if isinstance(calls, (str, bytes)) or not isinstance(calls, Sequence):
        raise BadRequest(f"{where}: tool_calls must be a list")
    out = []
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        fn = call.get("function", call) if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise BadRequest(f"{at}: expected {{'function': {{'name': ..., 'arguments': ...}}}}")
        args = fn.get("arguments") or {}
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                raise BadRequest(f"{at}: arguments are not valid JSON") from None
        if not isinstance(args, Mapping):
            raise BadRequest(f"{at}: arguments must be a JSON object")
        entry: dict[str, Any] = {"type": "function", "function": {"name": fn["name"], "arguments": dict(args)}}
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        out.append(entry)
    return out
