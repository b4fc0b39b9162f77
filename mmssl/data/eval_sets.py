"""Labelled evaluation sets: the embedded world's fresh samples, an image folder, an
ESC-50 style CSV, a labelled graph file. Each is a ``LabelledSet`` of raw items that
the modality's ``transform`` reads, as training sources are."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mmssl.config import WorldConfig
from mmssl.data.graphs import BadRecord, read_graph_file, record_field
from mmssl.model import MultimodalModel
from mmssl.seeding import sample_rng
from mmssl.world import World, world_for
from modalities.base import modality_roles


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
    """A labelled graph file (JSONL or a saved list of Data, see ``mmssl.data.graphs``).

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
