"""The Qwen chat layer: templates, thinking mode, output parsing, sampling defaults, prompts.

It knows Qwen, not HTTP and not engines: a server renders a `ChatPrompt` with `build_prompt`,
tokenizes and generates with an engine, and feeds the text to an `OutputParser`.
"""

from qwenkit.chat.messages import normalize_messages, normalize_tools
from qwenkit.chat.output import Delta, OutputParser, ParsedOutput
from qwenkit.chat.prompts import coding_messages, math_messages, multilingual_messages
from qwenkit.chat.reasoning import ReasoningParser, split_reasoning
from qwenkit.chat.sampling import sampling_defaults
from qwenkit.chat.template import ChatTemplate, close_thinking, load_template, official_template
from qwenkit.chat.thinking import ChatPrompt, build_prompt, resolve_thinking, soft_switch
from qwenkit.chat.tools import ToolCall, ToolCallPart, ToolParser, parser_for, tool_format

__all__ = [
    "ChatPrompt",
    "ChatTemplate",
    "Delta",
    "OutputParser",
    "ParsedOutput",
    "ReasoningParser",
    "ToolCall",
    "ToolCallPart",
    "ToolParser",
    "build_prompt",
    "close_thinking",
    "coding_messages",
    "load_template",
    "math_messages",
    "multilingual_messages",
    "normalize_messages",
    "normalize_tools",
    "official_template",
    "parser_for",
    "resolve_thinking",
    "sampling_defaults",
    "soft_switch",
    "split_reasoning",
    "tool_format",
]
