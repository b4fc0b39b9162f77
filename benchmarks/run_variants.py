"""Peak memory and speed of config variants, each a training process of its own.

    python benchmarks/run_variants.py configs/default.yaml                # + checkpointing, + compile
    python benchmarks/run_variants.py benchmarks/configs/clip_vit_s_32.yaml --steps 10 \\
        --variant "checkpointing: train.grad_checkpointing=true"

Each variant is the config plus overrides; the first row is the config as it is. Every
round trains each variant with ``tools/pretrain.py`` for ``--steps`` steps, the variants
taking turns. samples/s is over the steps after ``--skip`` (data included); peak RSS is
the process's peak resident memory (model, optimizer state, activations, data and the
allocator's cache). Activation checkpointing trades memory for recomputed forwards;
torch.compile pays its compilation in the first steps, which ``--skip`` leaves out.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import Spread, parse_variant, samples_per_s, step_records, train_run, write_json

DEFAULT_VARIANTS = [
    "activation checkpointing: train.grad_checkpointing=true",
    "torch.compile: train.compile=true",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="config overrides for every variant, key.sub=value")
    parser.add_argument("--variant", action="append", default=None,
                        help="'label: key=value ...' (default: activation checkpointing, torch.compile)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--skip", type=int, default=5, help="first steps of each run left out")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    variants = [("as configured", [])] + [parse_variant(v) for v in args.variant or DEFAULT_VARIANTS]
    speed: dict[str, list[float]] = {label: [] for label, _ in variants}
    rss: dict[str, list[float]] = {label: [] for label, _ in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, (label, overrides) in enumerate(variants):
                out = Path(tmp) / f"{r}-{i}"
                finished = train_run(args.config, out, args.steps, [*args.overrides, *overrides])
                rss[label].append(finished.peak_rss_mb)
                speed[label].append(samples_per_s(step_records(out, args.skip)))
            print(f"round {r + 1}: " + ", ".join(f"{v}: {speed[v][-1]:.1f} samples/s {rss[v][-1]:.0f} MB" for v in speed),
                  flush=True)
    base_speed, base_rss = Spread.of(speed["as configured"]).median, Spread.of(rss["as configured"]).median
    print(f"\n{args.config} {' '.join(args.overrides)}: steps {args.skip + 1}-{args.steps}, median of {args.rounds} rounds")
    print(f"{'variant':28s} {'samples/s':>10s} {'vs first':>9s} {'peak RSS MB':>12s} {'vs first':>9s}")
    rows = {}
    for label, _ in variants:
        s, m = Spread.of(speed[label]), Spread.of(rss[label])
        rows[label] = {"samples_per_s": s, "peak_rss_mb": m, "speed_ratio": s.median / base_speed,
                       "memory_ratio": m.median / base_rss}
        print(f"{label:28s} {s.median:10.1f} {s.median / base_speed:9.2f} {m.median:12.0f} {m.median / base_rss:9.2f}")
    write_json(args.json, {"benchmark": "run_variants", "config": args.config, "overrides": args.overrides,
                           "steps": args.steps, "skip": args.skip, "rounds": args.rounds, "rows": rows})


if __name__ == "__main__":
    main()
