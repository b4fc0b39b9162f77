"""mmssl's CLIP training step against open_clip's own trainer, on the same model.

    pip install -e ".[bench]"                                  # open_clip_train's own needs
    python benchmarks/clip_vs_open_clip.py                     # the tiny ViT, 5 rounds
    python benchmarks/clip_vs_open_clip.py --model tiny ViT-S-32 --json runs/benchmarks/clip.json
    python benchmarks/clip_vs_open_clip.py --model ViT-S-32 --compile --rounds 3   # both sides torch.compile'd
    python benchmarks/clip_vs_open_clip.py --model ViT-B-32 --device cuda --precision bf16 --rounds 2 --steps 20

Each round runs both trainers as subprocesses, in alternating order, so a slow spell of
a shared machine hits both sides:

- open_clip: ``python -m open_clip_train.main --dataset-type synthetic``, its own loop
  and data (one PIL image transformed and one caption tokenised per sample);
- mmssl: ``mmssl-pretrain benchmarks/configs/clip.yaml``, one image-text contrastive
  objective on open_clip towers (``tower: open_clip``) over the embedded world (a shape
  rendered and its caption tokenised per sample).

Both sides: the same vision and text towers (``tiny`` is benchmarks/configs/clip_tiny.json,
in open_clip's model-config format, which both read; mmssl's configs are
benchmarks/configs/clip.yaml, clip_vit_s_32.yaml and clip_vit_b_32.yaml), batch, device
(``--device``: open_clip's ``--device``, mmssl's ``train.device``), precision
(``--precision``: fp32, or bf16 autocast: open_clip's ``amp_bf16``, mmssl's
``train.precision=bf16``; the weights stay float32 on both sides), torch.compile or not
(``--compile``: open_clip's ``--torchcompile`` compiles its whole model, mmssl's
``train.compile=true`` each encoder; the first ``--skip`` steps hold the compilation),
AdamW with open_clip's ViT settings, warm-up, grad-norm clip 1.0, torch threads, and no
DataLoader workers, so
every step's data time is known: each trainer logs it per step (open_clip's
"Data (t)" / "Batch (t)", mmssl's metrics.jsonl). samples/s "with data" is the batch over
the median step time; "compute" leaves each step's data time out, since the two
sides' data differ (an image transform against a render). The first ``--skip`` steps
(start-up, warm caches) are left out. The ratio is mmssl over open_clip, per round; the
table gives its median and spread. Peak resident memory is each process's own. FLOPs of
a step are counted once on mmssl's side (torch.utils.flop_counter, attention included);
each side's FLOP/s is that over its compute time, against the machine's dense matmul
FLOP/s measured in every round (on CUDA: an 8192 x 8192 product in the run's precision).

mmssl's tower keeps open_clip's vision projection at the tower's width and projects in
its objective's head instead of in the tower: at ViT-S-32 (width = embed_dim = 384) the
matrices are the same size; mmssl's loss counts same-concept pairs as positives.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from dataclasses import dataclass
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
    "ViT-B-32": ("ViT-B-32", REPO / "benchmarks" / "configs" / "clip_vit_b_32.yaml", 256),
}
# --precision -> (open_clip_train's --precision, mmssl's train.precision): bf16 is autocast
# with float32 weights on both sides (open_clip's pure_bf16 would cast the weights too)
PRECISIONS: dict[str, tuple[str, str]] = {"fp32": ("fp32", "fp32"), "bf16": ("amp_bf16", "bf16")}
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


@dataclass(frozen=True)
class Setting:
    """What both sides run with."""

    device: str = "cpu"
    precision: str = "fp32"  # a key of PRECISIONS
    compile: bool = False
    threads: int = 2


def run_open_clip(model: str, batch: int, steps: int, skip: int, setting: Setting) -> tuple[list[tuple[float, float]], Finished]:
    """(step seconds, data seconds) of each step after ``skip``."""
    with tempfile.TemporaryDirectory() as logs:
        finished = run_measured([
            sys.executable, __file__, "--open-clip-side", "--threads", str(setting.threads),
            "--dataset-type", "synthetic", "--train-num-samples", str(batch * steps), "--batch-size", str(batch),
            "--epochs", "1", "--model", MODELS[model][0], "--precision", PRECISIONS[setting.precision][0], "--workers", "0",
            "--lr", "5e-4", "--wd", "0.2", "--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6",
            "--warmup", "5", "--grad-clip-norm", "1.0", "--logs", logs, "--name", "bench",
            "--log-every-n-steps", "1", "--save-frequency", "0", "--device", setting.device, "--seed", "0",
            *(["--torchcompile"] if setting.compile else []),
        ])
    steps_seen = [(float(b), float(d)) for d, b in OPEN_CLIP_STEP.findall(finished.output)]
    if len(steps_seen) != steps:
        raise SystemExit(f"open_clip logged {len(steps_seen)} steps, expected {steps}:\n{finished.output[-3000:]}")
    return steps_seen[skip:], finished


def mmssl_overrides(batch: int, setting: Setting) -> list[str]:
    """mmssl's side of ``setting`` (torch.compile aside) as config overrides."""
    return [f"objectives.image_text.data.batch_size={batch}", f"train.device={setting.device}",
            f"train.precision={PRECISIONS[setting.precision][1]}"]


def run_mmssl(model: str, batch: int, steps: int, skip: int, setting: Setting) -> tuple[list[tuple[float, float]], Finished]:
    with tempfile.TemporaryDirectory() as out:
        finished = train_run(
            str(MODELS[model][1]), Path(out), steps,
            [*mmssl_overrides(batch, setting), "train.warmup_steps=5", f"train.threads={setting.threads}",
             f"train.compile={str(setting.compile).lower()}"],
        )
        records = step_records(out, skip)
    return [(r["step_s"], data_wait(r)) for r in records], finished


def step_flops(config_path: Path, batch: int, setting: Setting) -> float:
    """Training FLOPs of one step of mmssl's side (the same towers as open_clip's; its
    FLOPs differ only by the objective's projection), counted on one cached batch, on the
    run's device and precision and never compiled (torch's counter cannot see into
    compiled code; compiling changes the kernels, not the FLOPs)."""
    from mmssl.config import load_config
    from mmssl.train.trainer import Pretrainer

    config = load_config(config_path, [*mmssl_overrides(batch, setting), "train.progress=false"])
    with tempfile.TemporaryDirectory() as out:
        trainer = Pretrainer(config, out)
        cached = Pretrainer(config, out, streams={"image_text": RepeatStream(next(trainer.streams["image_text"]))})
        flops = count_flops(cached.train_step)
    del trainer, cached
    if setting.device == "cuda":  # the runs are other processes: give them this one's cached memory
        import torch

        torch.cuda.empty_cache()
    return flops


def matmul_peak(setting: Setting) -> float:
    """The machine's dense matmul FLOP/s: on the CPU common's 1024 x 1024 float32 product
    at the run's threads; on CUDA the median of 10 timed 8192 x 8192 products in the run's
    precision (bf16, or float32 under torch's TF32 setting as open_clip's trainer sets it)."""
    if setting.device == "cpu":
        return matmul_flops_per_s()
    import time

    import torch

    size, dtype = 8192, {"bf16": torch.bfloat16}.get(setting.precision, torch.float32)
    torch.backends.cuda.matmul.allow_tf32 = True  # as both trainers run fp32 on CUDA
    a = torch.randn(size, size, device=setting.device, dtype=dtype)
    b = torch.randn(size, size, device=setting.device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        start = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    del a, b
    torch.cuda.empty_cache()
    return 2 * size**3 / Spread.of(times).median


def samples_per_s(batch: int, steps: list[tuple[float, float]], compute_only: bool) -> float:
    times = [total - data if compute_only else total for total, data in steps]
    return batch / Spread.of(times).median


def main() -> None:
    if sys.argv[1:2] == ["--open-clip-side"]:
        open_clip_side(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", choices=list(MODELS), default=["tiny"])
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 for tiny, 32 for ViT-S-32, 256 for ViT-B-32")
    parser.add_argument("--steps", type=int, default=12, help="steps of each run")
    parser.add_argument("--skip", type=int, default=3, help="first steps of each run left out")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of both sides")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="both sides' device")
    parser.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                        help="fp32, or bf16 autocast (open_clip's amp_bf16, mmssl's train.precision=bf16)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile on both sides (open_clip's --torchcompile, mmssl's train.compile=true)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    setting = Setting(device=args.device, precision=args.precision, compile=args.compile, threads=args.threads)
    runners = {"open_clip": run_open_clip, "mmssl": run_mmssl}
    results = {}
    for model in args.model:
        batch = args.batch_size or MODELS[model][2]
        flops = step_flops(MODELS[model][1], batch, setting)
        rows: dict[str, dict[str, list[float]]] = {side: {"data": [], "compute": [], "rss": []} for side in runners}
        peaks = []
        for r in range(args.rounds):
            peaks.append(matmul_peak(setting))  # in turn with the runs: it drifts as they do
            order = list(runners) if r % 2 == 0 else list(reversed(runners))
            for side in order:
                steps, finished = runners[side](model, batch, args.steps, args.skip, setting)
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
            f"\n{model}: batch {batch}, {args.device}, {args.precision}, {'compiled, ' if args.compile else ''}"
            f"{args.threads} threads, steps {args.skip + 1}-{args.steps} of each run, "
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
                           "skip": args.skip, "threads": args.threads, "device": args.device,
                           "precision": args.precision, "compile": args.compile, "models": results})


if __name__ == "__main__":
    main()
