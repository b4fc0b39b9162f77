"""Labelled evaluation sets by data spec: ``KIND:PATH`` (or ``world``), read by the
source kind that ``KIND`` names in the registry — built-ins and plugins alike, the same
kinds that feed training. Each kind reads its own layout (``SourceKind.labelled_set``):

    world          the embedded world's fresh samples of every class (no path)
    folder:DIR     DIR/<class name>/<files>
    csv:FILE       open_clip's pairs CSV (file and caption columns), for retrieval
                   (``pairs:FILE``, its name in evaluation before, is an alias)
    esc50:FILE     ESC-50's class CSV (filename, target, category)
    graphs:FILE    a labelled graph file (JSONL or a saved list of Data)
    shards:SPEC    labelled WebDataset shards (``.cls`` or a JSON ``label``)
    tudataset:DIR/NAME  a TUDataset folder (published, or PyG's raw/): graph labels as classes
    molecules:FILE a SMILES-text file: descriptions as captions, a ``label`` column as classes
    coco:FILE      COCO's caption JSON (or Karpathy's split file), for retrieval
    clotho:FILE    Clotho's caption CSV, for retrieval
    audiocaps:FILE AudioCaps' caption CSV, for retrieval
"""

from __future__ import annotations

from typing import Sequence

from mmssl.config import WorldConfig
from mmssl.data.labelled import (
    EvalSetContext,
    EvaluationError,
    LabelledSet,
    class_names_from,
    read_class_names,
    read_templates,
)
from mmssl.data.stream import ModalityData
from mmssl.registry import SOURCES, RegistryError, closest

__all__ = [
    "EvalSetContext",
    "EvaluationError",
    "LabelledSet",
    "class_names_from",
    "eval_kinds",
    "load_eval_set",
    "parse_data_spec",
    "read_class_names",
    "read_templates",
]

ALIASES = {"pairs": "csv"}  # evaluation's name of the pairs CSV before 'csv' meant it everywhere


def eval_kinds() -> list[str]:
    """The registered source kinds that give labelled evaluation sets."""
    return [name for name in SOURCES.list() if _gives_labelled_sets(SOURCES.get(name))]


def _gives_labelled_sets(kind: type) -> bool:
    check = getattr(kind, "gives_labelled_sets", None)  # a kind need not subclass SourceKind
    return bool(check()) if callable(check) else False


def parse_data_spec(spec: str | None) -> tuple[str, str]:
    """(kind, path) of a data spec: ``KIND:PATH``, or a kind alone (``world``); None is
    the embedded world. An unknown kind names the closest one and lists them all."""
    kind, _, path = (spec or "world").partition(":")
    kind = ALIASES.get(kind, kind)
    if kind not in SOURCES or not _gives_labelled_sets(SOURCES.get(kind)):
        known = eval_kinds()
        raise EvaluationError(
            f"'data': unknown evaluation data kind '{kind}' in {spec!r}.{closest(kind, known)} Kinds that give labelled "
            f"sets: {known} (KIND:PATH, or world)"
        )
    if not path and kind != "world":
        raise EvaluationError(f"'data': {spec!r} names no path ({kind}:PATH)")
    return kind, path


def load_eval_set(
    model: ModalityData,
    modality: str,
    spec: str | None,
    world_config: WorldConfig,
    class_names: Sequence[str] | None = None,
    on_error: str = "skip",
    columns: tuple[str, str] = ("filepath", "title"),
) -> LabelledSet:
    """The labelled set ``spec`` names (``KIND:PATH``; None or ``world``: the embedded
    world) for ``modality``, read by the source kind ``KIND``. ``class_names`` name
    integer labels, or rename a set's classes (the count must match); ``columns`` are a
    pairs CSV's file and caption columns."""
    if modality not in model.processors:
        raise EvaluationError(f"checkpoint has no modality '{modality}'; it has {sorted(model.processors)}")
    kind, path = parse_data_spec(spec)
    context = EvalSetContext(
        modality, model.processors[modality], model.renderers.get(modality), world_config,
        list(class_names) if class_names is not None else None, on_error, columns,
    )
    try:
        data = SOURCES.get(kind).labelled_set(path, context)
    except RegistryError as exc:  # a plugin that failed to load
        raise EvaluationError(str(exc)) from None
    if class_names is not None and data.labels and list(class_names) != data.class_names:
        if len(class_names) != len(data.class_names):
            raise EvaluationError(
                f"'class_names' has {len(class_names)} names but {data.source} has {len(data.class_names)} classes "
                f"({', '.join(data.class_names[:4])}{', ...' if len(data.class_names) > 4 else ''})"
            )
        data.class_names = list(class_names)
    return data
