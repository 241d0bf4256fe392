"""Images through `qwenkit serve` with the official `openai` client, on the tiny Qwen2.5-VL checkpoint
(transformers engine): data URIs, files under --media-dir, remote URLs, streaming, the Responses API,
and every bad input answered 400 while another request completes."""

from __future__ import annotations

import base64
import io
import struct
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from PIL import Image
from serve_helpers import running_meanwhile

GREEDY: dict[str, Any] = {"max_tokens": 5, "temperature": 0}


def png(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def bomb() -> bytes:
    """A PNG header claiming 30000x30000 pixels, with next to no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    head = chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + head + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def image_message(*urls: str, text: str = "What is this?") -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


class _Images(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", self.path.split("to=", 1)[1])
            self.end_headers()
            return
        body = png((0, 120, 0))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("media")
    (root / "blue.png").write_bytes(png((0, 0, 200)))
    (root.parent / "outside.png").write_bytes(png((0, 0, 200)))
    return root


@pytest.fixture(scope="module")
def vl_server(app_server: Any, tiny_hf_qwen2_vl: Path, media_dir: Path) -> Any:
    return app_server(
        tiny_hf_qwen2_vl,
        engine="transformers",
        parallel=4,
        threads=2,
        served_name="m",
        media_dir=media_dir,
        allow_remote_media=True,
        media_hosts=frozenset({"127.0.0.1"}),
        max_images=2,
        max_body_bytes=3_000_000,
    )


def test_data_uri_images(vl_server: Any) -> None:
    client = vl_server.client()
    red, blue = data_uri(png((200, 0, 0))), data_uri(png((0, 0, 200)))
    first = client.chat.completions.create(model="m", messages=image_message(red), **GREEDY)
    again = client.chat.completions.create(model="m", messages=image_message(red), **GREEDY)
    other = client.chat.completions.create(model="m", messages=image_message(blue), **GREEDY)
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.choices[0].message.content != other.choices[0].message.content
    text_only = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "What is this?"}], **GREEDY
    )
    assert first.usage is not None and text_only.usage is not None
    # the image's one slot became its 4 embedding positions (plus vision_start/end)
    assert first.usage.prompt_tokens == text_only.usage.prompt_tokens + 2 + 4
    stream = client.chat.completions.create(model="m", messages=image_message(red), stream=True, **GREEDY)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == first.choices[0].message.content


def test_files_under_media_dir_and_remote_urls(vl_server: Any, media_dir: Path, image_host: str) -> None:
    client = vl_server.client()
    by_path = client.chat.completions.create(model="m", messages=image_message("blue.png"), **GREEDY)
    by_data = client.chat.completions.create(model="m", messages=image_message(data_uri(png((0, 0, 200)))), **GREEDY)
    assert by_path.choices[0].message.content == by_data.choices[0].message.content
    remote = client.chat.completions.create(model="m", messages=image_message(f"http://{image_host}/g.png"), **GREEDY)
    green = client.chat.completions.create(model="m", messages=image_message(data_uri(png((0, 120, 0)))), **GREEDY)
    assert remote.choices[0].message.content == green.choices[0].message.content


def test_responses_api_takes_input_image(vl_server: Any) -> None:
    client = vl_server.client()
    red = data_uri(png((200, 0, 0)))
    chat = client.chat.completions.create(model="m", messages=image_message(red), **GREEDY)
    response = client.responses.create(
        model="m",
        input=[
            {
                "role": "user",
                "content": [{"type": "input_image", "image_url": red}, {"type": "input_text", "text": "What is this?"}],
            }
        ],
        max_output_tokens=5,
        temperature=0,
    )
    assert response.output_text == chat.choices[0].message.content


def test_bad_images_are_400_while_another_request_completes(vl_server: Any, image_host: str) -> None:
    client = vl_server.client()
    port = image_host.split(":")[1]
    bad: list[tuple[list[dict[str, Any]], str]] = [
        (image_message(data_uri(b"not an image at all")), "not an image"),
        (image_message(data_uri(png((1, 2, 3), (80, 80))[:-30])), "truncated"),
        (image_message(data_uri(bomb())), "pixels"),
        (image_message(*[data_uri(png((i, 0, 0))) for i in range(3)]), "too many images"),
        (image_message("ftp://example.com/a.png"), "unsupported image URL scheme"),
        (image_message(f"http://localhost:{port}/a.png"), "private or local address"),
        (image_message(f"http://{image_host}/redirect?to=http://localhost:{port}/a.png"), "private or local"),
        (image_message("../outside.png"), "outside the media directory"),
        (image_message("data:image/png;base64,@@@"), "malformed"),
        ([{"role": "user", "content": "see <|vision_start|><|image_pad|><|vision_end|>"}], "vision tokens"),
    ]

    # a streamed image request runs while every bad one is answered
    def streamed() -> list[Any]:
        messages = image_message(data_uri(png((9, 9, 9))))
        return list(
            client.chat.completions.create(model="m", messages=messages, max_tokens=64, temperature=0, stream=True)
        )

    with running_meanwhile(vl_server, streamed) as stream:
        for messages, message in bad:
            with pytest.raises(openai.BadRequestError, match=message):
                client.chat.completions.create(model="m", messages=messages, **GREEDY)  # type: ignore[arg-type]
    finish = [c.choices[0].finish_reason for c in stream.result() if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    assert vl_server.healthy()


def test_a_text_only_model_answers_400(app_server: Any, tiny_qwen2: Path) -> None:
    server = app_server(tiny_qwen2, parallel=1, served_name="m")
    with pytest.raises(openai.BadRequestError, match="takes text only"):
        server.client().chat.completions.create(model="m", messages=image_message(data_uri(png((1, 1, 1)))), **GREEDY)  # type: ignore[arg-type]
    assert server.healthy()


def test_tokenize_keeps_to_the_servers_media_policy(vl_server: Any, media_dir: Path) -> None:
    with vl_server.http() as http:
        ok = http.post("/tokenize", json={"messages": image_message("blue.png")})
        assert ok.status_code == 200 and 151655 in ok.json()["tokens"]  # one image slot
        for path in (str(media_dir.parent / "outside.png"), "../outside.png"):
            refused = http.post("/tokenize", json={"messages": image_message(path)})
            assert refused.status_code == 400 and "outside the media directory" in refused.json()["error"]["message"]


def test_a_turn_with_images_is_submitted_off_the_event_loop(tiny_hf_qwen2_vl: Path) -> None:
    """Image preprocessing happens in `submit`: it must run in a worker thread, not on the event loop."""
    import asyncio

    import qwenkit
    from qwenkit.serve.metrics import Metrics
    from qwenkit.serve.runner import run_turn

    model = qwenkit.load(str(tiny_hf_qwen2_vl), engine="transformers", n_threads=2, progress=False)
    on_loop: list[bool] = []
    submit = model.engine.submit

    def watched(*args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return submit(*args, **kwargs)

    model.engine.submit = watched  # type: ignore[method-assign]

    async def answer(messages: Any) -> str:
        turn = model.prepare(messages, max_tokens=3, temperature=0)
        return "".join([d.content or "" async for d in await run_turn(model, turn, Metrics(lambda: None))])

    try:
        asyncio.run(answer(image_message(data_uri(png((200, 0, 0))))))
        asyncio.run(answer([{"role": "user", "content": "hi"}]))
    finally:
        model.close()
    assert on_loop == [False, True]  # the text-only turn needs no thread
