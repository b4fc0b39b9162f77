"""Training speed of this working tree against a git revision, and whether the math moved.

    python benchmarks/revision_speed.py configs/default.yaml --base HEAD~3
    python benchmarks/revision_speed.py configs/tiny_joint.yaml --base main --steps 20 --rounds 3 --json rev.json

The base revision is checked out in a temporary git worktree. Each round trains the
config (a path in the repository: each tree trains its own version of the file) for
``--steps`` steps with ``tools/pretrain.py`` of either tree (``PYTHONPATH`` points at the
tree, so its modalities and objectives are the ones imported), the two taking turns, so
a slow spell of a shared machine hits both. samples/s is over the
steps after ``--skip`` (from metrics.jsonl, data included). The final weights of the
two sides' first runs are compared tensor by tensor: identical, or the largest
difference relative to the tensor's largest value (a change that alters the math, such
as a fused optimizer, shows here).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from safetensors.torch import load_file

from common import REPO, Spread, samples_per_s, step_records, train_run, write_json


def final_weights(out: Path) -> dict:
    (step_dir,) = sorted((out / "checkpoints").glob("step_*"))[-1:]
    return load_file(step_dir / "model.safetensors")


def weight_difference(a: dict, b: dict) -> float:
    """max over tensors of max|a - b| / max|a|; 0.0 when every tensor is identical."""
    if a.keys() != b.keys():
        raise SystemExit(f"the two trees' weights differ in their names: {sorted(a.keys() ^ b.keys())[:5]}")
    worst = 0.0
    for name, x in a.items():
        y = b[name]
        if x.shape != y.shape:
            raise SystemExit(f"weight {name}: shape {tuple(x.shape)} against {tuple(y.shape)}")
        if not x.equal(y):
            scale = x.double().abs().max().item() or 1.0
            worst = max(worst, (x.double() - y.double()).abs().max().item() / scale)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="config overrides for both sides, key.sub=value")
    parser.add_argument("--base", default="HEAD", help="git revision to compare against (default HEAD)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--skip", type=int, default=5, help="first steps of each run left out")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base_tree), args.base], cwd=REPO, check=True)
        try:
            trees = {f"base {args.base}": base_tree, "working tree": REPO}
            speed: dict[str, list[float]] = {name: [] for name in trees}
            rss: dict[str, list[float]] = {name: [] for name in trees}
            weights = {}
            for r in range(args.rounds):
                order = list(trees) if r % 2 == 0 else list(reversed(trees))
                for name in order:
                    out = Path(tmp) / f"run-{r}-{name.split()[0]}"
                    finished = train_run(args.config, out, args.steps, args.overrides, tree=trees[name])
                    rss[name].append(finished.peak_rss_mb)
                    speed[name].append(samples_per_s(step_records(out, args.skip)))
                    if r == 0:
                        weights[name] = final_weights(out)
                print(f"round {r + 1}: " + ", ".join(f"{n} {speed[n][-1]:.1f} samples/s" for n in trees), flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=REPO, check=False)
    base_name, new_name = trees
    ratios = Spread.of([n / b for n, b in zip(speed[new_name], speed[base_name])])
    difference = weight_difference(*weights.values())
    print(f"\n{args.config} {' '.join(args.overrides)}: steps {args.skip + 1}-{args.steps}, {args.rounds} alternating rounds")
    print(f"{'tree':24s} {'samples/s':>10s} {'min':>8s} {'max':>8s} {'peak RSS MB':>12s}")
    for name in trees:
        s = Spread.of(speed[name])
        print(f"{name:24s} {s.median:10.1f} {s.min:8.1f} {s.max:8.1f} {Spread.of(rss[name]).median:12.0f}")
    print(f"speed-up: {ratios.median:.2f}x (rounds {ratios.min:.2f}-{ratios.max:.2f})")
    print("final weights: " + ("identical" if difference == 0 else f"largest relative difference {difference:.2e}"))
    write_json(args.json, {
        "benchmark": "revision_speed", "config": args.config, "overrides": args.overrides, "base": args.base,
        "steps": args.steps, "skip": args.skip, "samples_per_s": {n: Spread.of(v) for n, v in speed.items()},
        "peak_rss_mb": {n: Spread.of(v) for n, v in rss.items()}, "speedup": ratios,
        "max_relative_weight_difference": difference,
    })


if __name__ == "__main__":
    main()
