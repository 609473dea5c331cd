"""The one set of value parsers for everything users type: task parameters, model arguments, CLI flags.

Clients send every value as text ("True", "0.001", "[1, 2, 3, 6]", "") or, from Python/JSON, as typed
values; both go through these functions so that one word means the same thing everywhere. Each raises
`ValueError` with a message that says what was expected; callers prefix the parameter name.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

TRUE_WORDS = frozenset({"true", "1", "yes", "y", "t", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "n", "f", "off"})
MAX_JSON_DEPTH = 32  # a submitted JSON value nested deeper is refused (no recursion bombs)


def is_unset(value: Any) -> bool:
    """Clients send "" (and some `null`) for a parameter they leave unset."""
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "null"))


def parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ValueError(f"'{raw}' is not a boolean; use true or false")


def _number(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError(f"'{raw}' is not a number")
    try:
        number = float(str(raw).strip()) if not isinstance(raw, (int, float)) else float(raw)
    except (ValueError, OverflowError):
        raise ValueError(f"'{raw}' is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"'{raw}' is not a finite number")
    return number


def _range_text(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f"from {minimum:g} to {maximum:g}"
    if minimum is not None:
        return f"of at least {minimum:g}"
    return f"of at most {maximum:g}" if maximum is not None else ""


def parse_int(raw: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """A whole number (also written "4.0" or 4.0) inside [minimum, maximum]."""
    number = _number(raw)
    if number != int(number):
        raise ValueError(f"'{raw}' is not a whole number")
    value = int(number)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{value} is out of range; use a whole number {_range_text(minimum, maximum)}")
    return value


def parse_float(
    raw: Any, minimum: float | None = None, maximum: float | None = None, max_exclusive: bool = False
) -> float:
    """A finite number inside [minimum, maximum] (or [minimum, maximum) with `max_exclusive`)."""
    value = _number(raw)
    too_big = maximum is not None and (value >= maximum if max_exclusive else value > maximum)
    if (minimum is not None and value < minimum) or too_big:
        bound = _range_text(minimum, maximum) + (" (not including the upper bound)" if max_exclusive else "")
        raise ValueError(f"{value:g} is out of range; use a number {bound}")
    return value


def parse_str(raw: Any) -> str:
    return str(raw).strip()


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value, iteratively (a deep value cannot exhaust the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return depth
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def loads_json(text: str) -> Any:
    """`json.loads` that refuses values nested deeper than MAX_JSON_DEPTH with a ValueError."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at character {exc.pos})") from None
    except RecursionError:
        raise ValueError(f"JSON nested too deeply; at most {MAX_JSON_DEPTH} levels are allowed") from None
    if _depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested too deeply; at most {MAX_JSON_DEPTH} levels are allowed")
    return value


def parse_json_object(raw: Any) -> dict[str, Any] | None:
    """A JSON object from text (or a dict as is); None when the text is not JSON at all (no leading "{")."""
    if isinstance(raw, dict):
        return raw
    text = str(raw).strip()
    if not text.startswith("{"):
        return None
    value = loads_json(text)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


def list_parser(item: Callable[[Any], Any]) -> Callable[[Any], list[Any]]:
    """A parser of lists of `item`: a JSON list, "1,2,3", a single value, or a Python list/tuple."""

    def parse(raw: Any) -> list[Any]:
        value = raw
        if isinstance(raw, str):
            text = raw.strip()
            value = loads_json(text if text.startswith("[") else f"[{text}]")
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [item(v) for v in value]

    return parse
