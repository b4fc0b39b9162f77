"""Labelled evaluation sets: what a source kind gives ``mmssl-zero-shot``,
``mmssl-finetune`` and self-training (``--data KIND:PATH``), and the helpers every
kind's reader shares (skips, class names, integer labels, prompt templates)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mmssl.config import WorldConfig
from mmssl.data.bad_input import SkipLog
from modalities.base import Processor, Renderer


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
    # The set's own cross-validation fold of each item where it fixes folds (ESC-50's
    # fold column): ``--folds`` probes test on each in turn (mmssl.eval.folds).
    folds: list[str] = field(default_factory=list)
    skipped: int = 0  # samples left out while reading the set (their row or label could not be read)


@dataclass(frozen=True)
class EvalSetContext:
    """What a source kind reads a labelled set with, beside its path: the modality it
    feeds (its processor and renderer), the checkpoint's world section, class names
    (naming integer labels, or renaming a set's classes), what to do with a bad row, and
    the file and caption columns of a paired CSV."""

    modality: str
    processor: Processor
    renderer: Renderer | None
    world: WorldConfig
    class_names: Sequence[str] | None = None
    on_error: str = "skip"
    columns: tuple[str, str] = ("filepath", "title")


def set_skips(path: str | Path, on_error: str) -> SkipLog:
    """The SkipLog of reading evaluation set ``path``: rows or labels that cannot be read."""
    return SkipLog(f"evaluation set {path}", on_error, EvaluationError)


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a text file, one a line (line i names label i)."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"class names file not found: {path}")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise EvaluationError(f"{path}: no class names (one a line)")
    return names


def class_names_from(value: str | Sequence[str]) -> list[str]:
    """Class names from a file (one a line), a comma-separated list, or a list: the one
    reading of ``class_names`` in every command."""
    if not isinstance(value, str):
        return [str(v) for v in value]
    if Path(value).is_file() or "," not in value:
        return read_class_names(value)
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise EvaluationError(f"'class_names': no class names in {value!r}")
    return names


def resolve_labels(
    raw_labels: Sequence[int | str], where: Sequence[str], class_names: Sequence[str] | None, path: str | Path
) -> tuple[list[str], list[int]]:
    """(class names, label indices) from labels that are class names or indices into
    ``class_names``; without ``class_names`` the sorted set of string labels."""
    if class_names is None:
        if not all(isinstance(label, str) for label in raw_labels):
            raise EvaluationError(f"{path}: integer labels need class names ('class_names': a file, one name a line)")
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
