import errno
import os
import stat
import subprocess
import time

import pytest

from mmssl.common import atomic
from mmssl.common.atomic import (
    OutputError,
    check_writable,
    write_bytes_atomic,
    write_text_atomic,
)


def test_write_text_atomic_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    write_text_atomic(target, '{"top1": 0.9}')
    assert target.read_text() == '{"top1": 0.9}'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def spy_on_fsync_and_replace(monkeypatch) -> list[tuple[str, ...]]:
    """Record, in order, every fsync (of a file or a directory, with its path) and rename."""
    events: list[tuple[str, ...]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append((f"fsync {kind}", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_write_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = spy_on_fsync_and_replace(monkeypatch)
    target = tmp_path / "train_summary.json"
    write_text_atomic(target, "{}")
    assert len(events) == 3, events
    (kind, synced), (_, src, dst), last = events
    assert kind == "fsync file" and synced == os.path.realpath(src) and dst == str(target)  # the data, then the rename
    assert last == ("fsync dir", os.path.realpath(tmp_path))  # then the rename itself


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_failed_write_keeps_the_old_file_and_names_it(tmp_path, monkeypatch, code):
    target = tmp_path / "report.json"
    target.write_text("old")

    def fsync(fd: int) -> None:  # a full disk is often reported only when the data is flushed
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OutputError) as info:
        write_text_atomic(target, "new")
    assert str(info.value) == f"cannot write {target}: {os.strerror(code)}"
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary left


def test_check_writable_names_the_directory_in_one_line(tmp_path, monkeypatch):
    check_writable(tmp_path / "run")  # creates it and leaves nothing behind
    assert list((tmp_path / "run").iterdir()) == []

    def denied(path, *args, **kwargs):  # as root, chmod does not make a directory unwritable
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(atomic, "open", denied, raising=False)
    with pytest.raises(OutputError) as info:
        check_writable(tmp_path / "run")
    assert str(info.value) == f"output directory {tmp_path / 'run'} is not writable: Permission denied"
    with pytest.raises(OutputError, match="cannot write"):
        write_bytes_atomic(tmp_path / "run" / "x.png", b"\x89PNG")


def test_temporaries_of_dead_writers_are_removed_once_a_minute_old(tmp_path):
    proc = subprocess.Popen(["true"])
    proc.wait()
    dead, alive, hour_ago = proc.pid, os.getpid(), time.time() - 3600
    names = {
        f".train_summary.json.tmp-{dead}": hour_ago,  # removed
        f".write-probe-{dead}": hour_ago,  # removed
        f".losses.png.tmp-{alive}": hour_ago,  # its writer may still rename it
        f".report.json.tmp-{dead}": time.time(),  # maybe a writer on another machine, mid-write
        f"notes.tmp-{dead}": hour_ago,  # not a temporary of ours
    }
    for name, mtime in names.items():
        (tmp_path / name).write_text("x")
        os.utime(tmp_path / name, (mtime, mtime))
    removed = atomic.remove_dead_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [f".train_summary.json.tmp-{dead}", f".write-probe-{dead}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(names) - {p.name for p in removed})
