import pytest
import torch

import mmssl
from mmssl.data.eval_sets import EvaluationError, LabelledSet
from mmssl.linear_probe import fit_logistic_regression, linear_probe, stratified_split
from tests.data.test_graphs import CONFIGS


def test_stratified_split_keeps_every_class_on_both_sides_and_is_seeded():
    labels = [0] * 10 + [1] * 4 + [2] * 2 + [3]
    train, test = stratified_split(labels, 0.3, seed=0)
    assert sorted(train + test) == list(range(len(labels)))
    assert [sum(labels[i] == c for i in test) for c in range(4)] == [3, 2, 1, 0]  # ceil(0.3 n), a single item trains
    assert stratified_split(labels, 0.3, seed=0) == (train, test)
    assert stratified_split(labels, 0.3, seed=1) != (train, test)
    with pytest.raises(EvaluationError, match="test fraction"):
        stratified_split(labels, 1.5, seed=0)


def test_logistic_regression_separates_separable_classes_and_not_noise():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 5, generator=generator) * 4
    labels = torch.arange(3).repeat_interleave(20)
    features = centres[labels] + torch.randn(60, 5, generator=generator)
    probe = fit_logistic_regression(features, labels, 3)
    assert (probe(features).argmax(1) == labels).float().mean() > 0.95
    shuffled = labels[torch.randperm(60, generator=generator)]
    noise_probe = fit_logistic_regression(features[:30], shuffled[:30], 3, weight_decay=1.0)
    assert (noise_probe(features[30:]).argmax(1) == shuffled[30:]).float().mean() < 0.7


def test_linear_probe_on_frozen_graph_features_uses_the_given_split():
    model = mmssl.build_model(mmssl.load_config(CONFIGS / "tiny_graph.yaml"))
    # stars vs paths: their degree features differ, so even a random encoder separates them
    items, labels, splits = [], [], []
    for n in range(4, 16):
        for label, edges in ((0, [[0, i] for i in range(1, n)]), (1, [[i, i + 1] for i in range(n - 1)])):
            items.append({"edges": edges, "num_nodes": n})
            labels.append(label)
            splits.append("train" if n % 3 else "test")
    items.append({"edges": [[0, 99]], "num_nodes": 3})  # bad: skipped, counted
    labels.append(0)
    splits.append("train")
    data = LabelledSet(items, labels, ["star", "path"], [f"item {i}" for i in range(len(items))], splits=splits)
    result = linear_probe(model, "graph", data)
    assert result["num_test"] == 8 and result["num_train"] == 16 and result["skipped"] == 1
    assert result["split"] == "given by the dataset" and result["top1"] == 1.0
    stratified = linear_probe(model, "graph", LabelledSet(items[:-1], labels[:-1], ["star", "path"], ["x"] * 24))
    assert stratified["num_test"] == 8 and "stratified" in stratified["split"]
