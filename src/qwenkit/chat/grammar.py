"""JSON Schema to GBNF, the grammar language `SamplingParams.grammar` carries (every engine reads it).

The conversion is llama.cpp's own (`llama_cpp.llama_grammar`, plain Python that ships with the
llama.cpp bindings, a core dependency): the grammars llama-server writes for the same schema. The
response formats (`json_grammar`) and the tool-call formats that can be enforced (`chat/tools/`)
build on it.
"""

from __future__ import annotations

from typing import Any

from llama_cpp.llama_grammar import PRIMITIVE_RULES, SchemaConverter

from qwenkit.errors import BadRequest

ANY_OBJECT: dict[str, Any] = {"type": "object"}


_JSON_TYPES = {"string", "number", "integer", "boolean", "object", "array", "null"}


class InvalidSchema(ValueError):
    """A schema JSON Schema itself refuses (a `type` that is not one of its types)."""


class _Converter(SchemaConverter):
    """llama.cpp's JSON Schema to grammar converter, reading what it can.

    A (sub)schema the converter cannot read (only keywords it does not know, an external
    reference) constrains nothing: any JSON value may stand there, as JSON Schema itself ignores
    keywords it does not know; the rest of the schema is still enforced. A `type` that is not
    one of JSON Schema's is an error.
    """

    def __init__(self, **prop_order: int) -> None:
        super().__init__(prop_order=prop_order, allow_fetch=False, dotall=False, raw_pattern=False)

    def visit(self, schema: Any, name: str) -> str:
        kind = schema.get("type") if isinstance(schema, dict) else None
        kinds = kind if isinstance(kind, list) else [kind]
        if kind is not None and not all(isinstance(k, str) and k in _JSON_TYPES for k in kinds):
            raise InvalidSchema(f"{kind!r} is not a JSON Schema type")
        try:
            return str(super().visit(schema, name))
        except InvalidSchema:
            raise
        except Exception:  # the converter raises bare exceptions (assertions) on what it cannot read
            value = self._add_primitive("value", PRIMITIVE_RULES["value"])
            return str(value if name else self._add_rule("root", value))


def json_grammar(schema: dict[str, Any] | None) -> str:
    """A GBNF grammar accepting JSON text valid against `schema` (any object when None)."""
    return schema_rules(schema or ANY_OBJECT, "", source="schema", what="JSON schema")


def schema_rules(schema: dict[str, Any], rule: str, *, source: str, what: str, order: tuple[str, ...] = ()) -> str:
    """GBNF rules for JSON valid against `schema`, its rule named `rule` (`root` when empty).

    `order`: the properties written first, in that order; `source`: the schema's name in its
    resolved `$ref`s; `what`: its name in the BadRequest for a schema the converter cannot resolve.
    """
    converter = _Converter(**{name: i for i, name in enumerate(order)})
    try:
        converter.visit(converter.resolve_refs(schema, source), rule)
    except Exception as exc:  # resolving references can fail too
        raise BadRequest(f"unsupported {what}: {exc}") from None
    return str(converter.format_grammar())
