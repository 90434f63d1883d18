"""The commit log's records: one mutating port call each, as bytes and back.

A record is ``JSON header, NUL, blobs``: the header is ``[command, arguments, blob lengths]`` and
every ``bytes`` argument (job bodies, state values) is an index into the blobs that follow, so a
body passes through as the bytes it is, never base64. JSON text holds no raw NUL (orjson escapes
control characters), so the first NUL ends the header. Floats keep every digit (orjson writes the
shortest text that reads back as the same double), which the replicas' deterministic replay needs:
every replica must compute the same deadline from the same ``now``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from conveyor.ports import (
    Commit,
    Effects,
    ErrorInfo,
    HistoryEntry,
    NewEvent,
    NewJob,
    Outcome,
    Settlement,
    StateOp,
    StateWrite,
    WorkerInfo,
)


class _Blobs:
    """The ``bytes`` of one record, referred to by index from its header."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[bytes] = []

    def add(self, data: bytes | None) -> int | None:
        if data is None:
            return None
        self.items.append(data)
        return len(self.items) - 1


def _error(error: ErrorInfo | None) -> list[str | None] | None:
    return None if error is None else [error.type, error.message, error.traceback]


def _error_from(data: list[Any] | None) -> ErrorInfo | None:
    return None if data is None else ErrorInfo(data[0], data[1], data[2])


def _history(entries: Sequence[HistoryEntry]) -> list[list[Any]]:
    return [[h.correlation_id, h.at, h.kind, h.name, h.message_id, h.attempt, h.detail] for h in entries]


def _history_from(data: list[list[Any]]) -> list[HistoryEntry]:
    return [HistoryEntry(*entry) for entry in data]


def _commit(commit: Commit, blobs: _Blobs) -> list[Any]:
    s, e = commit.settlement, commit.effects
    settlement = None if s is None else [s.job_id, s.token, s.outcome.value, s.available_at, _error(s.error)]
    return [
        settlement,
        [
            [j.id, j.queue, blobs.add(j.body), j.available_at, j.enqueued_at, j.idempotency_key]
            + ([j.priority, j.lease_seconds] if j.priority or j.lease_seconds is not None else [])
            for j in e.jobs
        ],
        [[v.id, v.event, blobs.add(v.body), v.emitted_at] for v in e.events],
        [[w.key, w.op.value, blobs.add(w.value), w.expected_version] for w in e.states],
        [list(c) for c in e.cancels],
        _history(e.history),
    ]


def _commit_from(data: list[Any], blobs: list[bytes]) -> Commit:
    s, jobs, events, states, cancels, history = data
    settlement = None if s is None else Settlement(s[0], s[1], Outcome(s[2]), s[3], _error_from(s[4]))
    return Commit(
        settlement,
        Effects(
            [NewJob(j[0], j[1], blobs[j[2]], j[3], j[4], j[5], *j[6:]) for j in jobs],
            [NewEvent(v[0], v[1], blobs[v[2]], v[3]) for v in events],
            [StateWrite(w[0], StateOp(w[1]), None if w[2] is None else blobs[w[2]], w[3]) for w in states],
            [(c[0], c[1]) for c in cancels],
            _history_from(history),
        ),
    )


def _commits(commits: Sequence[Commit], blobs: _Blobs) -> list[list[Any]]:
    return [_commit(c, blobs) for c in commits]


def _commits_from(data: list[list[Any]], blobs: list[bytes]) -> list[Commit]:
    return [_commit_from(c, blobs) for c in data]


def _worker(w: WorkerInfo) -> list[Any]:
    return [w.id, w.host, w.pid, list(w.queues), w.concurrency, w.started_at, w.last_seen, w.settled]


def _worker_from(data: list[Any]) -> WorkerInfo:
    return WorkerInfo(data[0], data[1], data[2], tuple(data[3]), *data[4:])


Encoder = Callable[[tuple[Any, ...], _Blobs], list[Any]]
Decoder = Callable[[list[Any], list[bytes]], tuple[Any, ...]]


def _plain(args: tuple[Any, ...], blobs: _Blobs) -> list[Any]:
    return [list(a) if isinstance(a, tuple) else a for a in args]


def _plain_from(data: list[Any], blobs: list[bytes]) -> tuple[Any, ...]:
    return tuple(data)


def _commit_args(args: tuple[Any, ...], blobs: _Blobs) -> list[Any]:
    commits, *rest = args
    return [_commits(commits, blobs), *rest]


def _commit_args_from(data: list[Any], blobs: list[bytes]) -> tuple[Any, ...]:
    commits, *rest = data
    return (_commits_from(commits, blobs), *rest)


def _cancel_args(args: tuple[Any, ...], blobs: _Blobs) -> list[Any]:
    ids, now, history = args
    return [list(ids), now, _history(history)]


def _cancel_args_from(data: list[Any], blobs: list[bytes]) -> tuple[Any, ...]:
    ids, now, history = data
    return (ids, now, _history_from(history))


def _worker_args(args: tuple[Any, ...], blobs: _Blobs) -> list[Any]:
    return [_worker(args[0])]


def _worker_args_from(data: list[Any], blobs: list[bytes]) -> tuple[Any, ...]:
    return (_worker_from(data[0]),)


def _routes_args(args: tuple[Any, ...], blobs: _Blobs) -> list[Any]:
    return [[list(route) for route in args[0]]]


def _routes_args_from(data: list[Any], blobs: list[bytes]) -> tuple[Any, ...]:
    return ([(event, queue) for event, queue in data[0]],)


_PLAIN = (_plain, _plain_from)
CODECS: Mapping[str, tuple[Encoder, Decoder]] = {
    "commit": (_commit_args, _commit_args_from),
    "commit_and_lease": (_commit_args, _commit_args_from),
    "lease": _PLAIN,
    "extend": _PLAIN,
    "redrive": _PLAIN,
    "purge": _PLAIN,
    "register_subscriptions": (_routes_args, _routes_args_from),
    "pause": _PLAIN,
    "resume": _PLAIN,
    "prune_history": _PLAIN,
    "prune_counts": _PLAIN,
    "cancel_jobs": (_cancel_args, _cancel_args_from),
    "request_cancel": _PLAIN,
    "register_worker": (_worker_args, _worker_args_from),
    "unregister_worker": _PLAIN,
    "workers": _PLAIN,
}
"""Every command the log carries: the mutating calls of the ports, by method name, each with the
encoder and decoder of its arguments (in the method's order)."""


def encode(command: str, args: tuple[Any, ...]) -> bytes:
    """The record of ``command(*args)``. Raises ``TypeError`` for what JSON cannot carry (a lone
    surrogate, a NaN is written as null but never reaches here: the runtime refuses both)."""
    blobs = _Blobs()
    header = orjson.dumps([command, CODECS[command][0](args, blobs), [len(b) for b in blobs.items]])
    return b"".join((header, b"\0", *blobs.items))


def decode(record: bytes) -> tuple[str, tuple[Any, ...]]:
    """The command and arguments of a record, as :func:`encode` took them."""
    end = record.index(b"\0")
    command, data, lengths = orjson.loads(record[:end])
    blobs: list[bytes] = []
    at = end + 1
    for length in lengths:
        blobs.append(record[at : at + length])
        at += length
    return command, CODECS[command][1](data, blobs)


def encode_part(group: str, index: int, total: int, chunk: bytes) -> bytes:
    """One part of a record too large for one message (see ``Parts``)."""
    return b"".join((orjson.dumps(["part", [group, index, total], [len(chunk)]]), b"\0", chunk))


def part_of(record: bytes) -> tuple[str, int, int, bytes] | None:
    """``(group, index, total, chunk)`` if ``record`` is a part, else None."""
    if not record.startswith(b'["part",'):
        return None
    end = record.index(b"\0")
    _, (group, index, total), _ = orjson.loads(record[:end])
    return group, index, total, record[end + 1 :]
