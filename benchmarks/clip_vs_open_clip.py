"""mmssl's CLIP training step against open_clip's own trainer, on the same model.

    pip install -e ".[bench]"                                  # open_clip_train's own needs
    python benchmarks/clip_vs_open_clip.py                     # the tiny ViT, 5 rounds
    python benchmarks/clip_vs_open_clip.py --model tiny ViT-S-32 --json runs/benchmarks/clip.json

Each round runs both trainers as subprocesses, in alternating order, so a slow spell of
a shared machine hits both sides:

- open_clip: ``python -m open_clip_train.main --dataset-type synthetic``, its own loop
  and data (one PIL image transformed and one caption tokenised per sample);
- mmssl: ``mmssl-pretrain benchmarks/configs/clip.yaml``, one image-text contrastive
  objective on open_clip towers (``tower: open_clip``) over the embedded world (a shape
  rendered and its caption tokenised per sample).

Both sides: the same vision and text towers (``tiny`` is benchmarks/configs/clip_tiny.json,
in open_clip's model-config format, which both read; mmssl's configs are
benchmarks/configs/clip.yaml and clip_vit_s_32.yaml), batch, fp32, AdamW with open_clip's
ViT settings, warm-up, grad-norm clip 1.0, torch threads, and no DataLoader workers, so
every step's data time is known: each trainer logs it per step (open_clip's
"Data (t)" / "Batch (t)", mmssl's metrics.jsonl). samples/s "with data" is the batch over
the median step time; "compute" leaves each step's data time out, since the two
sides' data differ (an image transform against a render). The first ``--skip`` steps
(start-up, warm caches) are left out. The ratio is mmssl over open_clip, per round; the
table gives its median and spread. Peak resident memory is each process's own. FLOPs of
a step are counted once on mmssl's side (torch.utils.flop_counter, attention included);
each side's FLOP/s is that over its compute time, against the machine's dense matmul
FLOP/s measured in every round.

mmssl's tower keeps open_clip's vision projection at the tower's width and projects in
its objective's head instead of in the tower: at ViT-S-32 (width = embed_dim = 384) the
matrices are the same size; mmssl's loss counts same-concept pairs as positives.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from common import (
    REPO, Finished, RepeatStream, Spread, count_flops, data_wait, matmul_flops_per_s, run_measured, step_records,
    train_run, write_json,
)

TINY_JSON = REPO / "benchmarks" / "configs" / "clip_tiny.json"

# name -> (open_clip --model, mmssl config of the same architecture, batch)
MODELS: dict[str, tuple[str, Path, int]] = {
    "tiny": ("clip_tiny", REPO / "benchmarks" / "configs" / "clip.yaml", 64),
    "ViT-S-32": ("ViT-S-32", REPO / "benchmarks" / "configs" / "clip_vit_s_32.yaml", 32),
}
# open_clip_train's log line, written every step with --log-every-n-steps 1
OPEN_CLIP_STEP = re.compile(r"Data \(t\): ([0-9.]+) Batch \(t\): ([0-9.]+)")


def open_clip_side(argv: list[str]) -> None:
    """Run open_clip_train.main in this process, with the tiny config registered and
    the same torch thread count as mmssl's side (``--threads N`` first in ``argv``)."""
    import open_clip
    import torch
    from open_clip_train.main import main as open_clip_main

    threads = int(argv[1])
    torch.set_num_threads(threads)
    open_clip.add_model_config(TINY_JSON)
    open_clip_main(argv[2:])


def run_open_clip(model: str, batch: int, steps: int, skip: int, threads: int) -> tuple[list[tuple[float, float]], Finished]:
    """(step seconds, data seconds) of each step after ``skip``."""
    with tempfile.TemporaryDirectory() as logs:
        finished = run_measured([
            sys.executable, __file__, "--open-clip-side", "--threads", str(threads),
            "--dataset-type", "synthetic", "--train-num-samples", str(batch * steps), "--batch-size", str(batch),
            "--epochs", "1", "--model", MODELS[model][0], "--precision", "fp32", "--workers", "0",
            "--lr", "5e-4", "--wd", "0.2", "--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6",
            "--warmup", "5", "--grad-clip-norm", "1.0", "--logs", logs, "--name", "bench",
            "--log-every-n-steps", "1", "--save-frequency", "0", "--device", "cpu", "--seed", "0",
        ])
    steps_seen = [(float(b), float(d)) for d, b in OPEN_CLIP_STEP.findall(finished.output)]
    if len(steps_seen) != steps:
        raise SystemExit(f"open_clip logged {len(steps_seen)} steps, expected {steps}:\n{finished.output[-3000:]}")
    return steps_seen[skip:], finished


def run_mmssl(model: str, batch: int, steps: int, skip: int, threads: int) -> tuple[list[tuple[float, float]], Finished]:
    with tempfile.TemporaryDirectory() as out:
        finished = train_run(
            str(MODELS[model][1]), Path(out), steps,
            [f"objectives.image_text.data.batch_size={batch}", "train.warmup_steps=5", f"train.threads={threads}"],
        )
        records = step_records(out, skip)
    return [(r["step_s"], data_wait(r)) for r in records], finished


def step_flops(config_path: Path, batch: int) -> float:
    """Training FLOPs of one step of mmssl's side (the same towers as open_clip's; its
    FLOPs differ only by the objective's projection), counted on one cached batch."""
    from mmssl.config import load_config
    from mmssl.train.trainer import Pretrainer

    config = load_config(config_path, [f"objectives.image_text.data.batch_size={batch}", "train.progress=false"])
    with tempfile.TemporaryDirectory() as out:
        trainer = Pretrainer(config, out)
        cached = Pretrainer(config, out, streams={"image_text": RepeatStream(next(trainer.streams["image_text"]))})
        return count_flops(cached.train_step)


def samples_per_s(batch: int, steps: list[tuple[float, float]], compute_only: bool) -> float:
    times = [total - data if compute_only else total for total, data in steps]
    return batch / Spread.of(times).median


def main() -> None:
    if sys.argv[1:2] == ["--open-clip-side"]:
        open_clip_side(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", choices=list(MODELS), default=["tiny"])
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 for tiny, 32 for ViT-S-32")
    parser.add_argument("--steps", type=int, default=12, help="steps of each run")
    parser.add_argument("--skip", type=int, default=3, help="first steps of each run left out")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of both sides")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    runners = {"open_clip": run_open_clip, "mmssl": run_mmssl}
    results = {}
    for model in args.model:
        batch = args.batch_size or MODELS[model][2]
        flops = step_flops(MODELS[model][1], batch)
        rows: dict[str, dict[str, list[float]]] = {side: {"data": [], "compute": [], "rss": []} for side in runners}
        peaks = []
        for r in range(args.rounds):
            peaks.append(matmul_flops_per_s())  # in turn with the runs: it drifts as they do
            order = list(runners) if r % 2 == 0 else list(reversed(runners))
            for side in order:
                steps, finished = runners[side](model, batch, args.steps, args.skip, args.threads)
                rows[side]["data"].append(samples_per_s(batch, steps, compute_only=False))
                rows[side]["compute"].append(samples_per_s(batch, steps, compute_only=True))
                rows[side]["rss"].append(finished.peak_rss_mb)
            print(
                f"{model} round {r + 1}: " + ", ".join(
                    f"{side} {rows[side]['data'][-1]:.1f} ({rows[side]['compute'][-1]:.1f} compute) samples/s"
                    for side in runners
                ),
                flush=True,
            )
        ratios = {
            kind: Spread.of([m / o for m, o in zip(rows["mmssl"][kind], rows["open_clip"][kind])])
            for kind in ("data", "compute")
        }
        peak = Spread.of(peaks)
        results[model] = {
            "batch": batch,
            "gflop_per_step": flops / 1e9,
            "matmul_peak_gflop_per_s": Spread.of([p / 1e9 for p in peaks]),
            "sides": {side: {k: Spread.of(v) for k, v in values.items()} for side, values in rows.items()},
            "ratio_mmssl_over_open_clip": ratios,
        }
        print(
            f"\n{model}: batch {batch}, fp32, {args.threads} threads, steps {args.skip + 1}-{args.steps} of each run, "
            f"median over {args.rounds} alternating rounds"
        )
        print(f"{flops / 1e9:.1f} GFLOP a step; matmul peak {peak.median / 1e9:.0f} GFLOP/s "
              f"(rounds {peak.min / 1e9:.0f}-{peak.max / 1e9:.0f}); GFLOP/s and its share of the peak on compute time")
        print(f"{'side':12s} {'samples/s with data':>21s} {'compute only':>14s} {'GFLOP/s':>9s} {'of peak':>8s} "
              f"{'peak RSS MB':>12s}")
        for side, values in rows.items():
            data, compute, rss = (Spread.of(values[k]) for k in ("data", "compute", "rss"))
            rate = flops * compute.median / batch
            results[model]["sides"][side]["fraction_of_matmul_peak"] = rate / peak.median
            print(f"{side:12s} {data.median:21.1f} {compute.median:14.1f} {rate / 1e9:9.1f} {rate / peak.median:8.2f} "
                  f"{rss.median:12.0f}")
        for kind, label in (("data", "with data"), ("compute", "compute only")):
            s = ratios[kind]
            print(f"mmssl / open_clip, {label}: {s.median:.2f} (rounds {s.min:.2f}-{s.max:.2f})")
    write_json(args.json, {"benchmark": "clip_vs_open_clip", "rounds": args.rounds, "steps": args.steps,
                           "skip": args.skip, "threads": args.threads, "models": results})


if __name__ == "__main__":
    main()
