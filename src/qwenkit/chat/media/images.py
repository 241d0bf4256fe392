"""Loading an image from any source and validating it into an `ImageInput`."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import stat
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from PIL import Image, UnidentifiedImageError

from qwenkit.chat.media.policy import MediaPolicy
from qwenkit.chat.media.remote import fetch_remote
from qwenkit.engines.base import ImageInput
from qwenkit.errors import BadRequest

#: encodings kept as given; anything else (WebP, GIF's first frame, BMP...) is re-encoded as PNG,
#: which every engine decodes (libmtmd's stb_image reads no WebP)
_KEPT_FORMATS = ("PNG", "JPEG")
_KEPT_MODES = ("RGB", "RGBA", "L", "LA", "P")  # not CMYK, YCbCr or 16-bit integer, which decoders differ on


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
    try:
        parts = urlsplit(source) if "://" in source or source.startswith("data:") else None
    except ValueError as exc:
        raise BadRequest(f"malformed image URL {source[:100]!r}: {exc}") from None
    scheme = parts.scheme.lower() if parts else ""
    if scheme == "data":
        return validate_image(_data_uri(source, policy), policy)
    if scheme in ("http", "https"):
        if not policy.allow_remote:
            raise BadRequest("remote image URLs are not allowed here (start the server with --allow-remote-media)")
        return validate_image(fetch_remote(source, policy), policy)
    if parts and scheme == "file":
        try:
            path = unquote_to_bytes(parts.path).decode()
        except UnicodeDecodeError:
            raise BadRequest(f"the file URL {source[:100]!r} is not valid UTF-8 once decoded") from None
        return validate_image(_read_local(Path(path), policy), policy)
    if scheme:
        raise BadRequest(f"unsupported image URL scheme {scheme!r} (use data:, http(s): or a local file)")
    return validate_image(_read_local(Path(source), policy), policy)


def validate_image(data: bytes, policy: MediaPolicy) -> ImageInput:
    """Check that `data` is one whole image within the limits; PNG and JPEG are kept as given,
    other formats are re-encoded as PNG (first frame)."""
    if len(data) > policy.max_bytes:
        raise BadRequest(f"the image is {len(data)} bytes; at most {policy.max_bytes} are allowed")
    try:
        image = Image.open(io.BytesIO(data))
        _check_pixels(image.width, image.height, policy)  # from the header, before decoding
        image.load()
    except (
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ):  # the warning: where a caller made it an error
        raise BadRequest("the image is a decompression bomb (too many pixels for its size)") from None
    except UnidentifiedImageError:
        raise BadRequest("the data is not an image (or not a format this server reads)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadRequest(f"the image is truncated or corrupt: {exc}") from None
    if image.format not in _KEPT_FORMATS or image.mode not in _KEPT_MODES:
        return _from_pil(image, policy)
    return ImageInput(data=data, sha256=hashlib.sha256(data).hexdigest(), width=image.width, height=image.height)


def _check_pixels(width: int, height: int, policy: MediaPolicy) -> None:
    if width < 1 or height < 1:
        raise BadRequest("the image is empty (no pixels)")
    if width * height > policy.max_pixels:
        raise BadRequest(f"the image is {width}x{height} pixels; at most {policy.max_pixels} pixels are allowed")


def _from_pil(image: Image.Image, policy: MediaPolicy) -> ImageInput:
    _check_pixels(image.width, image.height, policy)
    out = io.BytesIO()
    try:
        if image.mode not in ("RGB", "RGBA", "L", "LA"):
            image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB")
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
    """At most `max_bytes` of a regular file (never a FIFO or device, which could block forever);
    under the server's media directory unless the policy allows any path."""
    flags = os.O_RDONLY | os.O_NONBLOCK
    try:
        if policy.any_local_path:
            target = path.expanduser()
        elif policy.media_dir is None:
            raise BadRequest("local image files are not allowed here (start the server with --media-dir DIR)")
        else:
            root = policy.media_dir.resolve()
            target = (root / path).resolve()  # an absolute `path` replaces root; symlinks are followed
            if not target.is_relative_to(root):
                raise BadRequest(f"image path {str(path)!r} is outside the media directory")
            flags |= os.O_NOFOLLOW  # the resolved path: a symlink here was swapped in after the check
        fd = os.open(target, flags)
    except ValueError:  # a NUL byte
        raise BadRequest(f"image path {str(path)[:100]!r} is not a valid path") from None
    except OSError as exc:
        raise BadRequest(f"cannot read image {str(path)!r}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise BadRequest(f"image path {str(path)!r} is a directory")
        if not stat.S_ISREG(mode):
            raise BadRequest(f"image path {str(path)!r} is not a regular file")
        os.set_blocking(fd, True)
        try:
            data = file.read(policy.max_bytes + 1)
        except OSError as exc:
            raise BadRequest(f"cannot read image {str(path)!r}: {exc.strerror}") from None
    if len(data) > policy.max_bytes:
        raise BadRequest(f"the image is larger than {policy.max_bytes} bytes")
    return data
