"""Text every backend can store: what conveyor writes of an error must never be refused."""

from __future__ import annotations

import re

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str) -> str:
    """``text`` with the characters some backend cannot store written as escapes.

    A NUL (PostgreSQL's ``text`` refuses it) becomes ``\\x00`` and a lone surrogate (no UTF-8 form,
    so neither orjson nor any database takes it) becomes ``\\udXXX``. Everything else, including
    every valid non-ASCII character, is kept as it is. Used for diagnostics (error messages,
    tracebacks) where a readable escape is right; payloads and state are refused instead (see
    :mod:`conveyor.runtime.messages`).
    """
    if _UNSTORABLE.search(text) is None:
        return text
    return _UNSTORABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
