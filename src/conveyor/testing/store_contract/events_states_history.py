"""The store contract's events, states and history: fan-out to subscribed queues, versioned state
with compare-and-set, and the workflow history and instances."""

from __future__ import annotations

from conveyor.ports import (
    Backend,
    Commit,
    CommitStatus,
    Effects,
    HistoryEntry,
    NewEvent,
    Outcome,
    StateOp,
    StateWrite,
)
from conveyor.testing.store_contract.fixtures import T0, StoreFixtures, enqueue, job, settle


class EventsStatesHistoryContract(StoreFixtures):
    """Events, states and history (part of ``StoreContract``)."""

    async def test_event_fans_out_to_every_subscribed_queue(self, backend: Backend) -> None:
        await backend.register_subscriptions([("placed", "reserve"), ("placed", "audit")])
        await backend.register_subscriptions([("placed", "reserve"), ("other", "x")])
        assert sorted(await backend.subscriptions()) == [
            ("other", "x"),
            ("placed", "audit"),
            ("placed", "reserve"),
        ]
        event = NewEvent("e1", "placed", b'{"e": 1}', T0)
        [result] = await backend.commit([Commit(effects=Effects(events=[event]))], T0)
        assert result.deliveries == 2
        leased = await backend.lease({"reserve": 30.0, "audit": 30.0}, 10, T0)
        assert sorted((j.queue, j.id, j.body) for j in leased) == [
            ("audit", "e1:audit", b'{"e": 1}'),
            ("reserve", "e1:reserve", b'{"e": 1}'),
        ]

    async def test_event_without_subscription_is_delivered_nowhere(self, backend: Backend) -> None:
        event = NewEvent("e1", "nobody_listens", b"{}", T0)
        [result] = await backend.commit([Commit(effects=Effects(events=[event]))], T0)
        assert result.status is CommitStatus.OK and result.deliveries == 0

    async def test_state_set_get_delete_with_versions(self, backend: Backend) -> None:
        await backend.commit([Commit(effects=Effects(states=[StateWrite("k", StateOp.SET, b"1")]))], T0)
        await backend.commit([Commit(effects=Effects(states=[StateWrite("k", StateOp.SET, b"2")]))], T0)
        states = await backend.get_states(["k", "missing"])
        assert list(states) == ["k"]
        assert (states["k"].value, states["k"].version) == (b"2", 2)
        await backend.commit([Commit(effects=Effects(states=[StateWrite("k", StateOp.DELETE)]))], T0)
        assert await backend.get_states(["k"]) == {}

    async def test_compare_and_set_conflict_applies_nothing_of_the_commit(self, backend: Backend) -> None:
        await backend.commit([enqueue(job("a"))], T0)
        [leased] = await backend.lease({"q": 30.0}, 10, T0)
        await backend.commit([Commit(effects=Effects(states=[StateWrite("k", StateOp.SET, b"v1")]))], T0)
        conflicting = Commit(
            settle("a", leased.token, Outcome.ACK),
            Effects(
                jobs=[job("effect", "out")],
                states=[StateWrite("k", StateOp.SET, b"v2", expected_version=0)],
            ),
        )
        [result] = await backend.commit([conflicting], T0 + 1)
        assert result.status is CommitStatus.CONFLICT
        assert (await backend.get_states(["k"]))["k"].value == b"v1"
        assert await backend.lease({"out": 30.0}, 10, T0 + 1) == []
        matching = Commit(
            settle("a", leased.token, Outcome.ACK),
            Effects(states=[StateWrite("k", StateOp.SET, b"v2", expected_version=1)]),
        )
        [ok] = await backend.commit([matching], T0 + 1)
        assert ok.status is CommitStatus.OK
        assert (await backend.get_states(["k"]))["k"].version == 2

    async def test_history_is_appended_in_order_and_pruned(self, backend: Backend) -> None:
        entries = [
            HistoryEntry("wf-1", T0 + i, kind, "q", f"m{i}", 1, None)
            for i, kind in enumerate(["enqueued", "started", "succeeded"])
        ]
        await backend.commit([Commit(effects=Effects(history=entries[:2]))], T0)
        await backend.commit([Commit(effects=Effects(history=entries[2:]))], T0)
        history = await backend.history("wf-1")
        assert [e.kind for e in history] == ["enqueued", "started", "succeeded"]
        assert history[0] == entries[0]
        assert await backend.history("wf-2") == []
        assert await backend.prune_history(T0 + 1) == 1
        assert [e.kind for e in await backend.history("wf-1")] == ["started", "succeeded"]

    async def test_instances_are_listed_most_recently_started_first(self, backend: Backend) -> None:
        entries = [
            HistoryEntry("wf-a", T0, "enqueued", "q", "a1"),
            HistoryEntry("wf-b", T0 + 1, "enqueued", "q", "b1"),
            HistoryEntry("wf-a", T0 + 5, "succeeded", "q", "a1", 1),
            HistoryEntry("wf-c", T0 + 3, "enqueued", "q", "c1"),
        ]
        await backend.commit([Commit(effects=Effects(history=entries))], T0)
        found = await backend.instances()
        assert [(i.correlation_id, i.started_at, i.updated_at) for i in found] == [
            ("wf-c", T0 + 3, T0 + 3),
            ("wf-b", T0 + 1, T0 + 1),
            ("wf-a", T0, T0 + 5),
        ]
        assert [i.correlation_id for i in await backend.instances(limit=2)] == ["wf-c", "wf-b"]
        assert [i.correlation_id for i in await backend.instances(started_after=T0)] == ["wf-c", "wf-b"]

    async def test_instances_page_by_key_and_prefix(self, backend: Backend) -> None:
        # two at one start time, so the tie is broken by id (descending) across a page boundary
        starts = {"order-1": T0, "order-2": T0 + 2, "order-3": T0 + 2, "refund-1": T0 + 1, "order-4": T0 + 4}
        entries = [HistoryEntry(cid, at, "enqueued", "q", f"{cid}:m") for cid, at in starts.items()]
        entries.append(HistoryEntry("order-1", T0 + 9, "succeeded", "q", "order-1:m", 1))
        await backend.commit([Commit(effects=Effects(history=entries))], T0)
        order = ["order-4", "order-3", "order-2", "refund-1", "order-1"]
        pages, before = [], None
        while True:
            page = await backend.instances(limit=2, before=before)
            pages.append([i.correlation_id for i in page])
            if len(page) < 2:
                break
            before = (page[-1].started_at, page[-1].correlation_id)
        assert [cid for page in pages for cid in page] == order
        assert pages[1] == ["order-2", "refund-1"]  # order-3 ended page 1 at the same start time
        orders = await backend.instances(prefix="order-")
        assert [i.correlation_id for i in orders] == ["order-4", "order-3", "order-2", "order-1"]
        assert orders[-1].updated_at == T0 + 9
        after = await backend.instances(prefix="order-", before=(T0 + 2, "order-3"), limit=10)
        assert [i.correlation_id for i in after] == ["order-2", "order-1"]
        assert [i.correlation_id for i in await backend.instances(before=(T0 + 2, ""))] == [
            "refund-1",
            "order-1",
        ]
        assert await backend.instances(prefix="nothing-") == []
