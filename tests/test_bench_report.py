"""BENCHMARKS.md is generated from benchmarks/results/: it must be exactly what the results give,
and a section whose result file is missing drops out without taking the others along."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

report = pytest.importorskip("report")


def test_benchmarks_md_is_what_the_results_give():
    assert report.OUTPUT.read_text() == report.render(report.load_results()), (
        "BENCHMARKS.md was edited by hand or the results changed: run `make bench-report`"
    )


def test_sections_are_independent(capsys):
    results = report.load_results()
    del results["serve_load"]
    text = report.render(results)
    assert "## Serving" not in text and "## Engines" in text and "## How to reproduce" in text
    assert "20-serve.md.j2 left out" in capsys.readouterr().err


def test_numbers_come_from_the_result_files():
    results = report.load_results()
    text = report.render(results)
    engines = results["engines_decode"]
    assert f"| {engines['llamacpp_decode_tps']:,.2f} |" in text
    results["engines_decode"] = {**engines, "llamacpp_decode_tps": 12345.678}
    assert "| 12,345.68 |" in report.render(results)


def test_charts_are_drawn_from_results(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "PLOTS", tmp_path)
    drawn = report.draw_charts(report.load_results())
    assert {p.name for p in drawn} == {name for stem, (name, _) in report.CHARTS.items()}
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in drawn)
