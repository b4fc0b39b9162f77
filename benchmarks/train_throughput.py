"""Training throughput of mmssl's loop against a plain PyTorch loop on the same model.

    python benchmarks/train_throughput.py                       # configs/default.yaml
    python benchmarks/train_throughput.py --config configs/tiny.yaml --steps 20

Three rows, measured in one process, in turn:
  mmssl (world data)    Pretrainer.train_step with its data stream (rendering included)
  mmssl (cached batch)  the same, fed one pre-built batch: framework + compute only
  plain torch loop      hand-written encoders -> heads -> open_clip ClipLoss -> AdamW
                        on the same cached batch: the peer for the framework's overhead
Ratios against the plain loop are what to read; absolute numbers on shared machines are noise.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

import mmssl
from mmssl.train.optim import build_optimizer
from mmssl.train.device import move_to
from mmssl.train.trainer import Pretrainer

from common import RepeatStream


def _time(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def _interleaved(fns: dict[str, Callable[[], None]], steps: int, warmup: int, rounds: int) -> dict[str, float]:
    """Median seconds per step of each loop, measured in alternating rounds so that
    drifts of a shared machine hit every loop alike."""
    for fn in fns.values():
        _time(fn, warmup)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(_time(fn, steps))
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "default.yaml"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    config = mmssl.load_config(args.config, ["train.progress=false"])
    name, spec = next(iter(config.objectives.items()))
    batch_size = spec.data.batch_size

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Pretrainer(config, tmp)
        batch = next(trainer.streams[name])
        cached = Pretrainer(config, tmp, streams={name: RepeatStream(batch)})

        model = copy.deepcopy(cached.model)
        optimizer = build_optimizer(model, config.train)
        objective = model.objectives[name]
        a, b = objective.modalities
        loss_fn = ClipLoss()
        device_batch = move_to(batch, torch.device("cpu"))

        def plain_step() -> None:
            fa = F.normalize(objective.heads[a](model.encoders[a](device_batch[a]).pooled), dim=-1)
            fb = F.normalize(objective.heads[b](model.encoders[b](device_batch[b]).pooled), dim=-1)
            loss = loss_fn(fa, fb, objective.logit_scale.exp())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        times = _interleaved(
            {
                "mmssl (world data)": trainer.train_step,
                "mmssl (cached batch)": cached.train_step,
                "plain torch loop": plain_step,
            },
            args.steps,
            args.warmup,
            args.rounds,
        )

    plain = times["plain torch loop"]
    print(
        f"config {args.config}, objective '{name}', batch {batch_size}, median of {args.rounds} interleaved rounds "
        f"of {args.steps} steps after {args.warmup} warm-up, {torch.get_num_threads()} threads"
    )
    print(f"{'loop':<24}{'s/step':>10}{'samples/s':>12}{'vs plain':>10}")
    for label, seconds in times.items():
        print(f"{label:<24}{seconds:>10.4f}{batch_size / seconds:>12.1f}{plain / seconds:>10.2f}")


if __name__ == "__main__":
    main()
