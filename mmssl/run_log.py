"""Metric sinks: a JSONL file (one object per logged step) and TensorBoard events."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from mmssl.atomic import write_text_atomic


class RunLog:
    """Writes ``metrics.jsonl`` and TensorBoard events under ``output_dir``.

    Only the process that should write (rank 0) passes ``enabled=True``.
    """

    def __init__(
        self, output_dir: str | Path, enabled: bool = True, tensorboard: bool = True, resume_step: int | None = None
    ) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._file = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            _drop_records_after(self.path, resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _drop_records_after(path: Path, step: int) -> None:
    """Forget records a killed run logged after its last checkpoint: the resumed run logs them again."""
    kept = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True) if line.strip() and json.loads(line)["step"] <= step]
    write_text_atomic(path, "".join(kept))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl, in order."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
