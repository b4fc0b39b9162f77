"""Seconds per training step of config variants, measured in one process, interleaved.

    python benchmarks/config_step_time.py configs/default.yaml \
        --variant "no local view: modalities.audio.local_patch_freq=0 modalities.audio.local_patch_time=0"

Each variant is the config plus command-line style overrides; the first row is the config
as it is. Every variant builds its own Pretrainer (world data, rendering included), runs
``--warmup`` steps, then ``--rounds`` rounds of ``--steps`` steps, the variants taking
turns, so a slow spell on a shared machine hits every row alike. Read the ratios to the
first row; absolute seconds on shared machines are noise.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from mmssl.config import load_config
from mmssl.train.trainer import Pretrainer

from common import parse_variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--variant", action="append", default=[], help="'label: key=value key=value'")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's)")
    args = parser.parse_args()

    variants = [("as configured", [])] + [parse_variant(v) for v in args.variant]
    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        trainers = []
        threads: list[int] = []
        for i, (label, overrides) in enumerate(variants):
            extra = [f"train.threads={args.threads}"] if args.threads else []
            config = load_config(args.config, [*overrides, *extra, "train.progress=false"])
            trainer = Pretrainer(config, output_dir=f"{tmp}/{i}")
            # torch's thread count is process-wide and each Pretrainer sets its own, so
            # every variant's turn restores its own count
            threads.append(config.train.threads or default_threads)
            for _ in range(args.warmup):
                trainer.train_step()
            trainers.append(trainer)
        times: list[list[float]] = [[] for _ in variants]
        for _ in range(args.rounds):
            for i, trainer in enumerate(trainers):
                torch.set_num_threads(threads[i])
                start = time.perf_counter()
                for _ in range(args.steps):
                    trainer.train_step()
                times[i].append((time.perf_counter() - start) / args.steps)

    base = statistics.median(times[0])
    print(f"{args.config}: {args.rounds} rounds x {args.steps} steps")
    print(f"{'variant':40s} {'threads':>7s} {'s/step':>8s} {'ratio':>6s}")
    for (label, _), t, n in zip(variants, times, threads):
        median = statistics.median(t)
        print(f"{label:40s} {n:7d} {median:8.3f} {median / base:6.2f}")


if __name__ == "__main__":
    main()
