"""Image loading and validation: sources, policies and every kind of bad input."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import io
import ipaddress
import os
import socket
import struct
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

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


def test_unusual_modes_are_reencoded() -> None:
    out = io.BytesIO()
    Image.new("CMYK", (6, 6), (0, 255, 0, 0)).save(out, format="JPEG")
    cmyk = load_image(out.getvalue(), MediaPolicy())
    assert cmyk.data.startswith(b"\x89PNG") and Image.open(io.BytesIO(cmyk.data)).mode == "RGB"


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
    accept_encodings: ClassVar[list[str | None]] = []  # as the requests sent them

    def do_GET(self) -> None:
        self.accept_encodings.append(self.headers.get("Accept-Encoding"))
        if self.path.startswith("/redirect"):
            self.redirect(self.path.split("to=", 1)[1])
            return
        if self.path == "/slow-redirect":  # an endless chain of hops, each within any per-hop timeout
            time.sleep(0.2)
            self.redirect("/slow-redirect")
            return
        if self.path == "/gzip":  # compressed whatever the request accepted
            body = gzip.compress(png())
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        body = png() if self.path == "/a.png" else b"x" * 5000
        self.send_response(200 if self.path in ("/a.png", "/big") else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def resolving_to(*addresses: str) -> Callable[..., list[tuple[Any, ...]]]:
    """A getaddrinfo that answers `addresses` for any host."""

    def getaddrinfo(host: str, port: int, **_: object) -> list[tuple[Any, ...]]:
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses
        ]

    return getaddrinfo


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
    from qwenkit.chat.media import remote

    assert remote.pinned("https://example.com:8443/a.png?x=1", "93.184.216.34") == (
        "https://93.184.216.34:8443/a.png?x=1",
        {"Host": "example.com:8443"},
        {"sni_hostname": "example.com"},
    )
    assert remote.pinned("http://v6.example/a", "2606:2800::1")[0] == "http://[2606:2800::1]/a"
    checked: list[str] = []

    def approve(host: str, addresses: list[object]) -> None:  # as if images.invalid were public
        checked.append(host)

    monkeypatch.setattr(remote, "_getaddrinfo", resolving_to("127.0.0.1"))
    monkeypatch.setattr(remote, "_check_public", approve)
    port = image_server.rsplit(":", 1)[1]
    image = load_image(f"http://images.invalid:{port}/a.png", MediaPolicy(allow_remote=True))
    assert image.data == png() and checked == ["images.invalid"]


LOOPBACK = MediaPolicy(allow_remote=True, trusted_hosts=frozenset({"127.0.0.1"}))


def test_the_time_limit_covers_every_redirect_hop(image_server: str) -> None:
    """Each hop is quick, but the chain is not: the fetch stops at `timeout_s`, not at the
    redirect limit (httpx's own timeout applies per phase of one hop)."""
    with pytest.raises(BadRequest, match=r"took longer than 0\.5 s"):
        load_image(f"{image_server}/slow-redirect", dataclasses.replace(LOOPBACK, timeout_s=0.5))


def test_the_time_limit_covers_dns(image_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from qwenkit.chat.media import remote

    release = threading.Event()

    def stalled_getaddrinfo(host: str, port: int, **_: object) -> list[tuple[Any, ...]]:
        release.wait(timeout=10)
        return resolving_to("127.0.0.1")(host, port)

    monkeypatch.setattr(remote, "_getaddrinfo", stalled_getaddrinfo)
    port = image_server.rsplit(":", 1)[1]
    policy = MediaPolicy(allow_remote=True, timeout_s=0.3, trusted_hosts=frozenset({"images.test"}))
    try:
        with pytest.raises(BadRequest, match=r"resolving the image host 'images\.test' took longer than 0\.3 s"):
            load_image(f"http://images.test:{port}/a.png", policy)
    finally:
        release.set()


def test_compressed_bodies_are_neither_asked_for_nor_inflated(image_server: str) -> None:
    _Images.accept_encodings.clear()
    with pytest.raises(BadRequest, match="Content-Encoding 'gzip'"):
        load_image(f"{image_server}/gzip", LOOPBACK)
    assert load_image(f"{image_server}/a.png", LOOPBACK).data == png()
    assert _Images.accept_encodings == ["identity", "identity"]


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "::1",
        "fe80::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "64:ff9b:1::5db8:d822",  # local-use NAT64
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2001:0:a00:1::1",  # Teredo with server 10.0.0.1
        "2001:0:5db8:d822:0:0:f5ff:fffe",  # Teredo with a public server, client 10.0.0.1 (obfuscated)
        "::7f00:1",  # IPv4-compatible 127.0.0.1
    ],
)
def test_private_addresses_are_refused_however_wrapped(address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from qwenkit.chat.media import remote

    assert not remote.is_public(ipaddress.ip_address(address))
    monkeypatch.setattr(remote, "_getaddrinfo", resolving_to("93.184.216.34", address))
    with pytest.raises(BadRequest, match="private or local address"):
        load_image("http://images.invalid/a.png", MediaPolicy(allow_remote=True))


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1::1", "64:ff9b::5db8:d822", "2002:5db8:d822::1"])
def test_public_addresses_pass(address: str) -> None:
    from qwenkit.chat.media import remote

    assert remote.is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("source", "policy", "message"),
    [
        ("http://[::1/x", MediaPolicy(allow_remote=True), "malformed image URL"),
        ("http://h:99999/a.png", MediaPolicy(allow_remote=True), "malformed image URL"),
        ("file:///%ff.png", LOCAL_POLICY, "not valid UTF-8"),
        ("a\0b.png", MediaPolicy(media_dir=Path(".")), "not a valid path"),
        ("/tmp/a\0b.png", LOCAL_POLICY, "not a valid path"),
        (Path("a\0b.png"), LOCAL_POLICY, "not a valid path"),
    ],
)
def test_malformed_sources_are_bad_requests(source: object, policy: MediaPolicy, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        load_image(source, policy)


def test_malformed_redirects_are_bad_requests(image_server: str) -> None:
    with pytest.raises(BadRequest, match="malformed image URL"):
        load_image(f"{image_server}/redirect?to=http://127.0.0.1:99999/a.png", LOOPBACK)


def test_media_dir_reads_only_regular_files(tmp_path: Path) -> None:
    """A FIFO would block the reading thread forever; it is refused at once."""
    os.mkfifo(tmp_path / "pipe.png")
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            load_image("pipe.png", MediaPolicy(media_dir=tmp_path))
            outcome.append(None)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # the bug: the read blocks; a writer that opens and closes releases it
        os.close(os.open(tmp_path / "pipe.png", os.O_WRONLY))
        reader.join(timeout=10)
    assert len(outcome) == 1 and isinstance(outcome[0], BadRequest), outcome
    assert "not a regular file" in str(outcome[0])


def test_local_reads_are_bounded_whatever_the_size_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that grew after its size was looked at is still read no further than the limit."""
    (tmp_path / "grown.png").write_bytes(png((64, 64)))
    real_stat = Path.stat

    def stale_stat(self: Path, **kwargs: Any) -> os.stat_result:
        found = real_stat(self, **kwargs)
        return os.stat_result((*found[:6], 10, *found[7:10]))  # st_size as it was: 10 bytes

    monkeypatch.setattr(Path, "stat", stale_stat)
    from qwenkit.chat.media import images

    with pytest.raises(BadRequest, match="larger than 100 bytes"):
        images._read_local(Path("grown.png"), MediaPolicy(media_dir=tmp_path, max_bytes=100))


def test_validation_leaves_the_warning_filters_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Warning filters are process-wide, and images are validated on several threads: Pillow's own
    warning threshold stays a warning; the policy's pixel limit decides."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40x40 = 1600 pixels: Pillow warns
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert validate_image(png((40, 40)), MediaPolicy()).width == 40
    assert any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)


def test_trusted_hosts_are_normalized() -> None:
    policy = MediaPolicy(trusted_hosts=frozenset({"Images.Example.", "Bücher.example", "[::1]"}))
    assert policy.trusted_hosts == {"images.example", "xn--bcher-kva.example", "::1"}


def test_trusted_hosts_match_however_typed(image_server: str) -> None:
    port = image_server.rsplit(":", 1)[1]
    policy = MediaPolicy(allow_remote=True, trusted_hosts=frozenset({"LocalHost"}))
    assert load_image(f"http://localhost:{port}/a.png", policy).data == png()


def test_every_checked_address_is_tried_in_turn(image_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first address refuses the connection (nothing listens on 127.0.0.2), the second answers."""
    from qwenkit.chat.media import remote

    monkeypatch.setattr(remote, "_getaddrinfo", resolving_to("127.0.0.2", "127.0.0.1"))
    port = image_server.rsplit(":", 1)[1]
    policy = MediaPolicy(allow_remote=True, trusted_hosts=frozenset({"images.test"}))
    assert load_image(f"http://images.test:{port}/a.png", policy).data == png()
