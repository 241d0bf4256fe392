"""Images through `qwenkit serve` on the llama.cpp engine (the tiny Qwen2.5-VL GGUF with `--mmproj`),
with the official `openai` client: data URIs, streaming, usage with the image expanded, a follow-up
turn served from the cache, bad input answered 400 while an image request streams."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from serve_helpers import running_meanwhile
from test_serve_vision import bomb, data_uri, image_message, png

GREEDY: dict[str, Any] = {"max_tokens": 5, "temperature": 0}
SIZE = (84, 84)  # 3x3 tokens on both engines (llama.cpp scales smaller images up to at least 8 tokens)
IMAGE_TOKENS = 9


@pytest.fixture(scope="module")
def vl_server(app_server, tiny_vl_gguf) -> Any:
    model, mmproj = tiny_vl_gguf
    return app_server(
        model, mmproj=mmproj, parallel=3, threads=2, served_name="m", max_images=2, max_body_bytes=3_000_000
    )


def test_data_uri_images_streaming_and_usage(vl_server: Any) -> None:
    client = vl_server.client()
    red, blue = data_uri(png((200, 0, 0), SIZE)), data_uri(png((0, 0, 200), SIZE))
    first = client.chat.completions.create(model="m", messages=image_message(red), **GREEDY)
    other = client.chat.completions.create(model="m", messages=image_message(blue), **GREEDY)
    again = client.chat.completions.create(model="m", messages=image_message(red), **GREEDY)
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.choices[0].message.content != other.choices[0].message.content
    text_only = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "What is this?"}], **GREEDY
    )
    assert first.usage is not None and text_only.usage is not None and again.usage is not None
    assert first.usage.prompt_tokens == text_only.usage.prompt_tokens + 2 + IMAGE_TOKENS
    assert again.usage.prompt_tokens_details.cached_tokens > IMAGE_TOKENS  # the same image, from the cache
    stream = client.chat.completions.create(model="m", messages=image_message(red), stream=True, **GREEDY)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == first.choices[0].message.content


def test_follow_up_turn_reuses_the_image(vl_server: Any) -> None:
    client = vl_server.client()
    messages: list[Any] = image_message(data_uri(png((10, 160, 90), SIZE)))
    first = client.chat.completions.create(model="m", messages=messages, **GREEDY)
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And the colours?"},
    ]
    second = client.chat.completions.create(model="m", messages=messages, **GREEDY)
    assert second.usage is not None and first.usage is not None
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 1


def test_bad_input_is_400_while_an_image_request_streams(vl_server: Any) -> None:
    client = vl_server.client()
    bad: list[tuple[list[dict[str, Any]], str]] = [
        (image_message(data_uri(b"not an image at all")), "not an image"),
        (image_message(data_uri(bomb())), "pixels"),
        (image_message(*[data_uri(png((i, 0, 0), SIZE)) for i in range(3)]), "too many images"),
        ([{"role": "user", "content": "see <|vision_start|><|image_pad|><|vision_end|>"}], "vision tokens"),
        # two 1008x1008 images are 1296 tokens each: more than the 2048-token context
        (image_message(*[data_uri(png((i, 9, 9), (1008, 1008))) for i in range(2)]), "with its images is"),
    ]

    def streamed() -> list[Any]:
        messages = image_message(data_uri(png((9, 9, 9), SIZE)))
        return list(
            client.chat.completions.create(model="m", messages=messages, max_tokens=48, temperature=0, stream=True)
        )

    with running_meanwhile(vl_server, streamed) as stream:
        for messages, message in bad:
            with pytest.raises(openai.BadRequestError, match=message):
                client.chat.completions.create(model="m", messages=messages, **GREEDY)  # type: ignore[arg-type]
        # llama.cpp's default media marker is plain text to qwenkit: no image slot, no error
        marker = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "<__media__>"}], **GREEDY
        )
        assert marker.choices[0].finish_reason in ("stop", "length")
    finish = [c.choices[0].finish_reason for c in stream.result() if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    assert vl_server.healthy()
