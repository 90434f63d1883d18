"""The worker's path on Redis: lease and commit, one Lua script call each (or both in one
round trip with ``commit_and_lease``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from redis.exceptions import ResponseError

from conveyor.backends.redis import codec
from conveyor.backends.redis.connections import Connections
from conveyor.backends.redis.errors import translated
from conveyor.backends.redis.scripts import NOTHING, Arg
from conveyor.model.errors import BackendError, CommitRejectedError
from conveyor.ports import Commit, CommitResult, LeasedJob, Outcome, Settlement

logger = logging.getLogger("conveyor.backends.redis")


class WorkerPath(Connections):
    """Lease and commit, the calls a worker makes for every job (see :class:`Connections` for
    how the attributes are set)."""

    idempotency_retention: float

    # lease

    async def lease(
        self, queues: Mapping[str, float], limit: int, now: float, worker: str = ""
    ) -> list[LeasedJob]:
        if not queues or limit <= 0:
            return []
        return self._leased(await self._run("lease", self._lease_args(queues, limit, now, worker)), now)

    def _leased(self, reply: list[Any], now: float) -> list[LeasedJob]:
        jobs, problems = reply
        if problems:
            self._report(problems)
        return codec.leased_jobs(jobs, now)

    def _lease_args(self, queues: Mapping[str, float], limit: int, now: float, worker: str) -> list[Arg]:
        if self._notifier is not None:
            self._notifier.consume(queues)
        args: list[Arg] = [self.prefix, now, limit, worker]
        for queue, seconds in queues.items():
            args += (queue, seconds)
        return args

    # commit

    async def commit(self, commits: Sequence[Commit], now: float) -> list[CommitResult]:
        """Apply each commit atomically and independently, the batch in one ``commit.lua`` call.

        A batch is never applied in part and then raised. ``commit.lua`` checks every key the
        batch needs before it writes anything; if one commit needs a corrupt key (of the wrong
        type, or holding a value that cannot be parsed: written by something else than conveyor),
        nothing at all is written and a BackendError names the key and the commit. Raising is
        allowed only when nothing was applied: the runtime then splits the batch and commits the
        rest, and the commit left alone gets its error. (A lost connection raises too, with the
        batch in doubt; a retry is safe because every settlement is fenced by its lease token.)
        """
        if not commits:
            return []
        reply = await self._run("commit", self._commit_args(commits, now), codec.commit_args(commits))
        results, woken = self._committed(commits, reply)
        self._signal(woken)
        return results

    def _committed(
        self, commits: Sequence[Commit], reply: list[Any]
    ) -> tuple[list[CommitResult], list[bytes]]:
        """The results and woken queues of a ``commit.lua`` reply; raises if it rejected the batch."""
        results, woken, rejected, repaired = reply
        if repaired:
            self._report(repaired)
        if rejected:
            # nothing was applied: the committer narrows the batch down to the culprit
            raise CommitRejectedError(codec.rejection(commits, rejected))
        return codec.commit_results(commits, results), woken

    async def commit_and_lease(
        self,
        commits: Sequence[Commit],
        now: float,
        queues: Mapping[str, float],
        limit: int,
        worker: str = "",
    ) -> tuple[list[CommitResult], list[LeasedJob]]:
        """The two scripts back to back on one connection: one round trip.

        If the commit fails, the jobs the lease took are given back at once (released, their
        attempt not spent) rather than left leased to no one until their lease expires. If only
        the lease fails, the commit's results are returned without jobs: the worker's own lease
        loop meets the lease's error and reports it.
        """
        if not commits or not queues or limit <= 0:
            return await self.commit(commits, now), await self.lease(queues, limit, now, worker)
        calls = [
            ("commit", self._commit_args(commits, now), codec.commit_args(commits)),
            ("lease", self._lease_args(queues, limit, now, worker), NOTHING),
        ]
        with translated():
            committed, leased = await self._scripts.run_many(self._client, calls)
        jobs: list[LeasedJob] = []
        if isinstance(leased, ResponseError):
            logger.warning("Redis lease riding on a commit failed: %s", leased)
        else:
            jobs = self._leased(leased, now)
        try:
            if isinstance(committed, ResponseError):
                with translated():
                    raise committed
            results, woken = self._committed(commits, committed)
        except BackendError:
            await self._give_back(jobs, now)
            raise
        if len(jobs) < limit:  # every due job of these queues is leased: no one here to wake for them
            woken = [queue for queue in woken if queue.decode() not in queues]
        self._signal(woken)
        return results, jobs

    async def _give_back(self, jobs: list[LeasedJob], now: float) -> None:
        if not jobs:
            return
        releases = [Commit(Settlement(job.id, job.token, Outcome.RELEASE)) for job in jobs]
        try:
            await self.commit(releases, now)
        except BackendError as exc:
            logger.warning(
                "could not give back %d jobs leased beside a failed commit; they run again when "
                "their lease expires: %s",
                len(jobs),
                exc,
            )

    def _commit_args(self, commits: Sequence[Commit], now: float) -> list[Arg]:
        return [self.prefix, now, self.idempotency_retention, len(commits), self._sender]
