"""Chat templates: compiled once in Jinja's sandbox, rendered the way Hugging Face renders them."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from importlib import resources
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from qwenkit.chat.messages import image_sources, normalize_messages, normalize_tools
from qwenkit.chat.vision import IMAGE_SLOT
from qwenkit.errors import BadRequest, QwenkitError, TemplateError

# Official templates shipped as package data, by the name `official_template` takes. Qwen3.5's is
# the vendored llama.cpp's `models/templates/Qwen3.5-4B.jinja`, byte-identical to the copy of
# Qwen/Qwen3.5-397B-A17B's in xinference's `llm_family.json`; Qwen3-Next's are the copies of
# Qwen/Qwen3-Next-80B-A3B-Instruct's and -Thinking's there (the Hugging Face files themselves
# were not reachable offline).
OFFICIAL = {
    "qwen2.5": "Qwen-Qwen2.5-7B-Instruct.jinja",
    "qwen3": "Qwen-Qwen3-0.6B.jinja",
    "qwen3-coder": "Qwen3-Coder.jinja",
    "qwq": "Qwen-QwQ-32B.jinja",
    "qwen2.5-vl": "Qwen-Qwen2.5-VL-7B-Instruct.jinja",
    "qwen3.5": "Qwen3.5-4B.jinja",
    "qwen3-next": "Qwen-Qwen3-Next-80B-A3B-Instruct.jinja",
    "qwen3-next-thinking": "Qwen-Qwen3-Next-80B-A3B-Thinking.jinja",
}
# Architectures of the Qwen3.5 generation: llama.cpp's GGUF names and transformers' model types.
QWEN35_ARCHS = ("qwen35", "qwen35moe", "qwen3_5", "qwen3_5_moe", "qwen3_5_text", "qwen3_5_moe_text")
QWEN3_NEXT_ARCHS = ("qwen3next", "qwen3_next")
_QWEN35_NAME = re.compile(r"qwen3\.[5-9]")

_PROBE = "qwenkit-probe-reasoning"

EMPTY_THINK = "<think>\n\n</think>\n\n"
_OPEN_TAIL = re.compile(r"<think>\s*(?:</think>\s*)?\Z")


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """Hugging Face's `tojson`: plain `json.dumps`, no HTML escaping, non-ASCII kept."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


_ENV = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
_ENV.filters["tojson"] = _tojson
_ENV.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)


class ChatTemplate:
    """A Jinja chat template turning OpenAI-shaped messages into a Qwen prompt."""

    def __init__(self, source: str, name: str = "model") -> None:
        self.source = source
        self.name = name
        try:
            self._compiled = _ENV.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"chat template {name!r} does not compile: {e.message} (line {e.lineno})") from None

    def __repr__(self) -> str:
        return f"ChatTemplate(name={self.name!r})"

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        enable_thinking: bool | None = None,
        media_marker: str | None = None,
        **kwargs: Any,
    ) -> str:
        """The prompt text for `messages`.

        With `media_marker`, the template writes that marker where it would write an image slot
        (`<|vision_start|><|image_pad|><|vision_end|>`; see `chat.vision`). Qwen-VL templates also
        take `add_vision_id=True` ("Picture 1: " before each image).

        `enable_thinking` is passed to the template when not None. `False` on a thinking
        template guarantees the prompt ends with the empty block `<think>\\n\\n</think>\\n\\n`,
        whether or not the template implements the flag. Soft switches are not applied here
        (see `qwenkit.chat.thinking.build_prompt`).
        """
        if enable_thinking is not None:
            kwargs["enable_thinking"] = enable_thinking
        normalized = normalize_messages(messages)
        if image_sources(normalized) and not self.takes_images:
            raise BadRequest(f"chat template {self.name!r} takes text only; it does not render images")
        compiled = self._compiled
        if media_marker is not None:
            compiled = self._marked
            kwargs["media_marker"] = media_marker
        text = self._render(normalized, normalize_tools(tools), add_generation_prompt, kwargs, compiled)
        if enable_thinking is False and add_generation_prompt and (self.supports_thinking or self.opens_thinking):
            text = close_thinking(text)
        return text

    @property
    def takes_images(self) -> bool:
        """The template renders Qwen-VL image slots."""
        return IMAGE_SLOT in self.source

    @functools.cached_property
    def _marked(self) -> jinja2.Template:
        """This template with each image slot written as the `media_marker` variable: a slot in a
        string literal (Qwen3.5: `{{- '<|vision_start|>...' }}`) becomes the variable itself."""
        if not self.takes_images:
            raise TemplateError(f"chat template {self.name!r} does not render images")
        source = self.source
        for quote in ("'", '"'):
            source = source.replace(quote + IMAGE_SLOT + quote, "media_marker")
        return _ENV.from_string(source.replace(IMAGE_SLOT, "{{ media_marker }}"))

    @functools.cached_property
    def supports_thinking(self) -> bool:
        """A hybrid-thinking (Qwen3) template: it renders the current turn's reasoning and lets
        the model decide to open `<think>` itself."""
        text = self._probe(
            [{"role": "user", "content": "?"}, {"role": "assistant", "content": "!", "reasoning_content": _PROBE}],
            add_generation_prompt=False,
        )
        return "<think>" in text and _PROBE in text and not self.opens_thinking

    @functools.cached_property
    def opens_thinking(self) -> bool:
        """The generation prompt itself opens `<think>` (Qwen3.5, Qwen3-Next-Thinking, QwQ,
        Qwen3-2507-Thinking)."""
        text = self._probe([{"role": "user", "content": "?"}], add_generation_prompt=True, enable_thinking=True)
        return text.rstrip("\n").endswith("<think>")

    @functools.cached_property
    def thinks_by_default(self) -> bool:
        """A template that opens thinking does not, without `enable_thinking`, write the empty
        block itself (as the Qwen3.5 small models' templates do unless asked to think)."""
        text = self._probe([{"role": "user", "content": "?"}], add_generation_prompt=True)
        return self.opens_thinking and not text.endswith(EMPTY_THINK)

    def _probe(self, messages: list[dict[str, Any]], add_generation_prompt: bool, **kwargs: Any) -> str:
        try:
            return self._render(messages, None, add_generation_prompt, kwargs, self._compiled)
        except QwenkitError:
            return ""

    def _render(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        add_generation_prompt: bool,
        kwargs: dict[str, Any],
        compiled: jinja2.Template,
    ) -> str:
        try:
            return compiled.render(
                messages=messages, tools=tools, add_generation_prompt=add_generation_prompt, **kwargs
            )
        except (jinja2.TemplateError, TypeError, ValueError, AttributeError, LookupError) as e:
            raise TemplateError(f"chat template {self.name!r} cannot render this conversation: {e}") from None


def close_thinking(prompt: str) -> str:
    """`prompt` ending with exactly one empty think block.

    A `<think>` the generation prompt already opened (optionally closed) is replaced.
    """
    if prompt.endswith(EMPTY_THINK):
        return prompt
    tail = _OPEN_TAIL.search(prompt)
    return (prompt[: tail.start()] if tail else prompt) + EMPTY_THINK


def official_template(name: str) -> ChatTemplate:
    """One of the official Qwen templates (the keys of `OFFICIAL`: 'qwen2.5', 'qwen3', 'qwen3-coder',
    'qwq', 'qwen2.5-vl', 'qwen3.5', 'qwen3-next', 'qwen3-next-thinking')."""
    key = name.lower()
    if key not in OFFICIAL:
        raise TemplateError(f"no official Qwen template named {name!r} (known: {', '.join(OFFICIAL)})")
    return _official(key)


@functools.cache
def _official(key: str) -> ChatTemplate:
    source = resources.files(__package__).joinpath("templates", OFFICIAL[key]).read_text(encoding="utf-8")
    return ChatTemplate(source, name=key)


def load_template(
    model_template: str | None, *, architecture: str | None = None, name_hint: str | None = None
) -> ChatTemplate:
    """The model file's own template when it has one, else the official one for the model."""
    if model_template and model_template.strip():
        return ChatTemplate(model_template, name=name_hint or "model")
    return official_template(fallback_name(architecture, name_hint))


def fallback_name(architecture: str | None, name_hint: str | None) -> str:
    """The official template for a model without one, from its architecture (GGUF
    `general.architecture` or a config's `model_type`) or its name.

    Qwen3.5 and the releases on its architecture (Qwen3.6, ...) get Qwen3.5's; Qwen3-Next gets the
    Instruct or, by name, the Thinking template; a Coder model the Qwen3-Coder one.
    """
    arch, hint = (architecture or "").lower(), (name_hint or "").lower()
    if "qwq" in arch or "qwq" in hint:
        return "qwq"
    if "vl" in arch.replace("_", "") or "-vl" in hint:
        return "qwen2.5-vl"
    if arch in QWEN35_ARCHS or _QWEN35_NAME.search(hint):
        return "qwen3.5"
    qwen3 = arch.startswith("qwen3") or "qwen3" in hint
    if qwen3 and ("coder" in arch or "coder" in hint):
        return "qwen3-coder"
    if arch in QWEN3_NEXT_ARCHS or "qwen3-next" in hint:
        return "qwen3-next-thinking" if "thinking" in hint else "qwen3-next"
    return "qwen3" if qwen3 else "qwen2.5"
