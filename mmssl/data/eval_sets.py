"""Labelled evaluation sets: the embedded world's fresh samples, an image folder, an
ESC-50 style CSV, a labelled graph file, labelled WebDataset shards. Each is a ``LabelledSet`` of raw items that
the modality's ``transform`` reads, as training sources are."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mmssl.config import WorldConfig
from mmssl.data.bad_input import BadRecord, SkipLog
from mmssl.data.files import read_csv
from mmssl.data.graphs import read_graph_file, record_field
from mmssl.data.shards import ShardSource, expand_shards
from mmssl.data.stream import DataError, ModalityData
from mmssl.common.seeding import sample_rng
from mmssl.world import World, world_for
from modalities.base import InvalidSample, Processor

CLASS_NAMES_FILE = "classnames.txt"  # clip_benchmark's name, beside the shards or one folder up


class EvaluationError(ValueError):
    """Evaluation cannot run as asked; the message says what to change."""


@dataclass
class LabelledSet:
    """Raw items with integer labels over ``class_names``; ``heldout`` marks classes
    whose attribute combination training never saw (world only)."""

    items: Sequence[Any]
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
    # Or, outside the world: the item each caption describes (several captions may share
    # an item; a caption whose text equals one of an item's own also counts for it).
    caption_owners: list[int] = field(default_factory=list)
    # The world's attribute values of each item (class and nuisance attributes), and the
    # values each attribute can take: what cross-modal retrieval matches on.
    item_attributes: list[dict[str, str]] = field(default_factory=list)
    attribute_values: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # "train" / "test" per item where the dataset fixes a split (for linear probes).
    splits: list[str] = field(default_factory=list)
    skipped: int = 0  # samples left out while reading the set (their row or label could not be read)


def set_skips(path: str | Path, on_error: str) -> SkipLog:
    """The SkipLog of reading evaluation set ``path``: rows or labels that cannot be read."""
    return SkipLog(f"evaluation set {path}", on_error, EvaluationError)


def read_eval_csv(path: Path, columns: Sequence[str], layout: str) -> tuple[list[dict[str, str] | BadRecord], list[str]]:
    """Records and their names of an evaluation CSV that must have ``columns``."""
    try:
        rows = read_csv(path)
    except DataError as exc:
        raise EvaluationError(str(exc)) from None
    missing = sorted(c for c in columns if c not in rows.header)
    if missing:
        raise EvaluationError(f"{path}: missing columns {missing} (columns: {rows.header}); {layout}")
    if not rows.records:
        raise EvaluationError(f"{path}: no data rows")
    return rows.records, [rows.where(i) for i in range(len(rows.records))]


def world_eval_set(model: ModalityData, modality: str, world_config: WorldConfig) -> LabelledSet:
    """Fresh samples of every world class (none drawn by any training stream)."""
    renderer = model.renderers[modality]
    world: World = world_for(renderer, world_config)
    data = LabelledSet([], [], world.class_names, [], list(world.heldout_classes), source="world")
    space = world.space
    attributes = {**space.class_attributes, **space.nuisance_attributes, **space.shared_attributes}
    data.attribute_values = {a: tuple(v) for a, v in attributes.items()}
    for cls in world.classes:
        for i in range(world_config.eval_samples_per_class):
            # An "eval" key in the seed: training streams never draw these generators.
            rng = sample_rng(world_config.seed, "eval", cls.index, i)
            concept = world.concept(cls.index, rng)
            data.items.append(renderer.render(concept, rng))
            data.labels.append(cls.index)
            data.where.append(f"world eval sample {cls.name} #{i}")
            caption, codes = world.caption(concept, rng, single_attribute_prob=0.0)
            data.captions.append(caption)
            data.caption_codes.append(codes)
            data.item_codes.append(world.match_codes(concept))
            data.item_attributes.append(dict(concept))
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


def classification_csv_set(path: str | Path, on_error: str = "skip") -> LabelledSet:
    """A classification CSV in ESC-50's layout: columns ``filename``, ``target`` (class
    index), ``category`` (class name, '_' as space). Files are looked up beside the CSV,
    then in ``../audio/`` (ESC-50 keeps meta/esc50.csv and audio/*.wav). A row that does
    not parse, or whose target is not an integer, is a counted skip (or the error
    under ``on_error: fail``); a target named by two categories is an error."""
    path = Path(path)
    if not path.exists():
        raise EvaluationError(f"classification CSV not found: {path}")
    records, names_of = read_eval_csv(path, ("filename", "target", "category"), "ESC-50 layout: filename,target,category")
    skips = set_skips(path, on_error)
    rows: list[tuple[dict[str, str], int, str]] = []
    names: dict[int, str] = {}
    for record, name in zip(records, names_of):
        if isinstance(record, BadRecord):
            skips.add(name, record.reason)
            continue
        try:
            target = int(record["target"])
        except ValueError:
            skips.add(name, f"target {record['target']!r} is not an integer")
            continue
        category = record["category"].replace("_", " ")
        if names.setdefault(target, category) != category:
            raise EvaluationError(f"{name}: target {target} is '{category}' here but '{names[target]}' before")
        rows.append((record, target, name))
    if not rows:
        raise EvaluationError(f"{path}: no usable rows ({skips.count} skipped)")
    index = {t: i for i, t in enumerate(sorted(names))}
    roots = [path.parent, path.parent.parent / "audio"]
    items, labels, where = [], [], []
    for record, target, name in rows:
        found = next((r / record["filename"] for r in roots if (r / record["filename"]).is_file()), path.parent / record["filename"])
        items.append(str(found))
        labels.append(index[target])
        where.append(f"{name} ({found})")
    return LabelledSet(items, labels, [names[t] for t in sorted(names)], where, source=f"csv:{path}", skipped=skips.count)


def pairs_set(path: str | Path, file_column: str = "filepath", caption_column: str = "title", on_error: str = "skip") -> LabelledSet:
    """Paired data for retrieval: a CSV of file and caption columns (open_clip's layout,
    files relative to the CSV's folder). Rows naming the same file are several captions
    of one item. No labels: classification and probes need a labelled set. A row that
    does not parse or has an empty cell is a counted skip, as in training (or the error
    under ``on_error: fail``)."""
    path = Path(path)
    if not path.exists():
        raise EvaluationError(f"paired CSV not found: {path}")
    records, names = read_eval_csv(
        path, (file_column, caption_column), "name them with --file-column / --caption-column"
    )
    skips = set_skips(path, on_error)
    items: list[str] = []
    where: list[str] = []
    index: dict[str, int] = {}
    data = LabelledSet(items, [], [], where, source=f"pairs:{path}")
    for record, name in zip(records, names):
        if isinstance(record, BadRecord):
            skips.add(name, record.reason)
            continue
        file, caption = record[file_column].strip(), record[caption_column].strip()
        if not file or not caption:
            skips.add(name, f"empty '{file_column if not file else caption_column}' cell")
            continue
        if file not in index:
            index[file] = len(items)
            items.append(str(path.parent / file))
            where.append(f"{name} ({path.parent / file})")
        data.captions.append(caption)
        data.caption_owners.append(index[file])
    if not items:
        raise EvaluationError(f"{path}: no usable rows ({skips.count} skipped)")
    data.skipped = skips.count
    return data


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a text file, one a line (line i names label i)."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"class names file not found: {path}")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise EvaluationError(f"{path}: no class names (one a line)")
    return names


def resolve_labels(
    raw_labels: Sequence[int | str], where: Sequence[str], class_names: Sequence[str] | None, path: str | Path
) -> tuple[list[str], list[int]]:
    """(class names, label indices) from labels that are class names or indices into
    ``class_names``; without ``class_names`` the sorted set of string labels."""
    if class_names is None:
        if not all(isinstance(label, str) for label in raw_labels):
            raise EvaluationError(f"{path}: integer labels need class names (--class-names FILE, one name a line)")
        class_names = sorted(set(raw_labels))
    names = list(class_names)
    index = {name: i for i, name in enumerate(names)}
    labels = []
    for label, name in zip(raw_labels, where):
        if isinstance(label, str):
            if label not in index:
                raise EvaluationError(f"{name}: label '{label}' is not a class name ({names})")
            labels.append(index[label])
        elif not 0 <= label < len(names):
            raise EvaluationError(f"{name}: label {label} out of range for {len(names)} class names")
        else:
            labels.append(label)
    return names, labels


def read_templates(path: str | Path) -> list[str]:
    """Prompt templates from a text file, one a line, each with one ``{}`` for the class name."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"templates file not found: {path}")
    templates = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if line.count("{}") != 1 or line.replace("{}", "").count("{") or line.replace("{}", "").count("}"):
            raise EvaluationError(f"{path} line {number}: a template needs exactly one {{}} for the class name, got {line!r}")
        templates.append(line.strip())
    if not templates:
        raise EvaluationError(f"{path}: no templates (one a line, e.g. 'a photo of a {{}}.')")
    return templates


def graph_file_set(path: str | Path, class_names: Sequence[str] | None = None, on_error: str = "skip") -> LabelledSet:
    """A labelled graph file (JSONL or a saved list of Data, see ``mmssl.data.graphs``).

    Labels are class names (strings) or indices into ``class_names`` (needed then);
    ``y`` of a Data is an index. When every record has a ``text`` caption, retrieval
    pairs each graph with its own caption; a ``split`` field fixes linear-probe splits.
    A line that is not a JSON object, or a record without a usable label, is a counted
    skip, as in training (or the error under ``on_error: fail``).
    """
    try:
        all_records, all_where = read_graph_file(path)
    except DataError as exc:
        raise EvaluationError(str(exc)) from None
    skips = set_skips(path, on_error)
    records, where, raw_labels = [], [], []
    for record, name in zip(all_records, all_where):
        if isinstance(record, BadRecord):
            skips.add(name, record.reason)
            continue
        label = record_field(record, "label")
        if label is None or isinstance(label, bool) or not isinstance(label, (int, str)):
            skips.add(name, f"no usable 'label' (got {label!r}); need a class name or index")
            continue
        records.append(record)
        where.append(name)
        raw_labels.append(label)
    if not records:
        raise EvaluationError(f"{path}: no graph with a readable label ({skips.count} skipped)")
    names, labels = resolve_labels(raw_labels, where, class_names, path)
    data = LabelledSet(records, labels, names, where, source=f"graphs:{path}", skipped=skips.count)
    texts = [record_field(r, "text") for r in records]
    if all(isinstance(t, str) and t.strip() for t in texts):
        data.captions = list(texts)
        data.caption_owners = list(range(len(records)))
    splits = [record_field(r, "split") for r in records]
    if all(split in ("train", "test") for split in splits):
        data.splits = list(splits)
    return data


class ShardItems(Sequence[Any]):
    """Raw items of chosen shard samples, read when indexed: a shard set need not fit in memory."""

    def __init__(self, source: ShardSource, indices: Sequence[int], modality: Processor) -> None:
        self.source, self.indices, self.modality = source, list(indices), modality

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        return self.source.raw_item(self.indices[i], self.modality)


def _shard_label(source: ShardSource, index: int) -> int | str:
    cls = source.text_member(index, ".cls")
    if cls is not None:
        try:
            return int(cls)
        except ValueError:
            raise InvalidSample(f".cls member {cls[:40]!r} is not a class index", source=source.where(index)) from None
    record = source.record(index) or {}
    label = record.get("label")
    if label is None or isinstance(label, bool) or not isinstance(label, (int, str)):
        raise InvalidSample(f"no label: a .cls member or a 'label' in the .json member (got {label!r})", source=source.where(index))
    return label


def shard_set(path: str, modality: Processor, class_names: Sequence[str] | None = None, on_error: str = "skip") -> LabelledSet:
    """Labelled WebDataset shards (``path``: a directory or a brace pattern, as in training).

    A sample's label is its ``KEY.cls`` member (a class index: webdataset's and
    clip_benchmark's convention) or the ``label`` of its ``KEY.json`` (a class name or
    index). Class names: ``class_names``, else ``classnames.txt`` beside the shards or
    one folder up (clip_benchmark's layout), else the sorted string labels. When every
    sample has a caption (``KEY.txt``, or the caption/text of ``KEY.json``), retrieval
    pairs each item with its own caption. A sample whose label cannot be read is a
    counted, logged skip, or an error under ``on_error: fail``.
    """
    try:
        shards = expand_shards(path)
        source = ShardSource(shards, {modality.key: modality})
    except DataError as exc:
        raise EvaluationError(str(exc)) from None
    kept, raw_labels, where, captions = [], [], [], []
    skips = set_skips(path, on_error)
    for index in range(len(source)):
        try:
            label, caption = _shard_label(source, index), source.caption(index)
        except InvalidSample as exc:
            skips.add(exc.source or source.where(index), exc.reason)
            continue
        kept.append(index)
        raw_labels.append(label)
        captions.append(caption)
        where.append(source.where(index))
    if not kept:
        raise EvaluationError(f"shard set {path}: no sample with a readable label ({skips.count} skipped)")
    if class_names is None:
        folders = (shards[0].parent, shards[0].parent.parent)
        found = next((f / CLASS_NAMES_FILE for f in folders if (f / CLASS_NAMES_FILE).is_file()), None)
        if found is not None and not all(isinstance(label, str) for label in raw_labels):
            class_names = read_class_names(found)
    names, labels = resolve_labels(raw_labels, where, class_names, path)
    data = LabelledSet(ShardItems(source, kept, modality), labels, names, where, source=f"shards:{path}", skipped=skips.count)
    if all(captions):
        data.captions = list(captions)
        data.caption_owners = list(range(len(kept)))
    return data


def load_eval_set(
    model: ModalityData,
    modality: str,
    spec: str | None,
    world_config: WorldConfig,
    class_names: Sequence[str] | None = None,
    on_error: str = "skip",
    columns: tuple[str, str] = ("filepath", "title"),
) -> LabelledSet:
    """``spec``: None or 'world' (the embedded world), 'folder:PATH', 'csv:PATH' (ESC-50
    layout), 'graphs:PATH' (a labelled graph file), 'shards:PATH' (WebDataset shards) or
    'pairs:PATH' (a CSV of file and caption ``columns``, for retrieval). ``class_names``
    name integer labels, or rename a set's classes (the count must match)."""
    if modality not in model.processors:
        raise EvaluationError(f"checkpoint has no modality '{modality}'; it has {sorted(model.processors)}")
    processor = model.processors[modality]
    kind, _, path = (spec or "world").partition(":")
    if kind in ("folder", "csv", "pairs") and processor.consumes_captions or kind in ("folder", "csv") and not processor.file_extensions:
        raise EvaluationError(f"modality '{modality}' reads no files: --data {kind}:PATH cannot feed it")
    if kind == "graphs" and (processor.file_extensions or processor.consumes_captions):
        raise EvaluationError(f"modality '{modality}' does not read graph records: --data graphs:PATH cannot feed it")
    if kind == "world" and not path:
        if model.renderers.get(modality) is None:
            raise EvaluationError(f"modality '{modality}' has no embedded world; pass --data")
        data = world_eval_set(model, modality, world_config)
    elif kind == "folder" and path:
        data = folder_set(path, processor.file_extensions)
    elif kind == "csv" and path:
        data = classification_csv_set(path, on_error)
    elif kind == "graphs" and path:
        return graph_file_set(path, class_names, on_error)
    elif kind == "shards" and path:
        return shard_set(path, processor, class_names, on_error)
    elif kind == "pairs" and path:
        return pairs_set(path, *columns, on_error=on_error)
    else:
        raise EvaluationError(
            f"unknown --data '{spec}': use 'world', 'folder:PATH', 'csv:PATH', 'graphs:PATH', 'shards:PATH' or 'pairs:PATH'"
        )
    if class_names is not None:
        if len(class_names) != len(data.class_names):
            raise EvaluationError(
                f"--class-names has {len(class_names)} names but {data.source} has {len(data.class_names)} classes "
                f"({', '.join(data.class_names[:4])}{', ...' if len(data.class_names) > 4 else ''})"
            )
        data.class_names = list(class_names)
    return data
