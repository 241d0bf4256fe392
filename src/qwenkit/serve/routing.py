"""Which loaded model a request's `model` names: a table of names built when the model loads.

Every name a client may send maps to a `Route`; `/v1/models` lists exactly those names, and an
unknown one is a 404 `model_not_found`. A loaded model answers to its served name (by default
its catalogue name or file stem), its file name, the reference it was started with, and
`default`. Each `--lora` adapter is one more route: the base model with that adapter applied
(`options["adapters"]`), listed with `parent` (the base) and `root` (its file). llama-server's
per-request `lora: [{id, scale}]` picks adapters by position in that order instead (`with_lora`).
With `--allow-runtime-lora`, adapters are added (`add_adapter`, by name only: no llama-server id)
and removed (`remove_adapter`) while serving.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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
    parent: str | None = None  # an adapter's base model
    root: str | None = None  # an adapter's file (None: the route's own name)


class ModelRoutes:
    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        self._lora: list[str] = []  # adapter names in `--lora` order (llama-server's `lora` ids)

    @classmethod
    def for_model(
        cls,
        model: Model,
        *,
        served_name: str | None = None,
        aliases: Iterable[str] = (),
        lora: Sequence[tuple[str, str]] = (),
    ) -> ModelRoutes:
        """The base model under its served name, `aliases` (file name, reference) and `default`;
        then each LoRA adapter (name, file) loaded on its engine, under its name."""
        routes = cls()
        base = Route(served_name or model.name, model)
        for name in (base.name, *aliases, DEFAULT):
            routes.add(name, base)
        for name, path in lora:
            routes.add(name, Route(name, model, {"adapters": ((name, 1.0),)}, parent=base.name, root=path))
            routes._lora.append(name)
        return routes

    def add(self, name: str, route: Route) -> None:
        """Route `name` to `route` (the first route given a name keeps it)."""
        if name and name not in self._routes:
            self._routes[name] = route

    def add_adapter(self, name: str, path: str) -> Route:
        """Route `name` to the base model with the adapter `name` (loaded on the engine) applied."""
        if name in self._routes:
            raise ApiError(400, f"the name {name!r} is already taken on this server", param="lora_name")
        base = self._routes[DEFAULT]
        route = Route(name, base.model, {"adapters": ((name, 1.0),)}, parent=base.name, root=path)
        self._routes[name] = route
        return route

    def remove_adapter(self, name: str) -> Route:
        """Stop routing `name` (an adapter): new requests for it are a 404; llama-server's id for a
        `--lora` adapter removed so is refused too."""
        route = self._routes.get(name)
        if route is None:
            raise ApiError(404, f"no LoRA adapter named {name!r} is loaded", code="model_not_found", param="lora_name")
        if route.parent is None:
            raise ApiError(400, f"{name!r} names the base model, not a LoRA adapter", param="lora_name")
        del self._routes[name]
        return route

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

    def with_lora(self, route: Route, lora: Sequence[tuple[int, float]]) -> Route:
        """`route` with llama-server's `lora` list instead of its own adapters: (id, scale) pairs,
        ids counting the `--lora` adapters in order; an adapter not listed (or at scale 0) is off."""
        for id_, _ in lora:
            if not 0 <= id_ < len(self._lora):
                loaded = f"ids 0..{len(self._lora) - 1}" if self._lora else "none are loaded"
                raise ApiError(400, f"lora id {id_} is not loaded ({loaded})", param="lora")
            if self._lora[id_] not in self._routes:
                raise ApiError(400, f"lora id {id_} ({self._lora[id_]!r}) was unloaded", param="lora")
        adapters = tuple((self._lora[id_], scale) for id_, scale in lora if scale != 0)
        return Route(route.name, route.model, {**route.options, "adapters": adapters}, route.parent, route.root)

    def cards(self) -> dict[str, tuple[str, str | None]]:
        """Every accepted name, with its `root` (what it serves; an adapter's file) and `parent`."""
        return {name: (route.root or route.name, route.parent) for name, route in self._routes.items()}

    def names(self) -> dict[str, str]:
        """Every accepted name, with the id of what it serves."""
        return {name: route.name for name, route in self._routes.items()}
