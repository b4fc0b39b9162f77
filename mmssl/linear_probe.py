"""Linear probe: logistic regression on frozen encoder features (GraphMAE / PyGCL style).

Works for any modality: the encoder's pooled output of every item of a labelled set,
a train/test split (the dataset's own, or a seeded stratified one), a multinomial
logistic regression fitted with L-BFGS on standardised training features, and
top-1 accuracy on the test items.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mmssl.data.eval_sets import EvaluationError, LabelledSet
from mmssl.evaluation import embed_items
from mmssl.model import MultimodalModel


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


def linear_probe(
    model: MultimodalModel,
    modality: str,
    data: LabelledSet,
    batch_size: int = 256,
    on_error: str = "skip",
    test_fraction: float = 0.3,
    seed: int = 0,
    weight_decay: float = 1e-4,
) -> dict[str, Any]:
    """Top-1 of a logistic regression on frozen pooled features of ``data``'s items.

    The split is the dataset's (``data.splits``) when it has one, else stratified and
    seeded. Returns a JSON-ready dict: top1, num_train, num_test, num_classes, split.
    """
    features, kept, skipped = embed_items(model, modality, data, None, batch_size, on_error)
    labels = torch.tensor([data.labels[i] for i in kept])
    if data.splits:
        train = [j for j, i in enumerate(kept) if data.splits[i] == "train"]
        test = [j for j, i in enumerate(kept) if data.splits[i] == "test"]
        split = "given by the dataset"
    else:
        train, test = stratified_split(labels.tolist(), test_fraction, seed)
        split = f"stratified, test fraction {test_fraction}, seed {seed}"
    if not train or not test:
        raise EvaluationError(f"linear probe needs train and test items; got {len(train)} train, {len(test)} test")
    mean = features[train].mean(0)
    std = features[train].std(0).clamp_min(1e-6)
    standardised = (features - mean) / std
    probe = fit_logistic_regression(standardised[train], labels[train], len(data.class_names), weight_decay)
    with torch.no_grad():
        predicted = probe(standardised[test]).argmax(1)
    return {
        "top1": float((predicted == labels[test]).float().mean()),
        "train_top1": float((probe(standardised[train]).argmax(1) == labels[train]).float().mean().detach()),
        "num_train": len(train),
        "num_test": len(test),
        "num_classes": len(data.class_names),
        "skipped": skipped,
        "split": split,
        "features": f"{modality} encoder pooled output (frozen)",
    }
