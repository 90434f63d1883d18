"""``conveyor queues``, ``pause``, ``resume``, ``leases``, ``job``, ``cancel`` and ``workers``: see
the system and act on it without SQL or redis-cli."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from conveyor.cli.common import ago, console, echo_json, load_app, run, show, when, whole
from conveyor.operations.jobs import CancelOutcome, JobView


@click.command()
@click.argument("app_spec", metavar="APP")
@click.option(
    "--window", type=float, default=300.0, show_default=True, help="seconds the per-minute rates average over"
)
@click.option("--json", "as_json", is_flag=True)
def queues(app_spec: str, window: float, as_json: bool) -> None:
    """Every queue: paused or not, ready, scheduled, in flight, dead, the oldest ready job's wait,
    and what it settled per minute (completed, retried, dead-lettered)."""
    app = load_app(app_spec, read_only=True)

    async def go() -> None:
        async with app:
            rows = await app.queues.metrics(window=window)
        if as_json:
            echo_json([dataclasses.asdict(m) for m in rows])
            return
        table = Table(title=f"per minute: averaged over the last {window:g}s")
        whole(table, "queue", [m.queue for m in rows])
        states = [
            ("paused" if m.paused else "active") + ("" if m.declared else " (undeclared)") for m in rows
        ]
        whole(table, "state", states)
        for header in ("ready", "scheduled", "in flight", "dead", "oldest ready", "done/min"):
            table.add_column(header, justify="right")
        table.add_column("retried/min", justify="right")
        table.add_column("dead/min", justify="right")
        for m in rows:
            state = "[yellow]paused[/]" if m.paused else "active"
            if not m.declared:
                state += " [yellow](undeclared)[/]"
            table.add_row(
                escape(m.queue),
                state,
                str(m.ready),
                str(m.scheduled),
                str(m.in_flight),
                str(m.dead),
                ago(m.oldest_ready_age),
                f"{m.completed_per_minute:.1f}",
                f"{m.retried_per_minute:.1f}",
                f"{m.dead_per_minute:.1f}",
            )
        if rows:
            show(table)
        else:
            console.print("no queues")

    run(go)


@click.command()
@click.argument("app_spec", metavar="APP")
@click.argument("queue_names", metavar="QUEUE...", nargs=-1, required=True)
def pause(app_spec: str, queue_names: tuple[str, ...]) -> None:
    """Stop leasing QUEUE's jobs, for every worker, until resumed (durable).

    Running jobs finish; new jobs are still accepted and wait. Workers notice within their poll
    interval (0.5 s by default).
    """
    app = load_app(app_spec)

    async def go() -> None:
        async with app:
            for name in queue_names:
                changed = await app.queues.pause(name)
                console.print(f"{escape(name)}: {'paused' if changed else 'already paused'}")

    run(go)


@click.command()
@click.argument("app_spec", metavar="APP")
@click.argument("queue_names", metavar="QUEUE...", nargs=-1, required=True)
def resume(app_spec: str, queue_names: tuple[str, ...]) -> None:
    """Lease QUEUE's jobs again."""
    app = load_app(app_spec)

    async def go() -> None:
        async with app:
            for name in queue_names:
                changed = await app.queues.resume(name)
                console.print(f"{escape(name)}: {'resumed' if changed else 'was not paused'}")

    run(go)


@click.command()
@click.argument("app_spec", metavar="APP")
@click.option("--queue", "-q", default=None, help="only this queue's leases")
@click.option("--limit", default=100, show_default=True)
@click.option("--after", default=None, metavar="JOB_ID", help="the page after this job id")
@click.option("--json", "as_json", is_flag=True)
def leases(app_spec: str, queue: str | None, limit: int, after: str | None, as_json: bool) -> None:
    """The jobs leased now, by job id: worker, attempt, since when, until when, extensions.

    An expired lease (its worker died or stalled) shows until another worker takes the job.
    """
    app = load_app(app_spec, read_only=True)

    async def go() -> None:
        async with app:
            found = await app.queues.leases(queue, limit=limit, after=after)
            now = app.clock.now()
        if as_json:
            echo_json([dataclasses.asdict(lease) for lease in found])
            return
        table = Table()
        whole(table, "job id", [x.job_id for x in found])
        whole(table, "queue", [x.queue for x in found])
        whole(table, "worker", [x.worker for x in found])
        for header in ("attempt", "leased", "expires in", "extensions"):
            table.add_column(header, justify="right")
        for x in found:
            left = x.expires_at - now
            table.add_row(
                escape(x.job_id),
                escape(x.queue),
                escape(x.worker) or "-",
                str(x.attempt),
                f"{ago(now - x.leased_at)} ago",
                ago(left) if left >= 0 else f"[red]expired {ago(-left)} ago[/]",
                str(x.extensions),
            )
        if found:
            show(table)
        else:
            console.print("no leases")
        if len(found) == limit:
            console.print(f"more: --after {escape(found[-1].job_id)}", markup=False)

    run(go)


@click.command()
@click.argument("app_spec", metavar="APP")
@click.argument("job_id", required=False)
@click.option("--queue", "-q", default=None, help="with --key: the queue the key is in")
@click.option("--key", "idempotency_key", default=None, help="find the job by its idempotency key")
@click.option("--json", "as_json", is_flag=True)
def job(
    app_spec: str, job_id: str | None, queue: str | None, idempotency_key: str | None, as_json: bool
) -> None:
    """One job by JOB_ID (or --queue and --key): state, attempts, last error, lease, history.

    Exit code 1 if no job has that id (a finished job is known while its history is kept).
    """
    if (job_id is None) == (idempotency_key is None) or (idempotency_key is not None and queue is None):
        raise click.UsageError("give JOB_ID, or --queue and --key")
    app = load_app(app_spec, read_only=True)

    async def go() -> JobView | None:
        async with app:
            if job_id is not None:
                return await app.jobs.get(job_id)
            assert queue is not None and idempotency_key is not None
            return await app.jobs.by_key(queue, idempotency_key)

    view = run(go)
    if view is None:
        what = job_id if job_id is not None else f"{idempotency_key!r} in queue {queue!r}"
        click.echo(f"no job {what}", err=True)
        sys.exit(1)
    if as_json:
        echo_json(job_json(view))
        return
    _print_job(view)


def job_json(view: JobView) -> dict[str, Any]:
    shown = dataclasses.asdict(view)
    shown["state"] = view.state.value
    return shown


def _print_job(view: JobView) -> None:
    lines = [
        ("job", view.id),
        ("queue", view.queue),
        ("state", view.state.value + (" (cancellation requested)" if view.cancel_requested else "")),
        ("attempts", str(view.attempts)),
        ("workflow", view.correlation_id or "-"),
        ("priority", str(view.priority)),
        ("idempotency key", view.idempotency_key or "-"),
        ("enqueued", when(view.enqueued_at)),
        ("due", when(view.available_at)),
    ]
    if view.failed_at is not None:
        lines.append(("dead-lettered", when(view.failed_at)))
    if view.lease is not None:
        lease = view.lease
        lines.append(
            (
                "lease",
                f"worker {lease.worker or '-'}, attempt {lease.attempt}, since {when(lease.leased_at)}, "
                f"until {when(lease.expires_at)}, {lease.extensions} extensions",
            )
        )
    if view.last_error is not None:
        lines.append(("last error", f"{view.last_error.type}: {view.last_error.message}"))
    for label, value in lines:
        console.print(f"[bold]{label:>16}[/] {escape(value)}")
    if view.payload is not None:
        console.print(f"[bold]{'payload':>16}[/] ", end="")
        console.print_json(data=view.payload)
    if view.history:
        table = Table("at (UTC)", "what", "name", "attempt", "detail", title="history")
        for entry in view.history:
            table.add_row(
                when(entry.at),
                entry.kind,
                escape(entry.name),
                str(entry.attempt or "-"),
                escape(entry.detail or ""),
            )
        show(table)
    if view.last_error is not None and view.last_error.traceback:
        console.print(escape(view.last_error.traceback.rstrip()), style="dim")


@click.command()
@click.argument("app_spec", metavar="APP")
@click.argument("job_ids", metavar="JOB_ID...", nargs=-1, required=True)
@click.option("--by", default=None, help="who cancels (written to the job's history)")
def cancel(app_spec: str, job_ids: tuple[str, ...], by: str | None) -> None:
    """Cancel waiting jobs; ask running ones to stop (their handlers see ctx.cancel_requested).

    Exit code 1 if any JOB_ID is not a live job.
    """
    app = load_app(app_spec)

    async def go() -> list[CancelOutcome]:
        async with app:
            return [await app.jobs.cancel(job_id, by=by) for job_id in job_ids]

    words = {
        CancelOutcome.CANCELLED: "cancelled",
        CancelOutcome.REQUESTED: "running: cancellation requested",
        CancelOutcome.NOT_FOUND: "no such job",
        CancelOutcome.FINISHED: "already finished (done, cancelled or dead-lettered)",
    }
    outcomes = run(go)
    for job_id, outcome in zip(job_ids, outcomes, strict=True):
        console.print(f"{escape(job_id)}: {words[outcome]}")
    if any(o in (CancelOutcome.NOT_FOUND, CancelOutcome.FINISHED) for o in outcomes):
        sys.exit(1)


@click.command()
@click.argument("app_spec", metavar="APP")
@click.option("--json", "as_json", is_flag=True)
def workers(app_spec: str, as_json: bool) -> None:
    """The worker processes alive (a heartbeat within the last few intervals): host, pid, queues,
    concurrency, started, last seen, jobs settled."""
    app = load_app(app_spec, read_only=True)

    async def go() -> tuple[list[Any], float]:
        async with app:
            return await app.workers(), app.clock.now()

    alive, now = run(go)
    if as_json:
        echo_json([dataclasses.asdict(w) for w in alive])
        return
    table = Table()
    whole(table, "worker", [w.id for w in alive])
    table.add_column("queues")
    for header in ("concurrency", "started (UTC)", "last seen", "settled"):
        table.add_column(header, justify="right")
    for w in alive:
        table.add_row(
            escape(w.id),
            escape(", ".join(w.queues)),
            str(w.concurrency),
            when(w.started_at),
            f"{ago(max(0.0, now - w.last_seen))} ago",
            str(w.settled),
        )
    if alive:
        show(table)
    else:
        console.print("no workers alive")
