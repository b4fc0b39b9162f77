"""Writing files whole or not at all, durably: a killed process or a lost machine leaves
the old file (or none), never a half-written one, and a file reported written survives a
power cut.

Every small file the project writes (reports, summaries, plots) goes through
``write_bytes_atomic`` (``write_text_atomic`` for text). Checkpoint directories are made
durable the same way, a directory at a time (``mmssl.train.checkpoint``), with ``fsync_file``
and ``fsync_dir``.
"""

from __future__ import annotations

import errno
import os
import re
import time
from pathlib import Path


class OutputError(OSError):
    """An output file or directory could not be written; the message names it and says
    why, in one line. An ``OSError``, so code that handles those still does."""


def fsync_file(path: str | Path) -> None:
    """Flush one file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_DIR_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP}


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (names created, renamed or removed in it) to the disk.

    A rename is durable only once its directory is: without this a power cut can undo
    it. Filesystems that cannot fsync a directory (some network mounts) are let be.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a hidden sibling (named per process, so concurrent writers do not
    share it), fsync it, rename it over ``path``, then fsync the directory.

    On failure (a full disk, no permission) the temporary is removed, ``path`` is as it
    was, and an ``OutputError`` names the file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {reason(exc)}") from exc


def write_text_atomic(path: str | Path, text: str) -> None:
    """``write_bytes_atomic`` of ``text`` in UTF-8."""
    write_bytes_atomic(path, text.encode("utf-8"))


_TEMPORARY = re.compile(r"^\.(?:.+\.tmp|write-probe)-(\d+)$")
STALE_AFTER_S = 60.0


def remove_dead_temporaries(directory: str | Path) -> list[Path]:
    """Remove the hidden temporaries (``.<name>.tmp-<pid>``, ``.write-probe-<pid>``) that
    a writer killed before its rename left in ``directory``; returns those removed.

    Only a temporary whose process is gone is removed, and only once it is a minute old:
    on a directory shared between machines a writer elsewhere has a pid that means
    nothing here, and its write is over long before that.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed, now = [], time.time()
    for path in directory.iterdir():
        match = _TEMPORARY.match(path.name)
        if not match or _process_alive(int(match.group(1))):
            continue
        try:
            if path.is_file() and now - path.stat().st_mtime > STALE_AFTER_S:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # its writer renamed or removed it meanwhile
            continue
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def check_writable(directory: str | Path) -> None:
    """Create ``directory`` if needed and write, fsync and remove a probe file in it, so an
    unwritable or full output directory fails at the start of a run, not hours later.

    Raises:
        OutputError: naming the directory and the reason.
    """
    directory = Path(directory)
    probe = directory / f".write-probe-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(probe, b"probe\n")
        probe.unlink()
    except OSError as exc:
        cause = exc.__cause__ if isinstance(exc, OutputError) else exc
        raise OutputError(f"output directory {directory} is not writable: {reason(cause or exc)}") from exc


def reason(exc: BaseException) -> str:
    """Why an ``OSError`` happened, without its errno and path: ``No space left on
    device`` rather than ``[Errno 28] No space left on device: '/x'``."""
    return getattr(exc, "strerror", None) or str(exc)
