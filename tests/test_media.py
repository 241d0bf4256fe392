"""Image loading and validation: sources, policies and every kind of bad input."""

from __future__ import annotations

import base64
import io
import struct
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from qwenkit.chat.media import LOCAL_POLICY, MediaPolicy, load_image, validate_image
from qwenkit.errors import BadRequest


def png(size: tuple[int, int] = (8, 6), color: tuple[int, int, int] = (200, 10, 10), fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def bomb_png(width: int, height: int) -> bytes:
    """A PNG header claiming `width` x `height` pixels with almost no data: the pixel check must
    refuse it from the header alone."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_data_uri_png_is_kept_byte_for_byte() -> None:
    data = png()
    image = load_image(data_uri(data), MediaPolicy())
    assert image.data == data and (image.width, image.height) == (8, 6) and len(image.sha256) == 64


def test_other_formats_are_reencoded_as_png() -> None:
    webp = load_image(png(fmt="WEBP"), MediaPolicy())
    assert webp.data.startswith(b"\x89PNG") and (webp.width, webp.height) == (8, 6)
    frames = [Image.new("P", (5, 5), i) for i in (1, 2)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    gif = load_image(out.getvalue(), MediaPolicy())
    assert gif.data.startswith(b"\x89PNG") and (gif.width, gif.height) == (5, 5)


def test_pil_images_bytes_and_paths(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(png())
    from_path = load_image(str(path), LOCAL_POLICY)
    assert from_path == load_image(path, LOCAL_POLICY) == load_image(png(), LOCAL_POLICY)
    pil = load_image(Image.new("RGB", (3, 4)), LOCAL_POLICY)
    assert (pil.width, pil.height) == (3, 4)
    assert load_image(Image.new("RGB", (3, 4), (1, 2, 3)), LOCAL_POLICY).sha256 != pil.sha256


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello, not an image", "not an image"),
        (png((64, 64))[:-40], "truncated"),
        (bomb_png(30_000, 30_000), "pixels"),
        (b"", "not an image"),
    ],
)
def test_bad_images_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        validate_image(data, MediaPolicy())


def test_pillow_decompression_bomb_guard_is_an_error() -> None:
    with pytest.raises(BadRequest, match="decompression bomb"):
        validate_image(bomb_png(20_000, 20_000), MediaPolicy(max_pixels=10**12))


def test_limits_on_bytes_pixels_and_count() -> None:
    with pytest.raises(BadRequest, match="bytes"):
        load_image(data_uri(png((64, 64))), MediaPolicy(max_bytes=100))
    with pytest.raises(BadRequest, match="pixels"):
        load_image(png((40, 40)), MediaPolicy(max_pixels=1000))
    with pytest.raises(BadRequest, match="too many images"):
        MediaPolicy(max_images=2).check_count(3)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("ftp://example.com/a.png", "unsupported image URL scheme"),
        ("data:text/plain;base64,aGVsbG8=", "not an image"),
        ("data:image/png;base64,@@@", "malformed"),
        ("data:image/png;base64", "comma"),
        ("https://example.com/a.png", "--allow-remote-media"),
        ("/etc/passwd", "--media-dir"),
        (12, "not int"),
    ],
)
def test_unsupported_sources(source: object, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        load_image(source, MediaPolicy())


def test_media_dir_confines_local_files(tmp_path: Path) -> None:
    root = tmp_path / "media"
    root.mkdir()
    (root / "ok.png").write_bytes(png())
    (tmp_path / "secret.png").write_bytes(png())
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    policy = MediaPolicy(media_dir=root)
    assert load_image("ok.png", policy).width == 8
    assert load_image(f"file://{root / 'ok.png'}", policy).width == 8
    for escape in ("../secret.png", str(tmp_path / "secret.png"), "link.png", f"file://{tmp_path / 'secret.png'}"):
        with pytest.raises(BadRequest, match="outside the media directory"):
            load_image(escape, policy)
    with pytest.raises(BadRequest, match="cannot read"):
        load_image("missing.png", policy)


class _Images(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", self.path.split("to=", 1)[1])
            self.end_headers()
            return
        body = png() if self.path == "/a.png" else b"x" * 5000
        self.send_response(200 if self.path in ("/a.png", "/big") else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def image_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_remote_loopback_is_refused_unless_trusted(image_server: str) -> None:
    with pytest.raises(BadRequest, match="private or local address"):
        load_image(f"{image_server}/a.png", MediaPolicy(allow_remote=True))
    trusted = MediaPolicy(allow_remote=True, trusted_hosts=frozenset({"127.0.0.1"}))
    assert load_image(f"{image_server}/a.png", trusted).data == png()


def test_remote_redirects_are_checked_on_every_hop(image_server: str) -> None:
    port = image_server.rsplit(":", 1)[1]
    # the first hop is trusted, the redirect goes to a loopback name that is not
    first_trusted = MediaPolicy(allow_remote=True, trusted_hosts=frozenset({"127.0.0.1"}))
    with pytest.raises(BadRequest, match="private or local address"):
        load_image(f"{image_server}/redirect?to=http://localhost:{port}/a.png", first_trusted)
    both = MediaPolicy(allow_remote=True, trusted_hosts=frozenset({"127.0.0.1", "localhost"}))
    assert load_image(f"{image_server}/redirect?to=http://localhost:{port}/a.png", both).width == 8


def test_remote_size_and_status_limits(image_server: str) -> None:
    policy = MediaPolicy(allow_remote=True, trusted_hosts=frozenset({"127.0.0.1"}), max_bytes=1000)
    with pytest.raises(BadRequest, match="bytes"):
        load_image(f"{image_server}/big", policy)
    with pytest.raises(BadRequest, match="HTTP 404"):
        load_image(f"{image_server}/nothing", policy)


def test_the_checked_address_is_the_one_connected_to(image_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No second DNS lookup after the check: the request goes to the address the check approved,
    with the name in Host (and TLS SNI)."""
    from qwenkit.chat import media

    assert media._pinned("https://example.com:8443/a.png?x=1", "93.184.216.34") == (
        "https://93.184.216.34:8443/a.png?x=1",
        {"Host": "example.com:8443"},
        {"sni_hostname": "example.com"},
    )
    assert media._pinned("http://v6.example/a", "2606:2800::1")[0] == "http://[2606:2800::1]/a"
    checked: list[str] = []

    def approve(host: str, port: int) -> str:  # as if images.invalid resolved to a public address
        checked.append(host)
        return "127.0.0.1"

    monkeypatch.setattr(media, "_public_address", approve)
    port = image_server.rsplit(":", 1)[1]
    image = load_image(f"http://images.invalid:{port}/a.png", MediaPolicy(allow_remote=True))
    assert image.data == png() and checked == ["images.invalid"]
