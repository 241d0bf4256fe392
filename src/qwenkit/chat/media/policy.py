"""`MediaPolicy`: where images may come from and how large they may be."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qwenkit.errors import BadRequest


def normalize_host(host: str) -> str:
    """`host` as compared against `trusted_hosts`: lower-case, IDNA (ASCII), no brackets or final dot."""
    host = host.strip().strip("[]").rstrip(".").lower()
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


@dataclass(frozen=True)
class MediaPolicy:
    """Where images may come from and how large they may be."""

    allow_remote: bool = False  # http(s) URLs (public addresses only, unless in `trusted_hosts`)
    media_dir: Path | None = None  # local files (paths or file:// URLs) only under this directory
    any_local_path: bool = False  # local files anywhere (the Python API and the CLI, not the server)
    max_images: int = 8  # per request
    max_bytes: int = 20 * 1024 * 1024  # encoded size of one image
    max_pixels: int = 40_000_000  # width * height of one image, checked before decoding
    timeout_s: float = 10.0  # for one remote image: DNS, connections, redirects and body together
    trusted_hosts: frozenset[str] = frozenset()  # hosts exempt from the private-address refusal

    def __post_init__(self) -> None:
        object.__setattr__(self, "trusted_hosts", frozenset(normalize_host(h) for h in self.trusted_hosts))

    def check_count(self, n: int) -> None:
        if n > self.max_images:
            raise BadRequest(f"too many images: {n} (at most {self.max_images} per request)")


LOCAL_POLICY = MediaPolicy(any_local_path=True)
