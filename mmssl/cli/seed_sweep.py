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
import math
import re
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

from mmssl.atomic import write_text_atomic
from mmssl.config import ConfigError, load_config
from mmssl.plots import plot_seed_sweep

METRICS = ("top1", "composition_top1")


class SweepError(RuntimeError):
    """A seed's training or evaluation failed, or left no report."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mmssl-seed-sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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


def summarise(results: Mapping[str, Mapping[int, Mapping[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean, sample standard deviation, min and max over seeds of each modality's metrics."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for modality, by_seed in results.items():
        for metric in METRICS:
            values = [v[metric] for v in by_seed.values() if metric in v]
            if values:
                summary.setdefault(modality, {})[metric] = {
                    "mean": statistics.fmean(values),
                    "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "min": min(values),
                    "max": max(values),
                    "n": len(values),
                }
    return summary


# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """Student's t 0.975 quantile: a table to 30 degrees of freedom, then the
    Cornish-Fisher expansion around the normal quantile (error under 1e-4 there)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = statistics.NormalDist().inv_cdf(0.975)
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


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
    run_dirs = {
        int(match.group(1)): path
        for path in sorted(directory.iterdir()) if path.is_dir() and (match := re.fullmatch(r"seed_(\d+)", path.name))
    } if directory.is_dir() else {}
    if not run_dirs:
        raise SweepError(f"baseline {directory}: no seed_<n> run directories")
    return collect(run_dirs, modality)


def paired_differences(
    results: Mapping[str, Mapping[int, Mapping[str, float]]],
    baseline: Mapping[str, Mapping[int, Mapping[str, float]]],
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per modality and metric, over the seeds both have: this run minus the baseline
    seed by seed, the mean difference with its 95% t-interval, and wins / ties / losses."""
    paired: dict[str, dict[str, dict[str, Any]]] = {}
    for modality in sorted(set(results) & set(baseline)):
        for metric in METRICS:
            seeds = sorted(
                s for s, v in results[modality].items() if metric in v and metric in baseline[modality].get(s, {})
            )
            if not seeds:
                continue
            diffs = [results[modality][s][metric] - baseline[modality][s][metric] for s in seeds]
            mean = statistics.fmean(diffs)
            sd = half = None  # one seed has no spread to estimate
            if len(diffs) > 1:
                sd = statistics.stdev(diffs)
                half = t_quantile_975(len(diffs) - 1) * sd / math.sqrt(len(diffs))
            paired.setdefault(modality, {})[metric] = {
                "seeds": seeds,
                "differences": diffs,
                "mean": mean,
                "sd": sd,
                "ci95": [mean - half, mean + half] if half is not None else None,
                "wins": sum(d > 0 for d in diffs),
                "ties": sum(d == 0 for d in diffs),
                "losses": sum(d < 0 for d in diffs),
                "n": len(diffs),
            }
    return paired


def format_paired_table(paired: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    seeds = sorted({s for by_metric in paired.values() for p in by_metric.values() for s in p["seeds"]})
    header = ["modality", "metric", *(f"seed {s}" for s in seeds), "mean", "95% CI", "w/t/l"]
    rows = [header]
    for modality in sorted(paired):
        for metric, p in paired[modality].items():
            by_seed = dict(zip(p["seeds"], p["differences"]))
            cells = [f"{by_seed[s]:+.3f}" if s in by_seed else "-" for s in seeds]
            interval = "[{:+.3f}, {:+.3f}]".format(*p["ci95"]) if p["ci95"] else "-"
            rows.append([modality, metric, *cells, f"{p['mean']:+.3f}", interval, f"{p['wins']}/{p['ties']}/{p['losses']}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows)


def format_table(results: Mapping[str, Mapping[int, Mapping[str, float]]], summary: Mapping[str, Any]) -> str:
    seeds = sorted({s for by_seed in results.values() for s in by_seed})
    header = ["modality", "metric", *(f"seed {s}" for s in seeds), "mean", "sd"]
    rows = [header]
    for modality in sorted(results):
        for metric in METRICS:
            if metric not in summary.get(modality, {}):
                continue
            cells = [f"{results[modality][s][metric]:.3f}" if metric in results[modality].get(s, {}) else "-" for s in seeds]
            stat = summary[modality][metric]
            rows.append([modality, metric, *cells, f"{stat['mean']:.3f}", f"{stat['sd']:.3f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:  # a bad config or override fails here, once, rather than in every seed's run
        load_config(args.config, [*args.overrides, f"seed={args.seeds[0]}"])
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    for directory in args.baseline:
        if not Path(directory).is_dir():
            print(f"error: --baseline {directory} is not a directory", file=sys.stderr)
            return 2
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
        print("error: " + "\n       ".join(failures), file=sys.stderr)
        return 1
    results = collect(run_dirs, args.modality)
    summary = summarise(results)
    print(format_table(results, summary))
    baseline = paired = None
    if args.baseline:
        try:
            baseline = collect_sweep_dirs([Path(d) for d in args.baseline], args.modality)
        except SweepError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        paired = paired_differences(results, baseline)
        if not paired:
            print(f"error: baseline {', '.join(args.baseline)} shares no modality and seed with this sweep", file=sys.stderr)
            return 1
        print(f"\npaired with {', '.join(args.baseline)}, same seeds (this sweep minus the baseline):")
        print(format_paired_table(paired))
    record = {
        "config": args.config,
        "overrides": args.overrides,
        "seeds": args.seeds,
        "results": {m: {str(s): v for s, v in by_seed.items()} for m, by_seed in results.items()},
        "summary": summary,
    }
    if baseline is not None:
        record["baseline"] = {
            "dirs": args.baseline,
            "results": {m: {str(s): v for s, v in by_seed.items()} for m, by_seed in baseline.items()},
            "paired": paired,
        }
    write_text_atomic(out / "seed_sweep.json", json.dumps(record, indent=2))
    plot_seed_sweep(
        results, METRICS, out / "seed_sweep.png", title=f"{Path(args.config).name}: {len(args.seeds)} seeds",
        baseline=baseline, baseline_label=" + ".join(Path(d).name for d in args.baseline) or "baseline",
    )
    print(f"wrote {out / 'seed_sweep.json'} and {out / 'seed_sweep.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
