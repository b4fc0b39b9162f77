from pathlib import Path

import pytest
import torch

import mmssl
from mmssl.data.eval_sets import EvaluationError, LabelledSet
from mmssl.eval.probes import fit_logistic_regression, stratified_split
from mmssl.eval.tasks import EvalOptions, Evaluator, LinearProbeTask
from mmssl.train.checkpoint import Pretrained
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


def linear_probe(model, modality, data, config):
    """The linear-probe task's record on ``data``, and how many items could not be embedded."""
    evaluator = Evaluator(Pretrained(model, config, Path("in-memory")), EvalOptions(modality=modality))
    evaluator._sets[modality] = data
    (record,) = LinearProbeTask.run(evaluator, modality)
    return {**record, "skipped": evaluator.embeddings(modality, None)[2]}


def test_linear_probe_on_frozen_graph_features_uses_the_given_split():
    config = mmssl.load_config(CONFIGS / "tiny_graph.yaml")
    model = mmssl.build_model(config)
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
    result = linear_probe(model, "graph", data, config)
    assert result["num_test"] == 8 and result["num_train"] == 16 and result["skipped"] == 1
    assert result["split"] == "given by the dataset" and result["top1"] == 1.0
    stratified = linear_probe(model, "graph", LabelledSet(items[:-1], labels[:-1], ["star", "path"], ["x"] * 24), config)
    assert stratified["num_test"] == 8 and "stratified" in stratified["split"]


def _clusters(n_per_class: int, seed: int, spread: float = 1.0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 6, generator=generator) * 2
    labels = torch.arange(4).repeat_interleave(n_per_class)
    return centres[labels] + spread * torch.randn(len(labels), 6, generator=generator), labels


def test_probe_strength_is_the_validation_best_of_the_grid():
    from mmssl.eval.probes import WEIGHT_DECAYS, _fit, fit_probe

    features, labels = _clusters(15, 0, spread=2.5)
    fit, held = stratified_split(labels.tolist(), 0.3, seed=0)
    probe = fit_probe(features, labels, 4, (fit, held))
    scores = {wd: float((_fit(features[fit], labels[fit], 4, wd).predict(features[held]) == labels[held]).float().mean())
              for wd in WEIGHT_DECAYS}
    assert probe.validation_top1 == max(scores.values())
    assert probe.weight_decay == max(wd for wd, s in scores.items() if s == probe.validation_top1)
    assert fit_probe(features, labels, 4, None).weight_decay == 1e-4 and fit_probe(features, labels, 4, None).validation_top1 is None


def test_fewshot_probe_draws_k_a_class_repeatably_and_learns_from_them():
    from mmssl.eval.probes import fewshot_probe_on_features, linear_probe_on_features

    features, labels = _clusters(30, 1, spread=0.8)
    train, test = stratified_split(labels.tolist(), 0.5, seed=0)
    one = fewshot_probe_on_features(features, labels, train, test, 4, k=1, seed=3, trials=4)
    five = fewshot_probe_on_features(features, labels, train, test, 4, k=5, seed=3, trials=4)
    assert one == fewshot_probe_on_features(features, labels, train, test, 4, k=1, seed=3, trials=4)
    assert one["weight_decays"] == [1e-4] * 4  # one shot: nothing to validate on
    assert five["top1"] > 0.8 and one["top1"] > 0.5 and five["top1_sd"] >= 0
    full = linear_probe_on_features(features, labels, train, test, 4)
    assert full["top1"] >= five["top1"] - 0.05 and full["num_train"] == 60
    with pytest.raises(EvaluationError, match="few-shot k must be at least 1"):
        fewshot_probe_on_features(features, labels, train, test, 4, k=0)
