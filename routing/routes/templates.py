"""Per-endpoint values taken from the event: order key templates and enrichments.

An endpoint may say what orders its messages (`orderKey`) and which application properties to add to
every message it gets (`enrichments`, like IoT Hub's message enrichments). Both are written the same
way, and compiled once when the route table loads (paths with `routing.routes.filters`' parser, so a typo is
a validation error with its position, never a per-event failure):

- `$body.DeviceId`, `$subject`, `$properties.site`: one path; its value, typed as in the event;
- `{$body.Building}/{$body.Floor}`: a template; the text with each `{path}` replaced (`{{` and `}}`
  stand for braces);
- anything else is a fixed value (for enrichments only); `$$` at the start stands for a literal `$`.

A path the event does not have (or that holds null, an object or an array where text is needed) makes
the value undefined: an enrichment is then left out, and an order key falls back to the event's own
(the device or twin id). The grammar is documented in docs/FILTERS.md. Pure logic: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from routing.model import Event
from routing.routes.filters import MISSING, EventBody, FilterSyntaxError, Operand, compile_operand


@dataclass(frozen=True, slots=True)
class ValueTemplate:
    """A compiled order key or enrichment value. `raw` is what the user wrote (what round-trips)."""

    raw: Any
    # A fixed value, one path, or literal text and paths in turn (a template).
    fixed: Any = field(default=None, compare=False)
    operand: Operand | None = field(default=None, compare=False)
    parts: tuple[str | Operand, ...] = field(default=(), compare=False)

    @property
    def needs_body(self) -> bool:
        if self.operand is not None:
            return self.operand.needs_body
        return any(isinstance(part, Operand) and part.needs_body for part in self.parts)

    def value(self, event: Event, body: EventBody | None = None) -> Any:
        """The value for `event`, typed as found (a path) or text (a template); `MISSING` if undefined."""
        if self.operand is not None:
            found = self.operand.value(event, body)
            return MISSING if found is None else found
        if not self.parts:
            return self.fixed
        if body is None:
            body = EventBody(event)
        pieces: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                pieces.append(part)
                continue
            text = as_text(part.value(event, body))
            if text is None:
                return MISSING
            pieces.append(text)
        return "".join(pieces)

    def text(self, event: Event, body: EventBody | None = None) -> str | None:
        """The value as text (an order key), or None when undefined or not a scalar."""
        return as_text(self.value(event, body))


def as_text(value: Any) -> str | None:
    """A scalar as text, the way JSON writes it (`true`, `3`, `2.5`); None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return orjson.dumps(value).decode()
    return None


def as_property(value: Any) -> Any:
    """A value as an application property: scalars as they are, objects and arrays as JSON text."""
    if value is MISSING or value is None:
        return MISSING
    if isinstance(value, str | bool | int | float):
        return value
    return orjson.dumps(value).decode()


# CloudEvents 1.0's Integer: a 32-bit signed whole number. Its type system has no float.
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def as_extension(value: Any) -> Any:
    """A value as a CloudEvents 1.0 extension attribute: strings, booleans and 32-bit integers as
    they are, anything else (a float, a larger integer, an object, an array) as its JSON text.

    The CloudEvents type system has Boolean, Integer (32-bit), String, Binary, URI and Timestamp, but
    no float: a consumer's SDK refuses an attribute of another type, and so may Event Grid. A null is
    no value (the JSON format reads it as an absent attribute), so it is left out, as for properties.
    """
    if value is MISSING or value is None:
        return MISSING
    if isinstance(value, str | bool):
        return value
    if isinstance(value, int) and INT32_MIN <= value <= INT32_MAX:
        return value
    return orjson.dumps(value).decode()


def compile_value(raw: Any, *, allow_fixed: bool = True) -> ValueTemplate:
    """Compile what the user wrote; raises `FilterSyntaxError` (with the position) or `ValueError`."""
    if isinstance(raw, bool | int | float) and not isinstance(raw, str):
        if not allow_fixed:
            raise ValueError(_FIXED_KEY)
        return ValueTemplate(raw=raw, fixed=raw)
    if not isinstance(raw, str):
        raise ValueError(f"must be a string, number or true/false, got {type(raw).__name__}")
    if not raw.strip():
        raise ValueError("must not be empty")
    if raw.startswith("$$"):
        if not allow_fixed:
            raise ValueError(_FIXED_KEY)
        return ValueTemplate(raw=raw, fixed=raw[1:])
    if "{" in raw or "}" in raw:
        parts = _template_parts(raw)
        if any(isinstance(part, Operand) for part in parts):
            return ValueTemplate(raw=raw, parts=parts)
        # Only escaped braces: fixed text after all.
        if not allow_fixed:
            raise ValueError(_FIXED_KEY)
        return ValueTemplate(raw=raw, fixed="".join(str(part) for part in parts))
    if raw.startswith("$"):
        return ValueTemplate(raw=raw, operand=compile_operand(raw))
    if not allow_fixed:
        raise ValueError(_FIXED_KEY)
    return ValueTemplate(raw=raw, fixed=raw)


_FIXED_KEY = (
    "has no path in it, so every message would share one key: write a path ($body.DeviceId, $subject, "
    "$properties.<name>) or a template ('{$body.Building}/{$body.Floor}')"
)


def _template_parts(text: str) -> tuple[str | Operand, ...]:
    parts: list[str | Operand] = []
    literal: list[str] = []
    at = 0
    while at < len(text):
        char = text[at]
        if text.startswith("{{", at) or text.startswith("}}", at):
            literal.append(char)
            at += 2
            continue
        if char == "}":
            raise FilterSyntaxError(f"unmatched '}}' at position {at + 1} (write '}}}}' for a brace)", at + 1)
        if char != "{":
            literal.append(char)
            at += 1
            continue
        close = text.find("}", at + 1)
        if close < 0:
            raise FilterSyntaxError(f"'{{' at position {at + 1} is never closed", at + 1)
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append(compile_operand(text, at + 1, close))
        at = close + 1
    if literal:
        parts.append("".join(literal))
    return tuple(parts)


def enrich(
    base: Mapping[str, Any],
    enrichments: tuple[tuple[str, ValueTemplate], ...],
    event: Event,
    body: EventBody,
    *,
    convert: Callable[[Any], Any] = as_property,
) -> dict[str, Any]:
    """`base` with each enrichment that is defined for `event` added (an enrichment wins a clash),
    each value made what the carrier can hold (`as_property`, or `as_extension` for CloudEvents)."""
    out = dict(base)
    for name, template in enrichments:
        value = convert(template.value(event, body))
        if value is not MISSING:
            out[name] = value
    return out
