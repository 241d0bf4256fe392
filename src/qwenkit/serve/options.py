"""`qwenkit serve`'s options, described once: how the model loads (`LoadOptions`, of which this is
one) and the HTTP side (`ServeSettings`, built by `settings`). Its fields with flags are the
command's flags; `ClusterOptions` adds the replicas to them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import field_validator, model_validator

from qwenkit.api import load_with
from qwenkit.chat.budget import parse_effort_budgets
from qwenkit.errors import QwenkitError
from qwenkit.model import Model
from qwenkit.options import LoadOptions, option
from qwenkit.serve.settings import ServeSettings
from qwenkit.store import LocalModel


def parse_adapters(specs: list[str]) -> dict[str, str]:
    """`--lora NAME=FILE` (or just FILE, named by its stem) options to {name: file}."""
    found: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).stem, spec
        if not name or not path:
            raise QwenkitError(f"--lora takes NAME=FILE.gguf, not {spec!r}")
        if name in found:
            raise QwenkitError(f"two LoRA adapters are named {name!r}")
        if not Path(path).exists():  # a GGUF LoRA (llama.cpp) or a peft adapter directory (transformers)
            raise QwenkitError(f"LoRA adapter not found: {path}")
        found[name] = path
    return found


class ServeOptions(LoadOptions):
    """The model, how it loads (the fields of `LoadOptions`, some with a server's defaults) and how
    it is served."""

    model: str = "default"
    progress: bool = False
    n_parallel: int = option(4, "--parallel", "-np", alias="parallel", ge=1, le=64, help="Requests decoded together.")
    max_waiting: int = option(
        64, "--max-queue", alias="max_queue", ge=0, help="Requests waiting for a slot before 429."
    )
    lora: dict[str, str | Path] = option(
        {}, "--lora", help="NAME=FILE.gguf: a GGUF LoRA requests select with model=NAME (repeatable)."
    )
    mmproj: Path | None = option(
        None,
        "--mmproj",
        help="A Qwen-VL GGUF's vision projector (llama.cpp): the model then takes images. "
        "Catalogue names (qwen2.5-vl-3b-instruct) bring their own.",
    )
    effort_budgets: str = option(
        "",
        "--reasoning-effort-budgets",
        help="Thinking budgets per reasoning_effort, e.g. low=512,medium=2048,high=none.",
    )
    # the HTTP side
    host: str = option("127.0.0.1", "--host", help="Address to bind (127.0.0.1 unless told otherwise).")
    port: int = option(8000, "--port", "-p", ge=1, le=65535)
    api_keys: frozenset[str] = option(frozenset(), "--api-key", help="Accepted API key (repeatable).")
    requests_per_minute: int | None = option(None, "--rate-limit-rpm", ge=1, help="Requests per minute per key.")
    tokens_per_minute: int | None = option(None, "--rate-limit-tpm", ge=1, help="Tokens per minute per key.")
    max_body_bytes: int = option(1_000_000, "--max-body-bytes", ge=1024, help="Largest request body.")
    max_tokens_cap: int = option(8192, "--max-tokens-cap", ge=1, help="Largest max_tokens a request may ask.")
    cors_origins: tuple[str, ...] = option(
        (), "--cors-origin", help="Allowed CORS origin (repeatable; none by default)."
    )
    log_prompts: bool = option(False, "--log-prompts", help="Log prompt text (off by default).")
    max_n: int = option(4, "--max-n", ge=1, le=128, help="Most choices (n, best_of) per request (at most --parallel).")
    max_stored_responses: int = option(
        256, "--max-stored-responses", ge=0, help="Responses kept in memory for previous_response_id."
    )
    served_model_name: str | None = option(
        None, "--served-model-name", help="The model's id in responses (default: its catalogue name or file stem)."
    )
    allow_runtime_lora: bool = option(
        False,
        "--allow-runtime-lora",
        help="Serve POST /v1/load_lora_adapter and /v1/unload_lora_adapter (needs --api-key).",
    )
    # images
    allow_remote_media: bool = option(
        False,
        "--allow-remote-media",
        help="Let image_url parts name http(s) URLs (fetched with size and time limits; public addresses only).",
    )
    media_dir: Path | None = option(
        None, "--media-dir", help="Let image_url parts name files (paths, file:// URLs) under this directory."
    )
    media_hosts: frozenset[str] = option(
        frozenset(), "--media-host", help="A remote image host exempt from the private-address refusal (repeatable)."
    )
    max_images: int = option(8, "--max-images", ge=0, le=256, help="Most images per request.")

    @field_validator("lora", mode="before")
    @classmethod
    def _adapter_specs(cls, value: Any) -> Any:
        """The command line's `NAME=FILE` (or FILE) list, as {name: file}."""
        return parse_adapters(value) if isinstance(value, list) else value

    @field_validator("effort_budgets")
    @classmethod
    def _known_efforts(cls, value: str) -> str:
        parse_effort_budgets(value)  # a bad spelling fails here, before any download or load
        return value

    @model_validator(mode="after")
    def _runtime_lora_needs_keys(self) -> ServeOptions:
        if self.allow_runtime_lora and not self.api_keys:
            raise ValueError(
                "--allow-runtime-lora needs --api-key (anyone could load files from this machine otherwise)"
            )
        return self

    def settings(self, aliases: tuple[str, ...] = ()) -> ServeSettings:
        """The server's settings; `aliases`: more names the model answers to."""
        return ServeSettings(
            host=self.host,
            port=self.port,
            api_keys=self.api_keys,
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            max_body_bytes=self.max_body_bytes,
            max_tokens_cap=self.max_tokens_cap,
            cors_origins=self.cors_origins,
            log_prompts=self.log_prompts,
            max_n=min(self.max_n, self.n_parallel),  # a request's choices run side by side
            max_stored_responses=self.max_stored_responses,
            served_name=self.served_model_name,
            model_aliases=aliases,
            lora=tuple((name, str(path)) for name, path in self.lora.items()),
            allow_runtime_lora=self.allow_runtime_lora,
            allow_remote_media=self.allow_remote_media,
            media_dir=self.media_dir,
            max_images=self.max_images,
            media_hosts=self.media_hosts,
        )

    def load(self) -> Model:
        """The model, loaded as these options say, with their reasoning-effort budgets."""
        model = load_with(self.model, self)
        model.effort_budgets = parse_effort_budgets(self.effort_budgets)
        return model


def served_aliases(local: LocalModel, ref: str) -> tuple[str, ...]:
    """The names a served model answers to besides its id: its store name, its file name, and the
    reference typed unless it is a path (the server's file system is nobody's business)."""
    return (local.name, local.path.name, *([ref] if local.source != "local" else []))
