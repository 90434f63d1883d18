"""The operations port on Redis (:mod:`conveyor.ports.operations`): pause, leases, counts, job
lookup and cancel, the worker registry, dead-letter filters.

Each call is one script (``pause.lua``, ``leases.lua``, ``counts.lua``, ``job.lua``,
``cancel.lua``, ``find_dead.lua``) or one pipelined round trip; the keys they read are in the
package docstring.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from conveyor.backends.redis import codec
from conveyor.backends.redis.connections import Connections
from conveyor.backends.redis.errors import translated
from conveyor.backends.redis.scripts import command
from conveyor.ports import (
    DeadLetter,
    DeadLetterFilter,
    ErrorInfo,
    HistoryEntry,
    JobRecord,
    LeaseInfo,
    MinuteCounts,
    WorkerInfo,
)
from conveyor.ports.operations import ascii_lower, bucket, live_state

_FIND_BUDGET = 5000
"""Dead letters one ``find_dead.lua`` call looks at before it hands back a cursor: a few
milliseconds of Redis's time, so a filter that matches little never blocks Redis for long."""

_DEAD_FIELDS = ("q", "b", "et", "em", "tb", "a", "e", "f")


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _marked(text: str | None) -> str:
    # "" stands for None, so a present value (even an empty one) gets a leading marker
    return "" if text is None else "=" + text


class Operations(Connections):
    """The operator's calls (see :class:`Connections` for how the attributes are set)."""

    # pause

    async def pause(self, queue: str, now: float) -> bool:
        return bool(await self._run("pause", [self.prefix, "pause", queue, now]))

    async def resume(self, queue: str) -> bool:
        resumed = bool(await self._run("pause", [self.prefix, "resume", queue]))
        if resumed:
            self._signal([queue.encode()])
        return resumed

    async def paused_queues(self) -> dict[str, float]:
        client = self._client
        with translated():
            paused = await command(client, "HGETALL", f"{self.prefix}:paused")
        return {queue.decode(): float(at) for queue, at in paused.items()}

    # leases and counts

    async def leases(self, queue: str | None, limit: int = 100, after: str | None = None) -> list[LeaseInfo]:
        if limit <= 0:
            return []
        reply = await self._run("leases", [self.prefix, limit, after or "", "" if queue is None else queue])
        return [
            LeaseInfo(
                job_id=reply[i].decode(),
                queue=reply[i + 1].decode(),
                attempt=int(reply[i + 2] or 0),
                token=int(reply[i + 3] or 0),
                worker=reply[i + 4].decode(),
                leased_at=float(reply[i + 5] or 0),
                expires_at=float(reply[i + 6]),
                extensions=int(reply[i + 7] or 0),
            )
            for i in range(0, len(reply), 8)
        ]

    async def queue_counts(self, queues: Sequence[str], since: float) -> list[MinuteCounts]:
        if not queues:
            return []
        reply = await self._run("counts", [self.prefix, "read", bucket(since), *sorted(set(queues))])
        return [
            MinuteCounts(reply[i].decode(), float(reply[i + 1]), reply[i + 2], reply[i + 3], reply[i + 4])
            for i in range(0, len(reply), 5)
        ]

    async def prune_counts(self, before: float) -> int:
        return int(await self._run("counts", [self.prefix, "prune", before]))

    # jobs

    async def job(self, job_id: str, now: float) -> JobRecord | None:
        reply = await self._run("job", [self.prefix, job_id])
        if not reply:
            return None
        kind, flat, available_at = reply
        fields: dict[bytes, bytes] = dict(zip(flat[::2], flat[1::2], strict=True))
        if kind == b"dead":
            [dead] = codec.dead_letters([job_id.encode(), *(fields.get(f.encode()) for f in _DEAD_FIELDS)])
            return JobRecord.from_dead_letter(dead)
        deadline = fields.get(b"d")
        lease = None
        if deadline is not None:
            due_at = float(deadline)
            lease = LeaseInfo(
                job_id,
                fields[b"q"].decode(),
                int(fields.get(b"a", 0)),
                int(fields.get(b"t", 0)),
                fields.get(b"w", b"").decode(),
                float(fields.get(b"l", 0)),
                due_at,
                int(fields.get(b"x", 0)),
            )
        else:
            due_at = float(available_at) if available_at is not None else now
        state = live_state(lease is not None, due_at, now)
        error_type = fields.get(b"le")
        return JobRecord(
            job_id,
            fields[b"q"].decode(),
            state,
            fields.get(b"b", b""),
            int(fields.get(b"a", 0)),
            float(fields.get(b"e", 0)),
            due_at,
            int(fields.get(b"p", 0)),
            _text(fields.get(b"k")),
            None
            if error_type is None
            else ErrorInfo(error_type.decode(), fields.get(b"lm", b"").decode(), _text(fields.get(b"lt"))),
            lease,
            b"c" in fields,
        )

    async def job_for_key(self, queue: str, key: str, now: float) -> str | None:
        client = self._client
        with translated():
            value = await command(client, "GET", self._key(queue, f"idem:{key}"))
        if value is None:
            return None
        expires_at, _, job_id = bytes(value).decode().partition(" ")
        if expires_at != "-" and float(expires_at) <= now:
            return None
        return job_id

    async def job_history(self, job_id: str) -> list[HistoryEntry]:
        client = self._client
        with translated():
            holders = await command(client, "LRANGE", f"{self.prefix}:jobhistory:{job_id}", 0, -1)
            correlation_ids = [c.decode() for c in dict.fromkeys(holders)]  # each once, first seen first
            pipeline = client.pipeline(transaction=False)
            for correlation_id in correlation_ids:
                pipeline.execute_command("LRANGE", f"{self.prefix}:history:{correlation_id}", 0, -1)
            lists = await pipeline.execute()
        return [
            entry
            for correlation_id, raw in zip(correlation_ids, lists, strict=True)
            for entry in (codec.decode_history(correlation_id, item) for item in raw)
            if entry.message_id == job_id
        ]

    async def cancel_jobs(
        self, ids: Sequence[str], now: float, history: Sequence[HistoryEntry] = ()
    ) -> list[str]:
        if not ids:
            return []
        args: list[Any] = [self.prefix, "cancel", now, len(ids), *ids]
        for entry in history:
            args += (entry.correlation_id, entry.at, entry.message_id or "", codec.encode_history(entry))
        reply = await self._run("cancel", args)
        return [job_id.decode() for job_id in reply]

    async def request_cancel(self, job_id: str) -> bool:
        return bool(await self._run("cancel", [self.prefix, "request", job_id]))

    async def cancel_requests(self, job_ids: Sequence[str]) -> list[str]:
        if not job_ids:
            return []
        pipeline = self._client.pipeline(transaction=False)
        for job_id in job_ids:
            pipeline.execute_command("HEXISTS", f"{self.prefix}:job:{job_id}", "c")
        with translated():
            marks = await pipeline.execute()
        return [job_id for job_id, marked in zip(job_ids, marks, strict=True) if marked]

    # workers

    async def register_worker(self, worker: WorkerInfo) -> None:
        record = orjson.dumps(
            [
                worker.host,
                worker.pid,
                list(worker.queues),
                worker.concurrency,
                worker.started_at,
                worker.last_seen,
                worker.settled,
            ]
        )
        client = self._client
        with translated():
            await command(client, "HSET", f"{self.prefix}:workers", worker.id, record)

    async def unregister_worker(self, worker_id: str) -> None:
        client = self._client
        with translated():
            await command(client, "HDEL", f"{self.prefix}:workers", worker_id)

    async def workers(self, alive_since: float) -> list[WorkerInfo]:
        client, key = self._client, f"{self.prefix}:workers"
        with translated():
            records = await command(client, "HGETALL", key)
        alive, gone = [], []
        for worker_id, record in records.items():
            host, pid, queues, concurrency, started_at, last_seen, settled = orjson.loads(record)
            if last_seen < alive_since:
                gone.append(worker_id)
                continue
            alive.append(
                WorkerInfo(
                    worker_id.decode(), host, pid, tuple(queues), concurrency, started_at, last_seen, settled
                )
            )
        if gone:
            # (a worker that beat again meanwhile comes back with its next heartbeat)
            with translated():
                await command(client, "HDEL", key, *gone)
        return sorted(alive, key=lambda w: w.id)

    # dead letters

    async def find_dead_letters(
        self, where: DeadLetterFilter, limit: int = 100, before: tuple[float, str] | None = None
    ) -> list[DeadLetter]:
        found: list[DeadLetter] = []
        while len(found) < limit:  # bounded: each call walks on from its cursor or ends the walk
            page, cursor = await self._run(
                "find_dead", self._find_args(where, "find", limit - len(found), before)
            )
            found += codec.dead_letters(page)
            if not cursor:
                break
            before = (float(cursor[0]), cursor[1].decode())
        return found

    async def count_dead_letters(self, where: DeadLetterFilter) -> int:
        if where.error_type is None and where.text is None:
            # an index count: no dead letter is read
            index = f"{self.prefix}:dead" if where.queue is None else self._key(where.queue, "dead")
            low = "-inf" if where.since is None else repr(where.since)
            high = "+inf" if where.until is None else f"({where.until!r}"
            client = self._client
            with translated():
                return int(await command(client, "ZCOUNT", index, low, high))
        total, before = 0, None
        while True:  # bounded: each call walks on from its cursor or ends the walk
            count, cursor = await self._run("find_dead", self._find_args(where, "count", 2**31, before))
            total += int(count)
            if not cursor:
                return total
            before = (float(cursor[0]), cursor[1].decode())

    def _find_args(
        self, where: DeadLetterFilter, mode: str, limit: int, before: tuple[float, str] | None
    ) -> list[Any]:
        return [
            self.prefix,
            mode,
            where.queue or "",
            _marked(where.error_type),
            _marked(None if where.text is None else ascii_lower(where.text)),
            "" if where.since is None else where.since,
            "" if where.until is None else where.until,
            "" if before is None else before[0],
            "" if before is None else before[1],
            limit,
            _FIND_BUDGET,
        ]

    async def dead_letter(self, dead_id: str) -> DeadLetter | None:
        client = self._client
        with translated():
            fields = await command(client, "HMGET", f"{self.prefix}:dead:{dead_id}", *_DEAD_FIELDS)
        if fields[0] is None:
            return None
        [dead] = codec.dead_letters([dead_id.encode(), *fields])
        return dead
