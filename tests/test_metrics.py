"""Ranking metrics against a direct numpy computation on fixed embeddings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmssl.eval.metrics import (
    average_precision,
    caption_relevance,
    chance_levels,
    first_relevant_ranks,
    retrieval_metrics,
    value_relevance,
)


def _reference_ranking(scores: np.ndarray, relevant: np.ndarray) -> list[np.ndarray]:
    """Per query, the relevance of the gallery in ranked order: score descending, and
    among equal scores non-relevant first (ties count against the query)."""
    return [relevant[q][np.lexsort((relevant[q], -scores[q]))] for q in range(len(scores))]


def _tied_embeddings(n: int, dim: int, seed: int) -> torch.Tensor:
    # entries in {-1, 0, 1}: many exactly equal scores
    x = torch.from_numpy(np.random.default_rng(seed).integers(-1, 2, (n, dim))).float()
    x[x.abs().sum(1) == 0, 0] = 1.0
    return torch.nn.functional.normalize(x, dim=1)


def test_ranks_recall_and_average_precision_match_numpy_with_ties():
    queries, gallery = _tied_embeddings(40, 3, 0), _tied_embeddings(70, 3, 1)
    relevant = torch.from_numpy(np.random.default_rng(2).random((40, 70)) < 0.08)
    relevant[5] = False  # a query with nothing relevant: left out of the figures
    scores, rel = (queries @ gallery.T).numpy(), relevant.numpy()
    ranked = _reference_ranking(scores, rel)
    first = np.array([np.argmax(r) + 1 if r.any() else 0 for r in ranked])
    ap = np.array([np.mean((np.cumsum(r) / np.arange(1, len(r) + 1))[r]) if r.any() else np.nan for r in ranked])
    assert (scores[0][:, None] == scores[0][None, :]).sum() > 70  # ties are really there
    assert first_relevant_ranks(queries, gallery, relevant, chunk=7).tolist() == first.tolist()
    valid = first > 0
    got = retrieval_metrics(queries, gallery, lambda rows: relevant[rows])
    for k in (1, 5, 10):
        assert got[f"R@{k}"] == pytest.approx(np.mean(first[valid] <= k))
    assert got["mean_rank"] == pytest.approx(first[valid].mean())
    assert got["median_rank"] == pytest.approx(np.median(first[valid]))
    np.testing.assert_allclose(average_precision(queries, gallery, relevant, chunk=9).numpy(), ap, rtol=1e-6)


def test_multi_caption_and_identical_text_count_as_hits():
    # items 0 and 1 share the class caption "a cycle"; item 2 has two captions of its own
    owners = [0, 1, 2, 2]
    texts = ["a cycle", "a cycle", "a star", "a big star"]
    relevant = caption_relevance(owners, texts, 3)
    assert relevant.tolist() == [[True, True, False, False], [True, True, False, False], [False, False, True, True]]
    items = torch.eye(3)
    # captions 0 and 1 embed identically; item 1 finds caption 0 first: still a hit
    captions = torch.nn.functional.normalize(torch.tensor([[1.0, 1, 0], [1, 1, 0], [0, 0, 1], [0, 0.1, 1]]), dim=1)
    to_text = retrieval_metrics(items, captions, relevant, ks=(1,))
    assert to_text["R@1"] == 1.0 and to_text["mean_rank"] == 1.0
    to_item = retrieval_metrics(captions, items, relevant.T, ks=(1,))
    # captions 0 and 1 score items 0 and 1 equally (both relevant): rank 1; caption 3 finds item 2
    assert to_item["R@1"] == 1.0


def test_chance_levels_match_combinatorics_and_a_random_ranking():
    rng = np.random.default_rng(0)
    query_values = rng.integers(0, 4, 60)
    gallery_values = rng.choice(4, 50, p=[0.4, 0.3, 0.2, 0.1])
    chance = chance_levels(query_values.tolist(), gallery_values.tolist(), ks=(1, 5))
    g = len(gallery_values)
    counts = np.bincount(gallery_values, minlength=4)
    p_query = np.bincount(query_values, minlength=4) / len(query_values)
    assert chance["R@1_chance"] == pytest.approx(float(p_query @ (counts / g)))
    r5 = np.mean([1 - math.comb(g - counts[v], 5) / math.comb(g, 5) for v in query_values])
    assert chance["R@5_chance"] == pytest.approx(r5)
    # random embeddings: the measured figures average out at the chance levels
    relevance = value_relevance(torch.from_numpy(query_values), torch.from_numpy(gallery_values))
    runs = []
    for seed in range(200):
        gen = torch.Generator().manual_seed(seed)
        q = torch.nn.functional.normalize(torch.randn(60, 8, generator=gen), dim=1)
        k = torch.nn.functional.normalize(torch.randn(50, 8, generator=gen), dim=1)
        m = retrieval_metrics(q, k, relevance, ks=(1, 5))
        runs.append((m["R@1"], m["R@5"], float(average_precision(q, k, relevance).mean())))
    r1, r5_measured, ap = np.mean(runs, axis=0)
    assert r1 == pytest.approx(chance["R@1_chance"], abs=0.01)
    assert r5_measured == pytest.approx(chance["R@5_chance"], abs=0.015)
    assert ap == pytest.approx(chance["mAP_chance"], abs=0.01)


def test_constant_embeddings_score_no_better_than_the_worst_rank():
    queries, gallery = torch.ones(4, 2) / 2**0.5, torch.ones(5, 2) / 2**0.5
    relevant = torch.eye(4, 5, dtype=torch.bool)
    assert first_relevant_ranks(queries, gallery, relevant).tolist() == [5, 5, 5, 5]


def test_classification_metrics_match_numpy():
    from mmssl.eval.metrics import classification_metrics

    rng = np.random.default_rng(3)
    scores = rng.normal(size=(50, 7))
    labels = rng.integers(0, 6, 50)  # class 6 has no items: no recall of its own
    got = classification_metrics(torch.from_numpy(scores), torch.from_numpy(labels), 7)
    order = np.argsort(-scores, axis=1)
    assert got["top1"] == pytest.approx(np.mean(order[:, 0] == labels))
    assert got["top5"] == pytest.approx(np.mean([labels[i] in order[i, :5] for i in range(50)]))
    recall = {c: np.mean(order[labels == c, 0] == c) for c in range(6)}
    assert got["per_class_recall"] == pytest.approx(recall)
    assert got["mean_per_class_recall"] == pytest.approx(np.mean(list(recall.values())))
    assert got["confusion"].sum() == 50 and got["confusion"][:, 6].sum() == np.sum(order[:, 0] == 6)
