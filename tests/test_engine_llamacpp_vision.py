"""The llama.cpp engine with images (Qwen2.5-VL through libmtmd), on the tiny random VL GGUF + mmproj.

Greedy output of a random model is meaningless but deterministic and sensitive to every input
embedding and position, so a wrong image, a shared cache that should not be, or a wrong M-RoPE
position shows up as different tokens.
"""

from __future__ import annotations

import hashlib
import io
import os
import queue

import numpy as np
import pytest
from engine_helpers import ids_of
from PIL import Image

from qwenkit.engines.base import Chunk, ImageInput, SamplingParams
from qwenkit.engines.llamacpp import LlamaCppEngine, LlamaCppSettings
from qwenkit.errors import BadRequest, ModelLoadError

THREADS = int(os.environ.get("QWENKIT_TEST_THREADS", "2"))
IMAGE_SLOT = "<|vision_start|><|image_pad|><|vision_end|>"
SIDE = 84  # 3x3 LLM tokens; a size both llama.cpp and transformers keep as is (multiple of 28, in limits)


def image(seed: int, side: int = SIDE, fmt: str = "PNG") -> ImageInput:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    data = buf.getvalue()
    return ImageInput(data, hashlib.sha256(data).hexdigest(), side, side)


def prompt_text(user: str, n_images: int = 1) -> str:
    return f"<|im_start|>user\n{IMAGE_SLOT * n_images}{user}<|im_end|>\n<|im_start|>assistant\n"


def generate(engine, text, images=(), max_tokens=8) -> list[Chunk]:
    ids = engine.tokenize(text) if isinstance(text, str) else list(text)
    chunks = list(engine.generate(ids, SamplingParams(temperature=0.0, max_tokens=max_tokens), images=images))
    assert chunks[-1].finish_reason in ("length", "stop"), chunks[-1]
    return chunks


@pytest.fixture(scope="module")
def vl_engine(tiny_vl_gguf):
    model, mmproj = tiny_vl_gguf
    engine = LlamaCppEngine(model, LlamaCppSettings(n_ctx=512, n_parallel=3, n_threads=THREADS, mmproj=mmproj))
    yield engine
    engine.close()


def fresh(engine: LlamaCppEngine) -> None:
    """Drop every slot's cache (as if the engine had just started)."""
    engine.scheduler.call(lambda: [engine.scheduler._forget(slot) for slot in engine.scheduler.slots])


def test_engine_takes_images_only_with_an_mmproj(vl_engine, tiny_vl_gguf, tiny_qwen2):
    assert vl_engine.vision()
    text_only = LlamaCppEngine(tiny_qwen2, LlamaCppSettings(n_ctx=256, n_threads=THREADS))
    try:
        assert not text_only.vision()
        with pytest.raises(BadRequest, match="text only"):
            generate(text_only, prompt_text("hi"), [image(0)])
    finally:
        text_only.close()


def test_an_image_is_attended_and_different_images_differ(vl_engine):
    fresh(vl_engine)
    a = ids_of(generate(vl_engine, prompt_text("Describe."), [image(0)]))
    b = ids_of(generate(vl_engine, prompt_text("Describe."), [image(1)]))
    none = ids_of(generate(vl_engine, prompt_text("Describe.", 0)))
    assert a != b
    assert a != none and b != none


def test_the_same_image_gives_the_same_output_cached_or_not(vl_engine):
    fresh(vl_engine)
    first = ids_of(generate(vl_engine, prompt_text("Describe."), [image(2)]))
    again = ids_of(generate(vl_engine, prompt_text("Describe."), [image(2)]))  # prefix cache + encoder cache
    fresh(vl_engine)
    encoded = vl_engine.vision_tower.encoded
    rerun = ids_of(generate(vl_engine, prompt_text("Describe."), [image(2)]))  # KV gone, encoder output cached
    assert first == again == rerun
    assert vl_engine.vision_tower.encoded == encoded


def test_two_images_in_one_prompt_in_order(vl_engine):
    fresh(vl_engine)
    ab = ids_of(generate(vl_engine, prompt_text("Compare.", 2), [image(3), image(4)]))
    ba = ids_of(generate(vl_engine, prompt_text("Compare.", 2), [image(4), image(3)]))
    assert ab != ba


def test_image_and_text_requests_batch_together(vl_engine):
    fresh(vl_engine)
    jobs = [
        (prompt_text("Describe."), [image(5)]),
        (prompt_text("Hello there, how are you?", 0), []),
        (prompt_text("What is it?"), [image(6)]),
    ]
    alone = []
    for text, images in jobs:
        fresh(vl_engine)
        alone.append(ids_of(generate(vl_engine, text, images)))
    fresh(vl_engine)
    inbox: queue.Queue[Chunk] = queue.Queue()
    params = SamplingParams(temperature=0.0, max_tokens=8)
    outs: list[list[Chunk]] = [[], [], []]
    for i, (text, images) in enumerate(jobs):
        vl_engine.submit(vl_engine.tokenize(text), params, lambda c, i=i: inbox.put((i, c)), images=images)
    done = 0
    while done < len(jobs):
        i, chunk = inbox.get(timeout=120)
        outs[i].append(chunk)
        done += chunk.finish_reason is not None
    assert [ids_of(o) for o in outs] == alone


def test_follow_up_turn_reuses_the_image_from_the_cache(vl_engine):
    fresh(vl_engine)
    first_text = prompt_text("Describe.")
    first = generate(vl_engine, first_text, [image(7)])
    encoded = vl_engine.vision_tower.encoded
    reply = ids_of(first)
    follow = (
        vl_engine.tokenize(first_text)
        + reply
        + vl_engine.tokenize("<|im_end|>\n<|im_start|>user\nAnd the colours?<|im_end|>\n<|im_start|>assistant\n")
    )
    second = generate(vl_engine, follow, [image(7)])
    image_tokens = (SIDE // 28) ** 2
    assert second[-1].prompt_tokens == len(follow) - 1 + image_tokens  # usage counts the expanded prompt
    assert second[-1].cached_prompt_tokens > image_tokens + len(vl_engine.tokenize(first_text)) - 1
    assert vl_engine.vision_tower.encoded == encoded  # not re-encoded
    assert sum(bool(s.cached) for s in vl_engine.scheduler.slots) == 1  # it went to its own slot, no copy


def test_different_images_at_the_same_place_share_no_cache(vl_engine):
    fresh(vl_engine)
    text = prompt_text("Describe.")
    generate(vl_engine, text, [image(8)])
    other = generate(vl_engine, text, [image(9)])
    before_image = vl_engine.tokenize(text).index(vl_engine.scheduler.image_pad)
    assert other[-1].cached_prompt_tokens <= before_image
    fresh(vl_engine)
    assert ids_of(generate(vl_engine, text, [image(9)])) == ids_of(other)


def test_text_after_an_image_continues_from_its_grid_size(vl_engine):
    """M-RoPE: an image of 3x3 tokens spans 3 positions, so positions run behind cell counts."""
    fresh(vl_engine)
    text = prompt_text("Describe.")
    chunks = generate(vl_engine, text, [image(10)], max_tokens=2)
    slot = next(s for s in vl_engine.scheduler.slots if s.cached)
    n_tokens, grid = (SIDE // 28) ** 2, SIDE // 28
    assert len(slot.cached) == len(vl_engine.tokenize(text)) - 1 + n_tokens + len(ids_of(chunks)) - 1
    assert slot.end_pos == len(slot.cached) - n_tokens + grid
    start = slot.cached.index((image(10).sha256, 0))
    assert slot.positions[start : start + n_tokens] == [start] * n_tokens
    assert slot.positions[start + n_tokens] == start + grid


def test_image_slot_count_must_match_images(vl_engine):
    with pytest.raises(BadRequest, match="image slots"):
        generate(vl_engine, prompt_text("Two?", 2), [image(0)])
    with pytest.raises(BadRequest, match="image slots"):
        generate(vl_engine, prompt_text("None?", 0), [image(0)])


def test_undecodable_or_too_large_images_are_bad_requests(vl_engine):
    bad = ImageInput(b"not an image", hashlib.sha256(b"not an image").hexdigest(), 1, 1)
    with pytest.raises(BadRequest, match="could not be decoded"):
        generate(vl_engine, prompt_text("?"), [bad])
    # 448x448 is 256 tokens a piece: two of them overflow the 512-token context
    with pytest.raises(BadRequest, match=r"with its images is \d+ tokens"):
        generate(vl_engine, prompt_text("?", 2), [image(30, side=448), image(31, side=448)])
    assert len(ids_of(generate(vl_engine, prompt_text("Describe."), [image(0)]))) == 8


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "GIF"])
def test_other_image_formats(vl_engine, fmt):
    assert len(ids_of(generate(vl_engine, prompt_text("Describe."), [image(11, fmt=fmt)]))) == 8


def test_a_bad_mmproj_file_is_a_clear_error(tiny_vl_gguf, tiny_qwen2, tmp_path):
    model, _ = tiny_vl_gguf
    junk = tmp_path / "mmproj.gguf"
    junk.write_bytes(b"GGUF" + os.urandom(64))
    for mmproj, match in [(junk, "could not load the vision projector"), (tmp_path / "none.gguf", "not found")]:
        with pytest.raises(ModelLoadError, match=match):
            LlamaCppEngine(model, LlamaCppSettings(n_ctx=256, n_threads=THREADS, mmproj=mmproj))
    with pytest.raises(ModelLoadError, match="could not load the vision projector"):  # a model GGUF, not an mmproj
        LlamaCppEngine(model, LlamaCppSettings(n_ctx=256, n_threads=THREADS, mmproj=tiny_qwen2))


def _transformers_greedy(checkpoint, text: str, images: list[ImageInput], max_tokens: int) -> list[int]:
    """Greedy tokens of the tiny checkpoint with transformers' own Qwen2.5-VL model and image processor."""
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    pil = [Image.open(io.BytesIO(i.data)).convert("RGB") for i in images]
    vision = processor(images=pil, return_tensors="pt") if pil else {"image_grid_thw": []}
    merge = processor.merge_size**2
    for grid in vision["image_grid_thw"]:
        text = text.replace(
            IMAGE_SLOT, "<|vision_start|>" + "<|placeholder|>" * (int(grid.prod()) // merge) + "<|vision_end|>", 1
        )
    ids = tokenizer(text.replace("<|placeholder|>", "<|image_pad|>"), return_tensors="pt")
    # without mm_token_type_ids transformers silently falls back to 1-D positions (no M-RoPE)
    ids["mm_token_type_ids"] = (ids["input_ids"] == model.config.image_token_id).int()
    with torch.no_grad():
        out = model.generate(**ids, **vision, max_new_tokens=max_tokens, do_sample=False)
    return out[0, ids["input_ids"].shape[1] :].tolist()


def test_greedy_tokens_match_transformers(vl_engine, tiny_hf_qwen2_vl):
    """Same checkpoint, same image, same prompt: llama.cpp (GGUF + mmproj) and transformers agree."""
    fresh(vl_engine)
    for text, images in [
        (prompt_text("Describe."), [image(12)]),
        (prompt_text("Compare these.", 2), [image(13), image(14, side=112)]),
    ]:
        ours = ids_of(generate(vl_engine, text, images, max_tokens=6))
        assert ours == _transformers_greedy(tiny_hf_qwen2_vl, text, images, max_tokens=6)


def test_load_takes_an_mmproj_for_llamacpp_only(tiny_vl_gguf):
    import qwenkit
    from qwenkit.errors import QwenkitError

    model, mmproj = tiny_vl_gguf
    m = qwenkit.load(str(model), mmproj=mmproj, n_ctx=256, n_threads=THREADS, progress=False)
    try:
        assert m.engine.vision()
    finally:
        m.close()
    with pytest.raises(QwenkitError, match=r"llama\.cpp engine"):
        qwenkit.load(str(model), engine="transformers", mmproj=mmproj, progress=False)


# ----- through the chat layer (qwenkit.Model), against the transformers engine ------------------


@pytest.fixture(scope="module")
def vl_models(tiny_vl_gguf, tiny_hf_qwen2_vl):
    """The tiny VL model twice: GGUF + mmproj on llama.cpp, the checkpoint on transformers."""
    import qwenkit
    from qwenkit.chat import load_template
    from qwenkit.engines.transformers import TransformersEngine, TransformersSettings
    from qwenkit.model import Model

    model, mmproj = tiny_vl_gguf
    llama = qwenkit.load(str(model), mmproj=mmproj, n_ctx=512, n_threads=THREADS, n_parallel=2, progress=False)
    engine = TransformersEngine(tiny_hf_qwen2_vl, TransformersSettings(n_threads=THREADS, n_parallel=2))
    arch = engine.architecture()
    tf = Model(engine, load_template(engine.chat_template(), architecture=arch), name="tiny-vl", architecture=arch)
    yield llama, tf
    llama.close()
    tf.close()


def ask(picture: ImageInput, text: str = "What is this?") -> list[dict]:
    pil = Image.open(io.BytesIO(picture.data))
    return [{"role": "user", "content": [{"type": "image", "image": pil}, {"type": "text", "text": text}]}]


def test_chat_parity_with_the_transformers_engine(vl_models):
    """Same rendering, same image, same greedy tokens, same usage on both engines."""
    llama, tf = vl_models
    for messages in [ask(image(20)), ask(image(21, side=112), "Describe it in detail.")]:
        a = llama.chat(messages, max_tokens=8, temperature=0)
        b = tf.chat(messages, max_tokens=8, temperature=0)
        assert a.content == b.content
        assert a.usage.prompt_tokens == b.usage.prompt_tokens > len(llama.prepare(messages).prompt)


def test_chat_follow_up_reuses_the_image_and_marker_text_is_no_image(vl_models):
    llama, _ = vl_models
    first = ask(image(22))
    answer = llama.chat(first, max_tokens=6, temperature=0)
    encoded = llama.engine.vision_tower.encoded
    follow = [*first, answer.as_message(), {"role": "user", "content": "And the colours?"}]
    again = llama.chat(follow, max_tokens=6, temperature=0)
    assert again.usage.cached_prompt_tokens > (SIDE // 28) ** 2
    assert llama.engine.vision_tower.encoded == encoded
    # llama.cpp's default media marker in user text is plain text here: no image slot, no error
    plain = llama.prepare([{"role": "user", "content": "look: <__media__> <__image__>"}])
    assert not plain.images and llama.engine.scheduler.image_pad not in plain.prompt
    assert llama.chat([{"role": "user", "content": "look: <__media__>"}], max_tokens=4).finish_reason == "length"


@pytest.mark.parametrize("cap", [4, 16])
def test_image_max_tokens_bounds_an_image(tiny_vl_gguf, cap):
    model, mmproj = tiny_vl_gguf
    engine = LlamaCppEngine(model, LlamaCppSettings(n_ctx=512, n_threads=THREADS, mmproj=mmproj, image_max_tokens=cap))
    try:
        text = prompt_text("Describe.")
        last = generate(engine, text, [image(23, side=224)], max_tokens=2)[-1]  # 64 tokens uncapped
        assert last.prompt_tokens - (len(engine.tokenize(text)) - 1) == cap
    finally:
        engine.close()


def test_n_choices_share_the_image_prefill(vl_engine):
    fresh(vl_engine)
    encoded = vl_engine.vision_tower.encoded
    inbox: queue.Queue[Chunk] = queue.Queue()
    text = prompt_text("Describe.")
    params = SamplingParams(temperature=0.0, max_tokens=6)
    vl_engine.submit(vl_engine.tokenize(text), params, inbox.put, n=2, images=[image(24)])
    outs: dict[int, list[Chunk]] = {0: [], 1: []}
    while sum(c.finish_reason is not None for o in outs.values() for c in o) < 2:
        chunk = inbox.get(timeout=120)
        outs[chunk.index].append(chunk)
    assert ids_of(outs[0]) == ids_of(outs[1])
    assert outs[1][-1].cached_prompt_tokens >= (SIDE // 28) ** 2  # the follower copied the leader's cache
    assert vl_engine.vision_tower.encoded == encoded + 1


def test_known_never_waits_on_another_images_preprocessing(vl_engine, monkeypatch):
    """The scheduler asks `known` under its own lock: a slow preprocessing must not stall it."""
    import threading

    tower = vl_engine.vision_tower
    slow, started, release = image(901), threading.Event(), threading.Event()
    tokenize = tower._tokenize

    def held(img):
        started.set()
        release.wait(60)
        return tokenize(img)

    monkeypatch.setattr(tower, "_tokenize", held)
    prepared: list = []
    worker = threading.Thread(target=lambda: prepared.append(tower.prepare(slow)))
    worker.start()
    try:
        assert started.wait(60)
        answered = threading.Event()
        asker = threading.Thread(target=lambda: (tower.known(slow.sha256), answered.set()))
        asker.start()
        assert answered.wait(60), "known() waited for another request's preprocessing"
        asker.join()
    finally:
        release.set()
        worker.join()
    assert tower.known(slow.sha256) is prepared[0]
    assert tower.prepare(slow) is prepared[0]  # one copy in the cache


def test_collected_errors_stay_with_their_thread():
    """libmtmd logs on request threads and the scheduler thread at once: each block sees its own lines."""
    import threading

    from qwenkit.engines.llamacpp.model import _route_log, collect_errors

    inside, leave = threading.Event(), threading.Event()
    other: list[str] = []

    def elsewhere() -> None:
        with collect_errors() as errors:
            inside.set()
            leave.wait(60)
            _route_log(4, b"theirs", None)
        other.extend(errors)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    assert inside.wait(60)
    with collect_errors() as mine:
        _route_log(4, b"mine", None)
        leave.set()
        thread.join()
    assert mine == ["mine"] and other == ["theirs"]
