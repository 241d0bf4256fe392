"""`qwenkit serve` refuses, with the estimate, a model and context that will not fit."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from qwenkit.catalog import device
from qwenkit.cli import app
from qwenkit.cli.serve import check_fits
from qwenkit.errors import QwenkitError


def test_refused_up_front_with_the_estimate(tiny_qwen2, monkeypatch):
    monkeypatch.setattr(device, "host_memory", lambda: (1 << 30, 64 << 20))  # 64 MiB available
    with pytest.raises(QwenkitError, match=r"needs 0\.\d GiB \(weights .* llama\.cpp dry run\) but 0\.1 GiB") as exc:
        check_fits(tiny_qwen2, 2048, 4)
    assert "--skip-memory-check" in str(exc.value)


def test_a_model_that_fits_passes(tiny_qwen2, monkeypatch, capsys):
    monkeypatch.setattr(device, "host_memory", lambda: (64 << 30, 32 << 30))
    check_fits(tiny_qwen2, 2048, 4)
    assert "memory: needs" in capsys.readouterr().err


@pytest.mark.integration
def test_serve_refuses_a_context_the_machine_cannot_hold(source_gguf, monkeypatch):
    monkeypatch.setattr(device, "host_memory", lambda: (8 << 30, 4 << 30))
    res = CliRunner().invoke(app, ["serve", "-m", str(source_gguf), "--ctx", "32768", "--parallel", "16"])
    assert isinstance(res.exception, QwenkitError)
    assert "kv 6.00" in str(res.exception) and "4.0 GiB is available" in str(res.exception)  # 12 KiB x 32768 x 16
