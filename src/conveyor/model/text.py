"""Text every backend can store: what conveyor writes must never be refused at commit.

Two characters are refused somewhere: a NUL (PostgreSQL's ``text`` cannot hold one) and a lone
surrogate (``"\\ud800"``: it has no UTF-8 form, so no driver can send it and orjson will not encode
it). conveyor refuses both in every key, name and id it is given, on every backend, so an app that
works on SQLite works on PostgreSQL too; in what it writes of an error it escapes them instead.
"""

from __future__ import annotations

import re

from conveyor.model.errors import UnstorableTextError

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def is_storable(text: str) -> bool:
    """Whether every backend can store ``text`` (a few tens of ns for a short key)."""
    return "\x00" not in text and (text.isascii() or _SURROGATE.search(text) is None)


def text_problem(text: str) -> str | None:
    """What in ``text`` some backend cannot store, in words (None when every backend can)."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return f"a NUL character at index {found.start()}, which PostgreSQL cannot store"
    return _surrogate_at(found)


def surrogate_problem(text: str) -> str | None:
    """Where ``text`` holds a lone surrogate, in words (None if it holds none). JSON cannot carry
    one either, while it carries a NUL (as ``\\u0000``)."""
    if text.isascii():
        return None
    found = _SURROGATE.search(text)
    return None if found is None else _surrogate_at(found)


def _surrogate_at(found: re.Match[str]) -> str:
    return f"a lone surrogate \\u{ord(found.group()):04x} at index {found.start()}, which has no UTF-8 form"


def require_storable(text: str, what: str) -> None:
    """Raise :class:`UnstorableTextError` unless ``text`` (``what`` names it) is a ``str`` every
    backend can store.

    >>> require_storable("sku:a\\x00b", "state key")
    Traceback (most recent call last):
    ...
    conveyor.model.errors.UnstorableTextError: state key 'sku:a\\x00b' holds a NUL character ...
    """
    try:
        if is_storable(text):
            return
    except TypeError:  # `in` on an int, bytes, ...
        raise UnstorableTextError(f"{what} must be a str, not {type(text).__name__}") from None
    raise UnstorableTextError(f"{what} {text!r} holds {text_problem(text)}")


def storable_text(text: str) -> str:
    """``text`` with the characters some backend cannot store written as escapes.

    A NUL becomes ``\\x00`` and a lone surrogate ``\\udXXX``. Everything else, including every
    valid non-ASCII character, is kept as it is. Used for diagnostics (error messages, tracebacks)
    where a readable escape is right; keys, names and ids are refused instead (see
    :func:`require_storable`), payloads and state values too (see :mod:`conveyor.runtime.messages`).
    """
    if _UNSTORABLE.search(text) is None:
        return text
    return _UNSTORABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def cut(text: str, limit: int) -> str:
    """``text`` if it is at most ``limit`` characters, else its first ``limit`` and a marked cut
    (``… [4,996,000 characters cut]``): for error messages, which a handler may make huge."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit:,} characters cut]"
