"""Kill a training subprocess at a chosen point, as a crash or a preempted job would."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence


def run_and_kill(cmd: Sequence[str], log: Path, ready: Callable[[], bool], cwd: Path, timeout: float = 240) -> None:
    """Start ``cmd`` in a session of its own, SIGKILL the whole session (data loader
    workers included) once ``ready()`` holds, and fail if the run ends before that."""
    with open(log, "w") as sink:  # a file, not a pipe: a full pipe would stall the run
        proc = subprocess.Popen(list(cmd), cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while not ready():
                assert proc.poll() is None, f"the run ended before the kill point:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"no kill point within {timeout} s:\n{log.read_text()[-3000:]}"
                time.sleep(0.02)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def metric_lines(run: Path) -> int:
    """Complete lines of ``run``/metrics.jsonl (one per logged step)."""
    path = run / "metrics.jsonl"
    return path.read_text().count("\n") if path.is_file() else 0
