"""Training speed of this working tree against a git revision, and whether the math moved.

    python benchmarks/revision_speed.py configs/default.yaml --base HEAD~3
    python benchmarks/revision_speed.py configs/tiny_joint.yaml --base main --steps 20 --rounds 3 --json rev.json
    python benchmarks/revision_speed.py configs/default.yaml --base b0e8532 --end-to-end --rounds 2   # whole runs

The base revision is checked out in a temporary git worktree, and the working tree is
copied once at the start (its tracked and untracked files, less what git ignores), so
every round runs the same code while the checkout keeps changing. Each round trains the
config (a path in the repository: each tree trains its own version of the file) for
``--steps`` steps with ``tools/pretrain.py`` of either tree (``PYTHONPATH`` points at the
tree, so its modalities and objectives are the ones imported), the two taking turns, so
a slow spell of a shared machine hits both. samples/s is over the
steps after ``--skip`` (from metrics.jsonl, data included). The final weights of the
two sides' first runs are compared tensor by tensor: identical, or the largest
difference relative to the tensor's largest value (a change that alters the math, such
as a fused optimizer, shows here). Each run's wall time (the process from start to exit:
imports, model and data set-up, every step, the final checkpoint) is reported beside it.

``--end-to-end`` trains the config's own ``train.steps`` (the main job's whole pretraining
run; still logging every step and checkpointing only at the end) and its headline is the
ratio of the runs' wall times, base over working tree (above 1: the working tree finishes
sooner); samples/s is then over every step after ``--skip``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file

from common import REPO, Spread, samples_per_s, step_records, train_run, write_json


def copy_working_tree(dest: Path) -> Path:
    """The repository's tracked and untracked files, less what git ignores, copied to ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree is left out
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def config_steps(tree: Path, config: str, overrides: list[str]) -> int:
    """train.steps of ``config`` in ``tree`` under ``overrides`` (read as YAML: no import of either tree)."""
    import yaml

    steps = next((int(o.split("=", 1)[1]) for o in reversed(overrides) if o.startswith("train.steps=")), None)
    return steps if steps is not None else int(yaml.safe_load((tree / config).read_text())["train"]["steps"])


def final_weights(out: Path) -> dict:
    (step_dir,) = sorted((out / "checkpoints").glob("step_*"))[-1:]
    return load_file(step_dir / "model.safetensors")


def weight_difference(a: dict, b: dict) -> float:
    """max over tensors of max|a - b| / max|a|; 0.0 when every tensor is identical. A
    tensor whose shape changed but not its number of entries (a scalar stored as [1])
    is compared entry by entry."""
    if a.keys() != b.keys():
        raise SystemExit(f"the two trees' weights differ in their names: {sorted(a.keys() ^ b.keys())[:5]}")
    worst = 0.0
    for name, x in a.items():
        y = b[name]
        if x.shape != y.shape:
            if x.numel() != y.numel():
                raise SystemExit(f"weight {name}: shape {tuple(x.shape)} against {tuple(y.shape)}")
            x, y = x.reshape(-1), y.reshape(-1)
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
    parser.add_argument("--end-to-end", action="store_true",
                        help="train the config's own train.steps; the headline is the ratio of the runs' wall times")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base_tree), args.base], cwd=REPO, check=True)
        try:
            trees = {f"base {args.base}": base_tree, "working tree": copy_working_tree(Path(tmp) / "working")}
            steps = {name: config_steps(tree, args.config, args.overrides) if args.end_to_end else args.steps
                     for name, tree in trees.items()}
            speed: dict[str, list[float]] = {name: [] for name in trees}
            rss: dict[str, list[float]] = {name: [] for name in trees}
            wall: dict[str, list[float]] = {name: [] for name in trees}
            weights = {}
            for r in range(args.rounds):
                order = list(trees) if r % 2 == 0 else list(reversed(trees))
                for name in order:
                    out = Path(tmp) / f"run-{r}-{name.split()[0]}"
                    start = time.perf_counter()
                    finished = train_run(args.config, out, steps[name], args.overrides, tree=trees[name])
                    wall[name].append(time.perf_counter() - start)
                    rss[name].append(finished.peak_rss_mb)
                    speed[name].append(samples_per_s(step_records(out, args.skip)))
                    if r == 0:
                        weights[name] = final_weights(out)
                    else:
                        shutil.rmtree(out, ignore_errors=True)
                print(f"round {r + 1}: " + ", ".join(f"{n} {speed[n][-1]:.1f} samples/s, {wall[n][-1]:.0f} s" for n in trees),
                      flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=REPO, check=False)
    base_name, new_name = trees
    ratios = Spread.of([n / b for n, b in zip(speed[new_name], speed[base_name])])
    wall_ratios = Spread.of([b / n for n, b in zip(wall[new_name], wall[base_name])])
    difference = weight_difference(*weights.values())
    print(f"\n{args.config} {' '.join(args.overrides)}: steps {args.skip + 1}-{steps[new_name]}, {args.rounds} alternating rounds"
          + (" (whole runs)" if args.end_to_end else ""))
    print(f"{'tree':24s} {'samples/s':>10s} {'min':>8s} {'max':>8s} {'wall s':>8s} {'peak RSS MB':>12s}")
    for name in trees:
        s = Spread.of(speed[name])
        print(f"{name:24s} {s.median:10.1f} {s.min:8.1f} {s.max:8.1f} {Spread.of(wall[name]).median:8.0f} "
              f"{Spread.of(rss[name]).median:12.0f}")
    print(f"speed-up: {ratios.median:.2f}x (rounds {ratios.min:.2f}-{ratios.max:.2f}) in samples/s; "
          f"{wall_ratios.median:.2f}x (rounds {wall_ratios.min:.2f}-{wall_ratios.max:.2f}) in wall time")
    print("final weights: " + ("identical" if difference == 0 else f"largest relative difference {difference:.2e}"))
    write_json(args.json, {
        "benchmark": "revision_speed", "config": args.config, "overrides": args.overrides, "base": args.base,
        "steps": steps[new_name], "skip": args.skip, "end_to_end": args.end_to_end,
        "samples_per_s": {n: Spread.of(v) for n, v in speed.items()},
        "wall_s": {n: Spread.of(v) for n, v in wall.items()}, "wall_speedup": wall_ratios,
        "peak_rss_mb": {n: Spread.of(v) for n, v in rss.items()}, "speedup": ratios,
        "max_relative_weight_difference": difference,
    })


if __name__ == "__main__":
    main()
