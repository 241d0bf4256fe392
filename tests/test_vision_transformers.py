"""Images on the transformers engine, on v14b's tiny random Qwen2.5-VL checkpoint (real tokenizer)."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from qwenkit.chat import load_template
from qwenkit.chat.vision import IMAGE_SLOT
from qwenkit.engines.base import Chunk, SamplingParams
from qwenkit.errors import BadRequest
from qwenkit.model import Model

GREEDY = {"max_tokens": 6, "temperature": 0}


@pytest.fixture(scope="module")
def vl_model(tiny_hf_qwen2_vl: Path) -> Iterator[Model]:
    from qwenkit.engines.transformers import TransformersEngine, TransformersSettings

    engine = TransformersEngine(tiny_hf_qwen2_vl, TransformersSettings(n_threads=2, n_parallel=4))
    arch = engine.architecture()
    model = Model(engine, load_template(engine.chat_template(), architecture=arch), name="tiny-vl", architecture=arch)
    yield model
    model.close()


def picture(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> Image.Image:
    image = Image.new("RGB", size, color)
    image.putpixel((1, 1), (255 - color[0], 0, 0))
    return image


def ask(image: Any, text: str = "What is this?") -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]


def test_the_engine_takes_images(vl_model: Model) -> None:
    assert vl_model.engine.vision() and vl_model.template.takes_images


def test_an_image_is_attended_to(vl_model: Model) -> None:
    red = vl_model.chat(ask(picture((250, 0, 0))), **GREEDY)
    blue = vl_model.chat(ask(picture((0, 0, 250))), **GREEDY)
    again = vl_model.chat(ask(picture((250, 0, 0))), **GREEDY)
    text_only = vl_model.chat("What is this?", **GREEDY)
    assert red.content == again.content
    assert red.content != blue.content
    assert red.content != text_only.content
    # usage counts the expanded prompt: a 64x48 image is 4 tokens (one 28x28 cell each) in place of one slot
    rendered = vl_model.prepare(ask(picture((250, 0, 0))), **GREEDY)
    assert red.usage.prompt_tokens == len(rendered.prompt) - 1 + 4


def test_greedy_tokens_match_transformers_generate(vl_model: Model, tiny_hf_qwen2_vl: Path) -> None:
    """The worker's batched prefill + M-RoPE against the model's own `generate` on the same inputs."""
    import torch

    engine: Any = vl_model.engine
    turn = vl_model.prepare(ask(picture((10, 200, 30), (90, 60))), max_tokens=8, temperature=0)
    inputs = engine.images.prepare(turn.prompt, turn.images)
    ids = torch.tensor([inputs.prompt])
    reference = engine.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=inputs.pixel_values,
        image_grid_thw=inputs.grid_thw,
        mm_token_type_ids=(ids == engine.images.image_pad).int(),
        max_new_tokens=8,
        min_new_tokens=8,
        do_sample=False,
        repetition_penalty=1.0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    expected = reference.sequences[0, ids.shape[1] :].tolist()
    params = SamplingParams(max_tokens=8, temperature=0, logprobs=0)
    chunks = list(engine.generate(turn.prompt, params, images=turn.images))
    ours = [t for chunk in chunks for t in chunk.token_ids]
    logprobs = [lp.logprob for chunk in chunks for lp in chunk.logprobs or []]
    assert ours == expected[: len(ours)] and len(ours) >= 2
    for step, (token, logprob) in enumerate(zip(ours, logprobs, strict=True)):
        want = torch.log_softmax(reference.logits[step][0].float(), dim=-1)[token].item()
        assert logprob == pytest.approx(want, abs=2e-4)  # every decode step at the same M-RoPE positions


def test_image_and_text_requests_decode_in_one_batch(vl_model: Model) -> None:
    engine: Any = vl_model.engine
    turns = [vl_model.prepare(ask(picture((250, 0, 0))), **GREEDY), vl_model.prepare("Hi there", **GREEDY)]
    alone = [vl_model.chat(ask(picture((250, 0, 0))), **GREEDY).content, vl_model.chat("Hi there", **GREEDY).content]
    chunks: list[queue.Queue[Chunk]] = [queue.Queue(), queue.Queue()]
    running: list[int] = []
    with engine.worker._cv:  # both wait in the queue when the step loop next admits: one prefill, one batch
        for turn, out in zip(turns, chunks, strict=True):
            engine.submit(turn.prompt, turn.params, out.put, images=turn.images)
    texts = []
    for out in chunks:
        parts = []
        while True:
            chunk = out.get(timeout=120)
            running.append(engine.stats().running)
            parts.append(chunk.text)
            if chunk.finish_reason is not None:
                break
        texts.append("".join(parts))
    assert texts == alone
    assert max(running) == 2  # the two rows ran side by side


def test_image_max_tokens_bounds_an_image(tiny_hf_qwen2_vl: Path) -> None:
    from qwenkit.engines.transformers import TransformersEngine, TransformersSettings

    engine = TransformersEngine(tiny_hf_qwen2_vl, TransformersSettings(n_threads=2, image_max_tokens=4))
    try:
        big = Model(engine, load_template(engine.chat_template()), name="vl", architecture=None)
        turn = big.prepare(ask(picture((0, 90, 0), (400, 300))), **GREEDY)
        result = big.chat(ask(picture((0, 90, 0), (400, 300))), **GREEDY)
        assert len(turn.prompt) < result.usage.prompt_tokens <= len(turn.prompt) - 1 + 4
    finally:
        engine.close()


def test_rendering_matches_the_official_template(vl_model: Model, tiny_hf_qwen2_vl: Path) -> None:
    from transformers import AutoTokenizer

    from qwenkit.chat.template import official_template
    from qwenkit.testing.tiny_vl import QWEN25_VL_TEMPLATE

    assert official_template("qwen2.5-vl").source == QWEN25_VL_TEMPLATE  # two transcriptions agree
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Compare "}, {"type": "image", "image": picture((1, 2, 3))}],
        },
        {"role": "assistant", "content": "They differ."},
        {"role": "user", "content": [{"type": "image", "image": picture((9, 9, 9))}, {"type": "text", "text": "And?"}]},
    ]
    hf = AutoTokenizer.from_pretrained(str(tiny_hf_qwen2_vl))
    for vision_id in (False, True):
        expected = hf.apply_chat_template(
            [{**m, "content": _plain(m["content"])} for m in messages],
            add_generation_prompt=True,
            tokenize=False,
            add_vision_id=vision_id,
        )
        turn = vl_model.prepare(messages, add_vision_id=vision_id, **GREEDY)
        assert vl_model.engine.detokenize(turn.prompt) == expected
        assert expected.count(IMAGE_SLOT) == len(turn.images) == 2


def _plain(content: Any) -> Any:
    return content if isinstance(content, str) else [{"type": p["type"], "text": p.get("text", "")} for p in content]


def test_user_text_cannot_inject_an_image_slot(vl_model: Model) -> None:
    # the literal vision tokens in text: refused (they would become a slot, or break the count)
    for text in (IMAGE_SLOT, "look: <|image_pad|>", "<|vision_start|>x"):
        with pytest.raises(BadRequest, match="vision tokens"):
            vl_model.prepare([{"role": "user", "content": text}], **GREEDY)
        with pytest.raises(BadRequest, match="vision tokens"):
            vl_model.prepare(ask(picture((1, 1, 1)), text), **GREEDY)
    # text that looks like a media marker stays text: no image slot, no image
    fake = "<__qwenkit_media_00000000000000000000000000000000__>"
    turn = vl_model.prepare([{"role": "user", "content": fake}], **GREEDY)
    image_pad = vl_model.engine.tokenize("<|image_pad|>")[0]
    assert image_pad not in turn.prompt and fake in vl_model.engine.detokenize(turn.prompt)


def test_the_engine_refuses_mismatched_image_slots(vl_model: Model) -> None:
    turn = vl_model.prepare(ask(picture((5, 5, 5))), **GREEDY)
    with pytest.raises(BadRequest, match="1 image slots for 0 images"):
        vl_model.engine.submit(turn.prompt, turn.params, lambda c: None)
    with pytest.raises(BadRequest, match="prompt_logprobs"):
        vl_model.engine.submit(turn.prompt, SamplingParams(prompt_logprobs=1), lambda c: None, images=turn.images)


def test_a_text_only_model_refuses_images(tiny_qwen2: Path) -> None:
    import qwenkit

    with (
        qwenkit.load(str(tiny_qwen2), n_ctx=256, n_threads=1, progress=False) as model,
        pytest.raises(BadRequest, match="takes text only"),
    ):
        model.prepare(ask(picture((1, 2, 3))))


def test_python_api_takes_paths_bytes_pil_and_data_uris(vl_model: Model, tmp_path: Path) -> None:
    import base64
    import io

    image = picture((30, 60, 90))
    encoded = io.BytesIO()
    image.save(encoded, format="PNG")
    data = encoded.getvalue()
    (tmp_path / "p.png").write_bytes(data)
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    sources: list[Any] = [image, data, tmp_path / "p.png", str(tmp_path / "p.png")]
    answers = {vl_model.chat(ask(source), **GREEDY).content for source in sources}
    openai_part = [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": "What is this?"}]
    answers.add(vl_model.chat([{"role": "user", "content": openai_part}], **GREEDY).content)
    assert len(answers) == 1  # one picture, however it is given
    # a follow-up turn repeating the image: no prompt-prefix cache on this engine, nothing is reported cached
    # (the image itself is not encoded again: see the next test)
    first = vl_model.chat(ask(image), **GREEDY)
    follow = [*ask(image), first.as_message(), {"role": "user", "content": "And now?"}]
    assert vl_model.chat(follow, **GREEDY).usage.cached_prompt_tokens == 0


def test_an_image_sent_again_is_not_encoded_again(vl_model: Model) -> None:
    encoder = vl_model.engine.worker.encoder  # type: ignore[attr-defined]
    image = picture((77, 11, 200), (70, 50))
    encoded, hits = encoder.encoded, encoder.hits
    first = vl_model.chat(ask(image), **GREEDY)
    assert (encoder.encoded, encoder.hits) == (encoded + 1, hits)
    follow = [*ask(image), first.as_message(), {"role": "user", "content": "And now?"}]
    vl_model.chat(follow, **GREEDY)
    again = vl_model.chat(ask(image), **GREEDY)
    assert (encoder.encoded, encoder.hits) == (encoded + 1, hits + 2)  # the tower ran once for three turns
    assert again.content == first.content
