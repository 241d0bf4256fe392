"""Template fidelity: ChatTemplate against transformers' own renderer and hand-written prompts."""

from __future__ import annotations

import copy
import json

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from qwenkit.chat import ChatTemplate, load_template, official_template
from qwenkit.chat.template import OFFICIAL, fallback_name
from qwenkit.errors import BadRequest, TemplateError

NAMES = list(OFFICIAL)
EMPTY_THINK = "<think>\n\n</think>\n\n"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local time, e.g. for Zürich.",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
    },
}
TOOLS = [WEATHER, CLOCK]


def call(name: str, args: dict, id: str = "call_1") -> dict:
    return {"id": id, "type": "function", "function": {"name": name, "arguments": args}}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str, **extra) -> dict:
    return {"role": "assistant", "content": text, **extra}


def tool(text: str, id: str = "call_1") -> dict:
    return {"role": "tool", "content": text, "tool_call_id": id}


SYSTEM = {"role": "system", "content": "You are terse."}

# name -> (messages in the form templates read: string content, dict arguments; tools)
CORPUS: dict[str, tuple[list[dict], list[dict] | None]] = {
    "single_user": ([user("Hello")], None),
    "system": ([SYSTEM, user("Hi")], None),
    "unicode": ([user("Grüß dich — 你好 🎉 <b>&amp;</b>")], None),
    "multi_turn": ([SYSTEM, user("1+1?"), assistant("2"), user("And 2+2?")], None),
    "tools_no_system": ([user("Weather in Paris?")], TOOLS),
    "tools_with_system": ([SYSTEM, user("Weather in Paris?")], TOOLS),
    "tool_round_trip": (
        [
            SYSTEM,
            user("Weather in Paris?"),
            assistant("", tool_calls=[call("get_weather", {"city": "Paris"})]),
            tool('{"temp": 21}'),
            assistant("21°C in Paris."),
            user("Thanks!"),
        ],
        TOOLS,
    ),
    "parallel_calls_consecutive_results": (
        [
            user("Weather in Paris and Rome, 3 days?"),
            assistant(
                "Let me check both.",
                tool_calls=[
                    call("get_weather", {"city": "Paris", "days": 3}, "a"),
                    call("get_weather", {"city": "Rome", "days": 3}, "b"),
                ],
            ),
            tool("21C", "a"),
            tool("25C", "b"),
        ],
        TOOLS,
    ),
    "nested_arguments": (
        [
            user("Time?"),
            assistant("", tool_calls=[call("get_time", {"tz": "Europe/Zürich", "opts": {"a": [1, 2]}})]),
            tool("12:00"),
        ],
        TOOLS,
    ),
    "reasoning_content_history": (
        [user("1+1?"), assistant("2", reasoning_content="Easy: one plus one."), user("2+2?")],
        None,
    ),
    "inline_think_history": ([user("1+1?"), assistant("<think>\nEasy.\n</think>\n\n2"), user("2+2?")], None),
    "multi_step_after_last_query": (
        [
            user("1+1?"),
            assistant("2", reasoning_content="old thoughts"),
            user("Weather in Paris, then the time?"),
            assistant(
                "",
                reasoning_content="Need the weather first.",
                tool_calls=[call("get_weather", {"city": "Paris"}, "a")],
            ),
            tool("21C", "a"),
            assistant("", reasoning_content="Now the time.", tool_calls=[call("get_time", {"tz": "CET"}, "b")]),
            tool("12:00", "b"),
        ],
        TOOLS,
    ),
    "final_assistant_with_reasoning": ([user("Hi"), assistant("Hello!", reasoning_content="Greet back.")], None),
    "multiline_and_typed_arguments": (
        [
            SYSTEM,
            user("Write the file, then check the weather."),
            assistant(
                "Writing it.",
                reasoning_content="A file first.\n\nThen the weather.",
                tool_calls=[
                    call("write_file", {"path": "a.py", "code": "def f():\n    return 1\n", "n": 3, "force": True}),
                    call("get_weather", {"city": "Paris", "opts": {"units": ["C"], "days": None}}, "b"),
                ],
            ),
            tool("written", "call_1"),
            tool("21C", "b"),
            assistant("Done: written, and 21°C.", reasoning_content="Both came back."),
            user("Thanks. Again tomorrow?"),
        ],
        TOOLS,
    ),
}
# Conversations whose last message is the assistant's are rendered without a generation prompt.
NO_GENERATION_PROMPT = {"final_assistant_with_reasoning"}
FLAGS = [None, True, False]


def hf_render(source: str, messages: list[dict], tools=None, add_generation_prompt=True, **kwargs) -> str:
    rendered, _ = render_jinja_template(
        conversations=[copy.deepcopy(messages)],
        tools=copy.deepcopy(tools),
        chat_template=source,
        add_generation_prompt=add_generation_prompt,
        **kwargs,
    )
    return rendered[0]


def string_arguments(messages: list[dict]) -> list[dict]:
    """The conversation with tool-call arguments as JSON text, as OpenAI clients send them."""
    out = copy.deepcopy(messages)
    for m in out:
        for c in m.get("tool_calls", ()):
            c["function"]["arguments"] = json.dumps(c["function"]["arguments"], ensure_ascii=False)
    return out


def client_form(messages: list[dict]) -> list[dict]:
    """The same conversation as an OpenAI client sends it: JSON-string arguments, text parts,
    null content next to tool calls."""
    out = string_arguments(messages)
    for m in out:
        if m["role"] == "user":
            m["content"] = [{"type": "text", "text": m["content"]}]
        if m.get("tool_calls"):
            m["content"] = m["content"] or None
    return out


def expected(name: str, messages, tools, add_generation_prompt: bool, flag: bool | None) -> str:
    kwargs = {} if flag is None else {"enable_thinking": flag}
    reference = hf_render(official_template(name).source, messages, tools, add_generation_prompt, **kwargs)
    if name == "qwq" and flag is False and add_generation_prompt:
        # llama.cpp's QwQ template closes thinking as "<think>\n</think>"; qwenkit writes the
        # canonical empty block instead.
        assert reference.endswith("<|im_start|>assistant\n<think>\n</think>")
        return reference.removesuffix("<think>\n</think>") + EMPTY_THINK
    if name == "qwen3-next-thinking" and flag is False and add_generation_prompt:
        # a thinking-only template without the flag: qwenkit closes the block it opens
        assert reference.endswith("<|im_start|>assistant\n<think>\n")
        return reference.removesuffix("<think>\n") + EMPTY_THINK
    return reference


@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize("case", list(CORPUS))
@pytest.mark.parametrize("name", NAMES)
def test_matches_transformers(name: str, case: str, flag: bool | None) -> None:
    messages, tools = CORPUS[case]
    gen = case not in NO_GENERATION_PROMPT
    want = expected(name, messages, tools, gen, flag)
    template = official_template(name)
    assert template.render(messages, tools=tools, add_generation_prompt=gen, enable_thinking=flag) == want
    assert template.render(client_form(messages), tools=tools, add_generation_prompt=gen, enable_thinking=flag) == want


@pytest.mark.parametrize("case", [c for c, (m, _) in CORPUS.items() if any(x.get("tool_calls") for x in m)])
def test_qwen3_string_arguments_match_transformers(case: str) -> None:
    """Qwen3's template prints string arguments verbatim: passing them through to transformers
    gives the same prompt as qwenkit's parsed form."""
    messages, tools = CORPUS[case]
    source = official_template("qwen3").source
    assert official_template("qwen3").render(client_form(messages), tools=tools) == hf_render(
        source, string_arguments(messages), tools
    )


def test_model_file_template_matches_transformers() -> None:
    """A template from a model file goes through the same environment (tojson options, globals)."""
    source = (
        "{% for m in messages %}{{ m.role }}:{{ m.content | tojson(indent=2) }}\n{% endfor %}"
        "{% if tools %}{{ tools | tojson(separators=(',', ':'), sort_keys=true) }}{% endif %}"
        "{% if add_generation_prompt %}{{ 'go' }}{% endif %}"
    )
    messages = [user('Zürich "quoted" <tag>'), assistant("ok")]
    assert ChatTemplate(source).render(messages, tools=TOOLS) == hf_render(source, messages, TOOLS)


# Hand-written prompts (from the Qwen facts), so a bug shared with transformers still fails.


def test_qwen25_default_system() -> None:
    assert official_template("qwen2.5").render([user("Hello")]) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    )


def test_qwen3_has_no_default_system_and_switches_thinking() -> None:
    qwen3 = official_template("qwen3")
    assert qwen3.render([user("Hello")]) == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    assert qwen3.render([user("Hello")], enable_thinking=False) == (
        "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_qwen3_tools_system_block() -> None:
    tiny = {"type": "function", "function": {"name": "f", "parameters": {}}}
    assert official_template("qwen3").render([SYSTEM, user("Go")], tools=[tiny]) == (
        "<|im_start|>system\nYou are terse.\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        '{"type": "function", "function": {"name": "f", "parameters": {}}}\n</tools>\n\n'
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nGo<|im_end|>\n<|im_start|>assistant\n"
    )


def test_qwen3_calls_and_folded_tool_results() -> None:
    messages = [
        user("Paris and Rome?"),
        assistant(None, tool_calls=[call("get_weather", {"city": "Paris"}), call("get_weather", '{"city": "Rome"}')]),
        tool("21C"),
        tool("25C"),
    ]
    assert official_template("qwen3").render(messages) == (
        "<|im_start|>user\nParis and Rome?<|im_end|>\n<|im_start|>assistant\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n21C\n</tool_response>\n<tool_response>\n25C\n</tool_response>"
        "<|im_end|>\n<|im_start|>assistant\n"
    )


def test_qwen25_string_arguments_are_not_double_encoded() -> None:
    messages = [user("Paris?"), assistant("", tool_calls=[call("get_weather", '{"city": "Paris"}')]), tool("21C")]
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n21C\n</tool_response><|im_end|>\n"
    ) in official_template("qwen2.5").render(messages)


def test_qwen3_coder_xml_call() -> None:
    messages = [
        user("Weather?"),
        assistant("", tool_calls=[call("get_weather", '{"city": "Paris", "days": 3}')]),
        tool("21C"),
    ]
    assert official_template("qwen3-coder").render(messages) == (
        "<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n"
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n21C\n</tool_response>\n<|im_end|>\n<|im_start|>assistant\n"
    )


def test_qwq_opens_thinking() -> None:
    assert official_template("qwq").render([user("Hi")], enable_thinking=True) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n"
    )


def test_qwen35_opens_thinking_and_closes_it_when_off() -> None:
    qwen35 = official_template("qwen3.5")
    head = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert qwen35.render([user("Hi")]) == head + "<think>\n"
    assert qwen35.render([user("Hi")], enable_thinking=False) == head + EMPTY_THINK


def test_qwen35_xml_call_and_tool_response() -> None:
    messages = [user("Weather?"), assistant("", tool_calls=[call("get_weather", {"city": "Paris", "days": 2})])]
    text = official_template("qwen3.5").render([*messages, tool("21C")], tools=TOOLS)
    assert text.endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n<tool_call>\n<function=get_weather>\n"
        "<parameter=city>\nParis\n</parameter>\n<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>"
        "<|im_end|>\n<|im_start|>user\n<tool_response>\n21C\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\n"
    )
    assert "<function=example_function_name>" in text.split("<|im_end|>")[0]  # the XML format is taught


def test_qwen35_image_slot_takes_the_media_marker() -> None:
    qwen35 = official_template("qwen3.5")
    assert qwen35.takes_images
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    assert qwen35.render(messages, media_marker="@@m@@") == (
        "<|im_start|>user\n@@m@@What is it?<|im_end|>\n<|im_start|>assistant\n<think>\n"
    )
    assert "<|image_pad|>" in qwen35.render(messages)


@pytest.mark.parametrize("name", ["qwen3.5", "qwen3-next", "qwen3-next-thinking"])
def test_current_generation_matches_apply_chat_template(name: str, tiny_hf_qwen3) -> None:
    """The corpus through a real tokenizer's `apply_chat_template`, given the same template text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_hf_qwen3))
    source = official_template(name).source
    for case, (messages, tools) in CORPUS.items():
        gen = case not in NO_GENERATION_PROMPT
        for flag in (True, False):
            want = tokenizer.apply_chat_template(
                copy.deepcopy(messages),
                tools=copy.deepcopy(tools),
                chat_template=source,
                tokenize=False,
                add_generation_prompt=gen,
                enable_thinking=flag,
            )
            if name == "qwen3-next-thinking" and gen and not flag:
                want = want.removesuffix("<think>\n") + EMPTY_THINK
            got = official_template(name).render(messages, tools=tools, add_generation_prompt=gen, enable_thinking=flag)
            assert got == want, (case, flag)


# History stripping, exactly as the official Qwen3 template does it.


def test_qwen3_drops_reasoning_before_last_user_query() -> None:
    qwen3 = official_template("qwen3")
    for earlier in (assistant("2", reasoning_content="Easy."), assistant("<think>\nEasy.\n</think>\n\n2")):
        assert qwen3.render([user("1+1?"), earlier, user("2+2?")]) == (
            "<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n2<|im_end|>\n"
            "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
        )


def test_qwen3_keeps_reasoning_after_last_user_query() -> None:
    messages = CORPUS["multi_step_after_last_query"][0]
    text = official_template("qwen3").render(messages, tools=TOOLS)
    assert "old thoughts" not in text
    assert (
        "<|im_start|>user\nWeather in Paris, then the time?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nNeed the weather first.\n</think>\n\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n21C\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\nNow the time.\n</think>\n\n"
        '<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET"}}\n</tool_call><|im_end|>\n'
    ) in text


def test_tool_response_user_turn_is_not_a_query() -> None:
    """A user turn that is only a <tool_response> does not count as the last query."""
    messages = [
        user("Go"),
        assistant("", reasoning_content="Think A.", tool_calls=[call("get_time", {})]),
        user("<tool_response>\n12:00\n</tool_response>"),
    ]
    assert "<think>\nThink A.\n</think>" in official_template("qwen3").render(messages)


# Message validation and errors.


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "must not be empty"),
        ("hello", "list of message"),
        ([{"role": "robot", "content": "x"}], "unknown role 'robot'"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "takes text only",
        ),
        ([{"role": "user", "content": [{"type": "video", "video": "x"}]}], "'video' are not supported"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "needs image_url.url"),
        ([{"role": "user", "content": 3}], "content must be"),
        ([{"role": "user", "content": None}], "needs content"),
        ([{"role": "user", "content": "x", "tool_calls": [call("f", {})]}], "only assistant"),
        ([user("x"), assistant("", tool_calls=[call("f", "{not json")])], "not valid JSON"),
        ([user("x"), assistant("", tool_calls=[call("f", "[1, 2]")])], "must be a JSON object"),
        ([user("x"), assistant("", tool_calls=[{"function": {"arguments": "{}"}}])], "tool_calls[0]"),
    ],
)
def test_bad_messages_are_bad_requests(messages, message: str) -> None:
    with pytest.raises(BadRequest) as err:
        official_template("qwen3").render(messages)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_tools_are_bad_requests() -> None:
    with pytest.raises(BadRequest, match=r"tools\[1\]"):
        official_template("qwen3").render([user("x")], tools=[WEATHER, {"type": "function"}])


def test_text_parts_developer_role_and_reasoning_alias() -> None:
    qwen3 = official_template("qwen3")
    parts = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "c", "reasoning": "r"},
    ]
    assert qwen3.render(parts, add_generation_prompt=False) == qwen3.render(
        [{"role": "system", "content": "Be brief."}, user("a\nb"), assistant("c", reasoning_content="r")],
        add_generation_prompt=False,
    )
    assert "<think>\nr\n</think>" in qwen3.render(parts, add_generation_prompt=False)


def test_template_errors() -> None:
    with pytest.raises(TemplateError, match="does not compile"):
        ChatTemplate("{% if %}")
    with pytest.raises(TemplateError, match="no system messages, please"):
        ChatTemplate(
            "{% if messages[0].role == 'system' %}{{ raise_exception('no system messages, please') }}{% endif %}"
        ).render([SYSTEM, user("x")])
    with pytest.raises(TemplateError, match="cannot render"):
        ChatTemplate("{{ messages[0].content.startswith() }}").render([user("x")])
    with pytest.raises(TemplateError, match="no official"):
        official_template("llama")


def test_sandbox_blocks_attribute_escape() -> None:
    with pytest.raises(TemplateError):
        ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}").render([user("x")])


def test_strftime_now_global() -> None:
    out = ChatTemplate("{{ strftime_now('%Y') }}").render([user("x")])
    assert out.isdigit() and len(out) == 4


# Choosing a template.


def test_load_template_prefers_model_file() -> None:
    own = "{% for m in messages %}{{ m.content }}{% endfor %}"
    assert load_template(own, architecture="qwen3").render([user("x")]) == "x"
    assert load_template(None, architecture="qwen3").source == official_template("qwen3").source
    assert load_template("  ", name_hint="QwQ-32B").source == official_template("qwq").source


@pytest.mark.parametrize(
    ("architecture", "hint", "name"),
    [
        ("qwen3", None, "qwen3"),
        ("qwen3moe", "Qwen3-30B-A3B", "qwen3"),
        ("qwen3moe", "Qwen3-Coder-30B-A3B-Instruct", "qwen3-coder"),
        (None, "qwen3-coder-480b", "qwen3-coder"),
        ("qwen2", "QwQ-32B", "qwq"),
        ("qwen2", "Qwen2.5-Coder-1.5B-Instruct", "qwen2.5"),
        ("qwen2", None, "qwen2.5"),
        (None, None, "qwen2.5"),
        ("qwen2_5_vl", "tiny-vl", "qwen2.5-vl"),
        ("qwen2vl", None, "qwen2.5-vl"),
        (None, "Qwen2.5-VL-3B-Instruct", "qwen2.5-vl"),
        ("qwen35", None, "qwen3.5"),
        ("qwen35moe", "Qwen3.5-35B-A3B", "qwen3.5"),
        ("qwen3_5_text", None, "qwen3.5"),
        ("qwen3_5_moe", None, "qwen3.5"),
        (None, "Qwen3.6-27B", "qwen3.5"),
        ("qwen3next", "Qwen3-Next-80B-A3B-Instruct", "qwen3-next"),
        ("qwen3_next", None, "qwen3-next"),
        ("qwen3next", "Qwen3-Next-80B-A3B-Thinking", "qwen3-next-thinking"),
        (None, "qwen3-next-80b-a3b-thinking", "qwen3-next-thinking"),
        ("qwen3next", "Qwen3-Coder-Next", "qwen3-coder"),
    ],
)
def test_fallback_choice(architecture, hint, name) -> None:
    assert fallback_name(architecture, hint) == name


def test_thinking_capabilities_of_official_templates() -> None:
    caps = {n: (official_template(n).supports_thinking, official_template(n).opens_thinking) for n in NAMES}
    assert caps == {
        "qwen2.5": (False, False),
        "qwen3": (True, False),
        "qwen3-coder": (False, False),
        "qwq": (False, True),
        "qwen2.5-vl": (False, False),
        "qwen3.5": (False, True),
        "qwen3-next": (False, False),
        "qwen3-next-thinking": (False, True),
    }


def test_official_templates_ship_as_package_files() -> None:
    from importlib import resources

    files = {p.name for p in resources.files("qwenkit.chat").joinpath("templates").iterdir()}
    assert set(OFFICIAL.values()) <= files
