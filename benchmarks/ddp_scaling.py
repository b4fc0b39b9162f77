"""Samples/s of one process against data parallel processes at the same global batch.

    python benchmarks/ddp_scaling.py configs/default.yaml --steps 30 --rounds 3
    python benchmarks/ddp_scaling.py configs/default.yaml --nproc 2 --threads-per-process 1 --json ddp.json
    python benchmarks/ddp_scaling.py configs/default.yaml --nproc 1 --device cuda train.precision=bf16   # one GPU

Each round runs ``tools/pretrain.py`` on one process (with ``--nproc`` times the threads
of a worker, so both sides use the same cores) and under ``torchrun --nproc_per_node``,
alternating, each for ``--steps`` steps; the first ``--skip`` steps (start-up, warm
caches) are left out. samples/s is the global samples of the kept steps over their
summed step time, from metrics.jsonl (rank 0's step time: the ranks wait for each
other every step). The table gives the median over rounds and the ratio to one
process. On a CPU the processes share the machine's cores, so the ratio says what DDP's
communication and duplicated work cost, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from mmssl.train.distributed import free_port

from common import samples_per_s, step_records

REPO = Path(__file__).resolve().parents[1]


def run(config: str, nproc: int, threads: int, steps: int, skip: int, overrides: list[str]) -> float:
    """Global samples/s over steps ``skip+1 .. steps`` of one run."""
    with tempfile.TemporaryDirectory() as out:
        script = [
            str(REPO / "tools" / "pretrain.py"), config, "--output-dir", out,
            f"train.steps={steps}", "train.log_every=1", "train.checkpoint_every=0", "train.progress=false",
            f"train.threads={threads}", *overrides,
        ]
        if nproc == 1:
            cmd = [sys.executable, *script]
        else:
            cmd = [
                sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", *script,
            ]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if done.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        return samples_per_s(step_records(out, skip))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="config overrides for both sides, key.sub=value")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--threads-per-process", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--skip", type=int, default=5, help="first steps left out of the figure")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default=None, help="train.device for both sides (default: the config's)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    overrides = list(args.overrides) + ([f"train.device={args.device}"] if args.device else [])
    sides = {"1 process": (1, args.threads_per_process * args.nproc)}
    if args.nproc > 1:
        sides[f"{args.nproc} processes"] = (args.nproc, args.threads_per_process)
    figures: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.rounds):
        for name, (nproc, threads) in sides.items():  # alternating, so a slow spell hits both
            figures[name].append(run(args.config, nproc, threads, args.steps, args.skip, overrides))
            print(f"round {r + 1}: {name}: {figures[name][-1]:.1f} samples/s", flush=True)
    base = statistics.median(figures["1 process"])
    print(f"\n{args.config}, {args.steps - args.skip} steps a run, median of {args.rounds} rounds")
    print(f"{'':14s} {'samples/s':>10s} {'min':>8s} {'max':>8s} {'ratio':>7s}")
    rows = {}
    for name, values in figures.items():
        median = statistics.median(values)
        rows[name] = {"samples_per_s": median, "min": min(values), "max": max(values), "ratio": median / base}
        print(f"{name:14s} {median:10.1f} {min(values):8.1f} {max(values):8.1f} {median / base:7.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": args.config, "overrides": overrides, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
