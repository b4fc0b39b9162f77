"""Pseudo-labels from clustering: k-means, adjusted mutual information, the objective."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import mmssl
from mmssl.train.checkpoint import resolve_checkpoint
from mmssl.common.clustering import adjusted_mutual_info, cluster_entropy, kmeans

CONFIG = "configs/tiny_cluster.yaml"
TINY = ["train.steps=6", "train.checkpoint_every=3", "train.log_every=1", "objectives.clusters.data.batch_size=16",
        "objectives.clusters.num_clusters=4", "objectives.clusters.bank_size=32", "objectives.clusters.recluster_every=2"]


def _mutual_info(a: np.ndarray, b: np.ndarray) -> float:
    n = len(a)
    total = 0.0
    for x in set(a):
        for y in set(b):
            nij = int(np.sum((a == x) & (b == y)))
            if nij:
                total += nij / n * math.log(n * nij / (np.sum(a == x) * np.sum(b == y)))
    return total


def _entropy(a: np.ndarray) -> float:
    p = np.unique(a, return_counts=True)[1] / len(a)
    return float(-(p * np.log(p)).sum())


def test_adjusted_mutual_info_against_brute_force():
    a = np.array([0, 0, 0, 1, 1, 2, 2])
    b = np.array([0, 1, 1, 1, 2, 2, 0])
    # the expected mutual information is the mean over every relabelling of b's items
    emi = np.mean([_mutual_info(a, b[list(p)]) for p in itertools.permutations(range(7))])
    expected = (_mutual_info(a, b) - emi) / ((_entropy(a) + _entropy(b)) / 2 - emi)
    assert adjusted_mutual_info(a, b) == pytest.approx(expected, abs=1e-12)


def test_adjusted_mutual_info_edge_cases():
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    assert adjusted_mutual_info(labels, labels) == pytest.approx(1.0)
    assert adjusted_mutual_info(labels, (labels + 1) % 3 * 10) == pytest.approx(1.0)  # names do not matter
    assert adjusted_mutual_info([0, 0, 0, 0], [0, 1, 2, 3]) == pytest.approx(0.0)
    rng = np.random.default_rng(0)
    assert abs(adjusted_mutual_info(rng.integers(0, 10, 5000), rng.integers(0, 10, 5000))) < 0.01
    with pytest.raises(ValueError, match="same items"):
        adjusted_mutual_info([0, 1], [0, 1, 2])


def test_kmeans_finds_separated_blobs_deterministically():
    rng = torch.Generator().manual_seed(0)
    centres = torch.eye(8)[:5] * 10
    truth = torch.arange(5).repeat_interleave(40)
    points = centres[truth] + 0.3 * torch.randn(200, 8, generator=rng)
    centroids, found = kmeans(points, 5, torch.Generator().manual_seed(1), spherical=False)
    assert adjusted_mutual_info(found.numpy(), truth.numpy()) == pytest.approx(1.0)
    again = kmeans(points, 5, torch.Generator().manual_seed(1), spherical=False)
    assert torch.equal(again[0], centroids) and torch.equal(again[1], found)
    assert centroids.shape == (5, 8) and cluster_entropy(found, 5) == pytest.approx(1.0)


def test_kmeans_keeps_every_cluster_and_refuses_too_few_points():
    points = torch.cat([torch.zeros(30, 4), torch.ones(2, 4)])  # many duplicates: empty clusters on the way
    _, found = kmeans(points, 6, torch.Generator().manual_seed(0), spherical=False)
    assert torch.bincount(found, minlength=6).min() >= 1
    with pytest.raises(ValueError, match="3 points into 4 clusters"):
        kmeans(torch.randn(3, 2), 4, torch.Generator())


def test_cluster_objective_trains_and_resumes_exactly(tmp_path):
    config = mmssl.load_config(CONFIG, TINY)
    whole = mmssl.Pretrainer(config, tmp_path / "whole")
    whole.fit()
    history = [r for r in whole.history]
    assert all(0.0 < r["clusters/cluster_entropy"] <= 1.0 for r in history)
    assert all("clusters/ami" in r and "clusters/ami_random" in r for r in history)  # the world has classes
    objective = whole.model.objectives["clusters"]
    assert int(objective.calls) == 6 and int(objective.bank_filled) == 32
    step3 = tmp_path / "whole" / "checkpoints" / "step_00000003"
    resumed = mmssl.Pretrainer(mmssl.load_config(CONFIG, [*TINY, f"train.resume={step3}"]), tmp_path / "resumed")
    resumed.fit()
    a = load_file(resolve_checkpoint(tmp_path / "whole") / "model.safetensors")
    b = load_file(resolve_checkpoint(tmp_path / "resumed") / "model.safetensors")
    assert "objectives.clusters.bank" in a and "objectives.clusters.centroids" in a
    assert all(torch.equal(a[k], b[k]) for k in a)  # weights, bank, centroids, counters


@pytest.mark.slow
def test_swapped_cluster_prediction_learns_classes_above_chance(tmp_path):
    """On the world's images, a few dozen steps of clustering with views already cluster
    the bank by class better than a random assignment of the same sizes."""
    config = mmssl.load_config(CONFIG, ["train.steps=40", "train.log_every=10", "objectives.clusters.data.batch_size=32",
                                        "objectives.clusters.bank_size=256", "objectives.clusters.recluster_every=5"])
    trainer = mmssl.Pretrainer(config, tmp_path)
    trainer.fit()
    last = trainer.history[-1]
    assert last["clusters/ami"] > last["clusters/ami_random"] + 0.03
    first, final = trainer.history[0]["clusters/loss"], last["clusters/loss"]
    assert final < first


def test_cluster_objective_errors_name_the_option(tmp_path):
    with pytest.raises(ValueError, match="bank_size >= num_clusters"):
        mmssl.build_model(mmssl.load_config(CONFIG, ["objectives.clusters.bank_size=8"]))
    text = tmp_path / "text.yaml"  # the text modality makes no views
    text.write_text("modalities: {text: {width: 16, layers: 1, heads: 2}}\n"
                    "objectives: {g: {type: cluster, modalities: [text], num_clusters: 4, bank_size: 8}}\n")
    with pytest.raises(Exception, match="augment") as raised:
        mmssl.build_model(mmssl.load_config(text, []))
    assert "views: false" in str(raised.value)
    mmssl.build_model(mmssl.load_config(text, ["objectives.g.views=false"]))  # without views it builds
    graph = tmp_path / "graph.yaml"  # graphs make views (GraphCL's augmentations)
    graph.write_text("modalities: {graph: {encoder: gin, width: 16, depth: 1}}\n"
                     "objectives: {g: {type: cluster, modalities: [graph], num_clusters: 4, bank_size: 8}}\n")
    mmssl.build_model(mmssl.load_config(graph, []))
