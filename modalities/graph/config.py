"""The graph modality's options (``modalities.<key>.*``), read by its encoder, processor
and renderer alike, the node feature width they share and the vocabularies of
categorical feature columns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from modalities.graph.views import GraphViews


@dataclass(frozen=True)
class GraphConfig:
    # gin: GINConv; gine: GINEConv over edge features; gat: GATv2Conv; gps: GPSConv
    # (local GIN/GINE message passing plus global multi-head attention per layer).
    encoder: Literal["gin", "gine", "gat", "gps"] = "gin"
    width: int = 64
    depth: int = 3
    heads: int = 4  # gat and gps attention heads
    dropout: float = 0.0
    readout: Literal["mean", "add", "attention"] = "mean"
    # Node features: ``in_features`` columns of x (0: the graphs carry no x), then a
    # one-hot of the degree clamped to ``max_degree`` and ``walk_length`` random-walk
    # return probabilities (as PyG's AddRandomWalkPE); 0 turns either off.
    in_features: int = 0
    max_degree: int = 16
    walk_length: int = 8
    # the graph's node count as log(N) / log(max_nodes), on every node: a size signal
    # that does not depend on the family (mean readouts otherwise lose it)
    size_feature: bool = False
    edge_features: int = 0  # edge_attr columns (gine, gat and gps use them)
    # Categorical columns, embedded rather than read as numbers: the vocabulary size of
    # each of the first columns of x (edge_attr), one nn.Embedding a column, the
    # embeddings summed (OGB's AtomEncoder / BondEncoder). ``smiles``: the columns of
    # PyG's ``from_smiles`` (``x_map``: 9 atom columns, ``e_map``: 3 bond columns). The
    # other columns, and the structural features, go through the linear input as before.
    categorical_node_features: list[int] | Literal["smiles"] = field(default_factory=list)
    categorical_edge_features: list[int] | Literal["smiles"] = field(default_factory=list)
    undirected: bool = True  # add reverse edges (PyG to_undirected)
    # input limits: bigger graphs are refused rather than encoded
    max_nodes: int = 2000
    max_edges: int = 20000
    # view-contrastive learning (``augment``): GraphCL's augmentation pool
    views: GraphViews = field(default_factory=GraphViews)


def structural_dim(config: GraphConfig) -> int:
    """Structural feature columns of a node: the degree one-hot, the random-walk return
    probabilities and the size feature, as configured."""
    return (config.max_degree + 1 if config.max_degree > 0 else 0) + config.walk_length + int(config.size_feature)


def node_dim(config: GraphConfig) -> int:
    """Columns of a collated batch's node features: ``in_features`` plus the structural ones."""
    return config.in_features + structural_dim(config)


def _vocabulary(value: list[int] | str, table: str) -> list[int]:
    if value == "smiles":
        from torch_geometric.utils import smiles

        return [len(values) for values in getattr(smiles, table).values()]
    return list(value)


def node_vocabulary(config: GraphConfig) -> list[int]:
    """Vocabulary sizes of the categorical columns of x (the first ones), in order."""
    return _vocabulary(config.categorical_node_features, "x_map")


def edge_vocabulary(config: GraphConfig) -> list[int]:
    """Vocabulary sizes of the categorical columns of edge_attr (the first ones), in order."""
    return _vocabulary(config.categorical_edge_features, "e_map")


def check_categorical(config: GraphConfig) -> None:
    """Raise a ValueError naming the option when the categorical columns do not fit."""
    for key, sizes, columns, width in (
        ("categorical_node_features", node_vocabulary(config), "x", ("in_features", config.in_features)),
        ("categorical_edge_features", edge_vocabulary(config), "edge_attr", ("edge_features", config.edge_features)),
    ):
        if any(size < 1 for size in sizes):
            raise ValueError(f"graph {key}: every vocabulary size must be at least 1, got {sizes}")
        if len(sizes) > width[1]:
            raise ValueError(
                f"graph {key} names {len(sizes)} categorical columns of {columns} but {width[0]} is {width[1]}: "
                f"they are the first columns of {columns} (set {width[0]}: {len(sizes)} or more)"
            )
