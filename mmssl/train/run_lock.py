"""One run per output directory. Two trainers on one directory (two terminals, a
resubmitted job) would prune and overwrite each other's checkpoints; the second is
refused before it trains, with one line naming the holder.

The lock is ``flock`` on ``<output_dir>/.mmssl.lock``: the operating system releases it
when the holder's process ends, however it ends, so a killed run never leaves its
directory locked and the next run resumes at once. The file holds who holds it (pid,
host, start time, command), for the message; its presence alone means nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from mmssl.common.atomic import OutputError

LOCK_FILE = ".mmssl.lock"


class RunDirectoryInUse(OutputError):
    """Another live run holds the output directory; the message names it."""


class RunLock:
    """The held lock of one output directory; ``release()`` (or the end of the process)
    gives it back. A context manager."""

    def __init__(self, directory: Path, handle: int) -> None:
        self.directory = directory
        self._handle: int | None = handle

    @property
    def held(self) -> bool:
        return self._handle is not None

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            os.close(self._handle)
            self._handle = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {started}: {info.get('command', '?')}"


def hold_run_directory(directory: str | Path) -> RunLock:
    """Take ``directory``'s run lock (creating the directory), or raise
    ``RunDirectoryInUse`` naming the run that holds it."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"output directory {directory} is not writable: {exc.strerror or exc}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        raise RunDirectoryInUse(
            f"output directory {directory} is in use by another run ({_holder(directory / LOCK_FILE)}); "
            "wait for it to end or choose another output directory"
        ) from None
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": " ".join(sys.argv)[:300]}
    os.ftruncate(handle, 0)
    os.write(handle, json.dumps(info).encode())
    return RunLock(directory, handle)
