"""Images for vision models: load from a data URI, an http(s) URL, a local path, bytes or a PIL image,
and validate (fully decoded, bounded in bytes, pixels and count) into an `ImageInput`.

Where an image may come from is a `MediaPolicy`: the server allows remote URLs only with
`--allow-remote-media` (no private, loopback or link-local address on any redirect hop) and local
files only under `--media-dir`; the Python API and the CLI read any local path.
"""

from qwenkit.chat.media.images import load_image, validate_image
from qwenkit.chat.media.policy import LOCAL_POLICY, MediaPolicy
from qwenkit.chat.media.remote import fetch_remote

__all__ = ["LOCAL_POLICY", "MediaPolicy", "fetch_remote", "load_image", "validate_image"]
