"""Graph data on disk or in memory, as a stream source.

Two file formats:

- JSONL, one graph a line: ``{"edges": [[u, v], ...], "num_nodes": n, "x": [[...], ...]
  (optional), "edge_attr": [...] (optional), "text": "..." (optional), "label": ...
  (optional), "split": "train" | "test" (optional)}``.
- A ``torch.save``'d list of PyG ``Data`` (optional ``text`` attribute, ``y`` label),
  read with ``torch.load(weights_only=True)`` and only PyG's Data classes allowed.

In Python, any sequence of ``Data`` (a PyG ``InMemoryDataset``, a list) is a source too.
A line that is not JSON, or a graph the modality refuses, is a bad sample: counted
and skipped, or a ``DataError`` naming the file and line under ``on_error: fail``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch_geometric.data import Data
from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
from torch_geometric.data.storage import GlobalStorage

from mmssl.data.bad_input import TEXT_ENCODING, BadRecord, undecodable
from mmssl.data.files import require_data_file
from mmssl.data.labelled import EvalSetContext, EvaluationError, LabelledSet, resolve_labels, set_skips
from mmssl.data.stream import BuildContext, DataError, Source, SourceKind
from modalities.base import InvalidSample, Processor, modality_roles

# What a saved list of Data may contain besides tensors and plain values.
_SAFE_GLOBALS = [Data, DataEdgeAttr, DataTensorAttr, GlobalStorage]


def read_graph_file(path: str | Path) -> tuple[list[Any], list[str]]:
    """(records, where) of a ``.jsonl`` or ``.pt`` graph file. Records are dicts,
    ``Data`` objects or ``BadRecord``; ``where[i]`` names record i ("file line 7")."""
    path = Path(path)
    require_data_file(path, "graph file")
    if path.suffix.lower() == ".pt":
        try:
            with torch.serialization.safe_globals(_SAFE_GLOBALS):
                graphs = torch.load(path, weights_only=True)
        except Exception as exc:  # unpickling errors come in many types
            raise DataError(f"{path}: cannot read a saved list of PyG Data: {exc}") from None
        if not isinstance(graphs, (list, tuple)):
            raise DataError(f"{path}: expected a saved list of PyG Data, got {type(graphs).__name__}")
        return list(graphs), [f"{path} graph {i}" for i in range(len(graphs))]
    records: list[Any] = []
    where: list[str] = []
    with open(path, **TEXT_ENCODING) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            problem = undecodable(line)
            try:
                record = BadRecord(problem) if problem else json.loads(line)
            except json.JSONDecodeError as exc:
                record = BadRecord(f"not valid JSON: {exc.msg} at column {exc.colno}")
            except RecursionError:
                record = BadRecord("not valid JSON: nested too deeply")
            if not isinstance(record, (dict, BadRecord)):
                record = BadRecord(f"expected a JSON object, got {type(record).__name__}")
            records.append(record)
            where.append(f"{path} line {number}")
    if not records:
        raise DataError(f"{path}: no graphs (empty file)")
    return records, where


def record_field(record: Any, name: str) -> Any:
    """A record's field: a JSON key, or a Data attribute (``label`` reads ``y``)."""
    if isinstance(record, Mapping):
        return record.get(name)
    if isinstance(record, Data):
        value = getattr(record, "y" if name == "label" else name, None)
        if torch.is_tensor(value):
            return value.reshape(-1)[0].item() if value.numel() == 1 else value
        return value
    return None


class GraphSource:
    """Graphs (and their captions) by index, from a file or any sequence of ``Data``.

    Args:
        graphs: records (dicts, ``Data``) or a PyG dataset.
        modalities: the stream's modalities; one graph modality, optionally one caption
            modality that receives each record's ``text``.
        where: names of the records for messages (default "graph i").
    """

    def __init__(self, graphs: Sequence[Any], modalities: Mapping[str, Processor], where: Sequence[str] | None = None) -> None:
        roles = modality_roles(modalities, {})  # items and captioners: no renderers needed
        if len(roles.items) != 1 or len(roles.captioners) > 1:
            raise DataError(f"a graph source feeds one graph modality and at most one caption modality, got {list(modalities)}")
        self.graphs = graphs
        self.graph_key = roles.items[0]
        self.text_key = roles.captioners[0] if roles.captioners else None
        self.names = list(where) if where is not None else None
        if len(graphs) == 0:
            raise DataError("graph source is empty")

    @classmethod
    def from_file(cls, path: str | Path, modalities: Mapping[str, Processor]) -> "GraphSource":
        records, where = read_graph_file(path)
        return cls(records, modalities, where)

    def __len__(self) -> int:
        return len(self.graphs)

    def get(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        record = self.graphs[index]
        if isinstance(record, BadRecord):
            raise InvalidSample(record.reason, source=self.where(index))
        item: dict[str, Any] = {self.graph_key: record}
        if self.text_key is not None:
            text = record_field(record, "text")
            if not isinstance(text, str) or not text.strip():
                raise InvalidSample("graph has no 'text' caption", source=self.where(index))
            item[self.text_key] = text
        return item

    def where(self, index: int) -> str:
        return self.names[index] if self.names is not None else f"graph {index}"


@dataclass(frozen=True)
class GraphsOptions:
    path: str | None = None  # a .jsonl or .pt graph file


class GraphsKind(SourceKind):
    """``data.source: graphs``: a graph file; a record's ``text`` feeds the caption modality."""

    Config = GraphsOptions

    @classmethod
    def check(cls, options: GraphsOptions, key: str, modalities: Sequence[str]) -> None:
        cls.require_path(options.path, key, " (a .jsonl or .pt graph file)")

    @classmethod
    def build(cls, options: GraphsOptions, objective: str, modalities: Mapping[str, Processor], context: BuildContext) -> Source:
        return GraphSource.from_file(options.path, modalities)

    @classmethod
    def labelled_set(cls, path: str, context: EvalSetContext) -> LabelledSet:
        """A labelled graph file (JSONL or a saved list of Data)."""
        processor = context.processor
        if processor.file_extensions or processor.consumes_captions:
            raise EvaluationError(f"modality '{context.modality}' does not read graph records: data 'graphs:PATH' cannot feed it")
        return graph_file_set(path, context.class_names, context.on_error)


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
