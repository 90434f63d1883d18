"""The embedded default backend, ``sqlite:///path``: one file, any number of worker processes.

Queues, topics with durable subscriptions, versioned states, dead letters and workflow history
live in one SQLite database (schema in ``migrations/``, statements in ``queries.sql``).

Durability: the file runs in WAL mode with ``synchronous=NORMAL``. A committed transaction
survives a crash of the process; an operating-system crash or power loss may lose the last few
transactions (the file itself stays consistent). ``synchronous=FULL`` would close that window at
the price of an fsync per commit, which caps throughput at the disk's flush rate.

Schema: version 2 (``migrations/0002_operations.sql``, applied on open to a version-1 file, under
the write lock) adds what the operations port needs. Jobs not leased sit in one ordered lane per
priority (index ``jobs_waiting``, the lanes other than 0 listed in ``queue_lanes``), leased jobs
in ``jobs_leased``; pauses, per-minute settlement counts and the worker registry have tables of
their own, and a paused queue is checked inside the lease statement itself.

Concurrency: each backend instance runs its sqlite3 connection on one dedicated thread, so the
event loop never blocks. Writes are ``BEGIN IMMEDIATE`` transactions; lock waits are bounded by
``busy_timeout`` and end in a :class:`~conveyor.model.errors.BackendError` saying how long they
waited. Idle workers learn about other processes' commits by polling ``PRAGMA data_version``.

URLs: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``; options in the query string
(``?busy_timeout=30&idempotency_retention=3600``). ``:memory:`` is not supported: use
``memory://``.
"""

from conveyor.backends.sqlite.backend import SQLiteBackend

__all__ = ["SQLiteBackend"]
