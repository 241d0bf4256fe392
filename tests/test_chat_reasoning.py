"""The <think> splitter: streamed in any pieces it must equal the one-shot split and the spec."""

from __future__ import annotations

import random

import pytest

from qwenkit.chat import ReasoningParser, split_reasoning


def spec_split(text: str, starts_in_thinking: bool) -> tuple[str, str]:
    """The documented rules, written independently of the streaming parser."""
    opened = text.startswith("<think>")
    body = text[len("<think>") :] if opened else text
    if not (opened or starts_in_thinking):
        return "", body
    body = body.lstrip("\n")
    end = body.find("</think>")
    if end < 0:
        return body, ""
    return body[:end].rstrip("\n"), body[end + len("</think>") :].lstrip("\n")


def piecewise(text: str) -> list[list[str]]:
    """Every two-piece split, one character at a time, and some random splits."""
    out = [[text[:i], text[i:]] for i in range(len(text) + 1)]
    out.append(list(text))
    rng = random.Random(len(text))
    for _ in range(5):
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, 4)))
        out.append([text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=False)])
    return out


def stream(pieces: list[str], starts_in_thinking: bool) -> tuple[str, str]:
    parser = ReasoningParser(starts_in_thinking)
    reasoning = content = ""
    for piece in pieces:
        r, c = parser.feed(piece)
        reasoning, content = reasoning + r, content + c
    r, c = parser.finish()
    return reasoning + r, content + c


CORPUS = [
    ("<think>\nLet me think.\n</think>\n\nThe answer is 4.", False, "Let me think.", "The answer is 4."),
    ("<think>\nLet me think.\n</think>\n\nThe answer is 4.", True, "Let me think.", "The answer is 4."),
    ("Let me think.\n</think>\n\nFour.", True, "Let me think.", "Four."),  # QwQ: no opening tag
    ("Let me think.\n</think>\n\nFour.", False, "", "Let me think.\n</think>\n\nFour."),
    ("Just an answer.\n", False, "", "Just an answer.\n"),
    ("Still thinking when cut off", True, "Still thinking when cut off", ""),
    ("<think>\nunfinished\n\n", False, "unfinished\n\n", ""),
    ("<think>\n\n</think>\n\nHi", False, "", "Hi"),
    ("</think>\n\nDirect.", True, "", "Direct."),
    ("<think>a</think>b</think>c", False, "a", "b</think>c"),
    ("x<think>y</think>z", False, "", "x<think>y</think>z"),
    ("\n<think>y</think>z", False, "", "\n<think>y</think>z"),
    ("<thinking>not a tag", False, "", "<thinking>not a tag"),
    ("<", False, "", "<"),
    ("<thi", True, "<thi", ""),
    ("reason\n\n</thi", True, "reason\n\n</thi", ""),
    ("Line1\n\nLine2\n</think>\n\n\nAnswer\n\nmore\n", True, "Line1\n\nLine2", "Answer\n\nmore\n"),
    ("<think>\n<tool_call>\n{}\n</tool_call>\n</think>\n\nok", False, "<tool_call>\n{}\n</tool_call>", "ok"),
    ("<think>\n数学🎉 </ think>\n</think>\n\n答案", False, "数学🎉 </ think>", "答案"),
    ("<think>a</think>", True, "a", ""),
    ("", True, "", ""),
    ("", False, "", ""),
]


@pytest.mark.parametrize(("text", "starts", "reasoning", "content"), CORPUS)
def test_corpus_at_every_split(text: str, starts: bool, reasoning: str, content: str) -> None:
    assert split_reasoning(text, starts) == (reasoning, content) == spec_split(text, starts)
    for pieces in piecewise(text):
        assert stream(pieces, starts) == (reasoning, content), pieces


def test_random_texts_agree_with_spec() -> None:
    rng = random.Random(0)
    atoms = ["<think>", "</think>", "<", "</", "<th", "think>", "\n", "\n\n", "a", "b c", "é", ">"]
    for _ in range(400):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(0, 10)))
        for starts in (False, True):
            want = spec_split(text, starts)
            assert split_reasoning(text, starts) == want, text
            for pieces in piecewise(text)[:: max(1, len(text) // 5)]:
                assert stream(pieces, starts) == want, pieces


def test_holds_back_only_a_possible_tag() -> None:
    parser = ReasoningParser(starts_in_thinking=True)
    assert parser.feed("I think 2+2") == ("I think 2+2", "")
    assert parser.feed(" is 4\n</th") == (" is 4", "")
    assert parser.feed("ink>\n\nFo") == ("", "Fo")
    assert parser.feed("ur <think> </think>") == ("", "ur <think> </think>")
    assert parser.finish() == ("", "")


def test_start_of_output_waits_only_while_it_could_be_think() -> None:
    parser = ReasoningParser(starts_in_thinking=False)
    assert parser.feed("<th") == ("", "")
    assert parser.feed("e end") == ("", "<the end")
    parser = ReasoningParser(starts_in_thinking=False)
    assert parser.feed("<think") == ("", "")
    assert parser.feed(">\nhm") == ("hm", "")
