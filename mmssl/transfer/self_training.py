"""Self-training with pseudo-labels: a fine-tuned classifier predicts on an unlabelled
pool, its confident predictions become labels, and a new classifier trains on the true
labels plus those, in rounds.

Round 0 is the plain fine-tune on the labelled items. Round r (r >= 1) takes
pseudo-labels from round r-1's predictions and fine-tunes afresh from the pretrained
encoder (not from round r-1's weights, so one round's mistakes are not trained in
twice). Each round is a fine-tune run directory of its own (``round_<r>/``), so a
killed self-training run resumes inside the round it stopped in. Where the pool has
true labels (the embedded world; a labelled set passed as unlabelled) each round
scores its pseudo-labels: accuracy, and per class precision, recall and F1.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mmssl.common.atomic import write_text_atomic
from mmssl.train.checkpoint import load_checkpoint
from mmssl.data.eval_sets import EvaluationError, LabelledSet, load_eval_set
from mmssl.transfer.finetune import (
    Classifier,
    FinetuneError,
    FinetuneOptions,
    StepCallback,
    TrainingSet,
    build_classifier,
    check_options,
    finetune_checkpoints,
    labelled_splits,
    predict,
    train_classifier,
    transform_items,
    world_labelled_set,
    write_report,
)
from mmssl.train.checkpoints import CheckpointManager

REPORT = "self_training_report.json"
SELECTION = "self_training_options.json"  # the options a resumed run must share


@dataclass(frozen=True)
class SelfTrainingOptions:
    """The pool and how pseudo-labels are chosen (``threshold`` or ``top_k``)."""

    unlabeled: str = "world"  # 'world' or a load_eval_set spec
    rounds: int = 2  # pseudo-labelled rounds after round 0
    threshold: float | None = None  # keep predictions with softmax confidence >= threshold
    top_k: int | None = None  # or the k most confident predictions of each class
    balanced: bool = False  # threshold: cap each class at the mean count a class taken
    unlabeled_per_class: int = 50  # world pool items a class
    pseudo_weight: float = 1.0  # loss weight of a pseudo-labelled item (a true label weighs 1)


def select_pseudo_labels(
    probabilities: torch.Tensor, threshold: float | None = None, top_k: int | None = None, balanced: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(positions, labels) of the pool items to pseudo-label, positions ascending.

    ``threshold``: every item whose top softmax probability is at least it; with
    ``balanced`` each predicted class keeps at most ceil(taken / classes) of its most
    confident. ``top_k``: the k most confident items predicted as each class (ties by
    position). Exactly one of the two.

    Shapes:
        probabilities: [N, C] (rows sum to 1).
    """
    if (threshold is None) == (top_k is None):
        raise FinetuneError("self-training needs exactly one of 'self_training.threshold' and 'self_training.top_k'")
    confidence, predicted = probabilities.max(1)
    confidence, predicted = confidence.numpy(), predicted.numpy()
    num_classes = probabilities.shape[1]
    if threshold is not None:
        taken = np.flatnonzero(confidence >= threshold)
        cap = int(np.ceil(len(taken) / num_classes)) if balanced else None
    else:
        if top_k < 1:
            raise FinetuneError(f"'self_training.top_k': must be at least 1, got {top_k}")
        taken, cap = np.arange(len(predicted)), top_k
    if cap is not None:
        kept = []
        for c in range(num_classes):
            members = taken[predicted[taken] == c]
            order = np.argsort(-confidence[members], kind="stable")  # most confident first, ties by position
            kept.append(members[order[:cap]])
        taken = np.sort(np.concatenate(kept)) if kept else taken[:0]
    return taken, predicted[taken]


def pseudo_label_metrics(taken: Sequence[int], pseudo: Sequence[int], true: Sequence[int], num_classes: int) -> dict[str, Any]:
    """Quality of pseudo-labels ``pseudo`` given to pool items ``taken``, against the
    pool's ``true`` labels (all of them):

    accuracy   share of the taken items whose pseudo-label is right
    precision  per class: right / taken with that pseudo-label (classes given any)
    recall     per class: right / the pool's items of that class (classes in the pool)
    f1         per class in the pool: 2PR / (P + R), 0 where P + R is 0 or no item got it
    Means are over the classes each is defined for (None where none is, as the
    accuracy when nothing was taken: the report stays strict JSON).
    """
    taken, pseudo, true = np.asarray(taken, dtype=int), np.asarray(pseudo, dtype=int), np.asarray(true, dtype=int)
    right = pseudo == true[taken]
    precision, recall, f1 = {}, {}, {}
    for c in range(num_classes):
        given = pseudo == c
        hits = int((right & given).sum())
        if given.any():
            precision[c] = hits / int(given.sum())
        in_pool = int((true == c).sum())
        if in_pool:
            recall[c] = hits / in_pool
            p = precision.get(c, 0.0)
            f1[c] = 2 * p * recall[c] / (p + recall[c]) if p + recall[c] > 0 else 0.0
    return {
        "pseudo_labels": len(taken),
        "accuracy": float(right.mean()) if len(taken) else None,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "mean_precision": float(np.mean(list(precision.values()))) if precision else None,
        "mean_recall": float(np.mean(list(recall.values()))) if recall else None,
        "mean_f1": float(np.mean(list(f1.values()))) if f1 else None,
    }


def unlabeled_pool(loaded, modality: str, options: FinetuneOptions, st: SelfTrainingOptions, num_classes: int) -> LabelledSet:
    """The pool: world items from the generators of key "unlabeled" (disjoint from the
    fine-tune and eval samples), or a data set whose labels, if any, only score."""
    if st.unlabeled == "world":
        return world_labelled_set(loaded.model, modality, loaded.config, "unlabeled", st.unlabeled_per_class)
    pool = load_eval_set(loaded.model, modality, st.unlabeled, loaded.config.world, None, options.on_error)
    if pool.labels and len(pool.class_names) != num_classes:
        raise EvaluationError(
            f"the unlabelled pool {pool.source} has {len(pool.class_names)} classes but the labelled set has "
            f"{num_classes}: its labels cannot score the pseudo-labels"
        )
    return pool


def check_same_selection(output: Path, st: SelfTrainingOptions) -> None:
    """Record ``st`` in ``output``; a run directory that holds other self-training options
    is an error naming them (each round's checkpoints check the fine-tune options)."""
    path = output / SELECTION
    ours = json.loads(json.dumps(dataclasses.asdict(st)))
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        differ = sorted(k for k in ours.keys() | saved.keys() if ours.get(k) != saved.get(k))
        if differ:
            raise FinetuneError(
                f"{output} holds a self-training run with other options "
                f"({', '.join(f'{k}: {saved.get(k)!r} there, {ours.get(k)!r} now' for k in differ)}); "
                "give the same options to resume it, or another output directory"
            )
        return
    output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(ours, indent=2))


def self_train(
    checkpoint: str | Path,
    modality: str,
    output: str | Path,
    options: FinetuneOptions | None = None,
    st: SelfTrainingOptions | None = None,
    after_step: StepCallback | None = None,
) -> dict[str, Any]:
    """Round 0 fine-tunes on the labels; each of ``st.rounds`` more rounds trains afresh on
    the labels plus the previous round's confident predictions on the pool. Writes
    ``output``/self_training_report.json (one record per round) and self_training.png;
    returns the report, whose top-level figures are the last round's."""
    options, st = check_options(options or FinetuneOptions()), st or SelfTrainingOptions()
    if st.rounds < 0:
        raise FinetuneError(f"'self_training.rounds': must be at least 0, got {st.rounds}")
    if not 0 < st.pseudo_weight <= 1:
        raise FinetuneError(f"'self_training.pseudo_weight': must be in (0, 1], got {st.pseudo_weight}")
    select_pseudo_labels(torch.full((1, 2), 0.5), st.threshold, st.top_k, st.balanced)  # the choice is valid
    output = Path(output)
    # one run per output directory; each round's checkpoints are under it (round_<r>/)
    with CheckpointManager(output, options.keep_checkpoints).holding():
        return _self_train(checkpoint, modality, output, options, st, after_step)


def _self_train(checkpoint: str | Path, modality: str, output: Path, options: FinetuneOptions, st: SelfTrainingOptions,
                after_step: StepCallback | None) -> dict[str, Any]:
    loaded = load_checkpoint(checkpoint)
    train_set, eval_set, split = labelled_splits(loaded.model, modality, loaded.config, options)
    num_classes = len(train_set.class_names)
    pool_set = unlabeled_pool(loaded, modality, options, st, num_classes)
    processor = loaded.model.processors[modality]
    train_samples, kept, _ = transform_items(processor, train_set, options.on_error)
    eval_samples, eval_kept, _ = transform_items(processor, eval_set, options.on_error)
    pool_samples, pool_kept, pool_skipped = transform_items(processor, pool_set, options.on_error)
    pool_true = [pool_set.labels[i] for i in pool_kept] if pool_set.labels else None
    eval_labels = [eval_set.labels[i] for i in eval_kept]
    labels = [train_set.labels[i] for i in kept]
    check_same_selection(output, st)  # once the data is read: a run that could not start records nothing
    pretrained = copy.deepcopy(loaded.model)  # every round starts from these weights
    rounds: list[dict[str, Any]] = []
    previous: Classifier | None = None
    for r in range(st.rounds + 1):
        record: dict[str, Any] = {"round": r, "pseudo_labels": 0}
        train = TrainingSet(list(train_samples), list(labels), [train_set.items[i] for i in kept])
        if previous is not None:
            probabilities = predict(previous, pool_samples, options.batch_size, torch.device(options.device)).softmax(1)
            taken, pseudo = select_pseudo_labels(probabilities, st.threshold, st.top_k, st.balanced)
            record["pseudo_labels"] = len(taken)
            record["pseudo_per_class"] = np.bincount(pseudo, minlength=num_classes).tolist()
            if pool_true is not None:
                quality = pseudo_label_metrics(taken, pseudo, pool_true, num_classes)
                record.update({f"pseudo/{k}": v for k, v in quality.items() if k != "pseudo_labels"})
            train.samples += [pool_samples[i] for i in taken]
            train.labels += pseudo.tolist()
            train.raw += [pool_set.items[pool_kept[i]] for i in taken]
            if st.pseudo_weight != 1.0:
                train.weights = [1.0] * len(labels) + [st.pseudo_weight] * len(taken)
        model = build_classifier(copy.deepcopy(pretrained), loaded.config, modality, num_classes, options.from_scratch,
                                 options.seed)
        figures = train_classifier(model, train, eval_samples, eval_labels, eval_set, options,
                                   finetune_checkpoints(output / f"round_{r}", options),
                                   after_step)
        record.update({f"eval/{k}": v for k, v in figures.items()})
        rounds.append(record)
        write_report(output / f"round_{r}", {
            "modality": modality, "mode": options.mode, "from_scratch": options.from_scratch, "round": r,
            "num_train": len(train.labels), **figures,
        })
        previous = model
    final = {k.removeprefix("eval/"): v for k, v in rounds[-1].items() if k.startswith("eval/")}
    report = {
        "modality": modality, "mode": options.mode, "from_scratch": options.from_scratch,
        "checkpoint": str(loaded.checkpoint), "data": options.data or "world", "split": split,
        "unlabeled": st.unlabeled, "pool_size": len(pool_kept), "pool_skipped": pool_set.skipped + pool_skipped,
        "num_labelled": len(labels), "num_classes": num_classes, **final,
        "round0_top1": rounds[0]["eval/top1"], "rounds": rounds,
        "options": dataclasses.asdict(options), "self_training": dataclasses.asdict(st),
    }
    write_text_atomic(output / REPORT, json.dumps(report, indent=2))
    from mmssl.common.plots import plot_self_training

    plot_self_training(rounds, output / "self_training.png", f"self-training {modality} {options.mode}")
    return report
