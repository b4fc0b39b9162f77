"""What the benchmark scripts share: measured subprocess runs, per-step records of mmssl
runs, medians with their spread, and the JSON they write."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from mmssl.train import flops

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Finished:
    output: str  # stdout and stderr together
    peak_rss_mb: float  # the process's peak resident memory (its children not included)


def run_measured(cmd: Sequence[str], cwd: Path = REPO, env: dict[str, str] | None = None) -> Finished:
    """Run ``cmd`` to the end; fail with its output's tail when it fails."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(list(cmd), cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        # wait4 gives this child's own rusage; Popen.wait would hide it
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    return Finished(output=output, peak_rss_mb=usage.ru_maxrss / 1024)  # ru_maxrss is KiB on Linux


def train_run(config: str, out: Path, steps: int, overrides: Sequence[str], tree: Path = REPO) -> Finished:
    """``tools/pretrain.py`` of ``tree`` (its code first on the path) on ``tree``'s copy
    of ``config`` for ``steps`` steps, logging every step to ``out``/metrics.jsonl, with no
    checkpoint before the last step."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [
        sys.executable, str(tree / "tools" / "pretrain.py"), config, "--output-dir", str(out),
        f"train.steps={steps}", "train.log_every=1", "train.checkpoint_every=0", "train.progress=false", *overrides,
    ]
    return run_measured(cmd, cwd=tree, env=env)


def samples_per_s(records: Sequence[dict[str, Any]]) -> float:
    """Samples over seconds of the steps in ``records`` (each a step's metrics)."""
    return sum(r["samples_per_s"] * r["step_s"] for r in records) / sum(r["step_s"] for r in records)


def step_records(output_dir: str | Path, skip: int) -> list[dict[str, Any]]:
    """metrics.jsonl of a run logged every step, without its first ``skip`` steps."""
    path = Path(output_dir) / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["step"] > skip]


def data_wait(record: dict[str, Any]) -> float:
    """Seconds a step waited for its batches, summed over the objectives' streams."""
    return sum(v for k, v in record.items() if k.startswith("data/") and k.endswith("/wait_s"))


class RepeatStream:
    """A stream that yields the same batch forever (compute without data work)."""

    def __init__(self, batch: Any) -> None:
        self.batch = batch
        self.wait_seconds = 0.0

    def __next__(self) -> Any:
        return self.batch

    def state_dict(self) -> dict:
        return {}

    def stats(self) -> dict:
        return {}

    def close(self) -> None:
        pass


def parse_variant(text: str) -> tuple[str, list[str]]:
    """'label: key=value key=value' -> (label, overrides)."""
    label, _, overrides = text.partition(":")
    if not overrides.strip():
        raise SystemExit(f"--variant wants 'label: key=value ...', got {text!r}")
    return label.strip(), overrides.split()


@dataclass(frozen=True)
class Spread:
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        return cls(statistics.median(values), min(values), max(values))


def write_json(path: str | Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=lambda o: asdict(o)) + "\n")
    print(f"wrote {path}")


# --- FLOPs ---------------------------------------------------------------------------
# the library's (mmssl/train/flops.py), which the trainer counts every run's FLOPs with
register_cpu_attention_flops = flops.register_cpu_attention_flops
count_flops = flops.count_flops
matmul_flops_per_s = flops.matmul_flops_per_s
