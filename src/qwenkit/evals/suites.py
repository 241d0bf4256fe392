"""The suites `qwenkit eval` knows, and the ones it does not run with the reason."""

from __future__ import annotations

from qwenkit.errors import QwenkitError
from qwenkit.evals.humaneval import HumanEval
from qwenkit.evals.ifbench import IFBench
from qwenkit.evals.mmath import MMath
from qwenkit.evals.suite import Suite

SUITES: dict[str, type[Suite]] = {"humaneval": HumanEval, "mmath": MMath, "ifbench": IFBench}

UNAVAILABLE = {
    "mbpp": "no offline copy: evalplus 0.3.1 (PyPI) downloads MBPP+ from GitHub releases at run time",
    "ifeval": "the original IFEval data is not on PyPI; `ifbench` runs IFBench's prompts scored by code",
    "evalplus": "no offline copy: evalplus 0.3.1 (PyPI) ships no data and downloads HumanEval+/MBPP+ at run time",
}


def get(name: str) -> Suite:
    if name in SUITES:
        return SUITES[name]()
    if name in UNAVAILABLE:
        raise QwenkitError(f"suite {name!r} is not available: {UNAVAILABLE[name]}")
    raise QwenkitError(f"unknown suite {name!r} (available: {', '.join(SUITES)})")
