"""The robustness contract's commit isolation: a job whose commit cannot be stored fails alone,
beside good jobs whose commits share its batch (issue 14, item 1)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from conveyor import App, Context, Lifecycle, Service, WorkerConfig
from conveyor.ports import DeadLetter, StateOp, StateWrite
from conveyor.testing import running, wait_until
from conveyor.testing.runtime_contract.fixtures import AppFixtures, _at_least, _stats, _store_raw

GOOD_JOBS = 40
"""Good jobs finishing at the same instant as the bad ones, so they share one commit batch."""

BadStep = Callable[[Context, str], Awaitable[None]]


class CommitIsolationContract(AppFixtures):
    """A commit that cannot be stored fails its job alone (part of ``RobustnessContract``)."""

    async def test_a_call_given_unstorable_text_fails_its_job_alone(
        self, make_app: Callable[..., App]
    ) -> None:
        async def bad(ctx: Context, kind: str) -> None:
            if kind == "surrogate state key":
                await ctx.states.set("sku:a\ud800b", 1)
            elif kind == "nul state key":
                await ctx.states.set("sku:a\x00b", 1)
            elif kind == "surrogate state value":
                await ctx.states.set("sku", {"name": "a\ud800b"})
            elif kind == "nul idempotency key":
                await ctx.enqueue("work", {"kind": "good", "n": -1}, idempotency_key="order\x0042")
            elif kind == "nul correlation id":
                await ctx.emit("noted", {}, correlation_id="order\x0042")

        kinds = [
            "surrogate state key",
            "nul state key",
            "surrogate state value",
            "nul idempotency key",
            "nul correlation id",
        ]
        app, dead, runs = await beside_good_jobs(make_app, bad, kinds)
        await assert_good_jobs_committed_once(app, runs)
        expected = {
            "surrogate state key": (
                "UnstorableTextError",
                "state key 'sku:a\\ud800b' holds a lone surrogate",
            ),
            "nul state key": ("UnstorableTextError", "state key 'sku:a\\x00b' holds a NUL character"),
            "surrogate state value": (
                "PayloadValidationError",
                "the string at $.name holds a lone surrogate",
            ),
            "nul idempotency key": ("UnstorableTextError", "idempotency key 'order\\x0042' holds a NUL"),
            "nul correlation id": ("UnstorableTextError", "correlation id 'order\\x0042' holds a NUL"),
        }
        for kind, (error_type, message) in expected.items():
            entry = dead[kind]
            assert entry.attempts == 1, kind
            assert entry.error.type.endswith(error_type), (kind, entry.error)
            assert message in entry.error.message, (kind, entry.error.message)
        assert all(runs[n] == 1 for n in range(GOOD_JOBS, GOOD_JOBS + len(kinds)))

    async def test_a_commit_refused_at_commit_fails_its_job_alone(self, make_app: Callable[..., App]) -> None:
        """What the calls cannot see (effects built by hand) is refused when the commit is
        submitted, or by the backend; the job is dead-lettered on that attempt with the reason,
        without the effects, beside good jobs. A stored message whose correlation id cannot be
        stored is dead-lettered as undecodable, beside them too."""

        async def bad(ctx: Context, kind: str) -> None:
            if kind == "raw":  # its commit's history entries carry the stored correlation id
                await ctx.states.set("raw:effect", 1)
            else:
                ctx.buffer.effects.states.append(StateWrite("sku:a\ud800b", StateOp.SET, b"1"))

        app, dead, runs = await beside_good_jobs(make_app, bad, ["hand-built state write"], raw_jobs=1)
        await assert_good_jobs_committed_once(app, runs)
        hand_built, inherited = dead["hand-built state write"], dead["raw"]
        assert hand_built.attempts == inherited.attempts == 1
        assert hand_built.error.type.endswith("CommitRejectedError"), hand_built.error
        assert "state key 'sku:a\\ud800b' holds a lone surrogate" in hand_built.error.message
        # a stored correlation id holding a NUL is refused when the envelope is decoded, before
        # the handler runs (no commit could carry it on PostgreSQL)
        assert inherited.error.type.endswith("UndecodableMessageError"), inherited.error
        assert "'correlation_id' holds a NUL" in inherited.error.message
        assert runs[GOOD_JOBS + 1] == 0
        async with app:
            assert await app.states.get("raw:effect") is None


async def beside_good_jobs(
    make_app: Callable[..., App], bad: BadStep, kinds: list[str], *, raw_jobs: int = 0
) -> tuple[App, dict[str, DeadLetter], Counter[int]]:
    """Run :data:`GOOD_JOBS` good jobs (each sets a state and emits), one job per bad kind (which
    runs ``bad(ctx, kind)``) and ``raw_jobs`` jobs stored by hand (see :func:`_enqueue_raw`; their
    kind is ``raw``; they are dead-lettered undecodable without running), all with
    ``max_attempts=1``. They are held at a gate until every one is running, then released at once,
    so their commits share one batch. Returns the app, the dead letters by kind and how many times
    each job ran."""
    svc = Service("svc")
    total = GOOD_JOBS + len(kinds) + raw_jobs
    gate, arrived, runs = asyncio.Event(), set[int](), Counter[int]()

    @svc.queue_worker("work", lifecycle=Lifecycle(max_attempts=1), emits=["noted"], enqueues=["work"])
    async def work(ctx: Context, job: dict[str, Any]) -> None:
        runs[job["n"]] += 1
        arrived.add(job["n"])
        await gate.wait()
        if job["kind"] == "good":
            await ctx.states.set(f"done:{job['n']}", job["n"])
            await ctx.emit("noted", {"n": job["n"]})
        else:
            await bad(ctx, job["kind"])

    app = make_app(svc, worker=WorkerConfig(concurrency=total + 8, poll_interval=0.05, shutdown_grace=5))
    async with running(app):
        for n in range(GOOD_JOBS):
            await app.enqueue("work", {"kind": "good", "n": n})
        for n, kind in enumerate(kinds, GOOD_JOBS):
            await app.enqueue("work", {"kind": kind, "n": n})
        for n in range(GOOD_JOBS + len(kinds), total):
            await _enqueue_raw(app, n)
        # the raw jobs never run: their envelopes are refused when decoded, beside the others
        running_at_once = total - raw_jobs
        await wait_until(
            lambda: len(arrived) == running_at_once, message=f"{running_at_once} jobs running at once"
        )
        gate.set()
        expected = total - GOOD_JOBS
        dead = await wait_until(lambda: _at_least(app.dead_letters("work").list(), expected))
        await wait_until(
            lambda: _stats(app, "work", lambda s: s.ready == s.leased == s.scheduled == 0),
            message="every job settled",
        )
    by_kind = {_payload(entry.body)["kind"]: entry for entry in dead}
    return app, by_kind, runs


async def assert_good_jobs_committed_once(app: App, runs: Counter[int]) -> None:
    """Every good job of :func:`beside_good_jobs` ran once and its effects are there."""
    async with app:
        for n in range(GOOD_JOBS):
            assert await app.states.get(f"done:{n}") == n, f"good job {n} did not commit"
    assert all(runs[n] == 1 for n in range(GOOD_JOBS)), "a good job ran more than once"


def _payload(body: bytes) -> dict[str, str]:
    payload: dict[str, str] = orjson.loads(body)["payload"]
    return payload


async def _enqueue_raw(app: App, n: int) -> None:
    """Store a job for "work" as another producer might have: an envelope whose correlation id
    holds a NUL (valid JSON, ``\\u0000``), which no call of this conveyor would accept."""
    body = orjson.dumps(
        {
            "v": 1,
            "id": f"raw{n}",
            "kind": "job",
            "name": "work",
            "payload": {"kind": "raw", "n": n},
            "correlation_id": "order\x0042",
            "created_at": app.clock.now(),
        }
    )
    await _store_raw(app, "work", body, job_id=f"raw{n}")
