"""Command-line flags derived from settings fields (`qwenkit.options.option`): a field's flags,
default, help and bounds become a typer option, so an option is declared once, in its settings."""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Collection
from typing import Any

import typer
from pydantic import BaseModel

from qwenkit.options import flags_of


def flag(settings: type[BaseModel], name: str) -> Any:
    """The typer option of field `name` of `settings`, for a command's signature."""
    field = settings.model_fields[name]
    flags = flags_of(name, settings)
    if not flags:
        raise ValueError(f"{settings.__name__}.{name} is not a command-line option")
    default = field.default
    if isinstance(default, dict):
        default = []  # a mapping is typed as NAME=VALUE items
    elif isinstance(default, (frozenset, set, tuple)):
        default = list(default)
    least = next((m.ge for m in field.metadata if hasattr(m, "ge")), None)  # pydantic's Field(ge=, le=)
    most = next((m.le for m in field.metadata if hasattr(m, "le")), None)
    return typer.Option(default, *flags, help=field.description, min=least, max=most)


def cli_type(annotation: Any) -> Any:
    """The type typer parses a field's flag as: a collection is a repeated flag (a mapping's items
    NAME=VALUE), a Literal a plain string (the settings refuse what is not one of them)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return cli_type(args[0]) | None if len(args) == 1 else annotation
    if origin in (frozenset, set, tuple, list):
        return types.GenericAlias(list, typing.get_args(annotation)[:1])
    if origin is dict:
        return list[str]
    if origin is typing.Literal:
        return str
    return annotation


def with_flags(
    settings: type[BaseModel], *, only: Collection[str] | None = None, exclude: Collection[str] = ()
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A command that also takes a flag for every field of `settings` that has one (`only` those,
    none of `exclude`, none the command declares itself); their values reach it as one dict, its
    keyword-only parameter `flags`, whose place in the signature is where the flags appear in --help."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command)
        hints = typing.get_type_hints(command)
        own = signature.parameters
        names = [
            name
            for name in settings.model_fields
            if flags_of(name, settings) and name not in own and name not in exclude and (only is None or name in only)
        ]
        generated = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=flag(settings, name),
                annotation=cli_type(settings.model_fields[name].annotation),
            )
            for name in names
        ]
        params: list[inspect.Parameter] = []
        for param in own.values():
            if param.name == "flags":
                params += generated
            else:
                params.append(param.replace(annotation=hints.get(param.name, param.annotation)))

        @functools.wraps(command)
        def run(**values: Any) -> Any:
            return command(**{k: v for k, v in values.items() if k not in names}, flags={n: values[n] for n in names})

        run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params} | {"return": hints.get("return")}
        return run

    return decorate
