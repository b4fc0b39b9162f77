"""Fine-tuning a pretrained encoder on a labelled task: a linear head on the encoder's
pooled features, trained with the encoder frozen, partly or fully unfrozen, or staged.

Modes (``FinetuneOptions.mode``):
    linear    the encoder is frozen (parameters and, in eval mode, its norm statistics);
              only the head trains
    partial   the last ``unfreeze_blocks`` blocks of the encoder (see ``encoder_blocks``)
              train with the head; the rest is frozen as in ``linear``
    full      everything trains
    staged    ``linear`` for the first ``head_steps`` steps, then ``full`` with the
              encoder at ``encoder_lr_scale`` times the lr

Any modality works, built-in or plugin: the only contract used is ``transform``,
``collate``, ``move_batch``, ``forward(...).pooled`` and ``embed_dim``. Labelled data
comes from ``load_eval_set`` (every format evaluation reads); on the embedded world
the training items are rendered from generators no pretraining stream or evaluation
draws (key "finetune"), and the eval items are the world's fresh evaluation samples.
A run directory holds checkpoints (exact resume), ``metrics.jsonl``, a learning-curve
PNG and ``finetune_report.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_model
from tqdm.auto import tqdm

from mmssl.common.atomic import write_text_atomic
from mmssl.common.weights import fit_optimizer_state_shapes
from mmssl.train.checkpoint import load_checkpoint, load_safetensors, load_trainer_state
from mmssl.train.checkpoints import CheckpointManager, rng_state, set_rng_state
from mmssl.config import RunConfig, TrainConfig
from mmssl.data.bad_input import SkipLog
from mmssl.data.eval_sets import EvaluationError, LabelledSet, load_eval_set
from mmssl.eval.probes import probe_split, stratified_split
from mmssl.eval.metrics import classification_metrics
from mmssl.model import MultimodalModel, block_modules, build_model
from mmssl.train.optim import lr_factor
from mmssl.train.run_log import RunLog, read_metrics
from mmssl.common.seeding import sample_rng
from mmssl.world import world_for
from modalities.base import Encoder, InvalidSample, Processor

log = logging.getLogger(__name__)

Mode = Literal["linear", "partial", "full", "staged"]
MODES: tuple[str, ...] = ("linear", "partial", "full", "staged")
HEAD_WEIGHTS = "classifier.safetensors"
STATE = "finetune_state.pt"
META = "meta.json"
REPORT = "finetune_report.json"


class FinetuneError(EvaluationError):
    """Fine-tuning cannot run as asked (an EvaluationError, so every CLI reports it as
    one line); the message says what to change."""


@dataclass(frozen=True)
class FinetuneOptions:
    """Everything a fine-tune run reads besides the checkpoint and the modality."""

    mode: Mode = "linear"
    data: str | None = None  # a load_eval_set spec; None: the embedded world
    eval_data: str | None = None  # a separate eval set; None: the split of ``data``
    class_names: tuple[str, ...] | None = None
    per_class: int | None = None  # keep K labelled training items a class (seeded)
    train_fraction: float | None = None  # or a seeded stratified share of them
    test_fraction: float = 0.3  # split of a set without its own split
    world_train_per_class: int = 50  # world items rendered a class for training (before per_class)
    world_eval_per_class: int | None = None  # None: the checkpoint's world.eval_samples_per_class
    steps: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    encoder_lr_scale: float = 0.1  # staged (and partial/full): encoder lr = lr * this
    weight_decay: float = 0.01
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    unfreeze_blocks: int = 1  # partial: how many of the last encoder blocks train
    head_steps: int = 50  # staged: head-only steps before the encoder unfreezes
    layer_decay: float | None = None  # block i of n gets lr * layer_decay ** (n - 1 - i)
    augment: bool = False  # train on transform(raw, rng) views instead of the eval transform
    from_scratch: bool = False  # the same recipe on a freshly initialised encoder
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    eval_every: int = 50
    log_every: int = 10
    seed: int = 0
    on_error: str = "skip"
    progress: bool = True
    device: str = "cpu"


# --------------------------------------------------------------------------------------
# Labelled data
# --------------------------------------------------------------------------------------


def world_labelled_set(model: MultimodalModel, modality: str, config: RunConfig, key: str, per_class: int) -> LabelledSet:
    """``per_class`` world items of every class (held-out combinations included), drawn
    from generators seeded by ``key``: "finetune" and "unlabeled" are drawn by no
    pretraining stream and by no evaluation (which draws "eval")."""
    if modality not in model.encoders:
        raise EvaluationError(f"checkpoint has no modality '{modality}'; it has {sorted(model.encoders)}")
    renderer = model.renderers[modality]
    if renderer is None:
        raise EvaluationError(f"modality '{modality}' has no embedded world; name a labelled set ('data')")
    world = world_for(renderer, config.world)
    data = LabelledSet([], [], world.class_names, [], list(world.heldout_classes), source=f"world ({key})")
    for cls in world.classes:
        for i in range(per_class):
            rng = sample_rng(config.world.seed, key, cls.index, i)
            data.items.append(renderer.render(world.concept(cls.index, rng), rng))
            data.labels.append(cls.index)
            data.where.append(f"world {key} sample {cls.name} #{i}")
    return data


def subset(data: LabelledSet, positions: Sequence[int], skipped: int = 0) -> LabelledSet:
    """The items of ``data`` at ``positions`` (labels, names and classes kept), carrying
    ``skipped`` of the items left out while the set was read."""
    return LabelledSet(
        [data.items[i] for i in positions], [data.labels[i] for i in positions], list(data.class_names),
        [data.where[i] for i in positions], list(data.heldout_classes), source=data.source, skipped=skipped,
    )


def select_labelled(labels: Sequence[int], per_class: int | None, fraction: float | None, seed: int) -> list[int]:
    """Positions kept for label efficiency: ``per_class`` seeded items a class (all of a
    class with fewer), or a seeded stratified ``fraction``; every position when neither."""
    if per_class is not None and fraction is not None:
        raise FinetuneError("give 'per_class' or 'train_fraction', not both")
    if per_class is not None:
        if per_class < 1:
            raise FinetuneError(f"'per_class': must be at least 1, got {per_class}")
        rng = sample_rng(seed, "per-class")
        labels_array = np.asarray(labels)
        kept = [rng.permutation(np.flatnonzero(labels_array == c))[:per_class] for c in np.unique(labels_array)]
        return sorted(int(p) for k in kept for p in k)
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise FinetuneError(f"'train_fraction': must be in (0, 1], got {fraction}")
        if fraction == 1:
            return list(range(len(labels)))
        _, kept = stratified_split(labels, fraction, seed)
        return kept
    return list(range(len(labels)))


def labelled_splits(model: MultimodalModel, modality: str, config: RunConfig, options: FinetuneOptions) -> tuple[LabelledSet, LabelledSet, str]:
    """(train, eval, how the split was made): the world's fine-tune and evaluation
    samples, a separate eval set, or the set's own split (else a seeded stratified one)."""
    names = list(options.class_names) if options.class_names else None
    world = config.world
    if options.world_eval_per_class is not None:
        world = dataclasses.replace(world, eval_samples_per_class=options.world_eval_per_class)
    if options.data in (None, "world"):
        evaluation = load_eval_set(model, modality, options.eval_data, world, names, options.on_error)
        train = world_labelled_set(model, modality, config, "finetune", options.per_class or options.world_train_per_class)
        split = "world: fine-tune samples (key 'finetune') vs fresh evaluation samples (key 'eval')"
    else:
        data = load_eval_set(model, modality, options.data, world, names, options.on_error)
        if options.eval_data is not None:
            train, evaluation = data, load_eval_set(model, modality, options.eval_data, world, names, options.on_error)
            split = f"train {options.data}, eval {options.eval_data}"
        else:
            if not data.labels:
                raise EvaluationError(f"{data.source} has no labels: fine-tuning needs a labelled set")
            train_pos, test_pos, split = probe_split(data, range(len(data.labels)), options.test_fraction, options.seed)
            # the set's read skips are counted once, with the training part
            train, evaluation = subset(data, train_pos, data.skipped), subset(data, test_pos)
    for part, what in ((train, "training"), (evaluation, "eval")):
        if not part.labels:
            raise EvaluationError(f"{part.source} has no labels: the {what} set of a fine-tune needs them")
    if len(train.class_names) != len(evaluation.class_names):
        raise EvaluationError(
            f"the training set {train.source} has {len(train.class_names)} classes but the eval set "
            f"{evaluation.source} has {len(evaluation.class_names)}: the label counts must match"
        )
    train = subset(train, select_labelled(train.labels, options.per_class, options.train_fraction, options.seed), train.skipped)
    return train, evaluation, split


def transform_items(processor: Processor, data: LabelledSet, on_error: str) -> tuple[list[Any], list[int], int]:
    """Eval-mode samples of the items that load, their positions, and how many were skipped
    (each named in the log, or the error under ``on_error: fail``)."""
    skips = SkipLog(f"fine-tune set {data.source}", on_error, EvaluationError)
    samples, kept = [], []
    for i, raw in enumerate(data.items):
        try:
            samples.append(processor.transform(raw, None))
            kept.append(i)
        except InvalidSample as exc:
            skips.add(data.where[i], exc.reason)
    if not samples:
        raise EvaluationError(f"no usable samples in {data.source} ({skips.count} skipped)")
    return samples, kept, skips.count


# --------------------------------------------------------------------------------------
# The classifier, its blocks and its parameter groups
# --------------------------------------------------------------------------------------


class Classifier(torch.nn.Module):
    """A modality's encoder with a linear head on its pooled features; its processor
    (a plain attribute, no parameters) makes the batches.

    Shapes:
        forward(batch) -> logits [B, num_classes]
    """

    def __init__(self, encoder: Encoder, processor: Processor, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.processor = processor
        self.head = torch.nn.Linear(encoder.embed_dim, num_classes)

    def forward(self, batch: Any) -> torch.Tensor:
        return self.head(self.encoder(batch).pooled.float())


def encoder_blocks(encoder: Encoder, batch: Any) -> list[torch.nn.Module]:
    """The encoder's blocks (``mmssl.model.block_modules``) in the order its forward pass
    first runs them: a modality's ``finetune_blocks()`` as given (input first), the
    others ordered by one forward pass on ``batch``. Parameters outside every block
    (none, for the built-ins) count as the first block.
    """
    blocks = block_modules(encoder)
    if callable(getattr(encoder, "finetune_blocks", None)):
        return blocks
    order: dict[int, int] = {}

    def first_call(i: int) -> Callable[..., None]:
        def hook(_module: torch.nn.Module, _args: Any) -> None:
            order.setdefault(i, len(order))

        return hook

    handles = [b.register_forward_pre_hook(first_call(i)) for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            was_training = encoder.training
            encoder.eval()
            encoder(batch)
            encoder.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return [blocks[i] for i in sorted(range(len(blocks)), key=lambda i: (order.get(i, len(blocks) + i)))]


def parameter_groups(model: Classifier, blocks: Sequence[torch.nn.Module], options: FinetuneOptions) -> list[dict[str, Any]]:
    """One AdamW group a block (plus the head's and the unblocked parameters'), each with
    its ``lr_scale``: the encoder at ``encoder_lr_scale`` (1 in ``full`` mode without
    staging), times ``layer_decay ** (blocks after it)`` when layer decay is on."""
    in_block = {id(p) for b in blocks for p in b.parameters()}
    rest = [p for p in model.encoder.parameters() if id(p) not in in_block]
    encoder_scale = 1.0 if options.mode == "full" else options.encoder_lr_scale
    groups = [{"params": list(model.head.parameters()), "lr_scale": 1.0, "name": "head"}]
    parts = ([rest] if rest else []) + [list(b.parameters()) for b in blocks]
    for i, params in enumerate(parts):
        decay = options.layer_decay ** (len(parts) - 1 - i) if options.layer_decay else 1.0
        groups.append({"params": params, "lr_scale": encoder_scale * decay, "name": f"block{i}"})
    return groups


def trainable_blocks(blocks: Sequence[torch.nn.Module], options: FinetuneOptions, step: int) -> int:
    """How many of the last blocks train at ``step`` (``len(blocks)`` means all, and the
    parameters outside the blocks too)."""
    if options.mode == "linear" or (options.mode == "staged" and step < options.head_steps):
        return 0
    if options.mode == "partial":
        return min(options.unfreeze_blocks, len(blocks))
    return len(blocks)


def set_trainable(model: Classifier, blocks: Sequence[torch.nn.Module], n: int) -> None:
    """Unfreeze the head and the last ``n`` blocks; freeze the rest and keep it in eval
    mode, so a frozen BatchNorm's running statistics do not move either."""
    model.train()
    model.encoder.requires_grad_(n >= len(blocks) > 0)
    if n < len(blocks) or not blocks:
        model.encoder.eval()
    for i, block in enumerate(blocks):
        train = i >= len(blocks) - n
        block.requires_grad_(train)
        block.train(train)


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------


RESUME_NEUTRAL = ("progress", "device", "checkpoint_every", "keep_checkpoints")  # options a resume may change
CHECKPOINT_FILES = (HEAD_WEIGHTS, STATE, META)  # every file a fine-tune checkpoint holds


def recipe(options: FinetuneOptions) -> dict[str, Any]:
    """The options that decide the weights (what a resumed run must share)."""
    return {k: v for k, v in dataclasses.asdict(options).items() if k not in RESUME_NEUTRAL}


def save_finetune_checkpoint(checkpoints: CheckpointManager, step: int, model: Classifier, state: dict[str, Any],
                             options: FinetuneOptions) -> Path:
    """``checkpoints/step_N`` with the classifier's weights, the loop state and the recipe,
    whole or not at all, the old ones pruned (``CheckpointManager.save``)."""
    def write(tmp: Path) -> None:
        save_model(model, str(tmp / HEAD_WEIGHTS))
        torch.save(state, tmp / STATE)
        (tmp / META).write_text(json.dumps({"step": step, "options": recipe(options)}), encoding="utf-8")

    return checkpoints.save(step, write)


def load_latest(checkpoints: CheckpointManager, model: Classifier, options: FinetuneOptions) -> dict[str, Any] | None:
    """Load the newest usable fine-tune checkpoint into ``model``; its loop state, or None
    when there is none. A corrupt or incomplete one is skipped for the one before it,
    with a warning (``CheckpointManager.latest``). A checkpoint saved with another recipe
    is an error naming the options that differ (a resume continues the same run), as are
    weights that do not fit ``model``."""

    def load(checkpoint: Path) -> dict[str, Any]:
        saved = json.loads((checkpoint / META).read_text(encoding="utf-8")).get("options", {})
        ours = json.loads(json.dumps(recipe(options)))  # tuples as lists, as saved
        differ = sorted(k for k in ours.keys() | saved.keys() if ours.get(k) != saved.get(k))
        if differ:
            raise FinetuneError(
                f"{checkpoints.output_dir} holds a fine-tune with other options ({', '.join(f'{k}: {saved.get(k)!r} there, {ours.get(k)!r} now' for k in differ)}); "
                "give the same options to resume it, or another output directory"
            )
        state = load_trainer_state(checkpoint, STATE)
        load_safetensors(model, checkpoint / HEAD_WEIGHTS,
                         f"fine-tune checkpoint {checkpoint} does not fit this classifier (another pretrained checkpoint?)")
        return state

    found = checkpoints.latest(load)
    if found is None:
        return None
    log.info("resuming fine-tune from %s", found[0])
    return found[1]


# --------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------


@torch.no_grad()
def predict(model: Classifier, samples: Sequence[Any], batch_size: int, device: torch.device) -> torch.Tensor:
    """Logits [N, C] of eval-mode samples."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(samples), batch_size):
        batch = model.processor.move_batch(model.processor.collate(list(samples[start : start + batch_size])), device)
        out.append(model(batch).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def evaluate(model: Classifier, samples: Sequence[Any], labels: Sequence[int], data: LabelledSet, batch_size: int,
             device: torch.device) -> dict[str, Any]:
    """Top-1, mean per-class recall, per-class recall by name; on the world also the
    held-out combinations' and the seen classes' top-1."""
    y = torch.tensor(list(labels))
    figures = classification_metrics(predict(model, samples, batch_size, device), y, len(data.class_names))
    out: dict[str, Any] = {
        "top1": figures["top1"],
        "mean_per_class_recall": figures["mean_per_class_recall"],
        "per_class_recall": {data.class_names[c]: r for c, r in figures["per_class_recall"].items()},
        "num_eval": len(y),
    }
    if data.heldout_classes:
        heldout = torch.isin(y, torch.tensor(data.heldout_classes))
        out["heldout_top1"] = float(figures["correct"][heldout].float().mean())
        out["seen_top1"] = float(figures["correct"][~heldout].float().mean())
    return out


def batch_positions(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """The training positions of ``step``: consecutive slices of a seeded permutation per
    epoch; a function of the step alone, so resume needs no loader state."""
    out = []
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(k, n)
        out.append(int(sample_rng(seed, "finetune-order", epoch).permutation(n)[offset]))
    return out


@dataclass
class TrainingSet:
    """Training samples (eval-transformed), their labels, their raw items (for augmented
    views), and optional per-item loss weights (self-training's pseudo-labels)."""

    samples: list[Any]
    labels: list[int]
    raw: list[Any] = field(default_factory=list)
    weights: list[float] | None = None  # None: every item weighs 1 (plain mean cross-entropy)


StepCallback = Callable[[int, Classifier], None]


def train_classifier(
    model: Classifier,
    train: TrainingSet,
    eval_samples: Sequence[Any],
    eval_labels: Sequence[int],
    eval_data: LabelledSet,
    options: FinetuneOptions,
    checkpoints: CheckpointManager,
    after_step: StepCallback | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``train`` as ``options.mode`` says, resuming from the latest
    checkpoint of ``checkpoints`` (``finetune_checkpoints``: its directory is the run's);
    returns the final evaluation. ``after_step(step, model)`` runs after each optimizer
    update (tests kill or inspect the run there)."""
    device = torch.device(options.device)
    model.to(device)
    processor = model.processor
    blocks = encoder_blocks(model.encoder, processor.move_batch(processor.collate(train.samples[: min(2, len(train.samples))]), device))
    groups = parameter_groups(model, blocks, options)
    optimizer = torch.optim.AdamW(
        [{"params": g["params"], "lr": options.lr * g["lr_scale"]} for g in groups], lr=options.lr,
        weight_decay=options.weight_decay,
    )
    schedule = TrainConfig(steps=options.steps, warmup_steps=options.warmup_steps, min_lr_ratio=options.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, schedule))
    output = checkpoints.output_dir
    checkpoints.prepare()
    step = 0
    state = load_latest(checkpoints, model, options)
    if state is not None:
        optimizer.load_state_dict(fit_optimizer_state_shapes(state["optimizer"], [g["params"] for g in optimizer.param_groups]))
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        # every generator; a checkpoint saved before they all were holds torch's alone
        set_rng_state(state["rng"] if "rng" in state else {"torch": state["torch_rng"]})
    run_log = RunLog(output, tensorboard=False, resume_step=step)
    bar = tqdm(total=options.steps, initial=step, desc=f"fine-tune {options.mode}", unit="step", disable=not options.progress)
    n = len(train.samples)
    final: dict[str, Any] | None = None  # the last step's evaluation
    losses: list[float] = []
    started, seen = time.perf_counter(), 0
    try:
        while step < options.steps:
            set_trainable(model, blocks, trainable_blocks(blocks, options, step))
            positions = batch_positions(step, n, options.batch_size, options.seed)
            if options.augment and train.raw:
                samples = [processor.transform(train.raw[p], sample_rng(options.seed, "finetune-view", step, j))
                           for j, p in enumerate(positions)]
            else:
                samples = [train.samples[p] for p in positions]
            batch = processor.move_batch(processor.collate(samples), device)
            labels = torch.tensor([train.labels[p] for p in positions], device=device)
            if train.weights is None:
                loss = F.cross_entropy(model(batch), labels)
            else:  # the weighted mean: a pseudo-label of weight w counts w times a true label
                weights = torch.tensor([train.weights[p] for p in positions], device=device)
                loss = (F.cross_entropy(model(batch), labels, reduction="none") * weights).sum() / weights.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(loss.item())
            seen += len(positions)
            if after_step is not None:
                after_step(step, model)
            rate = seen / max(time.perf_counter() - started, 1e-9)
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.4f}", samples_s=f"{rate:.0f}")
            record: dict[str, Any] = {}
            if step % options.log_every == 0 or step == options.steps:
                record.update(loss=float(np.mean(losses)), lr=optimizer.param_groups[0]["lr"],
                              trainable_blocks=trainable_blocks(blocks, options, step - 1), samples_per_s=rate)
                losses = []
            if step % options.eval_every == 0 or step == options.steps:
                final = figures = evaluate(model, eval_samples, eval_labels, eval_data, options.batch_size, device)
                record.update({f"eval/{k}": v for k, v in figures.items() if isinstance(v, float)})
            if record:
                run_log.log(step, record)
            if step % options.checkpoint_every == 0 or step == options.steps:
                run_log.sync()
                save_finetune_checkpoint(checkpoints, step, model, {
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                    "rng": rng_state(),
                }, options)
    finally:
        bar.close()
        run_log.close()
    return final or evaluate(model, eval_samples, eval_labels, eval_data, options.batch_size, device)


def build_classifier(loaded_model: MultimodalModel, config: RunConfig, modality: str, num_classes: int,
                     from_scratch: bool, seed: int) -> Classifier:
    """The checkpoint's ``modality`` encoder (or, ``from_scratch``, a fresh one built from
    the same config) with a new linear head, initialised from ``seed``."""
    if modality not in loaded_model.encoders:
        raise EvaluationError(f"checkpoint has no modality '{modality}'; it has {sorted(loaded_model.encoders)}")
    fresh = build_model(config, pretrained=False) if from_scratch else None  # fresh: not from any pretrained file
    encoder = fresh.encoders[modality] if fresh is not None else loaded_model.encoders[modality]
    torch.manual_seed(seed)
    return Classifier(encoder, loaded_model.processors[modality], num_classes)


def check_options(options: FinetuneOptions) -> FinetuneOptions:
    """``options`` if they can run; else a FinetuneError naming the option and its range."""
    if options.mode not in MODES:
        raise FinetuneError(f"'mode': unknown mode '{options.mode}': use one of {', '.join(MODES)}")
    problems = [
        (options.steps >= 1, f"'steps': must be at least 1, got {options.steps}"),
        (options.batch_size >= 1, f"'batch_size': must be at least 1, got {options.batch_size}"),
        (options.lr > 0 and options.encoder_lr_scale > 0, f"'lr' and 'encoder_lr_scale' must be positive, got "
                                                          f"{options.lr} and {options.encoder_lr_scale}"),
        (options.mode != "partial" or options.unfreeze_blocks >= 1,
         f"'unfreeze_blocks': must be at least 1 in partial mode, got {options.unfreeze_blocks} (mode linear freezes all)"),
        (options.mode != "staged" or 0 <= options.head_steps < options.steps,
         f"'head_steps': must be in [0, steps) in staged mode, got {options.head_steps} with {options.steps} steps"),
        (options.layer_decay is None or 0 < options.layer_decay <= 1, f"'layer_decay': must be in (0, 1], got {options.layer_decay}"),
        (min(options.checkpoint_every, options.eval_every, options.log_every) >= 1,
         "'checkpoint_every', 'eval_every' and 'log_every' must be at least 1"),
    ]
    for ok, message in problems:
        if not ok:
            raise FinetuneError(message)
    return options


def finetune(
    checkpoint: str | Path,
    modality: str,
    output: str | Path,
    options: FinetuneOptions | None = None,
    after_step: StepCallback | None = None,
) -> dict[str, Any]:
    """Fine-tune ``modality``'s encoder of ``checkpoint`` on labelled data; writes
    ``output``/finetune_report.json, metrics.jsonl, learning_curve.png and checkpoints,
    and returns the report (top1 and mean per-class recall on the eval split).

    Example:
        mmssl.finetune("runs/tiny_joint", "image", "runs/ft_image",
                       FinetuneOptions(mode="staged", per_class=10, steps=300))
    """
    options = check_options(options or FinetuneOptions())
    checkpoints = finetune_checkpoints(output, options)
    with checkpoints.holding():  # one run per output directory
        return _finetune(checkpoint, modality, checkpoints, options, after_step)


def finetune_checkpoints(output: str | Path, options: FinetuneOptions) -> CheckpointManager:
    """The checkpoint manager of a fine-tune run directory."""
    return CheckpointManager(output, options.keep_checkpoints, CHECKPOINT_FILES,
                             start_over="move them away, or fine-tune into another output directory")


def _finetune(checkpoint: str | Path, modality: str, checkpoints: CheckpointManager, options: FinetuneOptions,
              after_step: StepCallback | None) -> dict[str, Any]:
    output = checkpoints.output_dir
    loaded = load_checkpoint(checkpoint)
    train_set, eval_set, split = labelled_splits(loaded.model, modality, loaded.config, options)
    processor = loaded.model.processors[modality]
    train_samples, kept, train_skipped = transform_items(processor, train_set, options.on_error)
    eval_samples, eval_kept, eval_skipped = transform_items(processor, eval_set, options.on_error)
    model = build_classifier(loaded.model, loaded.config, modality, len(train_set.class_names), options.from_scratch, options.seed)
    train = TrainingSet(train_samples, [train_set.labels[i] for i in kept], [train_set.items[i] for i in kept])
    figures = train_classifier(model, train, eval_samples, [eval_set.labels[i] for i in eval_kept], eval_set, options,
                               checkpoints, after_step)
    report = {
        "modality": modality, "mode": options.mode, "from_scratch": options.from_scratch,
        "checkpoint": str(loaded.checkpoint), "data": options.data or "world", "split": split,
        "num_train": len(kept), "num_classes": len(train_set.class_names), "steps": options.steps,
        "skipped": train_set.skipped + train_skipped + eval_set.skipped + eval_skipped,
        **figures, "options": dataclasses.asdict(options),
    }
    write_report(output, report)
    return report


def write_report(output: Path, report: dict[str, Any]) -> None:
    """finetune_report.json and, from metrics.jsonl, learning_curve.png."""
    from mmssl.common.plots import plot_learning_curve

    write_text_atomic(output / REPORT, json.dumps(report, indent=2))
    metrics = output / "metrics.jsonl"
    if metrics.is_file():
        plot_learning_curve(read_metrics(metrics), output / "learning_curve.png",
                            f"{report['modality']} {report['mode']}{' from scratch' if report['from_scratch'] else ''}",
                            chance=1 / report["num_classes"] if report.get("num_classes") else None)
