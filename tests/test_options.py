"""One path from flags to engines: `qwenkit serve`'s flags, `ClusterOptions` (a Ray config's
`args`) and `qwenkit.load`'s keywords are the fields of one set of settings, never mapped twice."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import qwenkit
from qwenkit.cli import app
from qwenkit.cli.flags import with_flags
from qwenkit.errors import QwenkitError
from qwenkit.options import LoadOptions, flags_of, option
from qwenkit.serve.cluster.options import ClusterOptions
from qwenkit.serve.options import ServeOptions

# serve's flags that are not settings: how the command itself runs
SERVE_ONLY = {"api_key_file", "skip_memory_check", "on_ray", "ray_address"}
# ClusterOptions fields a config file sets and the command line does not
CONFIG_ONLY = {
    "progress",
    "device_map",
    "attn_implementation",
    "look_back_period_s",
    "replica_resources",
    "ingress_resources",
    "max_retries",
    "replica_wait_s",
    "name",
}


def _params(*command: str) -> dict[str, Any]:
    group: Any = typer.main.get_command(app)
    for name in command:
        group = group.commands[name]
    return {p.name: p for p in group.params}


def _cli_default(default: Any) -> Any:
    return [] if isinstance(default, dict) else list(default) if isinstance(default, (frozenset, tuple)) else default


def test_every_serve_flag_is_a_cluster_option_and_every_cluster_option_a_flag_or_config_only():
    params = _params("serve")
    fields = ClusterOptions.model_fields
    assert set(params) - set(fields) == SERVE_ONLY
    assert set(fields) - set(params) == CONFIG_ONLY
    assert sorted(params["model"].opts) == ["--model", "-m"]  # every verb's model reference
    for name in set(params) & set(fields) - {"model"}:  # the flag is the field: its names, default, help and bounds
        field, param = fields[name], params[name]
        assert sorted(param.opts) == sorted(flags_of(name, ClusterOptions)), name
        assert param.default == _cli_default(field.default), name
        assert param.help == field.description, name
        least = next((m.ge for m in field.metadata if hasattr(m, "ge")), None)
        assert param.min == least, name


def test_every_load_keyword_is_a_load_option_and_a_cluster_option():
    keywords = list(inspect.signature(qwenkit.load).parameters)
    assert keywords == ["ref", *LoadOptions.model_fields]
    assert issubclass(ClusterOptions, ServeOptions) and issubclass(ServeOptions, LoadOptions)
    assert set(LoadOptions.model_fields) <= set(ClusterOptions.model_fields)


def test_run_and_chat_take_every_load_flag():
    flagged = {name for name in LoadOptions.model_fields if flags_of(name, LoadOptions)}
    assert flagged <= set(_params("run")) and flagged <= set(_params("chat"))
    for name in flagged:
        assert sorted(_params("run")[name].opts) == sorted(flags_of(name, LoadOptions))


def test_a_config_file_names_the_load_options_as_the_flags_do():
    options = ClusterOptions.model_validate({"ctx": 2048, "threads": 1, "parallel": 2, "max_queue": 3})
    assert (options.n_ctx, options.n_threads, options.n_parallel, options.max_waiting) == (2048, 1, 2, 3)
    assert ClusterOptions.model_validate(options.model_dump()) == options  # what `qwenkit serve --ray` deploys


def test_load_keywords_are_checked_before_any_download():
    with pytest.raises(TypeError, match="no_such_keyword"):
        qwenkit.load("qwen3-8b:q4_k_m", no_such_keyword=1)
    with pytest.raises(QwenkitError, match="image_max_tokens: Input should be greater than or equal to 4"):
        qwenkit.load("qwen3-8b:q4_k_m", image_max_tokens=1)


def test_an_option_added_to_the_settings_is_a_flag_of_the_command():
    class Speculative(LoadOptions):
        draft_max: int = option(16, "--draft-max", ge=1, help="Tokens drafted per step.")

    seen: dict[str, Any] = {}
    demo = typer.Typer()

    @demo.command()
    @with_flags(Speculative, only=("draft_max", "n_ctx"))
    def go(*, flags: dict[str, Any]) -> None:
        seen.update(Speculative.of(**flags).model_dump(include={"draft_max", "n_ctx"}))

    result = CliRunner().invoke(demo, ["--draft-max", "4", "--ctx", "512"])
    assert result.exit_code == 0, result.output
    assert seen == {"draft_max": 4, "n_ctx": 512}
    assert CliRunner().invoke(demo, ["--draft-max", "0"]).exit_code == 2  # the field's bound, on the flag


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ray", "--tensor-parallel", "2"], "vLLM distributes itself"),
        (["--ray", "--engine", "vllm"], "vLLM distributes itself"),
        (["--ray", "--prefix-cache-tokens", "64"], "--prefix-cache-tokens is not supported with --ray"),
        (["--ray", "--router", "random"], "router: Input should be 'prefix' or 'default'"),
        (["--reasoning-effort-budgets", "huge=1"], "bad effort budget 'huge=1'"),
        (["--lora", "a=/no/such/adapter.gguf"], "LoRA adapter not found: /no/such/adapter.gguf"),
    ],
)
def test_serve_refuses_bad_options_before_loading(args: list[str], message: str):
    result = CliRunner().invoke(app, ["serve", "-m", "/no/such/model.gguf", *args])
    assert isinstance(result.exception, QwenkitError) and message in str(result.exception)
