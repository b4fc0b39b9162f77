"""k-means and the adjusted mutual information between two labellings.

The ``cluster`` objective draws its pseudo-labels from ``kmeans``; the evaluation's
``clustering`` task (``mmssl/eval/tasks.py``) clusters frozen features with the same
function and scores clusters against true classes with ``adjusted_mutual_info``. Both
are written here because neither torch nor the project's stack has them (scikit-learn
is not a dependency); they are small and tested against brute force.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def kmeans(
    x: torch.Tensor, k: int, generator: torch.Generator, iters: int = 30, spherical: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means from a k-means++ start, deterministic under ``generator``.

    ``spherical``: cosine k-means (rows and centroids on the unit sphere), the usual
    choice for embeddings trained with normalised heads. A cluster that empties is
    reseeded with the point farthest from its centroid, so every cluster keeps a member
    (among identical points, as a collapsed encoder gives, ties are split that way).
    Runs on the CPU in float64 (it is small, and the same on every device and rank).

    Shapes:
        x: [N, D] with N >= k; returns centroids [k, D] (x's dtype and device) and
        assignments [N] (long).
    """
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means of {n} points into {k} clusters: need at least as many points as clusters")
    data = x.detach().to("cpu", torch.float64)
    if spherical:
        data = F.normalize(data, dim=-1)
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    closest = _sq_dist(data, data[chosen[-1]].unsqueeze(0)).squeeze(1)
    for _ in range(1, k):
        total = closest.sum()
        weights = closest / total if total > 0 else torch.full_like(closest, 1.0 / n)
        chosen.append(int(torch.multinomial(weights, 1, generator=generator)))
        closest = torch.minimum(closest, _sq_dist(data, data[chosen[-1]].unsqueeze(0)).squeeze(1))
    centroids = data[chosen].clone()
    assign = torch.full((n,), -1, dtype=torch.long)
    for _ in range(iters):
        distances = _sq_dist(data, centroids)
        new = distances.argmin(dim=1)
        if torch.equal(new, assign):
            break
        assign = new
        sums = torch.zeros_like(centroids).index_add_(0, assign, data)
        counts = torch.bincount(assign, minlength=k)
        centroids = sums / counts.clamp_min(1).unsqueeze(1).to(data.dtype)
        own = distances.gather(1, assign.unsqueeze(1)).squeeze(1)
        for empty in torch.nonzero(counts == 0).flatten().tolist():
            far = int(own.argmax())
            own[far] = -1.0  # not the seed of two clusters
            centroids[empty] = data[far]
            assign[far] = empty
        if spherical:
            centroids = F.normalize(centroids, dim=-1)
    return centroids.to(x.dtype).to(x.device), assign.to(x.device)


def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.pow(2).sum(1, keepdim=True) - 2 * a @ b.T + b.pow(2).sum(1)).clamp_min(0)


def cluster_entropy(assignments: torch.Tensor, k: int) -> float:
    """Entropy of the cluster sizes over log(k): 1 when all clusters are equal, 0 when one holds everything."""
    if k < 2:
        return 0.0
    p = torch.bincount(assignments.flatten().cpu(), minlength=k).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum() / math.log(k))


def adjusted_mutual_info(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> float:
    """Adjusted mutual information of two labellings of the same items (Vinh, Epps and
    Bailey 2010), with the arithmetic mean of the entropies as normaliser.

    1 for the same partition (whatever the label names), about 0 for independent ones
    (its expectation under random labellings with the same cluster sizes is exactly 0),
    negative when they agree less than chance.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"two labellings of the same items needed, got shapes {a.shape} and {b.shape}")
    n = a.size
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max(initial=-1) + 1, bi.max(initial=-1) + 1), dtype=np.int64)
    np.add.at(table, (ai, bi), 1)
    if table.shape[0] == table.shape[1] <= 1 or n == 0:
        return 1.0  # one cluster each (or nothing): the same partition
    rows, cols = table.sum(1), table.sum(0)
    h_a, h_b = _entropy(rows, n), _entropy(cols, n)
    nz = table > 0
    outer = np.outer(rows, cols)
    mi = float(np.sum(table[nz] / n * (np.log(table[nz] * n) - np.log(outer[nz]))))
    emi = _expected_mutual_info(rows, cols, n)
    denominator = (h_a + h_b) / 2 - emi
    if abs(denominator) < 1e-15:
        return 1.0 if abs(mi - emi) < 1e-15 else 0.0
    return (mi - emi) / denominator


def _entropy(counts: np.ndarray, n: int) -> float:
    p = counts[counts > 0] / n
    return float(-(p * np.log(p)).sum())


def _expected_mutual_info(rows: np.ndarray, cols: np.ndarray, n: int) -> float:
    """E[MI] over labellings with these cluster sizes (the hypergeometric model)."""
    log_factorial = np.array([math.lgamma(k + 1) for k in range(n + 1)])  # log k! for k = 0..n
    total = 0.0
    for a in rows:
        for b in cols:
            nij = np.arange(max(1, a + b - n), min(a, b) + 1)
            if nij.size == 0:
                continue
            log_p = (
                log_factorial[a] + log_factorial[b] + log_factorial[n - a] + log_factorial[n - b] - log_factorial[n]
                - log_factorial[nij] - log_factorial[a - nij] - log_factorial[b - nij] - log_factorial[n - a - b + nij]
            )
            total += float(np.sum(nij / n * np.log(n * nij / (a * b)) * np.exp(log_p)))
    return total
