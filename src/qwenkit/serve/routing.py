"""Which loaded model a request's `model` names: a table of names built when the model loads.

Every name a client may send maps to a `Route`; `/v1/models` lists exactly those names, and an
unknown one is a 404 `model_not_found`. A loaded model answers to its served name (by default
its catalogue name or file stem), its file name, the reference it was started with, and
`default`. Other targets (adapters over the base model) are one `add` each.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qwenkit.model import Model
from qwenkit.serve.http_errors import ApiError

DEFAULT = "default"


@dataclass(frozen=True)
class Route:
    """A servable target: the model, the id responses report, and options for `Model.prepare`."""

    name: str
    model: Model
    options: Mapping[str, Any] = field(default_factory=dict)


class ModelRoutes:
    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}

    @classmethod
    def for_model(cls, model: Model, *, served_name: str | None = None, aliases: Iterable[str] = ()) -> ModelRoutes:
        """The base model under its served name, `aliases` (file name, reference) and `default`."""
        routes = cls()
        base = Route(served_name or model.name, model)
        for name in (base.name, *aliases, DEFAULT):
            routes.add(name, base)
        return routes

    def add(self, name: str, route: Route) -> None:
        """Route `name` to `route` (the first route given a name keeps it)."""
        if name and name not in self._routes:
            self._routes[name] = route

    def resolve(self, name: str | None) -> Route:
        """The route for a request's `model` (none given: the default)."""
        route = self._routes.get(DEFAULT if name is None else name)
        if route is None:
            raise ApiError(
                404,
                f"the model {name!r} does not exist on this server (see /v1/models)",
                code="model_not_found",
                param="model",
            )
        return route

    def names(self) -> dict[str, str]:
        """Every accepted name, with the id of what it serves."""
        return {name: route.name for name, route in self._routes.items()}
