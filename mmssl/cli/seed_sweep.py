"""Pretrain one config under several model seeds, evaluate each, tabulate the spread.

    mmssl-seed-sweep configs/audio.yaml --seeds 0 1 2 --output-dir runs/sweep_audio
    mmssl-seed-sweep configs/default.yaml --seeds 0 1 2 --jobs 2 --output-dir runs/sweep_joint \
        train.threads=1 train.progress=false

On the embedded world, held-out composition figures move by 0.1 to 0.5 between model
seeds of one config, so comparing two configs by one run each mostly compares seeds.
This runs each seed in <output-dir>/seed_<n> (mmssl-pretrain with ``seed=<n>`` and the
overrides given; a finished run is only evaluated, an interrupted one resumes), then
mmssl-zero-shot, and prints top1 and composition_top1 per modality and seed with their
mean and standard deviation. Writes <output-dir>/seed_sweep.json and seed_sweep.png.
``--jobs 2`` runs two seeds at once; give them ``train.threads=1`` on a 2-core machine.

``--baseline DIR`` pairs each seed with the same seed of another sweep (any directory
of seed_<n> runs with zero-shot reports) and prints the per-seed differences, their
mean with a 95% t-interval, and wins / ties / losses. Repeat it to gather a baseline
from several sweeps, e.g. each modality's own config against the joint one.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

from mmssl.common.atomic import write_text_atomic
from mmssl.cli.errors import CommandError, print_error, reports_errors
from mmssl.config import load_config
from mmssl.common.plots import plot_seed_sweep
from mmssl.eval.seed_stats import (
    METRICS,
    format_paired_table,
    format_table,
    paired_differences,
    summarise,
)

PROG = "mmssl-seed-sweep"


class SweepError(CommandError):
    """A seed's training or evaluation failed, or left no report."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="YAML run config (configs/*.yaml)")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="model seeds (the world seed stays the config's)")
    parser.add_argument("--output-dir", required=True, help="one run directory per seed goes under it")
    parser.add_argument("--modality", default="all", help="what mmssl-zero-shot evaluates (default: every world modality)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once (default 1)")
    parser.add_argument(
        "--baseline", action="append", default=[],
        help="a directory of seed_<n> runs to compare with, seed by seed; repeat it to gather one modality from each",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides for every seed, key.sub=value")
    args = parser.parse_intermixed_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds has a repeated seed: {args.seeds}")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if any(o.split("=", 1)[0] == "seed" for o in args.overrides):
        parser.error("the sweep sets seed=<n> itself; leave it out of the overrides")
    return args


def _call(command: list[str], log: Path) -> None:
    with open(log, "a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT)
    if code:
        raise SweepError(f"'{' '.join(command[2:4])}' exited with {code}; see {log}")


def run_seed(config: str, seed: int, run_dir: Path, overrides: Sequence[str], modality: str) -> None:
    """Train (or resume, or skip if finished) and evaluate one seed in its own processes."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "sweep.log"
    python = sys.executable
    _call([python, "-m", "mmssl.cli.pretrain", config, "--output-dir", str(run_dir), f"seed={seed}", *overrides], log)
    _call([python, "-m", "mmssl.cli.zero_shot", "--checkpoint", str(run_dir), "--modality", modality], log)


def collect(run_dirs: Mapping[int, Path], modality: str = "all") -> dict[str, dict[int, dict[str, float]]]:
    """{modality: {seed: {metric: value}}} from each run's zero_shot_<modality>.json."""
    results: dict[str, dict[int, dict[str, float]]] = {}
    for seed, run_dir in run_dirs.items():
        reports = sorted(run_dir.glob("zero_shot_*.json")) if modality == "all" else [run_dir / f"zero_shot_{modality}.json"]
        reports = [r for r in reports if r.is_file()]
        if not reports:
            raise SweepError(f"seed {seed}: no zero-shot report (zero_shot_{modality}.json) in {run_dir}")
        for path in reports:
            report = json.loads(path.read_text())
            name = report.get("modality") or path.stem.removeprefix("zero_shot_")
            results.setdefault(name, {})[seed] = {m: float(report[m]) for m in METRICS if m in report}
    return results


def collect_sweep_dirs(directories: Sequence[Path], modality: str = "all") -> dict[str, dict[int, dict[str, float]]]:
    """collect() over every seed_<n> run directory under one or more sweeps' output
    directories; two of them reporting the same modality and seed is an error."""
    merged: dict[str, dict[int, dict[str, float]]] = {}
    source: dict[tuple[str, int], Path] = {}
    for directory in directories:
        for name, by_seed in collect_sweep_dir(directory, modality).items():
            for seed, values in by_seed.items():
                if (name, seed) in source:
                    raise SweepError(f"baselines {source[name, seed]} and {directory} both report {name} seed {seed}")
                source[name, seed] = directory
                merged.setdefault(name, {})[seed] = values
    return merged


def collect_sweep_dir(directory: Path, modality: str = "all") -> dict[str, dict[int, dict[str, float]]]:
    """collect() over every seed_<n> run directory under a sweep's output directory."""
    run_dirs = {}
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            if path.is_dir() and (match := re.fullmatch(r"seed_(\d+)", path.name)):
                run_dirs[int(match.group(1))] = path
    if not run_dirs:
        raise SweepError(f"baseline {directory}: no seed_<n> run directories")
    return collect(run_dirs, modality)


def _json_keys(results: Mapping[str, Mapping[int, Mapping[str, float]]]) -> dict[str, dict[str, Mapping[str, float]]]:
    """Seeds as string keys, as JSON has them."""
    return {m: {str(s): v for s, v in by_seed.items()} for m, by_seed in results.items()}


@reports_errors(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # a bad config or override fails here, once, rather than in every seed's run
    load_config(args.config, [*args.overrides, f"seed={args.seeds[0]}"])
    for directory in args.baseline:
        if not Path(directory).is_dir():
            raise SweepError(f"--baseline {directory} is not a directory")
    out = Path(args.output_dir)
    run_dirs = {seed: out / f"seed_{seed}" for seed in args.seeds}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            seed: pool.submit(run_seed, args.config, seed, run_dir, args.overrides, args.modality)
            for seed, run_dir in run_dirs.items()
        }
        failures = []
        for seed, future in futures.items():
            try:
                future.result()
                print(f"seed {seed}: done ({run_dirs[seed]})", flush=True)
            except SweepError as error:
                failures.append(f"seed {seed}: {error}")
    if failures:
        raise SweepError("; ".join(failures))
    results = collect(run_dirs, args.modality)
    summary = summarise(results)
    print(format_table(results, summary))
    baseline = paired = None
    baseline_error = ""
    if args.baseline:
        try:
            baseline = collect_sweep_dirs([Path(d) for d in args.baseline], args.modality)
            paired = paired_differences(results, baseline)
            if not paired:
                raise SweepError(f"baseline {', '.join(args.baseline)} shares no modality and seed with this sweep")
        except SweepError as error:
            # The sweep's own record is still written below: its runs are done and sound.
            baseline = paired = None
            baseline_error = str(error)
        else:
            print(f"\npaired with {', '.join(args.baseline)}, same seeds (this sweep minus the baseline):")
            print(format_paired_table(paired))
    record = {
        "config": args.config,
        "overrides": args.overrides,
        "seeds": args.seeds,
        "results": _json_keys(results),
        "summary": summary,
    }
    if baseline is not None:
        record["baseline"] = {
            "dirs": args.baseline,
            "results": _json_keys(baseline),
            "paired": paired,
        }
    write_text_atomic(out / "seed_sweep.json", json.dumps(record, indent=2))
    plot_seed_sweep(
        results, METRICS, out / "seed_sweep.png", title=f"{Path(args.config).name}: {len(args.seeds)} seeds",
        baseline=baseline, baseline_label=" + ".join(Path(d).name for d in args.baseline) or "baseline",
    )
    print(f"wrote {out / 'seed_sweep.json'} and {out / 'seed_sweep.png'}")
    if baseline_error:  # the sweep's own record is written: status 1, not the 2 of a sweep that failed
        print_error(PROG, f"{baseline_error}; the record has no baseline")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
