"""conveyor's benchmark: the peers' workloads (``shared/bench/peers``) on one or more backends.

    .venv/bin/python bench/run.py --backends sqlite,redis,postgres
    .venv/bin/python bench/run.py --url sqlite:////tmp/x/bench.db --n 10000 --w 1000 --wp 300 \\
        --rate 30 --repeats 2 --json out.json [--commit HEAD] [--profile /tmp/prof]

Per backend and repeat, each phase on a fresh store (see ``stores.py``):

* **W1 drain**: enqueue N no-op jobs with the worker stopped (``app.enqueue_many``, 1,000 a
  call; timed, giving enqueue/s); start ONE worker process (``app.run()``, defaults); processed/s
  = N / (last job end - first job start), read from the handlers' records, so start-up is excluded.
* **W2 burst**: enqueue W step-1 jobs with the worker stopped; start the worker; each step's
  handler enqueues the next through ``ctx.enqueue``; workflows/s = W / (last step-3 end - first
  step-1 start).
* **W2 paced**: on the same warm worker, WP more chains started open-loop at RATE chains/s;
  latency = step start - step enqueue; p50/p99 of all steps and of hops (steps 2-3).

Every wait is bounded (``--timeout`` per phase), every worker is stopped at the end of its phase
(SIGTERM to its process group, SIGKILL after 15 s), and all traffic goes where the URLs say.
``--no-history`` and ``--concurrency N`` run a variant (``App(history=False)``,
``app.run(concurrency=N)``), labelled as such. ``--commit REV`` measures one commit exactly: its
``src/`` is exported with ``git archive`` and put first on the workers' ``PYTHONPATH``.
``--profile DIR`` attaches ``py-spy record`` to every worker (raw collapsed stacks; summarize them
with ``bench/profile_summary.py``); ``--profile-gil`` samples only the thread holding the GIL, which
leaves out threads that py-spy would count as busy while they wait.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from stats import CPU_COLUMNS, Record, RecordFile, cpu_per_job_us, latency, summarize, table
from stores import DEFAULT_URLS, Store, backend_kind, fresh_store

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKLOAD = os.path.join(HERE, "workload.py")
REC_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
POLL = 0.1
"""Seconds between looks at the record file (the figures come from the records, not from this)."""
PACED_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
PY_SPY = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or "py-spy"
"""py-spy from this virtualenv if it is there (``pip install py-spy``), else from PATH."""


@dataclass(frozen=True)
class Settings:
    """The command line, as the phases need it."""

    n: int
    w: int
    wp: int
    rate: float
    timeout: float
    logdir: str
    pythonpath: str
    profile_dir: str | None
    knobs: dict[str, str]
    """``BENCH_*`` variables for workload.py (variants; empty for conveyor's defaults)."""
    profile_gil: bool = False
    """py-spy ``--gil``: sample only the thread holding the GIL (Python CPU, no waits)."""


class Worker:
    """One ``workload.py worker`` process in its own process group (optionally under py-spy)."""

    def __init__(
        self, env: dict[str, str], log: IO[str], profile_path: str | None, gil_only: bool = False
    ) -> None:
        self.process = subprocess.Popen(
            [sys.executable, WORKLOAD, "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.profiler: subprocess.Popen[bytes] | None = None
        if profile_path is not None:
            # py-spy stops and writes its file by itself when the worker exits
            self.profiler = subprocess.Popen(
                [
                    *(PY_SPY, "record", "--pid", str(self.process.pid), "--format", "raw"),
                    *("--rate", "250", "--nonblocking", "--output", profile_path),
                    *(["--gil"] if gil_only else []),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        """Whether the worker process is still running."""
        return self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM the process group (graceful stop), SIGKILL it if it is not gone in time."""
        if self.alive():
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(STOP_TIMEOUT)
        if self.profiler is not None:
            try:
                self.profiler.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.profiler.kill()
                self.profiler.wait(STOP_TIMEOUT)


def enqueue(env: dict[str, str], timeout: float, *args: object) -> dict[str, float]:
    """Run one enqueueing ``workload.py`` role; its ``NAME_SECONDS value`` lines as a dict."""
    done = subprocess.run(
        [sys.executable, WORKLOAD, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"workload.py {args}: exit {done.returncode}\n{done.stderr[-2000:]}")
    reported = {
        name: float(value)
        for name, _, value in (line.partition(" ") for line in done.stdout.splitlines())
        if name.endswith("_SECONDS")
    }
    if "ENQUEUE_SECONDS" in reported:
        return reported
    raise RuntimeError(f"workload.py {args} printed no ENQUEUE_SECONDS:\n{done.stdout[-2000:]}")


def wait_for(
    records: RecordFile, done: Callable[[list[Record]], bool], timeout: float, worker: Worker
) -> bool:
    """Poll the records until ``done``; False on timeout or if the worker died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done(records.poll()):
            return True
        if not worker.alive():
            return done(records.poll())
        time.sleep(POLL)
    return done(records.poll())


def count(records: list[Record], step: int, lo: int, hi: int) -> int:
    """How many records are W2 step ``step`` of a workflow id in [lo, hi)."""
    return sum(1 for r in records if r.kind == 2 and r.step == step and lo <= r.wf < hi)


class Phase:
    """One phase: its own store, record file, environment, log and worker."""

    def __init__(self, url: str, label: str, name: str, settings: Settings) -> None:
        self.name, self.settings = name, settings
        # short: PostgreSQL schema names (prefix included) are limited to 48 characters here
        short = label.removeprefix("conveyor-")
        tag = re.sub(r"[^a-z0-9_]", "_", f"{short}_{name}_{os.getpid()}".lower())
        self.store: Store = fresh_store(url, tag)
        rec_path = os.path.join(REC_DIR, f"conveyor-bench-{tag}.rec")
        if os.path.exists(rec_path):
            os.remove(rec_path)
        self.records = RecordFile(rec_path)
        self.env = dict(
            os.environ,
            CONVEYOR_URL=self.store.url,
            BENCH_REC=rec_path,
            PYTHONPATH=settings.pythonpath,
            **settings.knobs,
        )
        self.log = open(os.path.join(settings.logdir, f"{label}-{name}.log"), "w")  # noqa: SIM115
        self.profile_path = (
            os.path.join(settings.profile_dir, f"{label}-{name}.txt") if settings.profile_dir else None
        )

    def start_worker(self) -> Worker:
        """Start this phase's worker."""
        return Worker(self.env, self.log, self.profile_path, self.settings.profile_gil)

    def close(self) -> None:
        """Drop the store and the record file, close the log."""
        self.store.drop()
        if os.path.exists(self.records.path):
            os.remove(self.records.path)
        self.log.close()


@contextmanager
def phase(url: str, label: str, name: str, settings: Settings) -> Iterator[Phase]:
    """A :class:`Phase` that is always cleaned up."""
    p = Phase(url, label, name, settings)
    try:
        yield p
    finally:
        p.close()


def w1(url: str, label: str, s: Settings) -> dict[str, Any]:
    """W1: enqueue N no-ops (worker stopped), then one worker drains them."""
    with phase(url, label, "w1", s) as p:
        reported = enqueue(p.env, s.timeout, "noop", s.n)
        worker = p.start_worker()
        try:
            complete = wait_for(p.records, lambda r: len(r) >= s.n, s.timeout, worker)
        finally:
            worker.stop()
        recs = p.records.poll()
    span = max(r.t_end for r in recs) - min(r.t_start for r in recs) if recs else None
    enqueue_s, calls_s = reported["ENQUEUE_SECONDS"], reported.get("CALLS_SECONDS")
    return {
        "n": s.n,
        "done": len(recs),
        "complete": complete,
        "enqueue_s": enqueue_s,
        "enqueue_per_s": s.n / enqueue_s if enqueue_s else None,
        "enqueue_many_s": calls_s,
        "enqueue_many_per_s": s.n / calls_s if calls_s else None,
        "process_s": span,
        "process_per_s": len(recs) / span if span else None,
        "cpu_us_per_job": cpu_per_job_us(recs),
    }


def w2(url: str, label: str, s: Settings) -> dict[str, Any]:
    """W2: W chains in a burst (worker stopped), then WP paced chains on the same warm worker."""
    with phase(url, label, "w2", s) as p:
        enqueue_s = enqueue(p.env, s.timeout, "chains", s.w, 0, 0)["ENQUEUE_SECONDS"]
        worker = p.start_worker()
        try:
            complete = wait_for(p.records, lambda r: count(r, 3, 0, s.w) >= s.w, s.timeout, worker)
            burst = [r for r in p.records.poll() if r.wf < s.w]
            first = min((r.t_start for r in burst if r.step == 1), default=None)
            last = max((r.t_end for r in burst if r.step == 3), default=None)
            finished = count(burst, 3, 0, s.w)
            span = last - first if first is not None and last is not None else None
            result: dict[str, Any] = {
                "workflows": s.w,
                "done": finished,
                "complete": complete,
                "enqueue_s": enqueue_s,
                "span_s": span,
                "workflows_per_s": finished / span if span else None,
                "burst_latency": latency(burst),
                "cpu_us_per_step": cpu_per_job_us(burst),
            }
            if complete:
                paced_s = enqueue(p.env, s.timeout, "chains", s.wp, s.rate, s.w)["ENQUEUE_SECONDS"]
                end = s.w + s.wp
                paced_ok = wait_for(p.records, lambda r: count(r, 3, s.w, end) >= s.wp, PACED_TIMEOUT, worker)
                paced = [r for r in p.records.poll() if s.w <= r.wf < end]
                result["paced"] = {
                    "rate_wf_per_s": s.rate,
                    "workflows": s.wp,
                    "enqueue_s": paced_s,
                    "complete": paced_ok,
                    "done": count(paced, 3, s.w, end),
                    "latency": latency(paced),
                    "cpu_us_per_step": cpu_per_job_us(paced),
                }
        finally:
            worker.stop()
    return result


def one_repeat(url: str, label: str, repeat: int, s: Settings) -> dict[str, Any]:
    """W1 then W2 on ``url``; the machine's load average is kept to judge the noise."""
    started = time.time()
    load_before = os.getloadavg()
    name = f"{label}-r{repeat}"
    result = {"label": label, "url": url, "repeat": repeat, "w1": w1(url, name, s), "w2": w2(url, name, s)}
    result.update(wall_s=time.time() - started, loadavg_before=load_before, loadavg_after=os.getloadavg())
    return result


def git(*args: str) -> str:
    """Output of a git command in this checkout ('' when git fails)."""
    done = subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


@contextmanager
def conveyor_source(commit: str | None) -> Iterator[tuple[str, str]]:
    """(PYTHONPATH for the workers, what is measured): the working tree, or ``commit`` exported."""
    if commit is None:
        dirty = " with uncommitted changes in src/" if git("status", "--porcelain", "--", "src") else ""
        yield os.pathsep.join([HERE, os.path.join(ROOT, "src")]), git("rev-parse", "HEAD") + dirty
        return
    full = git("rev-parse", "--verify", f"{commit}^{{commit}}")
    if not full:
        raise SystemExit(f"unknown commit {commit!r}")
    tmp = tempfile.mkdtemp(prefix=f"conveyor-{full[:12]}-")
    try:
        archive = subprocess.run(["git", "-C", ROOT, "archive", full, "src"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        yield os.pathsep.join([HERE, os.path.join(tmp, "src")]), full
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", action="append", default=[], help="backend URL (repeatable)")
    ap.add_argument("--backends", default="", help=f"shortcuts: {', '.join(DEFAULT_URLS)} (comma-separated)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--n", type=int, default=10_000, help="W1 jobs")
    ap.add_argument("--w", type=int, default=1_000, help="W2 burst workflows")
    ap.add_argument("--wp", type=int, default=300, help="W2 paced workflows")
    ap.add_argument("--rate", type=float, default=30.0, help="W2 paced: workflows started per second")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per phase")
    ap.add_argument("--json", help="write every run, the summary and the settings here")
    ap.add_argument("--logdir", default=os.path.join(tempfile.gettempdir(), "conveyor-bench-logs"))
    ap.add_argument("--commit", help="measure this commit's src/ (git archive) instead of the working tree")
    ap.add_argument("--profile", metavar="DIR", help="record every worker with py-spy into DIR")
    ap.add_argument("--profile-gil", action="store_true", help="py-spy --gil: only the GIL holder")
    ap.add_argument("--no-history", action="store_true", help="variant: App(history=False)")
    ap.add_argument("--concurrency", type=int, help="variant: app.run(concurrency=N)")
    a = ap.parse_args(argv)
    urls = list(a.url)
    for name in filter(None, a.backends.split(",")):
        if name not in DEFAULT_URLS:
            ap.error(f"unknown backend {name!r}; known: {', '.join(DEFAULT_URLS)}")
        urls.append(DEFAULT_URLS[name])
    if not urls:
        ap.error("give --url or --backends")
    for url in urls:
        try:
            backend_kind(url)
        except ValueError as exc:
            ap.error(str(exc))
    a.urls = urls
    return a


def labels(urls: list[str], a: argparse.Namespace) -> list[str]:
    """``conveyor-<kind>`` per URL, numbered when a kind repeats, with the variant's knobs."""
    kinds = [backend_kind(u) for u in urls]
    variant = ("+nohistory" if a.no_history else "") + (f"+c{a.concurrency}" if a.concurrency else "")
    return [
        f"conveyor-{k}" + (f"{kinds[:i].count(k) + 1}" if kinds.count(k) > 1 else "") + variant
        for i, k in enumerate(kinds)
    ]


def main(argv: list[str] | None = None) -> None:
    """Run every backend, repeats interleaved across backends, then print the table."""
    a = parse_args(argv)
    os.makedirs(a.logdir, exist_ok=True)
    if a.profile:
        os.makedirs(a.profile, exist_ok=True)
    started, t0 = datetime.now(UTC).isoformat(timespec="seconds"), time.time()
    runs: list[dict[str, Any]] = []
    with conveyor_source(a.commit) as (pythonpath, measured):
        knobs = {"BENCH_HISTORY": "0"} if a.no_history else {}
        if a.concurrency:
            knobs["BENCH_CONCURRENCY"] = str(a.concurrency)
        s = Settings(a.n, a.w, a.wp, a.rate, a.timeout, a.logdir, pythonpath, a.profile, knobs, a.profile_gil)
        for repeat in range(a.repeats):  # interleaved, to spread the machine's noise over backends
            for url, label in zip(a.urls, labels(a.urls, a), strict=True):
                try:
                    run = one_repeat(url, label, repeat, s)
                except Exception as exc:  # one broken backend must not stop the others
                    run = {"label": label, "url": url, "repeat": repeat, "error": repr(exc)[-1500:]}
                print(json.dumps(run, default=str)[:400], file=sys.stderr, flush=True)
                runs.append(run)
    summary = summarize([r for r in runs if "error" not in r])
    print(table(summary))
    print(table(summary, CPU_COLUMNS))
    print(
        f"(conveyor {measured}; {started}; median of {a.repeats} repeats; ±x% = half the max-min "
        f"spread relative to the median; p50/p99 = all W2 steps, paced run at {a.rate:g} wf/s; "
        "hop = steps 2-3 only; * = some run incomplete; CPU = the worker process's CPU time, all "
        "threads, per W1 job or W2 step; enqueue_many/s = the W1 enqueue_many calls alone, without "
        "connecting)"
    )
    for r in runs:
        if "error" in r:
            print(f"ERROR {r['label']} repeat {r['repeat']}: {r['error'].splitlines()[-1]}")
    print(f"total wall time: {time.time() - t0:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            report = {
                "args": {k: v for k, v in vars(a).items() if k != "urls"},
                "urls": a.urls,
                "conveyor": measured,
                "started": started,
                "cpus": os.cpu_count(),
                "wall_s": time.time() - t0,
                "summary": summary,
                "runs": runs,
            }
            json.dump(report, f, indent=1, default=str)


if __name__ == "__main__":
    main()
