"""Every evaluation task of one checkpoint, as flat records.

Tasks: zero-shot ``classification``, caption ``retrieval`` (both directions),
``linear_probe`` and ``fewshot`` probes on frozen features, ``clustering`` of frozen
features against the true classes (adjusted mutual information), and ``cross_modal``
retrieval between two non-text modalities that share a space, matched on a world
attribute both render. An ``Evaluator`` reads each data set once and embeds each
(modality, space) once, however many tasks use it. A record is a flat dict: ``task``,
``modality`` (or ``query`` and ``gallery``), every figure under its own key (``R@1``,
with its chance as ``R@1_chance``), the checkpoint and the data spec.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from mmssl.train.checkpoint import Pretrained
from mmssl.data.eval_sets import EvaluationError, LabelledSet, load_eval_set
from mmssl.eval.zero_shot import caption_partner, caption_retrieval, classify_embeddings, embed_items
from mmssl.eval.probes import fewshot_probe_on_features, linear_probe_on_features, probe_split
from mmssl.eval.metrics import average_precision, chance_levels, retrieval_metrics, value_relevance
from mmssl.common.clustering import adjusted_mutual_info, cluster_entropy, kmeans

TASKS = ("classification", "retrieval", "linear_probe", "fewshot", "clustering", "cross_modal")
HEADLINE = {"classification": "top1", "retrieval": "R@1", "linear_probe": "top1", "fewshot": "top1", "clustering": "AMI",
            "cross_modal": "R@1"}
RANDOM_ASSIGNMENTS = 20  # draws of the clustering task's random baseline


@dataclass
class TaskOptions:
    """What every task reads: the data, class names and templates, probe settings."""

    data: str | None = None  # a data spec (load_eval_set); None: the embedded world
    class_names: list[str] | None = None
    templates: list[str] | None = None
    fewshot_k: tuple[int, ...] = (1, 5, 10)
    fewshot_trials: int = 5
    test_fraction: float = 0.3
    batch_size: int = 256
    on_error: str = "skip"
    objective: str | None = None  # whose space classification and retrieval use
    space: str | None = None  # a named space (space: hub); cross-modal retrieval needs one
    # cross_modal: subtract each modality's mean embedding over its evaluated items before
    # matching (removes the modality gap, Liang et al. 2022; transductive, no labels used)
    center: bool = False
    samples_per_class: int | None = None
    columns: tuple[str, str] = ("filepath", "title")
    progress: bool = False
    seed: int = 0


@dataclass
class Evaluator:
    """Tasks over one checkpoint, with its data sets and embeddings cached."""

    loaded: Pretrained
    options: TaskOptions
    _sets: dict[str, LabelledSet] = field(default_factory=dict)
    _embeddings: dict[tuple[str, str | None], tuple[torch.Tensor, list[int], int]] = field(default_factory=dict)

    @property
    def model(self):
        return self.loaded.model

    def _record(self, task: str, **fields: Any) -> dict[str, Any]:
        return {"task": task, **fields, "checkpoint": str(self.loaded.checkpoint), "data": self.options.data or "world"}

    # --- cached inputs --------------------------------------------------------------
    def data(self, modality: str) -> LabelledSet:
        if modality not in self._sets:
            world = self.loaded.config.world
            if self.options.samples_per_class is not None:
                world = dataclasses.replace(world, eval_samples_per_class=self.options.samples_per_class)
            self._sets[modality] = load_eval_set(
                self.model, modality, self.options.data, world, self.options.class_names, self.options.on_error,
                self.options.columns,
            )
        return self._sets[modality]

    def objective(self, modality: str) -> str:
        """The objective whose head embeds ``modality`` (in the named space, if one is asked)."""
        if self.options.objective is not None or self.options.space is None:
            return caption_partner(self.model, modality, self.options.objective)[0]
        try:
            return self.model.shared_space(modality, space=self.options.space)
        except (KeyError, ValueError) as exc:
            raise EvaluationError(str(exc).strip("'\"")) from None

    def embeddings(self, modality: str, objective: str | None) -> tuple[torch.Tensor, list[int], int]:
        """(embeddings, kept item indices, skipped count); ``objective`` None: pooled features."""
        key = (modality, objective)
        if key not in self._embeddings:
            o = self.options
            self._embeddings[key] = embed_items(self.model, modality, self.data(modality), objective, o.batch_size, o.on_error, o.progress)
        return self._embeddings[key]

    # --- tasks ------------------------------------------------------------------------
    def classification(self, modality: str) -> list[dict[str, Any]]:
        objective = self.objective(modality)
        emb, kept, skipped = self.embeddings(modality, objective)
        result = classify_embeddings(self.model, modality, self.data(modality), emb, kept, skipped, self.options.templates, objective)
        figures = result.to_json()
        for key in ("modality", "data", "checkpoint", "retrieval", "linear_probe", "class_names"):
            figures.pop(key, None)
        figures["per_class_accuracy"] = figures.pop("per_class_recall")
        record = self._record("classification", modality=modality, space=objective, **figures)
        record["confusion"] = result.confusion  # for the plot; dropped from the JSON
        record["class_names"] = result.class_names
        return [record]

    def retrieval(self, modality: str) -> list[dict[str, Any]]:
        data = self.data(modality)
        if not data.captions:
            raise EvaluationError(f"{data.source} has no captions for '{modality}': retrieval needs paired text")
        objective, text_modality = caption_partner(self.model, modality, self.objective(modality))
        emb, kept, skipped = self.embeddings(modality, objective)
        found = caption_retrieval(self.model, modality, text_modality, data, emb, kept, objective, self.options.batch_size)
        return [
            self._record("retrieval", modality=modality, direction=direction, space=objective, **figures,
                         num_items=len(kept), num_captions=len(data.captions), skipped=data.skipped + skipped)
            for direction, figures in found.items()
        ]

    def _probe_inputs(self, modality: str) -> tuple[torch.Tensor, torch.Tensor, list[int], list[int], str, LabelledSet]:
        data = self.data(modality)
        if not data.labels:
            raise EvaluationError(f"{data.source} has no labels: probes need a labelled set")
        features, kept, _ = self.embeddings(modality, None)
        labels = torch.tensor([data.labels[i] for i in kept])
        train, test, split = probe_split(data, kept, self.options.test_fraction, self.options.seed)
        return features, labels, train, test, split, data

    def linear_probe(self, modality: str) -> list[dict[str, Any]]:
        features, labels, train, test, split, data = self._probe_inputs(modality)
        figures = linear_probe_on_features(features, labels, train, test, len(data.class_names), self.options.seed)
        return [self._record("linear_probe", modality=modality, **figures, split=split)]

    def fewshot(self, modality: str) -> list[dict[str, Any]]:
        features, labels, train, test, split, data = self._probe_inputs(modality)
        return [
            self._record("fewshot", modality=modality, **fewshot_probe_on_features(
                features, labels, train, test, len(data.class_names), k, self.options.seed, self.options.fewshot_trials
            ), split=split)
            for k in self.options.fewshot_k
        ]

    def clustering(self, modality: str) -> list[dict[str, Any]]:
        """Spherical k-means of the frozen pooled features into as many clusters as there
        are classes, scored by adjusted mutual information with the true classes; beside
        it the mean AMI of random assignments with the same cluster sizes (about 0)."""
        data = self.data(modality)
        if not data.labels:
            raise EvaluationError(f"{data.source} has no labels: clustering is scored against classes")
        features, kept, skipped = self.embeddings(modality, None)
        labels = np.array([data.labels[i] for i in kept])
        k = len(np.unique(labels))
        if len(kept) < max(k, 2):
            raise EvaluationError(f"{data.source}: {len(kept)} items cannot be clustered into {k} classes")
        _, found = kmeans(features, k, torch.Generator().manual_seed(self.options.seed))
        found = found.cpu().numpy()
        rng = np.random.default_rng(self.options.seed)
        baseline = [adjusted_mutual_info(rng.permutation(found), labels) for _ in range(RANDOM_ASSIGNMENTS)]
        return [self._record(
            "clustering", modality=modality, AMI=adjusted_mutual_info(found, labels),
            AMI_random=float(np.mean(baseline)), AMI_random_sd=float(np.std(baseline)),
            cluster_entropy=cluster_entropy(torch.from_numpy(found), k), num_clusters=k, num_items=len(kept),
            skipped=data.skipped + skipped,
        )]

    def cross_modal(self, query: str, gallery: str) -> list[dict[str, Any]]:
        """Retrieval between two modalities in one space, both ways: a hit is an item
        with the same value of an attribute both render in the world (one record per
        attribute and direction), with R@1, R@5 and mAP beside their chance levels."""
        space = self.cross_modal_space(query, gallery)
        sets = {m: self.data(m) for m in (query, gallery)}
        attributes = shared_attributes(sets[query], sets[gallery])
        if not attributes:
            raise EvaluationError(
                f"'{query}' and '{gallery}' share no world attribute (same name and values) to match on: "
                f"{sorted(sets[query].attribute_values)} vs {sorted(sets[gallery].attribute_values)}"
            )
        records = []
        embedded = {m: self.embeddings(m, self.model.shared_space(m, space=space)) for m in (query, gallery)}
        if self.options.center:
            embedded = {
                m: (torch.nn.functional.normalize(e - e.mean(0, keepdim=True), dim=-1), kept, skipped)
                for m, (e, kept, skipped) in embedded.items()
            }
        for attribute in attributes:
            values = sets[query].attribute_values[attribute]
            codes = {
                m: torch.tensor([values.index(sets[m].item_attributes[i][attribute]) for i in embedded[m][1]])
                for m in (query, gallery)
            }
            for q, g in ((query, gallery), (gallery, query)):
                relevance = value_relevance(codes[q], codes[g])
                figures = retrieval_metrics(embedded[q][0], embedded[g][0], relevance, ks=(1, 5))
                ap = average_precision(embedded[q][0], embedded[g][0], relevance)
                figures["mAP"] = float(np.nanmean(ap.numpy()))
                chance = chance_levels(codes[q].tolist(), codes[g].tolist(), ks=(1, 5))
                records.append(self._record(
                    "cross_modal", query=q, gallery=g, attribute=attribute, space=space, centered=self.options.center,
                    **{k: figures[k] for k in ("R@1", "R@5", "mAP", "mean_rank", "median_rank")}, **chance,
                    **{f"{k}_over_chance": figures[k] / chance[f"{k}_chance"] for k in ("R@1", "R@5", "mAP")},
                    num_queries=len(codes[q]), num_gallery=len(codes[g]), num_values=len(values),
                ))
        return records

    def cross_modal_space(self, a: str, b: str) -> str:
        """The named space that embeds both ``a`` and ``b``: the one asked for, or the first."""
        for m in (a, b):
            if m not in self.model.encoders:
                raise EvaluationError(f"checkpoint has no modality '{m}'; it has {sorted(self.model.encoders)}")
        spaces = self.model.spaces
        if self.options.space is not None:
            if self.options.space not in spaces:
                raise EvaluationError(f"checkpoint has no space '{self.options.space}'; it has {sorted(spaces) or 'none'}")
            candidates = [self.options.space]
        else:
            candidates = list(spaces)
        for space in candidates:
            embeds = {m for o in spaces[space] for m in self.model.objectives[o].modalities}
            if a in embeds and b in embeds:
                return space
        raise EvaluationError(
            f"no space embeds both '{a}' and '{b}' (spaces: {spaces or 'none'}); cross-modal retrieval needs the "
            "contrastive objectives of both in one space (space: hub in their configs)"
        )


def shared_attributes(a: LabelledSet, b: LabelledSet) -> list[str]:
    """World attributes both sets' items carry with the same name and values."""
    return [name for name, values in a.attribute_values.items() if b.attribute_values.get(name) == values]


def world_modalities(model) -> list[str]:
    """Modalities that render the embedded world and have a shared space with text."""
    found = []
    for key in model.roles().renderers:
        try:
            caption_partner(model, key)
        except (ValueError, EvaluationError):
            continue
        found.append(key)
    return found


def cross_modal_pairs(evaluator: Evaluator, modalities: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """Pairs of ``modalities`` that share a space and a world attribute, and why the others cannot run."""
    pairs, why_not = [], []
    for i, a in enumerate(modalities):
        for b in modalities[i + 1 :]:
            try:
                evaluator.cross_modal_space(a, b)
                if not shared_attributes(evaluator.data(a), evaluator.data(b)):
                    raise EvaluationError(f"'{a}' and '{b}' share no world attribute")
            except EvaluationError as exc:
                why_not.append(str(exc))
                continue
            pairs.append((a, b))
    return pairs, why_not


def headline(record: dict[str, Any]) -> tuple[str, float]:
    """The record's row label and its main figure, for tables and plots."""
    task = record["task"]
    who = f"{record['query']}->{record['gallery']}" if task == "cross_modal" else record["modality"]
    if task == "retrieval":
        who = record["direction"].replace("_to_", "->")
    if task == "fewshot":
        who += f" k={record['k']}"
    return f"{task} {who}", float(record[HEADLINE[task]])
