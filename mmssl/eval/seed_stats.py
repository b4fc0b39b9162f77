"""Statistics over model seeds: each config's spread, and two configs paired seed by seed.

Results are {modality: {seed: {metric: value}}}, as mmssl-seed-sweep gathers them from
the zero-shot reports.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Mapping

METRICS = ("top1", "composition_top1")


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
    return _align(rows)


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
    return _align(rows)


def _align(rows: list[list[str]]) -> str:
    """Rows as text columns: the first two left-aligned (names), the rest right (numbers)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows)
