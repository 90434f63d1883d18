"""What JSON can carry: payloads and state values are checked here before anything is stored.

orjson refuses a lone surrogate and what it cannot serialize, but writes NaN and ±Infinity as
``null``, silently losing the value (so does pydantic in JSON mode). Every JSON value conveyor
stores goes through :func:`dump_json` or an equivalent check: a body without ``null`` (most) costs
one search of the bytes, one with ``null`` a walk of the value (:func:`has_non_finite`); the path
of a problem (:func:`json_problem`) is worked out only for the error message.
"""

from __future__ import annotations

import math
import re
from dataclasses import fields, is_dataclass
from typing import Any

import orjson

from conveyor.model.errors import PayloadValidationError
from conveyor.model.text import surrogate_problem

null_in = re.compile(b"null").search
"""Where orjson met NaN or ±Infinity it wrote ``null``: only a body with one can hide them. (A
compiled search: ~100 ns on a 200-byte body, half of ``b"null" in body`` on CPython 3.11;
re-measured 115 ns against 263 ns with ``python -m timeit -s "import re; s = re.compile(b'null').search;
b = b'[1, 2.5, true]' * 14" "s(b)"``, and ``"b'null' in b"`` for the other.)"""


def dump_json(value: Any, what: str, *args: object) -> bytes:
    """``value`` as JSON bytes, or :class:`PayloadValidationError` naming ``what`` (formatted
    with ``args`` only then, as logging does) and where in ``value`` the problem is.

    orjson refuses a lone surrogate and what it cannot serialize, but writes NaN and ±Infinity as
    ``null``: only a body with a ``null`` in it is searched for them (about 0.1 µs to tell, see
    :data:`null_in`; then :func:`has_non_finite`, under 1 µs for a small payload: a timeit figure
    whose command was not recorded, not re-measured; docs/BENCHMARKS.md "After the reliability
    hardening (issue 14)" gives 0.4-1.6 µs for ``ctx.enqueue``'s checks).
    """
    try:
        body = orjson.dumps(value)
    except TypeError as exc:
        raise PayloadValidationError(f"{_named(what, args)}: {unjsonable(value, exc)}") from None
    if null_in(body) is not None and has_non_finite(value):
        raise PayloadValidationError(f"{_named(what, args)}: {json_problem(value)}")
    return body


def _named(what: str, args: tuple[object, ...]) -> str:
    return what.format(*args) if args else what  # a name with braces in it is not a format


def unjsonable(value: Any, error: TypeError) -> str:
    """Why orjson raised ``error`` for ``value``, with the path when :func:`json_problem` finds it."""
    return json_problem(value) or f"not JSON-serializable: {error}"


_SCALARS = frozenset({str, int, bool, type(None)})


def has_non_finite(value: Any) -> bool:
    """Whether ``value`` holds NaN or ±Infinity anywhere: the fast search, without paths (about
    60 ns a value; :func:`json_problem` says where). Recursive: it runs only on what orjson
    encoded, which is at most 255 levels deep."""
    kind = type(value)
    if kind is dict:
        values: Any = value.values()
    elif kind is list or kind is tuple:
        values = value
    elif kind is float:
        return bool(value - value)  # NaN - NaN and inf - inf are NaN (true); finite x - x is 0.0
    elif kind in _SCALARS:
        return False
    else:
        return _has_non_finite_other(value)
    for item in values:
        kind = type(item)
        if kind is float:
            if item - item:
                return True
        elif kind is dict or kind is list or kind is tuple:
            if has_non_finite(item):
                return True
        elif kind not in _SCALARS and _has_non_finite_other(item):
            return True
    return False


def _has_non_finite_other(value: Any) -> bool:
    """:func:`has_non_finite` for subclasses of float, dict, list and tuple, and the dataclasses
    orjson encodes as objects; anything else orjson encodes (datetimes, UUIDs, enums) is not a float."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(has_non_finite(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(has_non_finite(item) for item in value)
    if is_dataclass(value) and not isinstance(value, type):
        return any(has_non_finite(getattr(value, f.name)) for f in fields(value))
    return False


def json_problem(value: Any) -> str | None:
    """The first thing in ``value``, in document order, that JSON cannot carry, with its path
    (``NaN at $.items[2].price is not valid JSON``); None if there is none.

    NaN and ±Infinity have no JSON form (orjson and pydantic write them as ``null``, losing the
    value), nor has a string or key with a lone surrogate. A NUL inside a string is fine: JSON
    escapes it. Iterative, so a 3,000-deep payload is searched as well as a flat one.
    """
    stack: list[tuple[Any, str]] = [(value, "$")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            problem = surrogate_problem(item)
            if problem is not None:
                return f"the string at {path} holds {problem}"
        elif isinstance(item, float):
            if not math.isfinite(item):
                name = "NaN" if math.isnan(item) else ("Infinity" if item > 0 else "-Infinity")
                return f"{name} at {path} is not valid JSON"
        elif isinstance(item, dict):
            children = []
            for key, inner in item.items():
                problem = surrogate_problem(key) if isinstance(key, str) else None
                if problem is not None:
                    return f"the key {key!r} at {path} holds {problem}"
                children.append((inner, f"{path}.{key}" if _plain(key) else f"{path}[{key!r}]"))
            stack.extend(reversed(children))
        elif isinstance(item, list | tuple):
            stack.extend((item[index], f"{path}[{index}]") for index in range(len(item) - 1, -1, -1))
        elif is_dataclass(item) and not isinstance(item, type):  # orjson encodes dataclasses too
            stack.extend((getattr(item, f.name), f"{path}.{f.name}") for f in reversed(fields(item)))
    return None


def _plain(key: object) -> bool:
    return isinstance(key, str) and key.isidentifier()
