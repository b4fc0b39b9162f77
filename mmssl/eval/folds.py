"""Cross-validation folds for probes on frozen features, as published protocols use them:
stratified k-fold (the 10-fold protocol of graph representation learning on TUDataset,
InfoGraph and GraphCL), or a set's own fixed folds (ESC-50's five: train on four, test on
the fifth). Every item is tested exactly once; the figure is the mean over folds and its
standard deviation.

    folds = stratified_kfold(labels, k=10, seed=0)              # list of Fold(name, train, test)
    figures = cross_validated_probe(features, labels, folds, num_classes, seed=0)
    figures["top1_mean"], figures["top1_sd"], figures["top1_folds"]

``mmssl-zero-shot --task linear_probe --folds K`` runs it on any labelled set
(``probe_folds`` picks the set's own folds when it has them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from mmssl.data.labelled import EvaluationError, LabelledSet
from mmssl.eval.probes import linear_probe_on_features


@dataclass(frozen=True)
class Fold:
    """One round of cross-validation: positions to train on and to test on."""

    name: str
    train: list[int]
    test: list[int]


def stratified_kfold(labels: Sequence[int], k: int, seed: int = 0) -> list[Fold]:
    """``k`` folds of the positions of ``labels``: each position is in exactly one fold's
    test side, and each class is spread over the folds as evenly as it can be (a class's
    count differs by at most one between folds; so do the folds' sizes). Seeded: the
    members of each class are shuffled by ``seed``, then dealt to the folds in turn, the
    classes one after another (as scikit-learn's ``StratifiedKFold(shuffle=True)`` does
    in effect)."""
    labels = np.asarray(labels)
    if k < 2:
        raise EvaluationError(f"cross-validation needs at least 2 folds, got {k}")
    if k > len(labels):
        raise EvaluationError(f"{k} folds need at least {k} items, the set has {len(labels)}")
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)])
    fold_of = np.empty(len(labels), dtype=np.int64)
    fold_of[order] = np.arange(len(order)) % k
    return [
        Fold(f"fold {f + 1}", np.flatnonzero(fold_of != f).tolist(), np.flatnonzero(fold_of == f).tolist())
        for f in range(k)
    ]


def given_folds(fold_of: Sequence[str], where: Sequence[str] | None = None) -> list[Fold]:
    """The folds a set fixes: one per distinct value of ``fold_of`` (a fold name or
    number per position), in numeric order where every name is a number; each tests its
    own positions and trains on all the others."""
    names = [str(f).strip() for f in fold_of]
    for i, name in enumerate(names):
        if not name:
            raise EvaluationError(f"{where[i] if where else f'item {i}'}: empty fold (the set's folds name every item's)")
    values = sorted(set(names), key=lambda n: (0, float(n), n) if _is_number(n) else (1, 0.0, n))
    if len(values) < 2:
        raise EvaluationError(f"the set's folds: one fold ({values[0]!r}) cannot cross-validate")
    positions = np.array(names)
    return [
        Fold(f"fold {v}", np.flatnonzero(positions != v).tolist(), np.flatnonzero(positions == v).tolist())
        for v in values
    ]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def probe_folds(data: LabelledSet, kept: Sequence[int], k: int, seed: int) -> tuple[list[Fold], str]:
    """The folds of the ``kept`` items of ``data`` (positions among ``kept``) and how they
    were made: the set's own folds where it fixes them (``data.folds``; ``k`` must be
    their number), else a stratified ``k``-fold. A train/test split the set gives is not
    used: every item is tested once."""
    if data.folds:
        folds = given_folds([data.folds[i] for i in kept], [data.where[i] for i in kept])
        if k != len(folds):
            raise EvaluationError(
                f"{data.source} fixes its own {len(folds)} folds (its fold column): the published protocol tests on each; "
                f"ask for them with --folds {len(folds)}"
            )
        return folds, f"the set's own {len(folds)} folds"
    return stratified_kfold([data.labels[i] for i in kept], k, seed), f"stratified {k}-fold, seed {seed}"


def cross_validated_probe(
    features: torch.Tensor, labels: torch.Tensor, folds: Sequence[Fold], num_classes: int, seed: int = 0
) -> dict[str, Any]:
    """The linear probe (``linear_probe_on_features``: L2 strength chosen on a fifth of the
    training side) fitted and tested once per fold: ``top1_mean`` (``top1`` too) is the
    unweighted mean of the folds' test top-1, ``top1_sd`` their sample standard deviation
    (n - 1), ``top1_folds`` the folds' own values in fold order."""
    runs = [linear_probe_on_features(features, labels, f.train, f.test, num_classes, seed) for f in folds]
    top1 = [r["top1"] for r in runs]
    mean = float(np.mean(top1))
    return {
        "top1": mean,
        "top1_mean": mean,
        "top1_sd": float(np.std(top1, ddof=1)) if len(top1) > 1 else 0.0,
        "top1_folds": top1,
        "fold_names": [f.name for f in folds],
        "folds": len(folds),
        "train_top1": float(np.mean([r["train_top1"] for r in runs])),
        "weight_decays": [r["weight_decay"] for r in runs],
        "num_test_folds": [r["num_test"] for r in runs],
        "num_items": sum(r["num_test"] for r in runs),
        "num_classes": num_classes,
    }
