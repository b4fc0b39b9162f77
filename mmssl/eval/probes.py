"""Linear and few-shot probes: logistic regression on frozen encoder features.

Works for any modality: the encoder's pooled output of every item of a labelled set,
a train/test split (the dataset's own, or a seeded stratified one), a multinomial
logistic regression fitted with L-BFGS on standardised training features, its L2
strength chosen on a validation split of the training items (as CLIP's linear probes
choose theirs), and top-1 accuracy on the test items. The few-shot probe trains on k
items a class drawn from the training split, over several seeded draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mmssl.data.eval_sets import EvaluationError, LabelledSet


def stratified_split(labels: Sequence[int], test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, test) positions: per class, a seeded ``test_fraction`` share (at least one
    item when the class has two or more) goes to test."""
    if not 0 < test_fraction < 1:
        raise EvaluationError(f"test fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    labels = np.asarray(labels)
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls)).tolist()
        n_test = min(len(members) - 1, max(1, math.ceil(test_fraction * len(members)))) if len(members) > 1 else 0
        test += members[:n_test]
        train += members[n_test:]
    return sorted(train), sorted(test)


def fit_logistic_regression(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float = 1e-4, max_iter: int = 200
) -> torch.nn.Linear:
    """Multinomial logistic regression (cross-entropy + L2 on the weights) by L-BFGS.

    Shapes:
        features: [N, D]; labels: [N] long in [0, num_classes).
    """
    linear = torch.nn.Linear(features.shape[1], num_classes)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(features), labels) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return linear


WEIGHT_DECAYS = tuple(10.0**e for e in range(-6, 1))  # the L2 strengths a validation split chooses from


@dataclass
class Probe:
    """A fitted probe: the linear layer on standardised features, and its L2 strength."""

    linear: torch.nn.Linear
    mean: torch.Tensor
    std: torch.Tensor
    weight_decay: float
    validation_top1: float | None  # of the chosen strength; None when there was no validation split

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features - self.mean) / self.std).argmax(1)


def _fit(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float) -> Probe:
    mean = features.mean(0)
    std = features.std(0).nan_to_num(1.0).clamp_min(1e-6)  # one item: std is NaN
    linear = fit_logistic_regression((features - mean) / std, labels, num_classes, weight_decay)
    return Probe(linear, mean, std, weight_decay, None)


def fit_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    validation: tuple[list[int], list[int]] | None,
    weight_decays: Sequence[float] = WEIGHT_DECAYS,
    default_weight_decay: float = 1e-4,
) -> Probe:
    """A probe on all of ``features``; its L2 strength is the one of ``weight_decays``
    with the best top-1 on ``validation`` = (fit positions, validation positions),
    the larger on a tie, or ``default_weight_decay`` without a validation split."""
    if validation is None or not validation[0] or not validation[1]:
        return _fit(features, labels, num_classes, default_weight_decay)
    fit, held = validation
    scores = []
    for wd in weight_decays:
        probe = _fit(features[fit], labels[fit], num_classes, wd)
        scores.append((float((probe.predict(features[held]) == labels[held]).float().mean()), wd))
    best_top1, best_wd = max(scores)
    probe = _fit(features, labels, num_classes, best_wd)
    probe.validation_top1 = best_top1
    return probe


def probe_split(data: LabelledSet, kept: Sequence[int], test_fraction: float, seed: int) -> tuple[list[int], list[int], str]:
    """(train, test) positions among the ``kept`` items, and how the split was made."""
    if data.splits:
        train = [j for j, i in enumerate(kept) if data.splits[i] == "train"]
        test = [j for j, i in enumerate(kept) if data.splits[i] == "test"]
        return train, test, "given by the dataset"
    train, test = stratified_split([data.labels[i] for i in kept], test_fraction, seed)
    return train, test, f"stratified, test fraction {test_fraction}, seed {seed}"


def linear_probe_on_features(
    features: torch.Tensor,
    labels: torch.Tensor,
    train: list[int],
    test: list[int],
    num_classes: int,
    seed: int = 0,
    validation_fraction: float = 0.2,
) -> dict[str, Any]:
    """Top-1 on ``test`` of a probe fitted on ``train``, its L2 strength chosen on a
    stratified ``validation_fraction`` of ``train``."""
    if not train or not test:
        raise EvaluationError(f"linear probe needs train and test items; got {len(train)} train, {len(test)} test")
    fit, held = stratified_split(labels[train].tolist(), validation_fraction, seed)
    probe = fit_probe(features[train], labels[train], num_classes, (fit, held))
    return {
        "top1": float((probe.predict(features[test]) == labels[test]).float().mean()),
        "train_top1": float((probe.predict(features[train]) == labels[train]).float().mean()),
        "weight_decay": probe.weight_decay,
        "validation_top1": probe.validation_top1,
        "num_train": len(train),
        "num_test": len(test),
        "num_classes": num_classes,
    }


def fewshot_probe_on_features(
    features: torch.Tensor,
    labels: torch.Tensor,
    train: list[int],
    test: list[int],
    num_classes: int,
    k: int,
    seed: int = 0,
    trials: int = 5,
) -> dict[str, Any]:
    """Top-1 on ``test`` of probes fitted on ``k`` items a class of ``train`` (classes with
    fewer take all they have), mean and SD over ``trials`` seeded draws. With k >= 2 the
    L2 strength is chosen by holding out one shot a class; with k = 1 it is fixed (1e-4)."""
    if k < 1:
        raise EvaluationError(f"few-shot k must be at least 1, got {k}")
    by_class: dict[int, list[int]] = {}
    for position in train:
        by_class.setdefault(int(labels[position]), []).append(position)
    top1 = []
    decays = []
    for trial in range(trials):
        rng = np.random.default_rng([seed, k, trial])
        shots = [rng.permutation(members)[:k].tolist() for _, members in sorted(by_class.items())]
        chosen = [p for class_shots in shots for p in class_shots]
        # positions within ``chosen``: the last shot of each class with two or more validates
        held, offset = [], 0
        for class_shots in shots:
            if len(class_shots) >= 2:
                held.append(offset + len(class_shots) - 1)
            offset += len(class_shots)
        fit = sorted(set(range(len(chosen))) - set(held))
        probe = fit_probe(features[chosen], labels[chosen], num_classes, (fit, held) if k >= 2 else None)
        top1.append(float((probe.predict(features[test]) == labels[test]).float().mean()))
        decays.append(probe.weight_decay)
    return {
        "k": k,
        "top1": float(np.mean(top1)),
        "top1_sd": float(np.std(top1, ddof=1)) if trials > 1 else 0.0,
        "trials": trials,
        "weight_decays": decays,
        "num_test": len(test),
        "num_classes": num_classes,
    }
