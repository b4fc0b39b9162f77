"""Ranking metrics on fixed embeddings: retrieval recall and ranks, mean average
precision, and the chance level of each for a random ranking.

Every function takes L2-normalised embeddings and a relevance relation, and works a
block of queries at a time, so a 15k x 15k evaluation never holds its whole score
matrix. Ties are counted against the query: a non-relevant item that scores the same
as a relevant one ranks before it, so a constant embedding scores no better than chance.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch

Relevance = torch.Tensor | Callable[[slice], torch.Tensor]  # [Q, G] bool, or rows -> [rows, G] bool


def _block(relevant: Relevance, rows: slice) -> torch.Tensor:
    return relevant(rows) if callable(relevant) else relevant[rows]


def first_relevant_ranks(queries: torch.Tensor, gallery: torch.Tensor, relevant: Relevance, chunk: int = 1024) -> torch.Tensor:
    """[Q] the 1-based rank of each query's best-ranked relevant gallery item (0 where
    the query has none): 1 + the number of non-relevant items scoring at least as high.

    Shapes:
        queries: [Q, E]; gallery: [G, E]; relevant: [Q, G] bool (or a block function).
    """
    ranks = []
    for start in range(0, queries.shape[0], chunk):
        rows = slice(start, start + chunk)
        scores = queries[rows] @ gallery.T
        rel = _block(relevant, rows)
        best = scores.masked_fill(~rel, -math.inf).max(1, keepdim=True).values
        rank = 1 + ((scores >= best) & ~rel).sum(1)
        ranks.append(torch.where(rel.any(1), rank, torch.zeros_like(rank)))
    return torch.cat(ranks)


def retrieval_metrics(
    queries: torch.Tensor, gallery: torch.Tensor, relevant: Relevance, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """R@k (share of queries with a relevant item in their top k), and the mean and
    median rank of the first relevant item, over queries that have one."""
    ranks = first_relevant_ranks(queries, gallery, relevant)
    ranks = ranks[ranks > 0].double()
    if ranks.numel() == 0:
        raise ValueError("no query has a relevant gallery item")
    out = {f"R@{k}": float((ranks <= k).double().mean()) for k in ks}
    out["mean_rank"] = float(ranks.mean())
    out["median_rank"] = float(np.median(ranks.numpy()))
    return out


def average_precision(queries: torch.Tensor, gallery: torch.Tensor, relevant: Relevance, chunk: int = 512) -> torch.Tensor:
    """[Q] average precision of each query's ranking (NaN where it has no relevant item):
    the mean, over its relevant items, of the precision at each one's rank."""
    out = []
    for start in range(0, queries.shape[0], chunk):
        rows = slice(start, start + chunk)
        scores = (queries[rows] @ gallery.T).double()
        rel = _block(relevant, rows)
        # descending score, non-relevant first among ties: a stable sort by score of the
        # items already ordered non-relevant first
        first = torch.argsort(rel.to(torch.int8), dim=1, stable=True)
        by_score = torch.argsort(torch.gather(scores, 1, first), dim=1, descending=True, stable=True)
        order = torch.gather(first, 1, by_score)
        hits = torch.gather(rel, 1, order).double()
        precision = hits.cumsum(1) / torch.arange(1, hits.shape[1] + 1, dtype=torch.double)
        count = hits.sum(1)
        out.append((precision * hits).sum(1) / count)  # NaN where count is 0
    return torch.cat(out).float()


def value_relevance(query_values: torch.Tensor, gallery_values: torch.Tensor) -> Callable[[slice], torch.Tensor]:
    """Relevance where items match when they carry the same value (an attribute code)."""
    return lambda rows: query_values[rows, None] == gallery_values[None, :]


def chance_levels(query_values: Sequence[int], gallery_values: Sequence[int], ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """What a random ranking scores, for queries and gallery items matched by value:
    ``R@k_chance`` = the mean over queries of 1 - C(G - n_v, k) / C(G, k) (so R@1's is
    sum_v p_query(v) p_gallery(v)); ``mAP_chance`` = the mean over queries of a random
    ranking's expected AP, (H_G + (n_v - 1) / (G - 1) (G - H_G)) / G, with n_v the gallery
    items of the query's value and H_G the G-th harmonic number. Queries whose value
    no gallery item has are left out, as the metrics leave them out."""
    gallery = np.asarray(gallery_values)
    g = len(gallery)
    counts = {v: int((gallery == v).sum()) for v in set(query_values)}
    n = np.array([counts[v] for v in query_values if counts[v] > 0], dtype=np.float64)
    harmonic = float(np.sum(1.0 / np.arange(1, g + 1)))
    out = {}
    for k in ks:
        if k >= g:
            out[f"R@{k}_chance"] = 1.0
            continue
        # C(G - n, k) / C(G, k) as a product, stable for large G
        miss = np.array([np.prod((g - m - np.arange(k)) / (g - np.arange(k))) if g - m >= k else 0.0 for m in n])
        out[f"R@{k}_chance"] = float(np.mean(1.0 - miss))
    relevant_share = (n - 1) / (g - 1) if g > 1 else np.ones_like(n)
    out["mAP_chance"] = float(np.mean((harmonic + relevant_share * (g - harmonic)) / g))
    return out


def caption_relevance(owners: Sequence[int], texts: Sequence[str], num_items: int) -> torch.Tensor:
    """[num_items, num_captions] bool: caption j is relevant to item i when it is one of
    i's captions (``owners[j] == i``) or its text is identical to one of them, so a
    class-level caption that many items share counts for each of them.
    The text-to-item direction is its transpose."""
    ids: dict[str, int] = {}
    text_id = torch.tensor([ids.setdefault(t, len(ids)) for t in texts], dtype=torch.long)
    owns = torch.zeros(num_items, len(ids), dtype=torch.bool)
    owns[torch.as_tensor(list(owners), dtype=torch.long), text_id] = True
    return owns[:, text_id]


def classification_metrics(scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Top-1, top-5 (top-k for fewer than 5 classes), per-class recall (of the classes
    that have items), its mean, and the confusion matrix (rows true, columns predicted).

    Shapes:
        scores: [N, C] (higher is more likely); labels: [N] long.
    """
    k = min(5, num_classes)
    top = scores.topk(k, dim=1).indices
    predicted = top[:, 0]
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels.numpy(), predicted.numpy()), 1)
    support = confusion.sum(1)
    recall = {c: float(confusion[c, c] / support[c]) for c in range(num_classes) if support[c]}
    return {
        "top1": float((predicted == labels).float().mean()),
        "top5": float((top == labels.unsqueeze(1)).any(1).float().mean()),
        "per_class_recall": recall,
        "mean_per_class_recall": float(np.mean(list(recall.values()))),
        "confusion": confusion,
        "correct": predicted == labels,
    }
