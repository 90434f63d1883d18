"""Binary encoding of the one-dimensional arrays ``commit_batch`` takes, faster than the generic one.

psycopg dumps a list element by element through its generic adapters, which costs more than the
whole server-side insert for a 1,000-job commit. These dumpers write the array wire format
directly: a header, then each element as a 4-byte length (-1 for NULL) and its bytes. Lists are
wrapped in the marker classes below so nothing else a connection dumps is affected.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from typing import Any

from psycopg import postgres
from psycopg.abc import AdaptContext, Buffer
from psycopg.adapt import Dumper
from psycopg.pq import Format

_HEADER = struct.Struct(">iiIii")
_LENGTH = struct.Struct(">i")
_NULL = _LENGTH.pack(-1)


def _oid(name: str) -> int:
    return postgres.types[name].oid


def _array_oid(name: str) -> int:
    return postgres.types[name].array_oid


class TextArray(list[str | None]):
    """Marks a list to send as ``text[]``."""


class BytesArray(list[bytes | None]):
    """Marks a list to send as ``bytea[]``."""


class FloatArray(list[float | None]):
    """Marks a list to send as ``double precision[]``."""


class IntArray(list[int | None]):
    """Marks a list to send as ``integer[]``."""


class BigIntArray(list[int | None]):
    """Marks a list to send as ``bigint[]``."""


class BoolArray(list[bool | None]):
    """Marks a list to send as ``boolean[]``."""


def _encoder(element_oid: int, encode: Callable[[Any], bytes]) -> Callable[[list[Any]], bytes]:
    def dump(values: list[Any]) -> bytes:
        count = len(values)
        if not count:
            return _HEADER.pack(1, 0, element_oid, 0, 1)
        pack_length = _LENGTH.pack
        first = values[0]
        if values.count(first) == count:  # one value throughout: a batch's queue, kind, NULLs
            if first is None:
                return _HEADER.pack(1, 1, element_oid, count, 1) + _NULL * count
            item = encode(first)
            return _HEADER.pack(1, 0, element_oid, count, 1) + (pack_length(len(item)) + item) * count
        if None not in values:
            data = [encode(value) for value in values]
            lengths = [pack_length(len(item)) for item in data]
            parts = [b""] * (2 * count)
            parts[::2] = lengths
            parts[1::2] = data
            return _HEADER.pack(1, 0, element_oid, count, 1) + b"".join(parts)
        out = [_HEADER.pack(1, 1, element_oid, count, 1)]
        append = out.append
        for value in values:
            if value is None:
                append(_NULL)
            else:
                item = encode(value)
                append(pack_length(len(item)))
                append(item)
        return b"".join(out)

    return dump


def _fixed(element_oid: int, code: str, size: int) -> Callable[[list[Any]], bytes]:
    """Fixed-width elements without NULLs go through one struct call for the whole array."""
    element = struct.Struct(">i" + code)
    general = _encoder(element_oid, struct.Struct(">" + code).pack)

    @functools.lru_cache(maxsize=32)
    def layout(count: int) -> struct.Struct:
        return struct.Struct(">" + ("i" + code) * count)

    def dump(values: list[Any]) -> bytes:
        count = len(values)
        if not count or None in values:
            return general(values)
        header = _HEADER.pack(1, 0, element_oid, count, 1)
        first = values[0]
        # one value throughout (a batch's timestamps); not zero, which equals minus zero
        if first and values.count(first) == count:
            return header + element.pack(size, first) * count
        return header + layout(count).pack(*_interleave(size, values))

    return dump


def _interleave(size: int, values: list[Any]) -> list[Any]:
    out: list[Any] = [size] * (2 * len(values))
    out[1::2] = values
    return out


def _make_dumper(element_type: str, encode: Callable[[list[Any]], bytes]) -> type[Dumper]:
    class ArrayDumper(Dumper):
        format = Format.BINARY

        def __init__(self, cls: type, context: AdaptContext | None = None) -> None:
            super().__init__(cls, context)
            self.oid = _array_oid(element_type)

        def dump(self, obj: Any) -> Buffer:
            return encode(obj)

    ArrayDumper.__name__ = f"{element_type.capitalize()}ArrayDumper"
    return ArrayDumper


_DUMPERS: list[tuple[type, type[Dumper]]] = [
    (TextArray, _make_dumper("text", _encoder(_oid("text"), str.encode))),
    (BytesArray, _make_dumper("bytea", _encoder(_oid("bytea"), bytes))),  # bytes(b) is b itself
    (FloatArray, _make_dumper("float8", _fixed(_oid("float8"), "d", 8))),
    (IntArray, _make_dumper("int4", _fixed(_oid("int4"), "i", 4))),
    (BigIntArray, _make_dumper("int8", _fixed(_oid("int8"), "q", 8))),
    (BoolArray, _make_dumper("bool", _encoder(_oid("bool"), lambda v: b"\x01" if v else b"\x00"))),
]


def register(context: AdaptContext) -> None:
    """Teach ``context`` (a connection, or anything with adapters) to dump the marker classes."""
    for cls, dumper in _DUMPERS:
        context.adapters.register_dumper(cls, dumper)
