"""``tudataset``: a TUDataset (Morris et al., 2020; https://chrsmrrs.github.io/datasets/)
as it is published, for training and evaluation.

Two layouts, read alike:

- the published zip, unpacked: ``DIR/NAME/NAME_A.txt``, ``NAME_graph_indicator.txt``,
  ``NAME_graph_labels.txt`` and, where the dataset has them, ``NAME_node_labels.txt``,
  ``NAME_edge_labels.txt``, ``NAME_node_attributes.txt``, ``NAME_edge_attributes.txt``,
  ``NAME_graph_attributes.txt``;
- PyG's ``TUDataset`` root: the same files under ``DIR/NAME/raw/``.

The files are read with PyG's own reader (``torch_geometric.io.read_tu_data``), so the
graphs are the ones PyG's ``TUDataset`` gives: node ids in ``NAME_A.txt`` are 1-based
and become 0-based per graph, self-loops are removed, node labels become a one-hot
``x`` and edge labels a one-hot ``edge_attr``, continuous node and edge attributes
are left out unless ``use_node_attr`` / ``use_edge_attr`` (PyG's defaults). Nothing is
written into the dataset's folder: PyG's ``TUDataset`` class would download into a
missing ``raw/`` and save a ``processed/`` copy there; this kind reads the text files
and keeps the graphs in memory.

Graph labels are the classes, named ``class_<label>`` after the label values of
``NAME_graph_labels.txt`` (``--class-names`` renames them in evaluation). A graph the
modality refuses (an edge to a node of another graph, more nodes than ``max_nodes``) is
a bad sample, counted and named by its 1-based graph id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch_geometric.data import Data
from torch_geometric.data.separate import separate
from torch_geometric.io import read_tu_data, read_txt_array

from mmssl.data.graphs import GraphSource
from mmssl.data.labelled import EvalSetContext, EvaluationError, LabelledSet
from mmssl.data.stream import BuildContext, DataError, Source, SourceKind
from modalities.base import Processor, modality_roles

log = logging.getLogger(__name__)

REQUIRED = ("A", "graph_indicator")


@dataclass
class TUGraphs:
    """The graphs of one TUDataset, in the order of their ids, and what was read."""

    folder: Path
    name: str
    graphs: list[Data]
    labels: list[int] | None  # class index of each graph (None: no graph labels)
    class_names: list[str]
    node_columns: str  # what x holds, for messages ("7 columns (7 node labels one-hot)")
    edge_columns: str

    def where(self, index: int) -> str:
        """Graph ``index`` by its 1-based id (``NAME_graph_indicator.txt``'s)."""
        return f"{self.folder} graph {index + 1}"


def find_tu_folder(path: str | Path, name: str | None = None) -> tuple[Path, str]:
    """(folder holding ``NAME_A.txt``, NAME) for ``path`` and ``name``: ``path/NAME`` or
    ``path/NAME/raw`` (or ``path`` itself, or ``path/raw``, when it holds the files).
    Without ``name``, ``path`` is the dataset's own folder (``DIR/NAME``, or PyG's
    ``DIR/NAME/raw``) and NAME is its name."""
    path = Path(path)
    if name is None:
        name = path.parent.name if path.name in ("raw", "raw_cleaned") else path.name
        candidates = [path, path / "raw"]
    else:
        candidates = [path / name, path / name / "raw", path, path / "raw"]
    for folder in candidates:
        if (folder / f"{name}_A.txt").is_file():
            return folder, name
    if not path.exists():
        raise DataError(f"TUDataset folder not found: {path}")
    looked = ", ".join(str(c / f"{name}_A.txt") for c in candidates)
    raise DataError(
        f"{path}: no TUDataset '{name}' here (looked for {looked}); give the dataset's folder as the zip unpacks "
        f"(DIR/NAME with NAME_A.txt, NAME_graph_indicator.txt, ...) or PyG's root (DIR/NAME/raw/)"
    )


def _columns(total: int, attributes: int, kept_attributes: bool, what: str) -> str:
    labels = total - attributes
    parts = ([f"{attributes} {what} attributes"] if kept_attributes and attributes else []) + (
        [f"{labels} {what} labels one-hot"] if labels else [])
    shown = total if kept_attributes else labels
    return f"{shown} columns ({', '.join(parts)})" if parts else "none"


def read_tudataset(path: str | Path, name: str | None = None, use_node_attr: bool = False,
                   use_edge_attr: bool = False) -> TUGraphs:
    """Every graph of the TUDataset at ``path`` (``find_tu_folder``), read with PyG's
    ``read_tu_data``, as PyG's ``TUDataset(root, name, use_node_attr, use_edge_attr)``
    gives them, without writing anything."""
    folder, name = find_tu_folder(path, name)
    for part in REQUIRED:
        if not (folder / f"{name}_{part}.txt").is_file():
            raise DataError(f"{folder}: TUDataset '{name}' has no {name}_{part}.txt")
    try:
        data, slices, sizes = read_tu_data(str(folder), name)
    except Exception as exc:  # noqa: BLE001 - PyG's reader fails in many types on malformed files
        raise DataError(f"{folder}: cannot read TUDataset '{name}' with PyG's read_tu_data: {type(exc).__name__}: {exc}") from None
    if data.x is not None and not use_node_attr:
        data.x = data.x[:, sizes["num_node_attributes"]:]
    if data.edge_attr is not None and not use_edge_attr:
        data.edge_attr = data.edge_attr[:, sizes["num_edge_attributes"]:]
    count = len(slices["x"]) - 1 if "x" in slices else len(data._num_nodes)
    edges = slices["edge_index"]
    if len(edges) - 1 < count:  # the last graphs have no edges: PyG's reader slices them away, they are kept here
        edges = torch.cat([edges, edges[-1:].expand(count + 1 - len(edges))])
        slices.update({key: edges for key in ("edge_index", "edge_attr") if key in slices})
    graphs = []
    for index in range(count):
        graph = separate(cls=Data, batch=data, idx=index, slice_dict=slices, decrement=False)
        for key in ("x", "edge_attr"):
            value = getattr(graph, key, None)
            if value is not None and value.shape[-1] == 0:  # attributes left out and no labels: no columns at all
                if key == "x":
                    graph.num_nodes = value.shape[0]  # x no longer tells, and isolated nodes count
                del graph[key]
        graphs.append(graph)
    labels, class_names = None, []
    label_file = folder / f"{name}_graph_labels.txt"
    if (folder / f"{name}_graph_attributes.txt").is_file():
        log.info("TUDataset %s: graph_attributes (regression targets), no classes", name)
    elif label_file.is_file():
        raw = read_txt_array(str(label_file), sep=",", dtype=torch.long).reshape(-1)
        if raw.numel() != count:
            raise DataError(f"{label_file}: {raw.numel()} graph labels for {count} graphs")
        values, inverse = raw.unique(sorted=True, return_inverse=True)
        labels = inverse.tolist()
        class_names = [f"class_{v}" for v in values.tolist()]
    node_columns = _columns(sizes["num_node_attributes"] + sizes["num_node_labels"], sizes["num_node_attributes"], use_node_attr, "node")
    edge_columns = _columns(sizes["num_edge_attributes"] + sizes["num_edge_labels"], sizes["num_edge_attributes"], use_edge_attr, "edge")
    log.info("TUDataset %s (%s): %d graphs, %s; x: %s; edge_attr: %s", name, folder, count,
             f"{len(class_names)} classes" if labels is not None else "no graph labels", node_columns, edge_columns)
    return TUGraphs(folder, name, graphs, labels, class_names, node_columns, edge_columns)


def _say_features(graphs: TUGraphs, processor: Processor) -> None:
    """Name the dataset's node feature width beside the modality's, once a read: a
    structure-only encoder drops x (the processor says so too), another must match it."""
    in_features = getattr(processor.config, "in_features", None)
    width = next((int(g.x.shape[-1]) for g in graphs.graphs if g.x is not None), 0)
    if in_features == 0 and width:
        log.info("TUDataset %s: x has %s; the graph modality's in_features is 0, so x is ignored (structure only)",
                 graphs.name, graphs.node_columns)
    elif in_features and in_features != width:
        log.warning("TUDataset %s: x has %s but in_features is %s: every graph will be refused (set in_features: %d)",
                    graphs.name, graphs.node_columns, in_features, width)


@dataclass(frozen=True)
class TUDatasetOptions:
    path: str | None = None  # the folder holding NAME/ (or the dataset's own folder, without name)
    name: str | None = None  # the dataset's name (MUTAG, PROTEINS, ...); default: the folder's name
    use_node_attr: bool = False  # continuous node attributes in x, before the one-hot node labels (PyG's option)
    use_edge_attr: bool = False  # continuous edge attributes in edge_attr, before the one-hot edge labels


class TUDatasetKind(SourceKind):
    """``data.source: tudataset``: a TUDataset folder, published (``DIR/NAME/NAME_A.txt``,
    ...) or PyG's (``DIR/NAME/raw/``), for graph objectives without captions
    (``graph_contrastive``); ``--data tudataset:DIR/NAME`` gives its graph labels as
    classes in evaluation (linear probes)."""

    Config = TUDatasetOptions

    @classmethod
    def check(cls, options: TUDatasetOptions, key: str, modalities: Sequence[str]) -> None:
        cls.require_path(options.path, key, " (the folder holding the dataset's NAME/ folder, or NAME/ itself)")

    @classmethod
    def build(cls, options: TUDatasetOptions, objective: str, modalities: Mapping[str, Processor], context: BuildContext) -> Source:
        roles = modality_roles(modalities, {})
        if roles.captioners:
            raise DataError(f"objective '{objective}': a TUDataset has no captions to feed '{roles.captioners[0]}'; "
                            "train graph objectives on it (graph_contrastive)")
        graphs = read_tudataset(options.path, options.name, options.use_node_attr, options.use_edge_attr)
        if len(roles.items) == 1:
            _say_features(graphs, modalities[roles.items[0]])
        return GraphSource(graphs.graphs, modalities, [graphs.where(i) for i in range(len(graphs.graphs))])

    @classmethod
    def labelled_set(cls, path: str, context: EvalSetContext) -> LabelledSet:
        """``tudataset:DIR/NAME`` (or ``DIR/NAME/raw``): the graphs, their graph labels as
        classes ``class_<label>``; no split (probes split stratified, or by folds)."""
        processor = context.processor
        if processor.file_extensions or processor.consumes_captions:
            raise EvaluationError(f"modality '{context.modality}' does not read graphs: data 'tudataset:PATH' cannot feed it")
        try:
            graphs = read_tudataset(path)
        except DataError as exc:
            raise EvaluationError(str(exc)) from None
        if graphs.labels is None:
            raise EvaluationError(f"{graphs.folder}: TUDataset '{graphs.name}' has no {graphs.name}_graph_labels.txt "
                                  "(graph_attributes are regression targets): no classes to evaluate on")
        _say_features(graphs, processor)
        # a graph the modality refuses is skipped where it is embedded, named by its id
        where = [graphs.where(i) for i in range(len(graphs.graphs))]
        return LabelledSet(graphs.graphs, list(graphs.labels), list(graphs.class_names), where, source=f"tudataset:{path}")
