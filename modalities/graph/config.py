"""The graph modality's options (``modalities.<key>.*``), read by its encoder, processor
and renderer alike, and the node feature width they share."""

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
