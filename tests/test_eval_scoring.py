"""Suites' scoring without a model: HumanEval programs, math answers, pass@k, references, resumable records."""

from __future__ import annotations

import json

import pytest

from qwenkit.errors import QwenkitError
from qwenkit.evals import suites
from qwenkit.evals.humaneval import HumanEval, extract_code, sanitize
from qwenkit.evals.math_answers import equivalent, extract, last_boxed
from qwenkit.evals.mmath import LANGUAGES, MMath
from qwenkit.evals.published import model_key, reference
from qwenkit.evals.records import RunRecords
from qwenkit.evals.sandbox import Limits
from qwenkit.evals.suite import aggregate, pass_at_k


@pytest.fixture(scope="module")
def humaneval_problems():
    return HumanEval().problems()


def test_humaneval_has_164_problems_with_the_instruction_prompt(humaneval_problems):
    assert len(humaneval_problems) == 164
    first = humaneval_problems[0]
    assert first.id == "HumanEval/0" and "def has_close_elements" in first.prompt
    assert first.prompt.startswith("Please provide a self-contained Python script")


def test_canonical_solutions_pass_and_broken_ones_fail(humaneval_problems):
    suite = HumanEval()
    for problem in humaneval_problems[:4]:
        ref = problem.reference
        canonical = f"Here it is:\n```python\n{ref['prompt']}{ref['canonical_solution']}\n```\nDone."
        assert suite.score(problem, canonical).passed, problem.id
        broken = f"```python\n{ref['prompt']}    return None\n```"
        verdict = suite.score(problem, broken)
        assert not verdict.passed and verdict.detail["status"] == "failed"


def test_a_body_without_its_signature_completes_the_prompt(humaneval_problems):
    problem = humaneval_problems[2]  # truncate_number
    assert HumanEval().score(problem, "```python\n    return number % 1.0\n```").passed


def test_a_hanging_answer_is_one_timeout(humaneval_problems, monkeypatch):
    from qwenkit.evals import humaneval

    monkeypatch.setattr(humaneval, "LIMITS", Limits(wall_seconds=1))
    answer = "```python\ndef truncate_number(number):\n    while True:\n        pass\n```"
    verdict = HumanEval().score(humaneval_problems[2], answer)
    assert not verdict.passed and verdict.detail["status"] == "timeout"


def test_code_extraction_prefers_the_block_defining_the_entry_point():
    answer = "Use it like:\n```python\nprint(f(2))\n```\nCode:\n```python\ndef f(x):\n    return x\n```"
    assert extract_code(answer, "f") == "def f(x):\n    return x\n"
    assert extract_code("def f(x): return 1", "f") == "def f(x): return 1"
    assert extract_code("```python\ndef f(x):\n    return 1", "f") == "def f(x):\n    return 1"  # cut off


def test_sanitize_keeps_definitions_and_drops_stray_lines():
    assert sanitize("python\ndef f(x):\n    return x\nprint(f(1))\n") == "def f(x):\n    return x"
    code = "import os\nassert f(1) == 1\n@cache\ndef f(x):\n    return x\nif __name__ == '__main__':\n    f(2)\n"
    assert sanitize(code) == "import os\n\n@cache\ndef f(x):\n    return x"


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0
    assert pass_at_k(10, 1, 5) == pytest.approx(0.5)


def test_aggregate_reports_pass_at_1_and_k_overall_and_per_group():
    records = [
        {"group": "en", "n": 2, "correct": 2},
        {"group": "en", "n": 2, "correct": 0},
        {"group": "zh", "n": 2, "correct": 1},
    ]
    result = aggregate(records, samples=2)
    assert result["pass@1"] == 50.0 and result["pass@2"] == pytest.approx(66.67)
    assert result["groups"]["en"]["pass@1"] == 50.0 and result["groups"]["zh"]["pass@2"] == 100.0


@pytest.mark.parametrize(
    ("text", "answer", "how"),
    [
        ("so the result is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}", "boxed"),
        ("first \\boxed{3}, corrected: \\boxed{x^{2}+1}", "x^{2}+1", "boxed"),
        ("The final answer is $204$.", "204", "plain"),
        ("答案: 17", "17", "plain"),
        ("We get 3 apples and then 12 pears", "12", "plain"),
        ("no idea", None, "none"),
    ],
)
def test_answer_extraction(text, answer, how):
    assert extract(text) == (answer, how)


def test_an_unclosed_box_is_no_box():
    assert last_boxed("\\boxed{1 + ") is None


@pytest.mark.parametrize(
    ("gold", "answer", "same"),
    [
        ("\\frac{1}{2}", "0.5", True),
        ("\\frac{1}{2}", "\\dfrac{1}{2}", True),
        ("204", "204", True),
        ("3\\sqrt{2}", "\\sqrt{18}", True),
        ("(1,2)", "(1, 2)", True),
        ("204", "205", False),
        ("\\frac{1}{2}", "\\frac{1}{3}", False),
    ],
)
def test_math_equivalence(gold, answer, same):
    assert equivalent(gold, answer) is same


def test_mmath_has_374_problems_in_10_languages_and_limit_keeps_them_all():
    suite = MMath()
    problems = suite.problems()
    assert len(problems) == 3740
    assert [p.group for p in suite.select(10)] == list(LANGUAGES)
    en = next(p for p in problems if p.id == "en/0")
    assert en.prompt.endswith("\\boxed{}.") and en.reference["answer"] == "204"
    assert suite.score(en, "... so it takes \\boxed{204} minutes").passed
    assert not suite.score(en, "\\boxed{240}").passed


def test_published_numbers_match_model_and_file_names():
    assert model_key("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") == "qwen2.5-coder-0.5b-instruct"
    ref = reference("humaneval", "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF")
    assert ref is not None and ref.value == 70.7
    assert reference("humaneval", "qwen2.5-0.5b-instruct").value == 35.4
    assert reference("humaneval", "my-finetune") is None


def test_unavailable_suites_say_why():
    with pytest.raises(QwenkitError, match="downloads"):
        suites.get("mbpp")
    with pytest.raises(QwenkitError, match="unknown suite"):
        suites.get("nope")


def test_records_resume_only_matching_settings_and_drop_a_cut_line(tmp_path):
    records = RunRecords(tmp_path)
    settings = {"suite": "humaneval", "sha256": "abc", "samples": 1}
    assert records.resume(settings) == {}
    records.append({"id": "a", "group": "all", "n": 1, "correct": 1, "samples": []})
    with open(records.problems_file, "a") as f:
        f.write('{"id": "b", "gro')  # interrupted mid-line
    assert list(RunRecords(tmp_path).resume(settings)) == ["a"]
    assert records.problems_file.read_text().count("\n") == 1
    with pytest.raises(QwenkitError, match="other settings"):
        RunRecords(tmp_path).resume({**settings, "samples": 5})
    assert json.loads(records.run_file.read_text())["settings"] == settings
