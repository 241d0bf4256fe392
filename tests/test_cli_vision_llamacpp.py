"""`qwenkit run --image` on the llama.cpp engine: a tiny Qwen2.5-VL GGUF with `--mmproj`, the same
answer as the transformers engine gives on the checkpoint it was converted from."""

from __future__ import annotations

import json

from test_cli import THREADS, check_ok, check_one_line_error, cli


def test_run_image_on_llamacpp_matches_transformers(tiny_vl_gguf, tiny_hf_qwen2_vl, tmp_path):
    from PIL import Image

    picture = tmp_path / "square.png"
    Image.new("RGB", (84, 84), (30, 140, 220)).save(picture)  # 3x3 tokens on both engines
    model, mmproj = tiny_vl_gguf
    common = ("Describe", "-i", str(picture), "-n", "6", "--temperature", "0", "--json", "-t", THREADS)
    llama = cli("run", *common, "-m", str(model), "--mmproj", str(mmproj))
    check_ok(llama)
    tf = cli("run", *common, "-m", str(tiny_hf_qwen2_vl), "--engine", "transformers")
    check_ok(tf)
    a, b = json.loads(llama.stdout), json.loads(tf.stdout)
    assert a["text"] == b["text"] and a["usage"]["prompt_tokens"] == b["usage"]["prompt_tokens"]
    without = cli("run", *common, "-m", str(model))  # no projector: a text-only model
    check_one_line_error(without, "takes text only")
