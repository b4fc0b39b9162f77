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
from typing import Any, Callable, Sequence

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
_CPU_SDPA_REGISTERED = False


def register_cpu_attention_flops() -> None:
    """Give torch's FlopCounterMode a formula for the CPU flash-attention kernels, which it
    counts as 0 FLOPs (the CUDA kernels have one): the same count as those, from the
    query/key/value shapes (2 matmuls forward, 5 backward, no causal discount)."""
    global _CPU_SDPA_REGISTERED
    if _CPU_SDPA_REGISTERED:
        return
    import torch
    from torch.utils.flop_counter import register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    _CPU_SDPA_REGISTERED = True


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs torch counts while ``fn`` runs (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    register_cpu_attention_flops()
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_flops_per_s(dtype: str = "float32", size: int = 1024, repeats: int = 20) -> float:
    """The machine's dense matmul FLOP/s at torch's current thread count: the median of
    ``repeats`` timed [size x size] @ [size x size] products."""
    import time

    import torch

    a = torch.randn(size, size, dtype=getattr(torch, dtype))
    b = torch.randn(size, size, dtype=getattr(torch, dtype))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)
