"""Every evaluation task of one checkpoint, as flat records; the tasks are registered
(``mmssl.eval_tasks`` entry points, ``mmssl.registry.register_eval_task``).

Tasks: zero-shot ``classification``, caption ``retrieval`` (both directions),
``linear_probe`` and ``fewshot`` probes on frozen features, ``clustering`` of frozen
features against the true classes (adjusted mutual information), and ``cross_modal``
retrieval between two non-text modalities that share a space, matched on a world
attribute both render. A task (an ``EvalTask``) says how it runs, which figure heads
its records and what stands beside it in a table. An ``Evaluator`` reads each data set
once and embeds each (modality, space) once, however many tasks use it. A record is a
flat dict: ``task``, ``modality`` (or ``query`` and ``gallery``), every figure under its
own key (``R@1``, with its chance as ``R@1_chance``), the checkpoint and the data spec.
The default zero-shot report (``zero_shot_report``) is made of the same tasks' records.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch

from mmssl.common.clustering import adjusted_mutual_info, cluster_entropy, kmeans
from mmssl.data.eval_sets import EvaluationError, LabelledSet, load_eval_set
from mmssl.eval.folds import cross_validated_probe, probe_folds
from mmssl.eval.metrics import average_precision, chance_levels, retrieval_metrics, value_relevance
from mmssl.eval.probes import fewshot_probe_on_features, linear_probe_on_features, probe_split
from mmssl.eval.zero_shot import caption_partner, caption_retrieval, classify_embeddings, embed_items
from mmssl.config import ConfigError
from mmssl.registry import EVAL_TASKS, closest
from mmssl.train.checkpoint import Pretrained

RANDOM_ASSIGNMENTS = 20  # draws of the clustering task's random baseline


@dataclass(frozen=True)
class EvalOptions:
    """Evaluation options (``mmssl-zero-shot``'s flags set these keys; ``--config FILE``
    reads them from YAML with the run config's loader)."""

    task: str | None = None  # a registered task, or all; None: the default zero-shot report
    modality: str = "all"  # all: every modality of the embedded world with a text-paired space
    modalities: tuple[str, ...] | None = None  # cross_modal: the query and gallery modalities
    data: str | None = None  # KIND:PATH (mmssl.data.eval_sets); None: the embedded world
    class_names: list[str] | None = None
    templates: list[str] | None = None
    fewshot_k: tuple[int, ...] = (1, 5, 10)
    fewshot_trials: int = 5
    test_fraction: float = 0.3
    # linear_probe: cross-validate over this many folds (stratified, or the set's own, as
    # ESC-50's five) instead of one split; None: one split (mmssl.eval.folds)
    folds: int | None = None
    linear_probe: bool = False  # the default report: also a linear probe on frozen features
    batch_size: int | None = None  # None: the checkpoint's eval.batch_size
    on_error: Literal["skip", "fail"] = "skip"
    objective: str | None = None  # whose space classification and retrieval use
    space: str | None = None  # a named space (space: hub); cross-modal retrieval needs one
    # cross_modal: subtract each modality's mean embedding over its evaluated items before
    # matching (removes the modality gap, Liang et al. 2022; transductive, no labels used)
    center: bool = False
    world_eval_per_class: int | None = None  # None: the checkpoint's world.eval_samples_per_class
    file_column: str = "filepath"  # a pairs CSV's columns
    caption_column: str = "title"
    progress: bool = False
    seed: int | None = None  # None: the checkpoint's seed
    device: str = "cpu"


@dataclass
class Evaluator:
    """Tasks over one checkpoint, with its data sets and embeddings cached."""

    loaded: Pretrained
    options: EvalOptions
    _sets: dict[str, LabelledSet] = field(default_factory=dict)
    _embeddings: dict[tuple[str, str | None], tuple[torch.Tensor, list[int], int]] = field(default_factory=dict)

    @property
    def model(self):
        return self.loaded.model

    @property
    def seed(self) -> int:
        return self.options.seed if self.options.seed is not None else self.loaded.config.seed

    @property
    def batch_size(self) -> int:
        return self.options.batch_size or self.loaded.config.eval.batch_size

    def record(self, task: str, **fields: Any) -> dict[str, Any]:
        ema = {"weights": "ema"} if self.loaded.ema else {}  # the checkpoint's moving average (--ema)
        return {"task": task, **fields, "checkpoint": str(self.loaded.checkpoint), **ema, "data": self.options.data or "world"}

    # --- cached inputs --------------------------------------------------------------
    def data(self, modality: str) -> LabelledSet:
        if modality not in self._sets:
            world = self.loaded.config.world
            if self.options.world_eval_per_class is not None:
                world = dataclasses.replace(world, eval_samples_per_class=self.options.world_eval_per_class)
            o = self.options
            self._sets[modality] = load_eval_set(
                self.model, modality, o.data, world, o.class_names, o.on_error, (o.file_column, o.caption_column)
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
            self._embeddings[key] = embed_items(self.model, modality, self.data(modality), objective, self.batch_size, o.on_error, o.progress)
        return self._embeddings[key]

    def probe_inputs(self, modality: str) -> tuple[torch.Tensor, torch.Tensor, list[int], list[int], str, LabelledSet]:
        data = self.data(modality)
        if not data.labels:
            raise EvaluationError(f"{data.source} has no labels: probes need a labelled set")
        features, kept, _ = self.embeddings(modality, None)
        labels = torch.tensor([data.labels[i] for i in kept])
        train, test, split = probe_split(data, kept, self.options.test_fraction, self.seed)
        return features, labels, train, test, split, data

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

    def run(self, task: str, modalities: Sequence[str], strict: bool, skipped: Callable[[str], None]) -> list[dict[str, Any]]:
        """Records of the registered ``task`` over ``modalities``; where it cannot run on one
        and ``strict`` is false, ``skipped`` is told why and the others go on."""
        return EVAL_TASKS.get(task).run_all(self, modalities, strict, skipped)


# --------------------------------------------------------------------------------------
# The tasks
# --------------------------------------------------------------------------------------


class EvalTask:
    """Base class of an evaluation task: register a subclass with
    ``mmssl.registry.register_eval_task("name")`` or the entry-point group
    ``mmssl.eval_tasks``.

    Class attributes:
        name: the registry key (set by the registry), the records' ``task``.
        headline: the record key of the task's main figure (tables, comparison plots).
    """

    name: str = ""
    headline: str = ""

    @classmethod
    def run(cls, ev: Evaluator, modality: str) -> list[dict[str, Any]]:
        """The task's records for one modality; ``EvaluationError`` when it cannot run."""
        raise NotImplementedError

    @classmethod
    def run_all(cls, ev: Evaluator, modalities: Sequence[str], strict: bool, skipped: Callable[[str], None]) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for modality in modalities:
            try:
                records += cls.run(ev, modality)
            except EvaluationError as exc:
                if strict:
                    raise
                skipped(f"{cls.name} {modality} skipped: {exc}")
        return records

    @classmethod
    def label(cls, record: dict[str, Any]) -> str:
        """The record's row label in tables and plots."""
        return f"{cls.name} {record['modality']}"

    @classmethod
    def details(cls, record: dict[str, Any]) -> str:
        """The figures beside the headline in the table on stdout."""
        return ""


class ClassificationTask(EvalTask):
    """Zero-shot classification: class prompts embedded by the caption modality."""

    headline = "top1"

    @classmethod
    def run(cls, ev: Evaluator, modality: str) -> list[dict[str, Any]]:
        objective = ev.objective(modality)
        emb, kept, skipped = ev.embeddings(modality, objective)
        result = classify_embeddings(ev.model, modality, ev.data(modality), emb, kept, skipped, ev.options.templates, objective)
        figures = result.to_json()
        for key in ("modality", "data", "class_names"):
            figures.pop(key, None)
        figures["per_class_accuracy"] = figures.pop("per_class_recall")
        record = ev.record("classification", modality=modality, space=objective, **figures)
        record["confusion"] = result.confusion  # for the plot; dropped from the JSON
        record["class_names"] = result.class_names
        return [record]

    @classmethod
    def details(cls, record: dict[str, Any]) -> str:
        return f"top5 {record['top5']:.4f}" + (f"  composition {record['composition_top1']:.4f}" if "composition_top1" in record else "")


class RetrievalTask(EvalTask):
    """Item-to-caption and caption-to-item retrieval against the set's captions."""

    headline = "R@1"
    RECORD_KEYS = ("task", "modality", "direction", "space", "num_items", "num_captions", "skipped", "checkpoint", "weights", "data")

    @classmethod
    def run(cls, ev: Evaluator, modality: str) -> list[dict[str, Any]]:
        data = ev.data(modality)
        if not data.captions:
            raise EvaluationError(f"{data.source} has no captions for '{modality}': retrieval needs paired text")
        objective, text_modality = caption_partner(ev.model, modality, ev.objective(modality))
        emb, kept, skipped = ev.embeddings(modality, objective)
        found = caption_retrieval(ev.model, modality, text_modality, data, emb, kept, objective, ev.batch_size)
        return [
            ev.record("retrieval", modality=modality, direction=direction, space=objective, **figures,
                      num_items=len(kept), num_captions=len(data.captions), skipped=data.skipped + skipped)
            for direction, figures in found.items()
        ]

    @classmethod
    def label(cls, record: dict[str, Any]) -> str:
        return f"retrieval {record['direction'].replace('_to_', '->')}"

    @classmethod
    def details(cls, record: dict[str, Any]) -> str:
        return f"R@5 {record['R@5']:.4f}  R@10 {record['R@10']:.4f}  median rank {record['median_rank']:.0f}"


class LinearProbeTask(EvalTask):
    """A logistic regression on frozen pooled features (the set's split, else stratified);
    with ``folds``, cross-validated: one probe per fold, the mean and SD over folds."""

    headline = "top1"

    @classmethod
    def run(cls, ev: Evaluator, modality: str) -> list[dict[str, Any]]:
        if ev.options.folds is not None:
            return [cls.cross_validated(ev, modality, ev.options.folds)]
        features, labels, train, test, split, data = ev.probe_inputs(modality)
        figures = linear_probe_on_features(features, labels, train, test, len(data.class_names), ev.seed)
        return [ev.record("linear_probe", modality=modality, **figures, split=split)]

    @classmethod
    def cross_validated(cls, ev: Evaluator, modality: str, k: int) -> dict[str, Any]:
        data = ev.data(modality)
        if not data.labels:
            raise EvaluationError(f"{data.source} has no labels: probes need a labelled set")
        features, kept, _ = ev.embeddings(modality, None)
        labels = torch.tensor([data.labels[i] for i in kept])
        folds, split = probe_folds(data, kept, k, ev.seed)
        figures = cross_validated_probe(features, labels, folds, len(data.class_names), ev.seed)
        return ev.record("linear_probe", modality=modality, **figures, split=split)

    @classmethod
    def details(cls, record: dict[str, Any]) -> str:
        if "top1_sd" in record:
            return f"sd {record['top1_sd']:.4f} over {record['folds']} folds ({record['split']})"
        return f"weight decay {record['weight_decay']:.0e}, {record['num_train']} train / {record['num_test']} test"


class FewshotTask(EvalTask):
    """Probes on ``fewshot_k`` items a class, over ``fewshot_trials`` seeded draws."""

    headline = "top1"

    @classmethod
    def run(cls, ev: Evaluator, modality: str) -> list[dict[str, Any]]:
        features, labels, train, test, split, data = ev.probe_inputs(modality)
        return [
            ev.record("fewshot", modality=modality, **fewshot_probe_on_features(
                features, labels, train, test, len(data.class_names), k, ev.seed, ev.options.fewshot_trials
            ), split=split)
            for k in ev.options.fewshot_k
        ]

    @classmethod
    def label(cls, record: dict[str, Any]) -> str:
        return f"fewshot {record['modality']} k={record['k']}"

    @classmethod
    def details(cls, record: dict[str, Any]) -> str:
        return f"sd {record['top1_sd']:.4f} over {record['trials']} draws"


class ClusteringTask(EvalTask):
    """Spherical k-means of the frozen pooled features into as many clusters as there
    are classes, scored by adjusted mutual information with the true classes; beside
    it the mean AMI of random assignments with the same cluster sizes (about 0)."""

    headline = "AMI"

    @classmethod
    def run(cls, ev: Evaluator, modality: str) -> list[dict[str, Any]]:
        data = ev.data(modality)
        if not data.labels:
            raise EvaluationError(f"{data.source} has no labels: clustering is scored against classes")
        features, kept, skipped = ev.embeddings(modality, None)
        labels = np.array([data.labels[i] for i in kept])
        k = len(np.unique(labels))
        if len(kept) < max(k, 2):
            raise EvaluationError(f"{data.source}: {len(kept)} items cannot be clustered into {k} classes")
        _, found = kmeans(features, k, torch.Generator().manual_seed(ev.seed))
        found = found.cpu().numpy()
        rng = np.random.default_rng(ev.seed)
        baseline = [adjusted_mutual_info(rng.permutation(found), labels) for _ in range(RANDOM_ASSIGNMENTS)]
        return [ev.record(
            "clustering", modality=modality, AMI=adjusted_mutual_info(found, labels),
            AMI_random=float(np.mean(baseline)), AMI_random_sd=float(np.std(baseline)),
            cluster_entropy=cluster_entropy(torch.from_numpy(found), k), num_clusters=k, num_items=len(kept),
            skipped=data.skipped + skipped,
        )]

    @classmethod
    def details(cls, record: dict[str, Any]) -> str:
        return (f"random {record['AMI_random']:.4f} (sd {record['AMI_random_sd']:.4f}), {record['num_clusters']} clusters, "
                f"{record['num_items']} items")


class CrossModalTask(EvalTask):
    """Retrieval between two modalities in one space, both ways: a hit is an item
    with the same value of an attribute both render in the world (one record per
    attribute and direction), with R@1, R@5 and mAP beside their chance levels. Runs on
    the two ``modalities`` asked for, else on every pair of world modalities that can."""

    headline = "R@1"

    @classmethod
    def run_all(cls, ev: Evaluator, modalities: Sequence[str], strict: bool, skipped: Callable[[str], None]) -> list[dict[str, Any]]:
        if ev.options.modalities:
            return cls.pair(ev, *ev.options.modalities)
        if ev.options.data not in (None, "world"):
            skipped("cross_modal skipped: it matches items on the embedded world's attributes")
            return []
        pairs, why_not = cross_modal_pairs(ev, world_modalities(ev.model))
        if strict and not pairs:
            raise EvaluationError("no two modalities to match: " + "; ".join(why_not))
        for reason in why_not:
            skipped(f"cross_modal skipped: {reason}")
        return [record for a, b in pairs for record in cls.pair(ev, a, b)]

    @classmethod
    def pair(cls, ev: Evaluator, query: str, gallery: str) -> list[dict[str, Any]]:
        space = ev.cross_modal_space(query, gallery)
        sets = {m: ev.data(m) for m in (query, gallery)}
        attributes = shared_attributes(sets[query], sets[gallery])
        if not attributes:
            raise EvaluationError(
                f"'{query}' and '{gallery}' share no world attribute (same name and values) to match on: "
                f"{sorted(sets[query].attribute_values)} vs {sorted(sets[gallery].attribute_values)}"
            )
        records = []
        embedded = {m: ev.embeddings(m, ev.model.shared_space(m, space=space)) for m in (query, gallery)}
        if ev.options.center:
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
                records.append(ev.record(
                    "cross_modal", query=q, gallery=g, attribute=attribute, space=space, centered=ev.options.center,
                    **{k: figures[k] for k in ("R@1", "R@5", "mAP", "mean_rank", "median_rank")}, **chance,
                    **{f"{k}_over_chance": figures[k] / chance[f"{k}_chance"] for k in ("R@1", "R@5", "mAP")},
                    num_queries=len(codes[q]), num_gallery=len(codes[g]), num_values=len(values),
                ))
        return records

    @classmethod
    def label(cls, record: dict[str, Any]) -> str:
        return f"cross_modal {record['query']}->{record['gallery']}"

    @classmethod
    def details(cls, record: dict[str, Any]) -> str:
        return (f"{record['attribute']}: chance {record['R@1_chance']:.4f} ({record['R@1_over_chance']:.1f}x)  "
                f"mAP {record['mAP']:.4f} (chance {record['mAP_chance']:.4f})")


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
    """The record's row label and its main figure, as its registered task says."""
    task = EVAL_TASKS.get(record["task"])
    return task.label(record), float(record[task.headline])


def details(record: dict[str, Any]) -> str:
    """The figures beside a record's headline, as its registered task says."""
    return EVAL_TASKS.get(record["task"]).details(record)


def zero_shot_report(ev: Evaluator, modality: str) -> dict[str, Any]:
    """The default report of one modality (``mmssl-zero-shot`` without ``--task``), made of
    the classification task's record, the retrieval task's where the set has captions,
    and the linear probe's when ``linear_probe`` is asked:

        modality, top1, top5, mean_per_class_recall, num_samples, num_classes,
        per_class_recall, class_names, skipped, [composition_top1, seen_top1,
        heldout_classes], [retrieval: {direction: figures}], [linear_probe: {...}],
        data, checkpoint, [weights: "ema" for the checkpoint's moving average]

    plus ``confusion`` for the plot (not JSON)."""
    (found,) = ClassificationTask.run(ev, modality)
    data = ev.data(modality)
    report: dict[str, Any] = {"modality": modality}
    for key in ("top1", "top5", "mean_per_class_recall", "num_samples", "num_classes"):
        report[key] = found[key]
    report["per_class_recall"] = found["per_class_accuracy"]
    report["class_names"] = found["class_names"]
    report["skipped"] = found["skipped"]
    for key in ("composition_top1", "seen_top1", "heldout_classes"):
        if key in found:
            report[key] = found[key]
    if data.captions:
        report["retrieval"] = {
            r["direction"]: {k: v for k, v in r.items() if k not in RetrievalTask.RECORD_KEYS}
            for r in RetrievalTask.run(ev, modality)
        }
    if ev.options.linear_probe:
        (probe,) = LinearProbeTask.run(ev, modality)
        report["linear_probe"] = {
            **{k: v for k, v in probe.items() if k not in ("task", "modality", "split", "checkpoint", "weights", "data")},
            "skipped": ev.embeddings(modality, None)[2], "split": probe["split"],
            "features": f"{modality} encoder pooled output (frozen)",
        }
    report["data"] = data.source
    report["checkpoint"] = str(ev.loaded.checkpoint)
    if ev.loaded.ema:
        report["weights"] = "ema"
    report["confusion"] = found["confusion"]
    return report


def check_eval_options(options: EvalOptions) -> EvalOptions:
    """``options`` if they can run; else a ``ConfigError`` naming the key."""
    if options.task is not None and options.task != "all" and options.task not in EVAL_TASKS:
        known = EVAL_TASKS.list()
        raise ConfigError(f"'task': unknown evaluation task '{options.task}'.{closest(options.task, known)} Tasks: {known} or all")
    if options.modalities is not None:
        if options.task not in ("cross_modal", "all"):
            raise ConfigError("'modalities': names the two modalities of task cross_modal")
        if len(options.modalities) != 2:
            raise ConfigError(f"'modalities': a query and a gallery modality, got {list(options.modalities)}")
    if options.world_eval_per_class is not None:
        if options.world_eval_per_class < 1:
            raise ConfigError(f"'world_eval_per_class': must be at least 1, got {options.world_eval_per_class}")
        if options.data not in (None, "world"):
            raise ConfigError(f"'world_eval_per_class': sets the embedded world's evaluation samples; data {options.data} has its own")
    if not 0 < options.test_fraction < 1:
        raise ConfigError(f"'test_fraction': must be in (0, 1), got {options.test_fraction}")
    if options.folds is not None:
        if options.folds < 2:
            raise ConfigError(f"'folds': cross-validation needs at least 2 folds, got {options.folds}")
        if options.task not in ("linear_probe", "all") and not (options.task is None and options.linear_probe):
            raise ConfigError("'folds': cross-validates the linear probe: use it with task linear_probe (or all), "
                              "or with linear_probe in the default report")
    return options


def evaluated_modalities(model, options: EvalOptions) -> list[str]:
    """The modalities ``options.modality`` names: one, or (all) every world modality with a
    text-paired space."""
    if options.modality == "all":
        if options.data not in (None, "world"):
            raise EvaluationError("'modality' all evaluates the embedded world; name one modality to use 'data'")
        return world_modalities(model)
    if options.modality not in model.encoders:
        raise EvaluationError(f"checkpoint has no modality '{options.modality}'; it has {sorted(model.encoders)}")
    return [options.modality]


def run_tasks(loaded: Pretrained, options: EvalOptions, skipped: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every task ``options.task`` names (one, or all) on every modality it names, as
    records. Under ``all`` a task that cannot run on a modality is skipped, ``skipped``
    told why; a task asked by name fails instead."""
    evaluator = Evaluator(loaded, options)
    modalities = evaluated_modalities(loaded.model, options)
    tasks = EVAL_TASKS.list() if options.task == "all" else [options.task]
    records: list[dict[str, Any]] = []
    for task in sorted(tasks, key=_task_order):
        records += evaluator.run(task, modalities, strict=options.task != "all", skipped=skipped)
    return records


_BUILT_IN_ORDER = ("classification", "retrieval", "linear_probe", "fewshot", "clustering", "cross_modal")


def _task_order(name: str) -> tuple[int, str]:
    """The built-ins in their documented order, then plugin tasks by name."""
    return (_BUILT_IN_ORDER.index(name) if name in _BUILT_IN_ORDER else len(_BUILT_IN_ORDER), name)
