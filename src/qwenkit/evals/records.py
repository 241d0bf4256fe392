"""A run's files under `--out`: `run.json` (settings, then the summary) and `problems.jsonl` (one line per
finished problem, appended as it finishes, which is what makes an interrupted run resumable)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qwenkit.errors import QwenkitError

# settings that change what a problem's record means: a run resumes only if these match
IDENTITY = (
    *("suite", "prompt_format", "model_key", "sha256", "backend", "engine", "quantization"),
    *("think", "thinking_budget", "samples", "sampling", "max_tokens"),
)


class RunRecords:
    """The per-problem JSONL and the run's JSON in one directory."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.run_file = out / "run.json"
        self.problems_file = out / "problems.jsonl"

    def resume(self, settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The finished problems of an earlier run with the same settings (by id); starts the files if new."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self.run_file.exists():
            earlier = json.loads(self.run_file.read_text(encoding="utf-8"))["settings"]
            changed = [key for key in IDENTITY if earlier.get(key) != settings.get(key)]
            if changed:
                raise QwenkitError(
                    f"{self.out} holds a run with other settings ({', '.join(changed)}): use another --out directory"
                )
        self.write_run(settings, None)
        return self._finished()

    def _finished(self) -> dict[str, dict[str, Any]]:
        if not self.problems_file.exists():
            return {}
        finished, good_bytes = {}, 0
        with open(self.problems_file, "rb") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    break  # a line cut short by the interruption: it is redone
                finished[record["id"]] = record
                good_bytes += len(line)
        with open(self.problems_file, "r+b") as f:
            f.truncate(good_bytes)
        return finished

    def append(self, record: dict[str, Any]) -> None:
        with open(self.problems_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def write_run(self, settings: dict[str, Any], summary: dict[str, Any] | None) -> None:
        tmp = self.run_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"settings": settings, "summary": summary}, ensure_ascii=False, indent=2) + "\n")
        tmp.replace(self.run_file)
