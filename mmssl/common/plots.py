"""PNG plots of results a person would rather look at than read."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mmssl.common.atomic import write_bytes_atomic  # noqa: E402


def _save(fig: Any, path: str | Path) -> None:
    """Render to memory, then write whole and fsynced (``write_bytes_atomic``), so a kill
    never leaves half a PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path, title: str) -> None:
    """Row-normalised confusion matrix (true class rows, predicted columns)."""
    matrix = np.asarray(confusion, dtype=float)
    matrix = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    n = len(class_names)
    size = max(5.0, 0.28 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    _save(fig, path)


def plot_losses(records: Sequence[dict[str, Any]], path: str | Path) -> None:
    """One panel per objective (its own y scale: a cross-entropy over a vocabulary and a
    normalised regression do not share one), plus the weighted total. A dashed line
    shows an objective's reference loss where it logs one (``trivial_loss``)."""
    series: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for record in records:
        for key, value in record.items():
            if (key == "loss" or key.endswith("/loss") or key.endswith("/trivial_loss")) and isinstance(value, (int, float)):
                series[key][0].append(record["step"])
                series[key][1].append(value)
    panels = ["loss"] + sorted(k.removesuffix("/loss") for k in series if k.endswith("/loss") and "/" in k)
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        key = panel if panel == "loss" else f"{panel}/loss"
        steps, values = series.get(key, ([], []))
        ax.plot(steps, values, lw=1.3, label="loss")
        if f"{panel}/trivial_loss" in series:
            ax.plot(*series[f"{panel}/trivial_loss"], ls="--", lw=1, color="gray", label="trivial predictor")
            ax.legend(fontsize=7)
        ax.set_title("total (weighted)" if panel == "loss" else panel, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("training losses")
    fig.tight_layout()
    _save(fig, path)


def plot_seed_sweep(
    results: dict[str, dict[int, dict[str, float]]],
    metrics: Sequence[str],
    path: str | Path,
    title: str,
    baseline: dict[str, dict[int, dict[str, float]]] | None = None,
    baseline_label: str = "baseline",
) -> None:
    """One panel per metric that any seed reports: each seed's value per modality as a
    dot, the mean as a bar, so the spread between seeds sits beside any difference a
    comparison claims. With a baseline, its bar stands to the right of each modality's
    and a line joins the two values of each seed both have."""
    modalities = sorted(results)
    metrics = [m for m in metrics if any(m in v for r in results.values() for v in r.values())]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    shift, width = (0.2, 0.35) if baseline else (0.0, 0.6)
    for ax, metric in zip(axes.flat, metrics):
        labelled = False
        for x, modality in enumerate(modalities):
            ours = {s: v[metric] for s, v in results[modality].items() if metric in v}
            if not ours:
                continue
            theirs = {s: v[metric] for s, v in (baseline or {}).get(modality, {}).items() if metric in v}
            label = bool(theirs) and not labelled
            ax.bar(x - shift, float(np.mean(list(ours.values()))), width=width, color="lightsteelblue",
                   label="this sweep" if label else None)
            ax.scatter(np.full(len(ours), x - shift), list(ours.values()), color="navy", s=14, zorder=3)
            if theirs:
                labelled = True
                ax.bar(x + shift, float(np.mean(list(theirs.values()))), width=width, color="moccasin",
                       label=baseline_label if label else None)
                ax.scatter(np.full(len(theirs), x + shift), list(theirs.values()), color="darkorange", s=14, zorder=3)
                for seed in ours.keys() & theirs.keys():
                    ax.plot([x - shift, x + shift], [ours[seed], theirs[seed]], color="gray", lw=0.6, alpha=0.6)
        ax.set_xticks(range(len(modalities)), modalities, fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.set_title(metric, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(labelsize=7)
        if labelled:
            ax.legend(fontsize=6, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def plot_comparison(rows: Sequence[tuple[str, str, float]], path: str | Path) -> None:
    """Headline figures (top-1, R@1) side by side per checkpoint: ``rows`` of (task and
    modality label, checkpoint, value); one group of bars a label, one bar a checkpoint."""
    values: dict[str, dict[str, float]] = defaultdict(dict)
    checkpoints: list[str] = []
    for label, checkpoint, value in rows:
        values[label][checkpoint] = value
        if checkpoint not in checkpoints:
            checkpoints.append(checkpoint)
    labels = list(values)
    width = 0.8 / max(len(checkpoints), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(labels) * max(len(checkpoints), 1) + 2), 4.5))
    for i, checkpoint in enumerate(checkpoints):
        heights = [values[label].get(checkpoint, np.nan) for label in labels]
        ax.bar(np.arange(len(labels)) + (i - (len(checkpoints) - 1) / 2) * width, heights, width, label=checkpoint)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("top-1 / R@1")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.45))
    _save(fig, path)


def plot_learning_curve(records: Sequence[dict[str, Any]], path: str | Path, title: str, chance: float | None = None) -> None:
    """A fine-tune's training loss (left) and eval top-1 and mean per-class recall
    (right) against the step; a dotted line at the last logged step before the number
    of trainable encoder blocks changes (staged mode's switch, exact when the switch
    step is a multiple of the logging interval), a dashed one at ``chance``."""
    fig, (loss_ax, eval_ax) = plt.subplots(1, 2, figsize=(8.4, 3.0))
    blocks = [(r["step"], r["trainable_blocks"]) for r in records if "trainable_blocks" in r]
    for (step, before), (_, after) in zip(blocks, blocks[1:]):  # the change comes after ``step``
        if after != before:
            for ax in (loss_ax, eval_ax):
                ax.axvline(step, color="gray", ls=":", lw=1)
    if chance is not None:
        eval_ax.axhline(chance, color="gray", ls="--", lw=1, label="chance")
    for ax, keys in ((loss_ax, ("loss",)), (eval_ax, ("eval/top1", "eval/mean_per_class_recall", "eval/heldout_top1"))):
        for key in keys:
            points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), lw=1.3, marker="." if ax is eval_ax else None, label=key.removeprefix("eval/"))
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    loss_ax.set_title("training loss (cross-entropy)", fontsize=9)
    eval_ax.set_title("eval split", fontsize=9)
    eval_ax.set_ylim(0, 1.02)
    eval_ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def plot_self_training(rounds: Sequence[dict[str, Any]], path: str | Path, title: str) -> None:
    """Per self-training round: how many pseudo-labels were taken (left), and their
    accuracy, mean precision, recall and F1 against the true labels with the eval top-1
    of the round's model (right)."""
    x = [r["round"] for r in rounds]
    fig, (count_ax, quality_ax) = plt.subplots(1, 2, figsize=(8.4, 3.0))
    count_ax.bar(x, [r.get("pseudo_labels", 0) for r in rounds], color="lightsteelblue")
    count_ax.set_title("pseudo-labels taken", fontsize=9)
    for key in ("pseudo/accuracy", "pseudo/mean_precision", "pseudo/mean_recall", "pseudo/mean_f1", "eval/top1"):
        points = [(r["round"], r[key]) for r in rounds if isinstance(r.get(key), (int, float))]
        if points:
            quality_ax.plot(*zip(*points), marker="o", lw=1.2, label=key)
    quality_ax.set_ylim(0, 1.02)
    quality_ax.set_title("pseudo-label quality and eval top-1", fontsize=9)
    quality_ax.legend(fontsize=7)
    for ax in (count_ax, quality_ax):
        ax.set_xlabel("round", fontsize=8)
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
