"""Regenerate the shipped demo data: `python -m qwenkit.tune.demo`."""

from pathlib import Path

from qwenkit.tune.demo import write

write(Path(__file__).parent)
