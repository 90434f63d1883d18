"""History kinds are a StrEnum: entries written with members are stored as the same text as before,
and history stored as plain strings (every database written before the enum) reads the same."""

from __future__ import annotations

from typing import Any

import orjson

from conveyor import App, HistoryKind, Workflow
from conveyor.operations.status import Step, summarize
from conveyor.ports import Commit, Effects, HistoryEntry
from conveyor.testing import FakeClock

T0 = 1_700_000_000.0
ORDER = Workflow("order", start="order_placed", completed=["order_shipped"], compensated=["order_refunded"])


def _detail(**fields: Any) -> str:
    return orjson.dumps(fields).decode()


# an instance that retried, succeeded, waited at a gate, dead-lettered and was compensated, as
# (kind, name, message_id, attempt, detail): every kind the runtime writes, in the order it writes them
COMPENSATED_INSTANCE: list[tuple[str, str, str | None, int | None, str | None]] = [
    ("emitted", "order_placed", "e1", None, None),
    ("enqueued", "charge", "j1", None, None),
    ("retried", "charge", "j1", 1, _detail(started_at=T0, duration=0.5, error="card declined")),
    ("succeeded", "charge", "j1", 2, _detail(started_at=T0, duration=0.5)),
    ("state_changed", "order:1", None, None, "set"),
    ("enqueued", "ship", "j2", None, _detail(available_at=T0 + 100)),
    ("approval_requested", "manager", None, None, _detail(deadline=T0 + 60)),
    ("approval_decided", "manager", None, None, _detail(outcome="approved", by="ann", note=None)),
    ("cancelled", "manager.timeout", None, None, "approval:wf:manager"),
    ("dead_lettered", "ship", "j2", 3, _detail(started_at=T0, duration=0.1, error="no stock")),
    ("compensation_started", "ship", "j2", None, _detail(undo=["charge"])),
    ("enqueued", "refund", "j3", None, None),
    ("succeeded", "refund", "j3", 1, None),
    ("compensated", "refund", "j3", None, None),
]
WAITING_INSTANCE: list[tuple[str, str, str | None, int | None, str | None]] = [
    ("emitted", "order_placed", "e1", None, None),
    ("enqueued", "charge", "j1", None, None),
    ("succeeded", "charge", "j1", 1, None),
    ("approval_requested", "manager", None, None, _detail(deadline=T0 + 60)),
    ("approval_requested", "auditor", None, None, _detail(deadline=T0 + 60)),
    ("approval_timed_out", "auditor", None, None, None),
]


def _entries(
    instance: str, rows: list[tuple[str, str, str | None, int | None, str | None]], *, as_enum: bool
) -> list[HistoryEntry]:
    return [
        HistoryEntry(
            instance, T0 + i, HistoryKind(kind) if as_enum else kind, name, message_id, attempt, detail
        )
        for i, (kind, name, message_id, attempt, detail) in enumerate(rows)
    ]


async def test_entries_written_with_members_read_back_as_the_same_plain_text(backend_url: str) -> None:
    members = list(HistoryKind)
    written = [HistoryEntry("wf", T0 + i, kind, "q", f"m{i}", 1, None) for i, kind in enumerate(members)]
    async with App([], backend=backend_url, clock=FakeClock(T0)) as app:
        await app.backend.commit([Commit(effects=Effects(history=written))], T0)
        read = await app.backend.history("wf")
    assert [entry.kind for entry in read] == [member.value for member in members]
    assert read == written  # the whole entry, kind included, compares equal
    assert all(isinstance(entry.kind, str) for entry in read)
    # what a JSON reader of the history (the CLI's --json, an exporter) sees is the stored text
    assert orjson.dumps([entry.kind for entry in read]) == orjson.dumps([m.value for m in members])
    assert [HistoryKind(entry.kind) for entry in read] == members


async def test_status_of_history_stored_as_plain_strings_is_unchanged(backend_url: str) -> None:
    old = _entries("wf", COMPENSATED_INSTANCE, as_enum=False) + _entries(
        "wf-waiting", WAITING_INSTANCE, as_enum=False
    )
    async with App([], backend=backend_url, clock=FakeClock(T0 + 100), workflows=[ORDER]) as app:
        await app.backend.commit([Commit(effects=Effects(history=old))], T0)
        status = await app.workflows.status("wf")
        waiting = await app.workflows.status("wf-waiting")
    assert status.state == "compensated"
    assert status.workflow == "order"
    assert status.path == ["(order_placed)", "charge", "ship✗", "refund"]
    assert status.events == ["order_placed"]
    assert status.current == []
    assert status.compensations == ["refund"]
    assert status.pending_approvals == []
    assert status.last_error == "no stock"
    assert status.steps == [
        Step("charge", "j1", "succeeded", 2, T0 + 1, T0 + 3, "card declined"),
        Step("ship", "j2", "dead_lettered", 3, T0 + 5, T0 + 9, "no stock"),
        Step("refund", "j3", "succeeded", 1, T0 + 11, T0 + 12, None),
    ]
    assert (status.started_at, status.updated_at) == (T0, T0 + 13)
    assert waiting.state == "awaiting_approval"
    assert waiting.current == ["approval:manager"]
    assert waiting.pending_approvals == ["manager"]
    assert waiting.path == ["(order_placed)", "charge"]


def test_status_folds_members_and_plain_strings_alike() -> None:
    assert {row[0] for row in COMPENSATED_INSTANCE + WAITING_INSTANCE} == set(HistoryKind)
    for instance, rows in (("wf", COMPENSATED_INSTANCE), ("wf-waiting", WAITING_INSTANCE)):
        new = summarize(instance, _entries(instance, rows, as_enum=True), [ORDER], T0 + 100)
        old = summarize(instance, _entries(instance, rows, as_enum=False), [ORDER], T0 + 100)
        assert new.to_dict() == old.to_dict()
        assert orjson.dumps(new.to_dict()) == orjson.dumps(old.to_dict())
