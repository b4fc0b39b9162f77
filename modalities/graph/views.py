"""Random views of a graph (GraphCL, You et al., 2020): node dropping, edge
perturbation, feature masking and subgraph sampling, on PyG's own utilities
(``dropout_node``, ``dropout_edge``, ``add_random_edge``, ``mask_feature``,
``k_hop_subgraph``, ``subgraph``).

A view draws ``per_view`` augmentations from the configured pool and applies them in
the pool's order. Every choice comes from the sample's own generator (PyG's functions
draw from torch's and Python's global generators, seeded from it for the call), and
the input graph is never changed. Feature masking is carried as a node attribute
(``keep_features``) because node features, structural ones included, exist only once
a view is collated; the graph modality's ``collate`` zeroes the masked rows.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.utils import (
    add_random_edge,
    dropout_edge,
    dropout_node,
    is_undirected,
    k_hop_subgraph,
    mask_feature,
    subgraph,
)

from modalities.base import seeded_torch_rng

KEEP_KEY = "keep_features"  # node attribute of a view: [N, 1] bool, False = features masked


def _with(data: Data, edge_index: torch.Tensor, node_mask: torch.Tensor | None, edge_sel: torch.Tensor | None,
          extra_edges: int = 0) -> Data:
    """A new Data over kept nodes / edges; edge attributes of added edges are zero."""
    out = Data(edge_index=edge_index, num_nodes=int(node_mask.sum()) if node_mask is not None else data.num_nodes)
    for key in ("x", KEEP_KEY):
        if key in data:
            out[key] = data[key][node_mask] if node_mask is not None else data[key].clone()
    if data.edge_attr is not None:
        attr = data.edge_attr[edge_sel] if edge_sel is not None else data.edge_attr.clone()
        if extra_edges:
            attr = torch.cat([attr, attr.new_zeros(extra_edges, attr.shape[1])])
        out.edge_attr = attr
    return out


def drop_nodes(data: Data, strength: float) -> Data:
    """Remove each node (and its edges) with probability ``strength``; keeps at least one."""
    n = int(data.num_nodes)
    edge_index, edge_mask, node_mask = dropout_node(data.edge_index, strength, n, relabel_nodes=True)
    if not node_mask.any():
        return _with(data, data.edge_index.clone(), None, None)
    return _with(data, edge_index, node_mask, edge_mask)


def perturb_edges(data: Data, strength: float) -> Data:
    """GraphCL's edge perturbation: drop each edge with probability ``strength`` and add
    round(strength * E) random non-edges of the original graph (an undirected graph's
    edges are dropped and added in both directions)."""
    n = int(data.num_nodes)
    undirected = is_undirected(data.edge_index, num_nodes=n)
    kept_index, kept = dropout_edge(data.edge_index, strength, force_undirected=undirected)
    # PyG's negative sampling fails on a request for zero edges (a float empty tensor)
    wanted = round(data.edge_index.shape[1] * strength) // (2 if undirected else 1)
    if n > 1 and wanted > 0:
        _, added = add_random_edge(data.edge_index, strength, force_undirected=undirected, num_nodes=n)
    else:
        added = data.edge_index.new_zeros(2, 0)
    return _with(data, torch.cat([kept_index, added], dim=1), None, kept, extra_edges=added.shape[1])


def mask_features(data: Data, strength: float) -> Data:
    """Mask the whole feature row of each node with probability ``strength`` (GraphCL's
    attribute masking): the view carries the mask (``keep_features``, drawn by PyG's
    ``mask_feature``) and ``apply_feature_mask`` zeroes the rows in the batch."""
    out = _with(data, data.edge_index.clone(), None, None)
    keep = out[KEEP_KEY] if KEEP_KEY in out else torch.ones(int(data.num_nodes), 1, dtype=torch.bool)
    _, row_kept = mask_feature(torch.ones(int(data.num_nodes), 1), strength, mode="row")
    out[KEEP_KEY] = keep & row_kept.reshape(-1, 1)
    return out


def apply_feature_mask(batch: Batch) -> Batch:
    """Zero the feature rows of masked nodes (``keep_features`` False) in a collated
    batch; a batch of graphs that are no views is returned as it is."""
    if KEEP_KEY in batch:
        batch.x = batch.x * batch[KEEP_KEY].to(batch.x.dtype)
    return batch


def sample_subgraph(data: Data, strength: float) -> Data:
    """Keep a connected ball of about (1 - strength) of the nodes: breadth-first
    (``k_hop_subgraph``) from a random node, the last ring sampled to fill it."""
    n = int(data.num_nodes)
    keep = max(1, math.ceil((1.0 - strength) * n))
    center = torch.randint(n, (1,))
    inside = center
    hops = 0
    while inside.numel() < keep:
        hops += 1
        ball = k_hop_subgraph(center, hops, data.edge_index, num_nodes=n)[0]
        ring = ball[~torch.isin(ball, inside)]
        if ring.numel() == 0:  # the component is exhausted
            break
        inside = torch.cat([inside, ring[torch.randperm(ring.numel())[: keep - inside.numel()]]])
    node_mask = torch.zeros(n, dtype=torch.bool)
    node_mask[inside] = True
    edge_index, _, edge_mask = subgraph(node_mask, data.edge_index, num_nodes=n, relabel_nodes=True, return_edge_mask=True)
    return _with(data, edge_index, node_mask, edge_mask)


AUGMENTATIONS: dict[str, Callable[[Data, float], Data]] = {
    "node_drop": drop_nodes,
    "edge_perturb": perturb_edges,
    "feature_mask": mask_features,
    "subgraph": sample_subgraph,
}


@contextlib.contextmanager
def seeded_global_rngs(rng: np.random.Generator) -> Iterator[None]:
    """PyG's augmentations draw from torch's global RNG (and negative sampling from
    Python's): seed both from the sample's generator, restore them afterwards."""
    python_state = random.getstate()
    with seeded_torch_rng(rng):
        random.seed(int(rng.integers(2**62)))
        try:
            yield
        finally:
            random.setstate(python_state)


def _graphcl_pool() -> dict[str, float]:
    return {"node_drop": 0.2, "edge_perturb": 0.2, "feature_mask": 0.2, "subgraph": 0.3}


@dataclass(frozen=True)
class GraphViews:
    """What a graph view may do (``modalities.graph.views``).

    ``augmentations``: name -> strength, the share of nodes, edges or feature rows
    affected (for ``subgraph`` the share of nodes left out); ``per_view``: how many
    of them a view draws, without replacement (GraphCL's pool and one a view by default).
    """

    augmentations: dict[str, float] = field(default_factory=_graphcl_pool)
    per_view: int = 1
    # DINO's local views (``local_augment``, multi-crop): a connected subgraph of about
    # this share of the nodes, then a view of it
    local_share: float = 0.5


def check_views(views: GraphViews) -> None:
    """Raise a ValueError naming the augmentation or key that is out of place."""
    augmentations, per_view = views.augmentations, views.per_view
    unknown = [name for name in augmentations if name not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"Could not resolve augmentation {unknown[0]!r} among choices {sorted(AUGMENTATIONS)}")
    if not augmentations:
        raise ValueError("graph views need at least one augmentation")
    for name, strength in augmentations.items():
        if not 0.0 <= strength < 1.0:
            raise ValueError(f"augmentation {name!r} strength must be in [0, 1), got {strength}")
    if not 1 <= per_view <= len(augmentations):
        raise ValueError(f"views.per_view must be in [1, {len(augmentations)}], got {per_view}")
    if not 0.0 < views.local_share <= 1.0:
        raise ValueError(f"views.local_share must be in (0, 1], got {views.local_share}")


def graph_view(graph: Data, views: GraphViews, rng: np.random.Generator) -> Data:
    """One random view of ``graph`` (left unchanged): ``views.per_view`` augmentations
    drawn from the pool and applied in the pool's order. Every view carries
    ``keep_features``."""
    names = list(views.augmentations)
    chosen = set(names[i] for i in rng.permutation(len(names))[: views.per_view])
    out = _with(graph, graph.edge_index.clone(), None, None)
    out[KEEP_KEY] = torch.ones(int(graph.num_nodes), 1, dtype=torch.bool)
    with seeded_global_rngs(rng):
        for name in names:
            if name in chosen:
                out = AUGMENTATIONS[name](out, views.augmentations[name])
    return out


def local_graph_view(graph: Data, views: GraphViews, rng: np.random.Generator) -> Data:
    """A local view of ``graph`` (DINO's multi-crop; ``graph`` left unchanged): a
    connected subgraph of about ``views.local_share`` of the nodes (``sample_subgraph``),
    then a view of it (``graph_view``)."""
    with seeded_global_rngs(rng):
        part = sample_subgraph(graph, 1.0 - views.local_share)
    return graph_view(part, views, rng)
