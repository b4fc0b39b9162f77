"""The joint step against its objectives run alone, with FLOPs and hardware efficiency.

    python benchmarks/joint_step.py                                  # configs/default.yaml
    python benchmarks/joint_step.py benchmarks/configs/clip.yaml     # one objective: its FLOP/s
    python benchmarks/joint_step.py configs/default.yaml --json runs/benchmarks/joint.json
    python benchmarks/joint_step.py configs/default.yaml --device cuda --rounds 2   # bf16 autocast (precision auto)

Rows: the config's joint step, then each objective alone (the same config with only that
objective, at its batch size, running every step). Every row is its own Pretrainer in
this process, timed in turns over ``--rounds`` rounds:

- s/step: the training step with its data (the streams build batches in this process);
- compute: the step fed the batches it got first, over and over (model, loss, backward,
  optimizer; no data work);
- GFLOP: training FLOPs of one step as torch.utils.flop_counter counts them (matmuls,
  convolutions, attention; the CPU flash-attention kernels get torch's CUDA formula,
  which torch does not register for them), on the cached batches;
- GFLOP/s and "of peak": FLOPs over the compute time, and that over the machine's dense
  matmul FLOP/s (1024 x 1024 products at the same thread count and precision), measured
  in every round beside the rows, median over rounds. On CUDA (``--device cuda``, the
  run's precision: ``auto`` is bf16 autocast there) the product is 8192 x 8192 and every
  timed stretch ends with a device synchronisation.

An objective that runs ``every: k`` steps in the joint config counts 1/k of its alone
step in the sum of separate steps, and the joint step is averaged over a multiple of
k steps, so the two sides do the same work.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from typing import Any

import torch

from common import REPO, RepeatStream, Spread, count_flops, matmul_flops_per_s, write_json
from mmssl.config import RunConfig, config_from_dict, load_config
from mmssl.train.trainer import Pretrainer


def alone(config: RunConfig, name: str) -> RunConfig:
    """``config`` with objective ``name`` only, running every step."""
    d = config.to_dict()
    d["objectives"] = {name: {**d["objectives"][name], "every": 1}}
    keep = set(d["modalities"]) | {name}
    d["train"]["lr_scale"] = {k: v for k, v in d["train"]["lr_scale"].items() if k in keep}
    return config_from_dict(d)


class Row:
    """One config's trainer with data, and a twin fed cached batches."""

    def __init__(self, label: str, config: RunConfig, tmp: str, period: int) -> None:
        self.label, self.period = label, period
        self.trainer = Pretrainer(config, f"{tmp}/{label}")
        batches = {name: next(stream) for name, stream in self.trainer.streams.items()}
        self.cached = Pretrainer(config, f"{tmp}/{label}-cached", streams={n: RepeatStream(b) for n, b in batches.items()})
        self.threads = torch.get_num_threads()
        self.flops = count_flops(lambda: [self.cached.train_step() for _ in range(period)]) / period
        self.data_s: list[float] = []
        self.compute_s: list[float] = []

    def time(self, steps: int, record: bool = True) -> None:
        torch.set_num_threads(self.threads)  # process-wide; each Pretrainer set its own
        steps = math.ceil(steps / self.period) * self.period
        for trainer, seconds in ((self.trainer, self.data_s), (self.cached, self.compute_s)):
            synchronize(trainer.device)
            start = time.perf_counter()
            for _ in range(steps):
                trainer.train_step()
            synchronize(trainer.device)
            if record:
                seconds.append((time.perf_counter() - start) / steps)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_flops_per_s(dtype: str, device: torch.device) -> float:
    """Dense matmul FLOP/s: on the CPU common's 1024 x 1024 product at the current
    threads; on CUDA the median of 10 timed 8192 x 8192 products."""
    if device.type != "cuda":
        return matmul_flops_per_s(dtype)
    size = 8192
    a = torch.randn(size, size, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(size, size, device=device, dtype=getattr(torch, dtype))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=str(REPO / "configs" / "default.yaml"))
    parser.add_argument("overrides", nargs="*", help="config overrides, key.sub=value")
    parser.add_argument("--steps", type=int, default=6, help="steps per row per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default=None, help="train.device of every row (cpu, cuda; default: the config's)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    device = [f"train.device={args.device}"] if args.device else []
    config = load_config(args.config, [*args.overrides, *device, "train.progress=false"])
    every = {name: spec.every if config.train.schedule == "all" else 1 for name, spec in config.objectives.items()}
    period = math.lcm(*every.values())
    with tempfile.TemporaryDirectory() as tmp:
        rows = [Row("joint", config, tmp, period)]
        if len(config.objectives) > 1:
            rows += [Row(name, alone(config, name), tmp, 1) for name in config.objectives]
        # the precision as the trainer resolved it (auto: bf16 on CUDA, fp32 on the CPU)
        precision, where = rows[0].trainer.precision, rows[0].trainer.device
        dtype = {"bf16": "bfloat16", "fp16": "float16", "fp64": "float64"}.get(precision, "float32")
        for row in rows:
            row.time(args.warmup, record=False)
        peaks = []
        for _ in range(args.rounds):
            peaks.append(peak_flops_per_s(dtype, where))  # in turn with the rows: it drifts as they do
            for row in rows:
                row.time(args.steps)
        peak = statistics.median(peaks)
    print(f"{args.config}: {where}, {precision}, median of {args.rounds} rounds of {args.steps} steps, {torch.get_num_threads()} threads, "
          f"matmul peak {peak / 1e9:.0f} GFLOP/s ({dtype}, rounds {min(peaks) / 1e9:.0f}-{max(peaks) / 1e9:.0f})")
    print(f"{'row':24s} {'s/step':>8s} {'compute':>8s} {'GFLOP':>8s} {'GFLOP/s':>8s} {'of peak':>8s}")
    table: dict[str, dict[str, Any]] = {}

    def show(label: str, data_s: float, compute_s: float, flops: float) -> None:
        rate = flops / compute_s
        table[label] = {"step_s": data_s, "compute_s": compute_s, "gflop": flops / 1e9, "gflop_per_s": rate / 1e9,
                        "fraction_of_matmul_peak": rate / peak}
        print(f"{label:24s} {data_s:8.3f} {compute_s:8.3f} {flops / 1e9:8.2f} {rate / 1e9:8.1f} {rate / peak:8.2f}")

    medians = {row.label: (statistics.median(row.data_s), statistics.median(row.compute_s), row.flops) for row in rows}
    for label, values in list(medians.items())[1:]:
        show(f"{label} alone", *values)
    if len(rows) > 1:
        separate = [sum(medians[n][i] / every[n] for n in config.objectives) for i in range(3)]
        show("sum of separate", *separate)
    show("joint", *medians["joint"])
    result: dict[str, Any] = {"benchmark": "joint_step", "config": args.config, "overrides": args.overrides,
                              "device": str(where), "precision": precision,
                              "rounds": args.rounds, "steps": args.steps, "matmul_peak_gflop_per_s": Spread.of([p / 1e9 for p in peaks]),
                              "rows": table}
    if len(rows) > 1:
        ratio = {k: medians["joint"][i] / separate[i] for i, k in enumerate(("with_data", "compute"))}
        per_round = Spread.of([j / sum(r.data_s[k] / every[r.label] for r in rows[1:])
                               for k, j in enumerate(rows[0].data_s)])
        result["joint_over_separate"] = {**ratio, "with_data_rounds": per_round}
        print(f"joint / sum of separate: {ratio['with_data']:.2f} with data (rounds {per_round.min:.2f}-{per_round.max:.2f}), "
              f"{ratio['compute']:.2f} compute only")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
