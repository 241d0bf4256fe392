"""Images for vision models: load from a data URI, an http(s) URL, a local path, bytes or a PIL image,
and validate (fully decoded, bounded in bytes, pixels and count) into an `ImageInput`.

Where an image may come from is a `MediaPolicy`: the server allows remote URLs only with
`--allow-remote-media` (no private, loopback or link-local address on any redirect hop) and local
files only under `--media-dir`; the Python API and the CLI read any local path.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import ipaddress
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from qwenkit.engines.base import ImageInput
from qwenkit.errors import BadRequest

#: encodings kept as given; anything else (WebP, GIF's first frame, BMP...) is re-encoded as PNG,
#: which every engine decodes (libmtmd's stb_image reads no WebP)
_KEPT_FORMATS = ("PNG", "JPEG")
_MAX_REDIRECTS = 5


@dataclass(frozen=True)
class MediaPolicy:
    """Where images may come from and how large they may be."""

    allow_remote: bool = False  # http(s) URLs (public addresses only, unless in `trusted_hosts`)
    media_dir: Path | None = None  # local files (paths or file:// URLs) only under this directory
    any_local_path: bool = False  # local files anywhere (the Python API and the CLI, not the server)
    max_images: int = 8  # per request
    max_bytes: int = 20 * 1024 * 1024  # encoded size of one image
    max_pixels: int = 40_000_000  # width * height of one image, checked before decoding
    timeout_s: float = 10.0  # for one remote image, all redirects included
    trusted_hosts: frozenset[str] = frozenset()  # hosts exempt from the private-address refusal

    def check_count(self, n: int) -> None:
        if n > self.max_images:
            raise BadRequest(f"too many images: {n} (at most {self.max_images} per request)")


LOCAL_POLICY = MediaPolicy(any_local_path=True)


def load_image(source: Any, policy: MediaPolicy) -> ImageInput:
    """`source` (a URL or path string, a `Path`, bytes, or a PIL image) as a validated `ImageInput`."""
    if isinstance(source, Image.Image):
        return _from_pil(source, policy)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return validate_image(bytes(source), policy)
    if isinstance(source, Path):
        return validate_image(_read_local(source, policy), policy)
    if not isinstance(source, str) or not source:
        raise BadRequest(f"an image must be a URL, a path, bytes or a PIL image, not {type(source).__name__}")
    scheme = urlsplit(source).scheme.lower() if "://" in source or source.startswith("data:") else ""
    if scheme == "data":
        return validate_image(_data_uri(source, policy), policy)
    if scheme in ("http", "https"):
        if not policy.allow_remote:
            raise BadRequest("remote image URLs are not allowed here (start the server with --allow-remote-media)")
        return validate_image(fetch_remote(source, policy), policy)
    if scheme == "file":
        return validate_image(_read_local(Path(unquote_to_bytes(urlsplit(source).path).decode()), policy), policy)
    if scheme:
        raise BadRequest(f"unsupported image URL scheme {scheme!r} (use data:, http(s): or a local file)")
    return validate_image(_read_local(Path(source), policy), policy)


def validate_image(data: bytes, policy: MediaPolicy) -> ImageInput:
    """Check that `data` is one whole image within the limits; PNG and JPEG are kept as given,
    other formats are re-encoded as PNG (first frame)."""
    if len(data) > policy.max_bytes:
        raise BadRequest(f"the image is {len(data)} bytes; at most {policy.max_bytes} are allowed")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_pixels(image.width, image.height, policy)  # from the header, before decoding
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadRequest("the image is a decompression bomb (too many pixels for its size)") from None
    except UnidentifiedImageError:
        raise BadRequest("the data is not an image (or not a format this server reads)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadRequest(f"the image is truncated or corrupt: {exc}") from None
    if image.format not in _KEPT_FORMATS:
        return _from_pil(image, policy)
    return ImageInput(data=data, sha256=hashlib.sha256(data).hexdigest(), width=image.width, height=image.height)


def _check_pixels(width: int, height: int, policy: MediaPolicy) -> None:
    if width < 1 or height < 1:
        raise BadRequest("the image is empty (no pixels)")
    if width * height > policy.max_pixels:
        raise BadRequest(f"the image is {width}x{height} pixels; at most {policy.max_pixels} pixels are allowed")


def _from_pil(image: Image.Image, policy: MediaPolicy) -> ImageInput:
    _check_pixels(image.width, image.height, policy)
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB")
    out = io.BytesIO()
    try:
        image.save(out, format="PNG")
    except (OSError, ValueError) as exc:
        raise BadRequest(f"the image cannot be encoded: {exc}") from None
    data = out.getvalue()
    return ImageInput(data=data, sha256=hashlib.sha256(data).hexdigest(), width=image.width, height=image.height)


def _data_uri(uri: str, policy: MediaPolicy) -> bytes:
    header, sep, payload = uri[5:].partition(",")
    if not sep:
        raise BadRequest("a data URI needs a comma before its payload (data:image/png;base64,...)")
    if not header.lower().startswith("image/") and header.split(";")[0]:
        raise BadRequest(f"the data URI holds {header.split(';')[0]!r}, not an image")
    if len(payload) > policy.max_bytes * 4 // 3 + 4:
        raise BadRequest(f"the image is larger than {policy.max_bytes} bytes")
    if header.lower().endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("the data URI's base64 payload is malformed") from None
    return unquote_to_bytes(payload)


def _read_local(path: Path, policy: MediaPolicy) -> bytes:
    if policy.any_local_path:
        target = path.expanduser()
    elif policy.media_dir is None:
        raise BadRequest("local image files are not allowed here (start the server with --media-dir DIR)")
    else:
        root = policy.media_dir.resolve()
        target = (root / path).resolve()  # an absolute `path` replaces root; symlinks are followed
        if not target.is_relative_to(root):
            raise BadRequest(f"image path {str(path)!r} is outside the media directory")
    try:
        size = target.stat().st_size
        if size > policy.max_bytes:
            raise BadRequest(f"the image is {size} bytes; at most {policy.max_bytes} are allowed")
        return target.read_bytes()
    except IsADirectoryError:
        raise BadRequest(f"image path {str(path)!r} is a directory") from None
    except OSError as exc:
        raise BadRequest(f"cannot read image {str(path)!r}: {exc.strerror}") from None


def _public_address(host: str, port: int, resolve: Callable[..., Any] = socket.getaddrinfo) -> str:
    """The address to connect to for `host`, refused when any of its addresses is private,
    loopback, link-local or otherwise not public."""
    try:
        infos = resolve(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise BadRequest(f"cannot resolve the image host {host!r}") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not addresses or any(not a.is_global or a.is_multicast for a in addresses):
        raise BadRequest(f"the image URL's host {host!r} is a private or local address; refused")
    return str(addresses[0])


def _pinned(url: str, address: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(url, headers, extensions) that connect to the checked `address` (no second DNS lookup
    that could answer differently) while the host name still goes in `Host` and TLS's SNI."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    ip = f"[{address}]" if ":" in address else address
    netloc = ip + (f":{parts.port}" if parts.port else "")
    headers = {"Host": parts.netloc.rsplit("@", 1)[-1]}
    return parts._replace(netloc=netloc).geturl(), headers, {"sni_hostname": host}


def fetch_remote(url: str, policy: MediaPolicy) -> bytes:
    """GET an image, following up to 5 redirects by hand; every hop's host is resolved and must be
    public (or trusted); the body is bounded by `max_bytes` and the whole fetch by `timeout_s`."""
    deadline = time.monotonic() + policy.timeout_s
    with httpx.Client(follow_redirects=False, timeout=policy.timeout_s, trust_env=False) as client:
        for _ in range(_MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
                raise BadRequest(f"unsupported image URL {url[:100]!r} (http or https only)")
            target, headers, extensions = url, dict[str, str](), dict[str, Any]()
            if parts.hostname not in policy.trusted_hosts:
                port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
                target, headers, extensions = _pinned(url, _public_address(parts.hostname, port))
            try:
                with client.stream(
                    "GET", target, headers={"Accept": "image/*", **headers}, extensions=extensions
                ) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("location", ""))
                        continue
                    if response.status_code != 200:
                        raise BadRequest(f"fetching the image answered HTTP {response.status_code}")
                    return _read_bounded(response, policy, deadline)
            except httpx.HTTPError as exc:
                raise BadRequest(f"cannot fetch the image: {type(exc).__name__}") from None
    raise BadRequest(f"fetching the image took more than {_MAX_REDIRECTS} redirects")


def _read_bounded(response: httpx.Response, policy: MediaPolicy, deadline: float) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > policy.max_bytes:
        raise BadRequest(f"the image is {declared} bytes; at most {policy.max_bytes} are allowed")
    body = bytearray()
    for piece in response.iter_bytes():
        body += piece
        if len(body) > policy.max_bytes:
            raise BadRequest(f"the image is larger than {policy.max_bytes} bytes")
        if time.monotonic() > deadline:
            raise BadRequest(f"fetching the image took longer than {policy.timeout_s:g} s")
    return bytes(body)
