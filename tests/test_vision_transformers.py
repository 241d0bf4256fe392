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


def test_an_image_sent_again_is_not_encoded_again(vl_model: Model) -> None:
    encoder = vl_model.engine.worker.encoder  # type: ignore[attr-defined]
    image = picture((77, 11, 200), (70, 50))
    encoded, hits = encoder.encoded, encoder.hits
    first = vl_model.chat(ask(image), **GREEDY)
    assert (encoder.encoded, encoder.hits) == (encoded + 1, hits)
    follow = [*ask(image), first.as_message(), {"role": "user", "content": "And now?"}]
    vl_model.chat(follow, **GREEDY)  # the image's tokens come from the prefix cache: no encoding at all
    assert (encoder.encoded, encoder.hits) == (encoded + 1, hits)
    other = [{"role": "system", "content": "Be brief."}, *ask(image)]  # shares no prefix: the image is needed
    vl_model.chat(other, **GREEDY)
    assert (encoder.encoded, encoder.hits) == (encoded + 1, hits + 1)  # the tower ran once for three turns


def test_an_image_request_joins_a_running_batch(vl_model: Model) -> None:
    """The image row is prefilled on its own and merged into a text row already decoding."""
    engine: Any = vl_model.engine
    long = {"max_tokens": 160, "temperature": 0}
    text_turn = vl_model.prepare("Count slowly", **long)
    image_turn = vl_model.prepare(ask(picture((0, 160, 160))), **GREEDY)
    alone = [
        vl_model.chat("Count slowly", **long).content,
        vl_model.chat(ask(picture((0, 160, 160))), **GREEDY).content,
    ]
    text_out: queue.Queue[Chunk] = queue.Queue()
    image_out: queue.Queue[Chunk] = queue.Queue()
    engine.submit(text_turn.prompt, text_turn.params, text_out.put)
    first = text_out.get(timeout=120)  # the text row is decoding
    engine.submit(image_turn.prompt, image_turn.params, image_out.put, images=image_turn.images)
    running = []
    texts = []
    for out, head in ((text_out, [first]), (image_out, [])):
        chunks = list(head)
        while not chunks or chunks[-1].finish_reason is None:
            chunks.append(out.get(timeout=120))
            running.append(engine.stats().running)
        texts.append("".join(c.text for c in chunks))
    assert texts == alone
    assert max(running) == 2  # the image row decoded beside the text row


# ----- the prefix cache -------------------------------------------------------------------


@pytest.fixture(scope="module")
def vl_uncached(tiny_hf_qwen2_vl: Path) -> Iterator[Model]:
    from qwenkit.engines.transformers import TransformersEngine, TransformersSettings

    engine = TransformersEngine(tiny_hf_qwen2_vl, TransformersSettings(n_threads=2, prefix_cache_tokens=0))
    arch = engine.architecture()
    model = Model(engine, load_template(engine.chat_template(), architecture=arch), name="tiny-vl", architecture=arch)
    yield model
    model.close()


def _image_span(model: Model, messages: list[dict[str, Any]]) -> tuple[int, int]:
    engine: Any = model.engine
    turn = model.prepare(messages, **GREEDY)
    (span,) = engine.images.prepare(turn.prompt, turn.images).spans
    return span


def test_a_follow_up_turn_with_the_same_image_reuses_the_cache(vl_model: Model, vl_uncached: Model) -> None:
    image = picture((200, 120, 40), (120, 90))  # 12 tokens
    start, end = _image_span(vl_model, ask(image))
    conversation: list[dict[str, Any]] = ask(image, "Describe it.")
    for turn in range(3):
        cached, plain = vl_model.chat(conversation, **GREEDY), vl_uncached.chat(conversation, **GREEDY)
        assert cached.content == plain.content and plain.usage.cached_prompt_tokens == 0
        if turn:
            assert cached.usage.cached_prompt_tokens > end > start + 10  # past the image, more than its tokens
        conversation += [cached.as_message(), {"role": "user", "content": f"And then, part {turn}?"}]
    # text after text-only turns on the vision model, and a second image later in the conversation
    text = [{"role": "user", "content": "Tell me a long story about the sea and its tides."}]
    assert vl_model.chat(text, **GREEDY).content == vl_uncached.chat(text, **GREEDY).content
    text += [vl_uncached.chat(text, **GREEDY).as_message(), *ask(picture((5, 90, 220)), "And this one?")]
    cached, plain = vl_model.chat(text, **GREEDY), vl_uncached.chat(text, **GREEDY)
    assert cached.content == plain.content and cached.usage.cached_prompt_tokens > 16


def test_different_images_at_one_position_share_nothing(vl_model: Model, vl_uncached: Model) -> None:
    first, second = picture((10, 250, 10), (120, 90)), picture((250, 10, 250), (120, 90))
    start, end = _image_span(vl_model, ask(first))
    assert _image_span(vl_model, ask(second)) == (start, end)
    vl_model.chat(ask(first, "Which colour?"), **GREEDY)
    answer = vl_model.chat(ask(second, "Which colour?"), **GREEDY)
    assert answer.usage.cached_prompt_tokens <= start  # at most the text before the image
    assert answer.content == vl_uncached.chat(ask(second, "Which colour?"), **GREEDY).content


def test_a_decompression_bomb_is_a_bad_request() -> None:
    """An image past Pillow's pixel limit is the client's error (400), not a server failure."""
    import hashlib
    import struct
    import zlib

    from qwenkit.engines.base import ImageInput
    from qwenkit.engines.transformers.vision import _decode

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)  # 30000x30000 RGB: past 2x the limit
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    with pytest.raises(BadRequest, match="cannot be decoded"):
        _decode(ImageInput(data, hashlib.sha256(data).hexdigest(), 30000, 30000))
