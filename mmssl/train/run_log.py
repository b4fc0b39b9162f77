"""Metric sinks: a JSONL file (one object per logged step) and the experiment trackers
``train.loggers`` lists (TensorBoard events by default; mmssl/train/trackers.py)."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from mmssl.common.atomic import OutputError, reason, write_bytes_atomic
from mmssl.train.trackers import RunInfo, Trackers

log = logging.getLogger(__name__)


class MetricsFileError(ValueError):
    """``metrics.jsonl`` has a damaged line before its last, which a cut-off write cannot
    leave; the message names the file and the line."""


class RunLog:
    """Writes ``metrics.jsonl`` under ``output_dir`` and fans each record out to the
    experiment trackers (``mmssl.train.trackers``).

    Only the process that should write (rank 0) passes ``enabled=True``. ``loggers`` is
    ``train.loggers`` (``jsonl`` is always written); None: TensorBoard if ``tensorboard``.
    ``run_info`` is what the trackers record when they start (the config, git revision,
    environment). A tracker that cannot start raises ``TrackerError`` here, with
    ``metrics.jsonl`` closed again; one that fails later is dropped with a warning.
    """

    def __init__(
        self,
        output_dir: str | Path,
        enabled: bool = True,
        tensorboard: bool = True,
        resume_step: int | None = None,
        loggers: Sequence[str] | None = None,
        run_info: RunInfo | None = None,
    ) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._file = None
        self.trackers = Trackers()
        self._failed = False  # a write failed (and raised); close() does not raise again
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            repair_metrics(self.path, after_step=resume_step)
        try:
            self._file = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {reason(exc)}") from exc
        if loggers is None:
            loggers = ["tensorboard"] if tensorboard else []
        try:
            self.trackers = Trackers.start(loggers, run_info or RunInfo(Path(output_dir)))
        except BaseException:
            self._file.close()
            self._file = None
            raise

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as exc:  # a full disk: the line may be cut off, which the next run repairs
            self._failed = True
            raise OutputError(f"cannot write {self.path}: {reason(exc)}") from exc
        self.trackers.log(step, metrics)

    def sync(self) -> None:
        """Flush the lines logged so far to the disk: called before a checkpoint is saved,
        so no checkpoint is durable while the log lines of its steps are not."""
        if self._file is None:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            self._failed = True
            raise OutputError(f"cannot write {self.path}: {reason(exc)}") from exc

    def close(self, ok: bool = True) -> None:
        """Close ``metrics.jsonl`` and finish the trackers (``ok`` false: the run stopped
        on an error, which the trackers record as failed)."""
        self.trackers.finish(ok=ok and not self._failed)
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError as exc:
                if not self._failed:  # else the error of the write that failed was raised already
                    raise OutputError(f"cannot write {self.path}: {reason(exc)}") from exc


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def repair_metrics(path: str | Path, after_step: int | None = None) -> None:
    """Make ``metrics.jsonl`` end on a whole record before a run appends to it.

    A kill or a full disk in the middle of a write leaves a partial last line: it is
    dropped, and a warning says so. With ``after_step`` (a resume) the records a killed
    run logged after its checkpoint's step are dropped too: the resumed run logs them
    again. A bad line before the last one is not a cut-off write: ``MetricsFileError``
    names it. The file is rewritten (atomically) only if something changed.
    """
    path = Path(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    kept: list[bytes] = []
    for number, line in enumerate(lines[: last + 1], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = record["step"]
        except (ValueError, KeyError, TypeError) as exc:
            if number - 1 < last:
                raise MetricsFileError(f"{path}, line {number}: not a metrics record ({exc}); only the last line may be cut off") from None
            log.warning("%s: dropped a partial last line, a write cut off by a kill or a full disk: %r", path, line[:60])
            continue
        if after_step is None or step <= after_step:
            kept.append(line)
    repaired = b"".join(line + b"\n" for line in kept)
    if repaired != data:
        write_bytes_atomic(path, repaired)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl, in order."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
