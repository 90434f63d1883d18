"""``conveyor demo --serve``: the demo's orders, then the dashboard and API left running on its
database until the process is told to stop."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from queue import Empty, Queue

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_demo_serve_leaves_the_dashboard_running_on_the_demo_database(tmp_path: Path) -> None:
    port = free_port()
    command = [
        sys.executable,
        "-c",
        "from conveyor.cli import main; main()",
        "demo",
        "--orders",
        "6",
        "--dir",
        str(tmp_path),
    ]
    demo = subprocess.Popen(
        [*command, "--serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )
    lines: Queue[str] = Queue()
    assert demo.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in demo.stdout or ()], daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        url = None
        while url is None:
            try:
                line = lines.get(timeout=60)
            except Empty:
                raise AssertionError("no dashboard URL within 60 s:\n" + "".join(seen)) from None
            seen.append(line)
            if found := re.search(r"(http://127\.0\.0\.1:\d+)/ui", line):
                url = found.group(1)
        assert url == f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/health/ready", timeout=10).status_code == 200
        listed = httpx.get(f"{url}/workflows", params={"limit": 50}, timeout=10).json()
        ids = {item["id"] for item in listed["items"]}
        assert {f"order-{n}" for n in range(1, 7)} <= ids
        assert (tmp_path / "demo.db").exists()
    finally:
        demo.send_signal(signal.SIGINT)
        code = demo.wait(timeout=30)
        reader.join(timeout=10)
        demo.stdout.close()
    assert code == 0, "".join(seen)
