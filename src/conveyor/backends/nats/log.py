"""The commit log: one JetStream stream, every record applied in stream order by every instance.

:class:`CommitLog` publishes a record with a ``Nats-Msg-Id`` unique to this instance and call, so a
publish retried after a lost acknowledgement is stored once (within the stream's duplicate
window), and waits until its own ordered consumer has applied the record at its position in the
stream: the result of the call is what applying it there gave. Every instance applies the same
records in the same order to the same deterministic state, so every instance computes the same
result for every record, its own and the others'.

A record larger than the server's ``max_payload`` goes as numbered parts (``records.encode_part``)
and is applied when its last part is: at one position, all of it or none of it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import nats
from nats.errors import ConnectionClosedError, NoServersError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError, ServiceUnavailableError

from conveyor.backends.nats import records
from conveyor.model.errors import BackendError, BackendUnavailableError, CommitRejectedError

Apply = Callable[[str, tuple[Any, ...]], Awaitable[Any]]
Dump = Callable[[], bytes]
Restore = Callable[[bytes | None], None]
logger = logging.getLogger("conveyor.backends.nats")

CLOSE_GRACE = 5.0
"""Seconds ``close`` waits for the snapshot and resync tasks it cancelled."""

_UNAVAILABLE = (
    NatsTimeoutError,
    asyncio.TimeoutError,
    ConnectionClosedError,
    NoServersError,
    OutboundBufferLimitError,
    NoStreamResponseError,
    ServiceUnavailableError,
    OSError,
)
_PART_HEADROOM = 4096
"""Bytes of a message left for its headers and a part's own header."""
_PARTS_KEPT = 10_000
"""Records after which the parts of a record never completed (its publisher died) are dropped."""


class LogSettings:
    """What an operator chooses for the stream (the URL's query options, see the package docstring)."""

    def __init__(
        self,
        *,
        replicas: int = 1,
        duplicate_window: float = 120.0,
        publish_timeout: float = 30.0,
        max_bytes: int = -1,
        snapshot_every: int = 10_000,
    ) -> None:
        self.replicas = replicas
        self.duplicate_window = duplicate_window
        self.publish_timeout = publish_timeout
        """How long one call retries its publish before it gives up (the record is then in doubt);
        kept below the duplicate window so every retry is deduplicated."""
        self.max_bytes = max_bytes
        self.snapshot_every = snapshot_every
        """Records between two snapshots of the state (0: none, the stream is never purged)."""


class CommitLog:
    """The stream ``stream`` on the servers of ``servers``, applied in order by ``apply``."""

    def __init__(
        self,
        servers: list[str],
        stream: str,
        subject: str,
        settings: LogSettings,
        apply: Apply,
        dump: Dump,
        restore: Restore,
    ) -> None:
        self._servers = servers
        self.stream = stream
        self.bucket = f"{stream}_snapshots"
        self._subject = subject
        self._settings = settings
        self._apply = apply
        self._dump = dump
        self._restore = restore
        self._snapshots: Any = None
        self._resyncing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._origin = os.urandom(6).hex()
        self._calls = itertools.count(1)
        self._nc: Any = None
        self._js: Any = None
        self._subscription: Any = None
        self._max_record = 1024 * 1024 - _PART_HEADROOM
        self.applied = 0
        """The stream sequence of the last record applied here."""
        self._pending: dict[str, tuple[asyncio.Future[Any], str, tuple[Any, ...]]] = {}
        """This instance's calls on their way: future, command, arguments. Its own record is
        applied from the arguments it was encoded from, not decoded again (the same values)."""
        self._seq_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiter_ids = itertools.count()
        self._parts: dict[str, tuple[int, list[bytes | None]]] = {}

    # lifecycle

    async def connect(self) -> None:
        """Connect, create the stream if it is missing, restore the newest snapshot and apply every
        record after it up to the stream's end before returning."""
        try:
            self._nc = await nats.connect(
                self._servers,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                connect_timeout=5,
                error_cb=_ignore,
            )
            self._js = self._nc.jetstream(timeout=5)
            self._max_record = int(self._nc.max_payload) - _PART_HEADROOM
            last = await self._ensure_stream()
            if self._settings.snapshot_every:
                self._snapshots = await self._js.create_object_store(
                    self.bucket, storage=api.StorageType.FILE, replicas=self._settings.replicas
                )
            await self._subscribe(await self._load_snapshot())
        except _UNAVAILABLE as exc:
            await self.close()
            raise BackendUnavailableError(
                f"NATS is unavailable at {', '.join(self._servers)}: {exc}"
            ) from exc
        await self.wait_applied(last)

    async def _ensure_stream(self) -> int:
        """The stream's last sequence, creating the stream first if it does not exist."""
        try:
            info = await self._js.stream_info(self.stream)
        except NotFoundError:
            settings = self._settings
            config = api.StreamConfig(
                name=self.stream,
                subjects=[self._subject],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                num_replicas=settings.replicas,
                duplicate_window=settings.duplicate_window,
                max_bytes=settings.max_bytes,
                discard=api.DiscardPolicy.NEW,  # a full log refuses records, never drops them
                description="conveyor commit log",
            )
            info = await self._js.add_stream(config)  # the same config twice (a racing instance): OK
        return int(info.state.last_seq)

    async def _subscribe(self, start_after: int) -> None:
        self.applied = start_after
        self._release_waiters()  # (a restore may jump past what they wait for)
        self._subscription = await self._js.subscribe(
            self._subject,
            cb=self._on_record,
            ordered_consumer=True,
            idle_heartbeat=1.0,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            config=api.ConsumerConfig(opt_start_seq=start_after + 1),
        )

    # snapshots

    async def _load_snapshot(self) -> int:
        """Restore the newest snapshot (or the empty state); the sequence it was taken at."""
        newest: tuple[int, str] | None = None
        if self._snapshots is not None:
            try:
                infos = await self._snapshots.list(ignore_deletes=True)
            except NotFoundError:
                infos = []
            for info in infos:
                if info.name.startswith("state-") and not info.deleted:
                    newest = max(newest or (0, ""), (int(info.name[6:]), info.name))
        if newest is None:
            self._restore(None)
            return 0
        self._restore((await self._snapshots.get(newest[1])).data)
        return newest[0]

    def _snapshot(self, sequence: int) -> None:
        """Take a snapshot of the state as of ``sequence`` (now, between two records), store it in
        the background, then purge the records before the previous snapshot's sequence: an
        instance behind by less than a snapshot interval reads on, one further behind restores."""
        data = self._dump()
        task = asyncio.create_task(self._store_snapshot(sequence, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _store_snapshot(self, sequence: int, data: bytes) -> None:
        every = self._settings.snapshot_every
        try:
            await self._snapshots.put(f"state-{sequence:020d}", data)
            if sequence > every:
                await self._js.purge_stream(self.stream, seq=sequence - every + 1)
            for info in await self._snapshots.list(ignore_deletes=True):
                name = info.name
                if name.startswith("state-") and not info.deleted and int(name[6:]) < sequence - every:
                    await self._snapshots.delete(name)
        except Exception as exc:  # the next snapshot tries again; the log alone is complete
            logger.warning("could not store the snapshot at record %d: %s", sequence, exc)

    async def _resync(self) -> None:
        """Records this instance had not applied were purged: restore the newest snapshot."""
        try:
            old, self._subscription = self._subscription, None
            if old is not None:
                with suppress(Exception):
                    await old.unsubscribe()
            for future, _, _ in self._pending.values():  # their records may be in the gap
                if not future.done():
                    future.set_exception(BackendUnavailableError("NATS: the call is in doubt (resync)"))
            start = await self._load_snapshot()
            self._resyncing = False
            await self._subscribe(start)
        except Exception as exc:
            logger.error("could not restore the newest snapshot: %s", exc)
            self._resyncing = False

    async def close(self) -> None:
        # A snapshot or resync still running is given up, not awaited: one can wait on an object
        # store another instance (killed mid-write) left half-made, and hang the worker's stop. A
        # snapshot is an optimisation: the next start restores an older one and replays.
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_GRACE)
        for future, _, _ in self._pending.values():
            if not future.done():
                future.set_exception(BackendUnavailableError("the NATS backend was closed"))
        self._pending.clear()
        nc, self._nc = self._nc, None
        if nc is not None:
            with suppress(Exception):
                await nc.close()

    @property
    def connected(self) -> bool:
        return self._nc is not None and bool(self._nc.is_connected)

    # writing

    async def submit(self, command: str, args: tuple[Any, ...]) -> Any:
        """Publish ``command(*args)`` as one record and return what applying it gave."""
        try:
            record = records.encode(command, args)
        except TypeError as exc:
            raise CommitRejectedError(f"NATS cannot carry this {command}: {exc}") from exc
        call = f"{self._origin}.{next(self._calls)}"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call] = (future, command, args)
        try:
            if len(record) <= self._max_record:
                await self._publish(call, record)
            else:
                size = self._max_record
                total = (len(record) + size - 1) // size
                for index in range(total):
                    chunk = record[index * size : (index + 1) * size]
                    await self._publish(f"{call}.{index}", records.encode_part(call, index, total, chunk))
            # (a publish answered as a duplicate: the first one is stored, and resolves the same future)
            return await future
        finally:
            self._pending.pop(call, None)

    async def _publish(self, msg_id: str, record: bytes) -> None:
        if self._js is None:
            raise BackendUnavailableError("the NATS backend is not connected")
        deadline = time.monotonic() + self._settings.publish_timeout
        while True:
            try:
                wait = min(5.0, max(0.1, deadline - time.monotonic()))
                await self._js.publish(self._subject, record, timeout=wait, headers={"Nats-Msg-Id": msg_id})
                return
            except _UNAVAILABLE as exc:
                if time.monotonic() >= deadline or self._nc is None or self._nc.is_closed:
                    raise BackendUnavailableError(f"NATS did not store the record: {exc}") from exc
                await asyncio.sleep(0.2)
            except APIError as exc:
                if exc.err_code == 10077 or exc.code == 503:  # stream store full / temporarily offline
                    raise BackendUnavailableError(f"NATS refused the record: {exc}") from exc
                raise BackendError(f"NATS refused the record: {exc}") from exc

    # reading

    async def last_sequence(self) -> int:
        """The stream's last sequence now (one round trip)."""
        if self._js is None:
            raise BackendUnavailableError("the NATS backend is not connected")
        try:
            info = await self._js.stream_info(self.stream)
        except _UNAVAILABLE as exc:
            raise BackendUnavailableError(f"NATS is unavailable: {exc}") from exc
        return int(info.state.last_seq)

    async def catch_up(self) -> None:
        """Return once every record stored before the call is applied here: a read after it sees
        every write any instance had acknowledged when it began."""
        await self.wait_applied(await self.last_sequence())

    async def wait_applied(self, sequence: int) -> None:
        if self.applied >= sequence:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._seq_waiters, (sequence, next(self._waiter_ids), future))
        await future

    # applying

    async def _on_record(self, msg: Any) -> None:
        sequence = msg.metadata.sequence.stream
        if sequence <= self.applied or self._resyncing:  # a reset delivers from where it stood
            return
        if sequence != self.applied + 1:  # purged before this instance applied them
            self._resyncing = True
            task = asyncio.create_task(self._resync())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        data = msg.data
        call: str | None = (msg.headers or {}).get("Nats-Msg-Id")
        part = records.part_of(data)
        if part is not None:
            assembled = self._assemble(sequence, *part)
            call, data = part[0], assembled if assembled is not None else b""
        if data:
            own = self._pending.get(call) if call is not None else None
            try:
                command, args = (own[1], own[2]) if own is not None else records.decode(data)
                result: Any = await self._apply(command, args)
                failed = False
            except Exception as exc:  # a record this version cannot apply: its caller learns why
                result, failed = exc, True
            future = own[0] if own is not None else None
            if future is not None and not future.done():
                if failed:
                    future.set_exception(result)
                else:
                    future.set_result(result)
        self.applied = sequence
        every = self._settings.snapshot_every
        if every and sequence % every == 0 and own is not None and self._snapshots is not None:
            self._snapshot(sequence)
        self._release_waiters()

    def _release_waiters(self) -> None:
        waiters, applied = self._seq_waiters, self.applied
        while waiters and waiters[0][0] <= applied:
            _, _, waiter = heapq.heappop(waiters)
            if not waiter.done():
                waiter.set_result(None)

    def _assemble(self, sequence: int, group: str, index: int, total: int, chunk: bytes) -> bytes | None:
        _, chunks = self._parts.setdefault(group, (sequence, [None] * total))
        chunks[index] = chunk
        if index == total - 1 and all(c is not None for c in chunks):
            del self._parts[group]
            return b"".join(c for c in chunks if c is not None)
        for stale in [g for g, (at, _) in self._parts.items() if sequence - at > _PARTS_KEPT]:
            del self._parts[stale]
        return None


async def _ignore(exc: Exception) -> None:
    """nats-py's error callback: reconnection is automatic, and calls report their own errors."""
