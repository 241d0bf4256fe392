"""A vision catalogue name brings its projector: `qwenkit pull` fetches the GGUF and its mmproj
from a local fake Hub, and loading the name gives a llama.cpp engine that takes images."""

from __future__ import annotations

import subprocess
import sys

from fake_hub import FakeHub
from serve_helpers import start_server
from test_serve_vision import data_uri, image_message, png

REPO = "ggml-org/Qwen2.5-VL-3B-Instruct-GGUF"  # what qwen2.5-vl-3b-instruct names (q4_k_m, mmproj f16)
MODEL, MMPROJ = "Qwen2.5-VL-3B-Instruct-Q4_K_M.gguf", "mmproj-Qwen2.5-VL-3B-Instruct-f16.gguf"

LOAD = """
import qwenkit
m = qwenkit.load("qwen2.5-vl-3b-instruct", n_ctx=256, n_threads=2, progress=False)
print(m.engine.vision(), m.engine.settings.mmproj.name)
m.close()
"""


def run(hub: FakeHub, home, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=hub.env(home), timeout=300)


def test_pull_fetches_the_mmproj_and_the_name_loads_the_pair(tiny_vl_gguf, tmp_path):
    model, mmproj = tiny_vl_gguf
    with FakeHub() as hub:
        hub.add(REPO, MODEL, model.read_bytes())
        hub.add(REPO, MMPROJ, mmproj.read_bytes())
        res = run(hub, tmp_path, "-c", "from qwenkit.cli import main; main()", "pull", "qwen2.5-vl-3b-instruct")
        assert res.returncode == 0, res.stderr
        for name, source in [(MODEL, model), (MMPROJ, mmproj)]:
            assert (tmp_path / "hf" / REPO / name).read_bytes() == source.read_bytes()
        res = run(hub, tmp_path, "-c", LOAD)
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == ["True", MMPROJ]
        # the server loads the pair by the catalogue name alone
        with start_server("qwen2.5-vl-3b-instruct", "--served-model-name", "m", env=hub.env(tmp_path)) as server:
            reply = server.client().chat.completions.create(
                model="m", messages=image_message(data_uri(png((5, 90, 200), (84, 84)))), max_tokens=3
            )
            assert reply.usage is not None and reply.usage.prompt_tokens > 9
