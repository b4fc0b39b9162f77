"""Zero-shot evaluation: class names x prompt templates -> text embeddings -> cosine.

Works for any modality that an objective embeds into a space shared with a caption
modality (image-, audio- and graph-text). Data comes from the embedded world's
evaluation split (fresh samples of every class, plus the held-out compositions) or
from a labelled dataset on disk (an image folder, an ESC-50 style CSV, a graph file).
A linear probe on frozen encoder features lives in ``mmssl.linear_probe``.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mmssl.config import WorldConfig
from mmssl.graph_sources import BadRecord, read_graph_file, record_field
from mmssl.model import MultimodalModel
from mmssl.seeding import sample_rng
from mmssl.world import World, world_for
from modalities.base import InvalidSample, modality_roles
from objectives.base import match_matrix

log = logging.getLogger(__name__)


class EvaluationError(ValueError):
    """Evaluation cannot run as asked; the message says what to change."""


@dataclass
class LabelledSet:
    """Raw items with integer labels over ``class_names``; ``heldout`` marks classes
    whose attribute combination training never saw (world only)."""

    items: list[Any]
    labels: list[int]
    class_names: list[str]
    where: list[str]
    heldout_classes: list[int] = field(default_factory=list)
    source: str = ""
    # Paired captions, for retrieval: the caption of each item, and attribute codes that
    # mark which captions describe which items (world only).
    captions: list[str] = field(default_factory=list)
    item_codes: list[list[int]] = field(default_factory=list)
    caption_codes: list[list[int]] = field(default_factory=list)
    # "train" / "test" per item where the dataset fixes a split (for linear probes).
    splits: list[str] = field(default_factory=list)


@dataclass
class ZeroShotResult:
    modality: str
    top1: float
    top5: float
    mean_per_class_recall: float
    num_samples: int
    num_classes: int
    per_class_recall: dict[str, float]
    confusion: list[list[int]]
    class_names: list[str]
    skipped: int = 0
    composition_top1: float | None = None
    seen_top1: float | None = None
    heldout_classes: list[str] = field(default_factory=list)
    retrieval: dict[str, dict[str, float]] = field(default_factory=dict)
    linear_probe: dict[str, Any] = field(default_factory=dict)
    data: str = ""
    checkpoint: str = ""

    def to_json(self) -> dict[str, Any]:
        """The JSON report (the confusion matrix goes to the PNG, not here)."""
        out = asdict(self)
        out.pop("confusion")
        if self.composition_top1 is None:
            out.pop("composition_top1")
            out.pop("seen_top1")
            out.pop("heldout_classes")
        if not self.retrieval:
            out.pop("retrieval")
        if not self.linear_probe:
            out.pop("linear_probe")
        return out


# --------------------------------------------------------------------------------------
# Evaluation sets
# --------------------------------------------------------------------------------------


def world_eval_set(model: MultimodalModel, modality: str, world_config: WorldConfig) -> LabelledSet:
    """Fresh samples of every world class (none drawn by any training stream)."""
    encoder = model.encoders[modality]
    world: World = world_for(encoder, world_config)
    data = LabelledSet([], [], world.class_names, [], list(world.heldout_classes), source="world")
    for cls in world.classes:
        for i in range(world_config.eval_samples_per_class):
            # An "eval" key in the seed: training streams never draw these generators.
            rng = sample_rng(world_config.seed, "eval", cls.index, i)
            concept = world.concept(cls.index, rng)
            data.items.append(encoder.render(concept, rng))
            data.labels.append(cls.index)
            data.where.append(f"world eval sample {cls.name} #{i}")
            caption, codes = world.caption(concept, rng, single_attribute_prob=0.0)
            data.captions.append(caption)
            data.caption_codes.append(codes)
            data.item_codes.append(world.attribute_codes(concept))
    return data


def folder_set(root: str | Path, extensions: Sequence[str]) -> LabelledSet:
    """A classification folder: ``root/<class name>/<files>`` (class name: folder name, '_' as space)."""
    root = Path(root)
    if not root.is_dir():
        raise EvaluationError(f"data folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise EvaluationError(f"{root}: no class sub-folders (expected {root}/<class name>/<files>)")
    items, labels = [], []
    for index, name in enumerate(classes):
        files = sorted(f for f in (root / name).rglob("*") if f.suffix.lower() in extensions)
        items += [str(f) for f in files]
        labels += [index] * len(files)
    if not items:
        raise EvaluationError(f"{root}: no files ({', '.join(extensions)}) in the class folders")
    names = [c.replace("_", " ") for c in classes]
    return LabelledSet(items, labels, names, list(items), source=f"folder:{root}")


def classification_csv_set(path: str | Path) -> LabelledSet:
    """A classification CSV in ESC-50's layout: columns ``filename``, ``target`` (class
    index), ``category`` (class name, '_' as space). Files are looked up beside the CSV,
    then in ``../audio/`` (ESC-50 keeps meta/esc50.csv and audio/*.wav)."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"classification CSV not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"filename", "target", "category"} - set(reader.fieldnames or [])
        if missing:
            raise EvaluationError(f"{path}: missing columns {sorted(missing)} (ESC-50 layout: filename,target,category)")
        rows = list(reader)
    if not rows:
        raise EvaluationError(f"{path}: no data rows")
    names: dict[int, str] = {}
    for i, row in enumerate(rows):
        try:
            target = int(row["target"])
        except ValueError:
            raise EvaluationError(f"{path} row {i + 2}: target {row['target']!r} is not an integer") from None
        category = row["category"].replace("_", " ")
        if names.setdefault(target, category) != category:
            raise EvaluationError(f"{path} row {i + 2}: target {target} is '{category}' here but '{names[target]}' before")
    index = {t: i for i, t in enumerate(sorted(names))}
    roots = [path.parent, path.parent.parent / "audio"]
    items, labels, where = [], [], []
    for i, row in enumerate(rows):
        found = next((r / row["filename"] for r in roots if (r / row["filename"]).is_file()), path.parent / row["filename"])
        items.append(str(found))
        labels.append(index[int(row["target"])])
        where.append(f"{path} row {i + 2} ({found})")
    return LabelledSet(items, labels, [names[t] for t in sorted(names)], where, source=f"csv:{path}")


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a text file, one a line (line i names label i)."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"class names file not found: {path}")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise EvaluationError(f"{path}: no class names (one a line)")
    return names


def graph_file_set(path: str | Path, class_names: Sequence[str] | None = None) -> LabelledSet:
    """A labelled graph file (JSONL or a saved list of Data, see ``mmssl.graph_sources``).

    Labels are class names (strings) or indices into ``class_names`` (needed then);
    ``y`` of a Data is an index. When every record has a ``text`` caption, retrieval
    pairs each graph with its own caption; a ``split`` field fixes linear-probe splits.
    """
    try:
        records, where = read_graph_file(path)
    except Exception as exc:  # DataError
        raise EvaluationError(str(exc)) from None
    raw_labels = []
    for record, name in zip(records, where):
        if isinstance(record, BadRecord):
            raise EvaluationError(f"{name}: {record.reason}")
        label = record_field(record, "label")
        if label is None or isinstance(label, bool) or not isinstance(label, (int, str)):
            raise EvaluationError(f"{name}: no usable 'label' (got {label!r}); need a class name or index")
        raw_labels.append(label)
    if class_names is None:
        if not all(isinstance(label, str) for label in raw_labels):
            raise EvaluationError(f"{path}: integer labels need class names (--class-names FILE, one name a line)")
        class_names = sorted(set(raw_labels))
    names = list(class_names)
    labels = []
    for label, name in zip(raw_labels, where):
        if isinstance(label, str):
            if label not in names:
                raise EvaluationError(f"{name}: label '{label}' is not a class name ({names})")
            labels.append(names.index(label))
        elif not 0 <= label < len(names):
            raise EvaluationError(f"{name}: label {label} out of range for {len(names)} class names")
        else:
            labels.append(label)
    data = LabelledSet(list(records), labels, names, list(where), source=f"graphs:{path}")
    texts = [record_field(r, "text") for r in records]
    if all(isinstance(t, str) and t.strip() for t in texts):
        data.captions = list(texts)
        data.item_codes = data.caption_codes = [[i] for i in range(len(records))]
    splits = [record_field(r, "split") for r in records]
    if all(split in ("train", "test") for split in splits):
        data.splits = list(splits)
    return data


def load_eval_set(
    model: MultimodalModel,
    modality: str,
    spec: str | None,
    world_config: WorldConfig,
    class_names: Sequence[str] | None = None,
) -> LabelledSet:
    """``spec``: None or 'world' (the embedded world), 'folder:PATH', 'csv:PATH' (ESC-50
    layout) or 'graphs:PATH' (a labelled graph file; ``class_names`` for integer labels)."""
    if spec is None or spec == "world":
        if modality not in modality_roles(model.encoders).renderers:
            raise EvaluationError(f"modality '{modality}' has no embedded world; pass --data")
        return world_eval_set(model, modality, world_config)
    kind, _, path = spec.partition(":")
    if kind == "folder" and path:
        return folder_set(path, model.encoders[modality].file_extensions)
    if kind == "csv" and path:
        return classification_csv_set(path)
    if kind == "graphs" and path:
        return graph_file_set(path, class_names)
    raise EvaluationError(f"unknown --data '{spec}': use 'world', 'folder:PATH', 'csv:PATH' or 'graphs:PATH'")


# --------------------------------------------------------------------------------------
# Zero-shot classification
# --------------------------------------------------------------------------------------


def caption_partner(model: MultimodalModel, modality: str, objective: str | None = None) -> tuple[str, str]:
    """(objective, caption modality) that give ``modality`` a space shared with text."""
    name = model.shared_space(modality, objective)
    partners = [m for m in modality_roles(model.modalities_of(name)).captioners if m != modality]
    if not partners:
        raise EvaluationError(f"objective '{name}' pairs '{modality}' with no caption modality: no zero-shot prompts")
    return name, partners[0]


def class_embeddings(
    model: MultimodalModel, text_modality: str, class_names: Sequence[str], templates: Sequence[str], objective: str
) -> torch.Tensor:
    """[C, E]: per class, the mean of its normalised prompt embeddings, renormalised."""
    prompts = [t.format(c) for c in class_names for t in templates]
    emb = model.encode(text_modality, prompts, objective=objective)
    emb = emb.view(len(class_names), len(templates), -1).mean(1)
    return torch.nn.functional.normalize(emb, dim=-1)


def embed_items(
    model: MultimodalModel, modality: str, data: LabelledSet, objective: str | None, batch_size: int, on_error: str
) -> tuple[torch.Tensor, list[int], int]:
    """Embeddings of the items that load, their indices in ``data``, and how many were
    skipped. ``objective`` None gives the encoder's own pooled features (frozen, for
    linear probes) instead of the objective's shared space."""
    encoder = model.encoders[modality]
    kept_samples, kept, skipped = [], [], 0
    embeddings = []

    def encode(samples: list[Any]) -> torch.Tensor:
        batch = encoder.collate(samples)
        if objective is not None:
            return model.encode(modality, batch, objective=objective)
        return pooled_features(model, modality, batch)

    for index, (item, where) in enumerate(zip(data.items, data.where)):
        try:
            kept_samples.append(encoder.transform(item, None))
            kept.append(index)
        except InvalidSample as exc:
            if on_error == "fail":
                raise EvaluationError(f"bad sample {exc.source or where}: {exc.reason}") from None
            skipped += 1
            log.warning("skipped bad sample %s: %s", exc.source or where, exc.reason)
        if len(kept_samples) == batch_size:
            embeddings.append(encode(kept_samples))
            kept_samples = []
    if kept_samples:
        embeddings.append(encode(kept_samples))
    if not embeddings:
        raise EvaluationError(f"no usable samples in {data.source} ({skipped} skipped)")
    return torch.cat(embeddings), kept, skipped


@torch.no_grad()
def pooled_features(model: MultimodalModel, modality: str, batch: Any) -> torch.Tensor:
    """The encoder's pooled output [B, D] for a collated batch, in eval mode."""
    encoder = model.encoders[modality]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        return encoder(encoder.move_batch(batch, device)).pooled.float().cpu()
    finally:
        model.train(was_training)


def retrieval_recall(
    queries: torch.Tensor, keys: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int] = (1, 5, 10), chunk: int = 1024
) -> dict[str, float]:
    """Share of queries with a relevant key among their top k by cosine.

    Shapes:
        queries: [Q, E]; keys: [K, E] (both L2-normalised); relevant: [Q, K] bool.
    """
    top = min(max(ks), keys.shape[0])
    hits = torch.cat([  # the top keys of a block of queries at a time: memory stays [chunk, K]
        torch.gather(relevant[i : i + chunk], 1, (queries[i : i + chunk] @ keys.T).topk(top, dim=1).indices)
        for i in range(0, queries.shape[0], chunk)
    ])
    return {f"R@{k}": float(hits[:, : min(k, top)].any(1).float().mean()) for k in ks}


def zero_shot_classify(
    model: MultimodalModel,
    modality: str,
    data: LabelledSet,
    templates: Sequence[str] | None = None,
    objective: str | None = None,
    batch_size: int = 256,
    on_error: str = "skip",
) -> ZeroShotResult:
    """Classify ``data`` by cosine to class prompt embeddings; top-1/top-5/per-class recall."""
    objective, text_modality = caption_partner(model, modality, objective)
    templates = list(templates or model.encoders[modality].prompt_templates())
    classes = class_embeddings(model, text_modality, data.class_names, templates, objective)
    emb, kept, skipped = embed_items(model, modality, data, objective, batch_size, on_error)
    labels = [data.labels[i] for i in kept]
    scores = emb @ classes.T
    y = torch.tensor(labels)
    k = min(5, len(data.class_names))
    topk = scores.topk(k, dim=1).indices
    pred = topk[:, 0]
    correct1 = pred == y
    correct5 = (topk == y.unsqueeze(1)).any(1)
    num_classes = len(data.class_names)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (y.numpy(), pred.numpy()), 1)
    support = confusion.sum(1)
    recall = {data.class_names[c]: float(confusion[c, c] / support[c]) for c in range(num_classes) if support[c]}
    result = ZeroShotResult(
        modality=modality,
        top1=float(correct1.float().mean()),
        top5=float(correct5.float().mean()),
        mean_per_class_recall=float(np.mean(list(recall.values()))),
        num_samples=len(labels),
        num_classes=num_classes,
        per_class_recall=recall,
        confusion=confusion.tolist(),
        class_names=list(data.class_names),
        skipped=skipped,
        data=data.source,
    )
    if data.captions and not skipped:
        text = model.encode(text_modality, data.captions, objective=objective)
        relevant = match_matrix(torch.tensor(data.item_codes), torch.tensor(data.caption_codes))
        result.retrieval = {
            f"{modality}_to_{text_modality}": retrieval_recall(emb, text, relevant),
            f"{text_modality}_to_{modality}": retrieval_recall(text, emb, relevant.T),
        }
    if data.heldout_classes:
        heldout = torch.isin(y, torch.tensor(data.heldout_classes))
        result.composition_top1 = float(correct1[heldout].float().mean())
        result.seen_top1 = float(correct1[~heldout].float().mean())
        result.heldout_classes = [data.class_names[c] for c in data.heldout_classes]
    return result
