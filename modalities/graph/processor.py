"""The graph modality's processor: raw graphs (PyG ``Data``, networkx, edge lists, JSONL
records) checked into clean ``Data``; GraphCL's random views; collation into a PyG
``Batch`` with structural node features (degree one-hot, random-walk positional
encodings, size). No parameters: what data loader workers and evaluation sets hold."""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import math
from typing import Any, Callable, Mapping, Sequence

import networkx as nx
import numpy as np
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch, Data
from torch_geometric.utils import degree, from_networkx, to_dense_adj, to_dense_batch, to_undirected

from modalities.base import InvalidSample, Processor
from modalities.graph.config import GraphConfig, check_categorical, edge_vocabulary, node_vocabulary
from modalities.graph.views import GraphViews, apply_feature_mask, check_views, graph_view, local_graph_view

log = logging.getLogger(__name__)


class GraphProcessor(Processor):
    """Raw graphs to checked ``Data``, and ``Data`` to batches.

    Structural features are computed for the whole batch in ``collate`` (one batched
    pass is much cheaper than one per tiny graph), from each graph's own edges, so an
    augmented view describes its own structure.

    With ``in_features: 0`` a graph's x is dropped, not refused: a structure-only
    encoder reads any graph (a TUDataset's one-hot node labels included); the first
    such graph is logged and ``ignored_x`` counts them. Edge attributes beyond
    ``edge_features: 0`` are dropped alike. Categorical columns
    (``categorical_node_features`` / ``categorical_edge_features``) must hold whole
    numbers within their vocabulary.

    Shapes:
        sample: ``Data`` with edge_index [2, E], num_nodes N, x [N, in_features] and
            edge_attr [E, edge_features] when configured.
        batch: a PyG ``Batch`` of B graphs: x [sum N, node_dim] (node_dim = in_features
            + max_degree + 1 + walk_length + size_feature), edge_index, batch [sum N].
    """

    # no file_extensions: one graph file holds many graphs (see mmssl.data.graphs)

    def __init__(self, config: GraphConfig) -> None:
        check_views(config.views)
        check_categorical(config)
        super().__init__(config)
        self.node_vocabulary = node_vocabulary(config)
        self.edge_vocabulary = edge_vocabulary(config)
        self.ignored_x = 0  # graphs whose x this process dropped (in_features 0)

    def _say_x_ignored(self, x: torch.Tensor) -> None:
        """Count a graph whose x is dropped; the first one in this process is logged."""
        self.ignored_x += 1
        if self.ignored_x == 1:
            columns = x.shape[-1] if x.ndim == 2 else 1
            log.warning(
                "graph node features x (%d columns) are ignored: in_features is 0, so the encoder reads the structure "
                "alone (set in_features: %d to use them). Said once; every graph's x is dropped alike", columns, columns,
            )

    def transform(self, raw: Any, rng: np.random.Generator | None = None) -> Data:
        """A clean ``Data`` (x float or absent, edge_index long, edge_attr, num_nodes) from
        a raw graph: a PyG Data, a networkx graph, a JSONL-style mapping (``edges``,
        ``num_nodes``, ``x``, ``edge_attr``), an edge list or ``(edge list, num_nodes)``.
        Raises InvalidSample naming what is wrong. The input is never modified; ``rng`` is
        unused (random views of a graph are ``augment``'s)."""
        if isinstance(raw, Data):
            num_nodes = raw.num_nodes
            edge_index = raw.edge_index if raw.edge_index is not None else torch.zeros(2, 0, dtype=torch.long)
            x, edge_attr = raw.x, raw.edge_attr
        elif isinstance(raw, nx.Graph):
            num_nodes = raw.number_of_nodes()
            self._check_size(num_nodes, raw.number_of_edges())
            if num_nodes == 0:
                raise InvalidSample("empty graph (0 nodes)")
            data = from_networkx(raw)
            edge_index, x, edge_attr = data.edge_index, getattr(data, "x", None), getattr(data, "edge_attr", None)
        elif isinstance(raw, Mapping):
            if "edges" not in raw:
                raise InvalidSample(f"graph record has no 'edges' (keys: {sorted(raw)})")
            edges = raw["edges"]
            num_nodes = raw.get("num_nodes")
            if num_nodes is None:
                raise InvalidSample("graph record has no 'num_nodes'")
            if isinstance(num_nodes, bool) or not isinstance(num_nodes, int):
                raise InvalidSample(f"num_nodes must be an integer, got {num_nodes!r}")
            self._check_size(num_nodes, len(edges) if hasattr(edges, "__len__") else 0)
            edge_index = self._edge_list(edges)
            x = self._float_tensor(raw.get("x"), "x")
            edge_attr = self._float_tensor(raw.get("edge_attr"), "edge_attr")
        elif isinstance(raw, tuple) and len(raw) == 2 and isinstance(raw[1], int):
            num_nodes = raw[1]
            self._check_size(num_nodes, len(raw[0]))
            edge_index, x, edge_attr = self._edge_list(raw[0]), None, None
        elif isinstance(raw, (list, np.ndarray)) or torch.is_tensor(raw):
            edge_index = self._edge_list(raw)
            num_nodes = int(edge_index.max()) + 1 if edge_index.numel() else 0
            x, edge_attr = None, None
        else:
            raise InvalidSample(
                f"graph must be a PyG Data, networkx graph, edge list or mapping with 'edges', got {type(raw).__name__}"
            )
        return self._validated(num_nodes, edge_index, x, edge_attr)

    def _check_size(self, num_nodes: int, num_edges: int) -> None:
        c = self.config
        if num_nodes is not None and num_nodes > c.max_nodes:
            raise InvalidSample(f"graph has {num_nodes} nodes, over max_nodes={c.max_nodes}")
        if num_edges > c.max_edges:
            raise InvalidSample(f"graph has {num_edges} edges, over max_edges={c.max_edges}")

    @staticmethod
    def _edge_list(edges: Any) -> torch.Tensor:
        """[[u, v], ...] or a [2, E] tensor -> edge_index [2, E] long."""
        if torch.is_tensor(edges):
            edge_index = edges
        else:
            try:
                array = np.asarray(edges)
            except ValueError:
                raise InvalidSample("edges must be a list of [u, v] pairs") from None
            if array.size == 0:
                return torch.zeros(2, 0, dtype=torch.long)
            if array.ndim != 2 or array.shape[1] != 2:
                raise InvalidSample(f"edges must be a list of [u, v] pairs, got shape {array.shape}")
            if array.dtype.kind not in "iu":
                raise InvalidSample(f"edge endpoints must be integers, got {array.dtype} values")
            edge_index = torch.from_numpy(array.astype(np.int64)).T
        if edge_index.ndim != 2 or edge_index.shape[0] != 2:
            raise InvalidSample(f"edge_index must be [2, E], got shape {tuple(edge_index.shape)}")
        if edge_index.dtype.is_floating_point or edge_index.dtype == torch.bool:
            raise InvalidSample(f"edge_index must hold integers, got {edge_index.dtype}")
        return edge_index.long()

    @staticmethod
    def _float_tensor(value: Any, name: str) -> torch.Tensor | None:
        if value is None:
            return None
        try:
            t = torch.as_tensor(np.asarray(value, dtype=np.float32))
        except (ValueError, TypeError):
            raise InvalidSample(f"{name} must be a numeric [rows, features] array") from None
        return t.unsqueeze(1) if t.ndim == 1 else t

    def _validated(
        self, num_nodes: int | None, edge_index: torch.Tensor, x: torch.Tensor | None, edge_attr: torch.Tensor | None
    ) -> Data:
        c = self.config
        if num_nodes is None or num_nodes <= 0:
            raise InvalidSample("empty graph (0 nodes)")
        self._check_size(num_nodes, edge_index.shape[1])
        if edge_index.numel():
            low, high = int(edge_index.min()), int(edge_index.max())
            if low < 0:
                raise InvalidSample(f"negative node index {low} in edges")
            if high >= num_nodes:
                raise InvalidSample(f"edge endpoint {high} out of range for {num_nodes} nodes (indices are 0 to {num_nodes - 1})")
        if c.in_features == 0 and x is not None:
            # a structure-only encoder reads any graph (every TUDataset): x is dropped, said once
            self._say_x_ignored(x)
            x = None
        if c.in_features > 0:
            if x is None:
                raise InvalidSample(f"graph has no node features x; in_features is {c.in_features}")
            x = x.float()
            if x.ndim != 2 or x.shape[0] != num_nodes:
                raise InvalidSample(f"x has shape {tuple(x.shape)}; expected {num_nodes} rows, one per node")
            if x.shape[1] != c.in_features:
                raise InvalidSample(f"x has {x.shape[1]} features per node; in_features is {c.in_features}")
            if not torch.isfinite(x).all():
                raise InvalidSample("x contains NaN or infinite values")
            _check_codes(x, self.node_vocabulary, "x", "node")
        if c.edge_features == 0 and edge_attr is not None:
            edge_attr = None  # e.g. from_networkx weights; the encoder reads none
        if c.edge_features > 0:
            if edge_attr is None:
                raise InvalidSample(f"graph has no edge_attr; edge_features is {c.edge_features}")
            edge_attr = edge_attr.float()
            if edge_attr.ndim == 1:
                edge_attr = edge_attr.unsqueeze(1)
            if edge_attr.shape != (edge_index.shape[1], c.edge_features):
                raise InvalidSample(
                    f"edge_attr has shape {tuple(edge_attr.shape)}; expected ({edge_index.shape[1]}, {c.edge_features})"
                )
            if not torch.isfinite(edge_attr).all():
                raise InvalidSample("edge_attr contains NaN or infinite values")
            _check_codes(edge_attr, self.edge_vocabulary, "edge_attr", "edge")
        if c.undirected and edge_index.numel():
            if edge_attr is not None:
                # an edge listed both ways (PyG's datasets, from_smiles) is one edge: its two
                # attribute rows are averaged, not added (to_undirected's default doubled them)
                edge_index, edge_attr = to_undirected(edge_index, edge_attr, num_nodes=num_nodes, reduce="mean")
            else:
                edge_index = to_undirected(edge_index, num_nodes=num_nodes)
        data = Data(edge_index=edge_index, num_nodes=num_nodes)
        if x is not None:
            data.x = x
        if edge_attr is not None:
            data.edge_attr = edge_attr
        return data

    def featurize(self, graph: Data) -> Data:
        """A shallow copy of ``graph`` (one Data or a Batch) whose x is [N, node_dim]: the
        first ``in_features`` columns of ``graph.x``, a one-hot of the degree (clamped to
        ``max_degree``), ``walk_length`` random-walk return probabilities and, if set, the
        log node count, all from ``graph``'s own structure. ``graph`` is left unchanged."""
        c = self.config
        n = int(graph.num_nodes)
        parts = []
        if c.in_features:
            parts.append(graph.x[:, : c.in_features].float())
        if c.max_degree > 0:
            deg = degree(graph.edge_index[0], n, dtype=torch.long).clamp(max=c.max_degree)
            parts.append(F.one_hot(deg, c.max_degree + 1).float())
        batch = getattr(graph, "batch", None)
        if c.walk_length:
            parts.append(random_walk_pe(graph.edge_index, n, c.walk_length, batch))
        if c.size_feature:
            index = batch if batch is not None else torch.zeros(n, dtype=torch.long)
            sizes = torch.bincount(index).float()[index]
            parts.append((sizes.log() / math.log(max(c.max_nodes, 2))).unsqueeze(1))
        out = copy.copy(graph)
        out.x = torch.cat(parts, dim=1)
        return out

    def augment(self, sample: Data, rng: np.random.Generator) -> Data:
        """A random view of a transformed graph (GraphCL's augmentations, ``views``)."""
        return graph_view(sample, self.config.views, rng)

    def local_augment(self, sample: Data, rng: np.random.Generator) -> Data:
        """A local view (DINO's multi-crop): a connected subgraph of about
        ``views.local_share`` of the nodes, then a view of it."""
        return local_graph_view(sample, self.config.views, rng)

    def view_maker(self, **options: Any) -> Callable[[Data, np.random.Generator], Data]:
        """``augment`` with other view options (``GraphViews`` fields: ``augmentations``,
        ``per_view``), checked now: for an objective that configures views itself."""
        views = dataclasses.replace(self.config.views, **options)
        check_views(views)
        return functools.partial(_view_with, views=views)

    def collate(self, samples: Sequence[Data]) -> Batch:
        """A PyG ``Batch`` with structural features; views' masked feature rows zeroed."""
        return apply_feature_mask(self.featurize(Batch.from_data_list(list(samples))))

    def move_batch(self, batch: Batch, device: torch.device) -> Batch:
        return batch.to(device)


def _check_codes(values: torch.Tensor, vocabulary: Sequence[int], name: str, what: str) -> None:
    """Raise InvalidSample unless the categorical columns of ``values`` (the first
    ``len(vocabulary)``) hold whole numbers from 0 to their vocabulary size - 1."""
    for column, size in enumerate(vocabulary):
        codes = values[:, column]
        bad = (codes != codes.round()) | (codes < 0) | (codes >= size)
        if bad.any():
            row = int(bad.nonzero()[0])
            raise InvalidSample(
                f"{name} column {column} is categorical with {size} values (0 to {size - 1}) but {what} {row} holds "
                f"{codes[row].item():g}"
            )


def _view_with(sample: Data, rng: np.random.Generator, views: GraphViews) -> Data:
    return graph_view(sample, views, rng)


def random_walk_pe(edge_index: torch.Tensor, num_nodes: int, walk_length: int, batch: torch.Tensor | None = None) -> torch.Tensor:
    """Random-walk return probabilities (RWPE, Dwivedi et al. 2022) of every node, for
    steps 1 to ``walk_length``: the same values as PyG's ``AddRandomWalkPE`` on each
    graph alone, computed for a whole batch at once on per-graph dense blocks
    (``to_dense_adj``), since AddRandomWalkPE on a batch would go dense over all nodes.

    Shapes:
        edge_index: [2, E]; batch: [N] graph of each node (None: one graph); returns [N, walk_length].
    """
    if batch is None:
        batch = torch.zeros(num_nodes, dtype=torch.long, device=edge_index.device)
    adj = to_dense_adj(edge_index, batch, batch_size=int(batch.max()) + 1 if num_nodes else 0)  # [B, M, M]
    walk = adj / adj.sum(-1, keepdim=True).clamp(min=1)  # row-stochastic (isolated nodes stay zero)
    _, real = to_dense_batch(torch.zeros(num_nodes, 1, device=edge_index.device), batch)
    steps, power = [], walk
    for _ in range(walk_length):
        steps.append(power.diagonal(dim1=-2, dim2=-1))
        power = power @ walk
    return torch.stack(steps, dim=-1)[real]  # [N, walk_length]
