"""Server settings: where to listen, who may call, and the limits on what they may ask."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from qwenkit.chat.media import MediaPolicy
from qwenkit.errors import QwenkitError


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: frozenset[str] = frozenset()
    requests_per_minute: int | None = None  # per API key (or per client address without keys)
    tokens_per_minute: int | None = None  # prompt + completion tokens, per key
    max_body_bytes: int = 1_000_000
    max_messages: int = 512
    max_tokens_cap: int = 8192  # the most a request may ask for
    default_max_tokens: int = 2048  # when a request names no limit
    max_prompt_tokens: int | None = None  # None: the model's context
    cors_origins: tuple[str, ...] = ()
    log_prompts: bool = False
    retry_after_s: int = 2
    served_name: str | None = None
    model_aliases: tuple[str, ...] = ()  # more names the model answers to (file name, reference)
    max_n: int = 4  # the most choices (n, best_of) one request may ask for
    max_stored_responses: int = 256  # Responses API: kept in memory for previous_response_id
    lora: tuple[tuple[str, str], ...] = ()  # (name, GGUF LoRA file) loaded over the model, in --lora order
    allow_runtime_lora: bool = False  # POST /v1/load_lora_adapter and /v1/unload_lora_adapter (needs api_keys)
    allow_remote_media: bool = False  # image_url parts may name http(s) URLs (public addresses only)
    media_dir: Path | None = None  # image_url parts may name files (paths or file:// URLs) under this directory
    max_images: int = 8  # per request
    media_hosts: frozenset[str] = frozenset()  # remote image hosts exempt from the private-address refusal

    def media(self) -> MediaPolicy:
        """Where a request's images may come from."""
        return MediaPolicy(
            allow_remote=self.allow_remote_media,
            media_dir=self.media_dir,
            max_images=self.max_images,
            trusted_hosts=self.media_hosts,
        )


def read_api_keys(keys: list[str], key_file: Path | None) -> frozenset[str]:
    """Keys from the command line, a file (one per line, # comments) and QWENKIT_API_KEYS."""
    found = [k.strip() for k in keys]
    if key_file is not None:
        try:
            lines = key_file.read_text().splitlines()
        except OSError as exc:
            raise QwenkitError(f"cannot read the API key file {key_file}: {exc.strerror}") from None
        found += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    found += [k.strip() for k in os.environ.get("QWENKIT_API_KEYS", "").split(",")]
    return frozenset(k for k in found if k)
