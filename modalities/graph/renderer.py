"""The graph modality's renderer for the embedded world: graph families (cycles,
paths, stars, ...) of three sizes, with the world's count as pendant triangles."""

from __future__ import annotations

from typing import Mapping

import networkx as nx
import numpy as np
import torch
from torch_geometric.data import Data

from modalities.base import COUNT, ConceptSpace, Renderer
from modalities.graph.config import GraphConfig


class GraphRenderer(Renderer):
    """Renders concepts of ``GRAPH_SPACE`` (size x family, count) as PyG ``Data``."""

    def __init__(self, config: GraphConfig) -> None:
        super().__init__(config)

    def concept_space(self) -> ConceptSpace:
        return GRAPH_SPACE

    def render(self, concept: Mapping[str, str], rng: np.random.Generator) -> Data:
        return render_graph(concept, rng)


GRAPH_SPACE = ConceptSpace(
    class_attributes={
        "size": ("small", "medium", "large"),
        "family": ("cycle", "path", "star", "complete", "wheel", "grid", "ladder", "tree"),
    },
    shared_attributes=COUNT,
    caption_templates=(
        "a {size} {family} graph",
        "a {size} {family}",
        "a {family} graph that is {size}",
        "{size} {family}",
        "a {size} {family} graph with {count}",
        "a {size} {family} network",
        "a {family} graph with {count}",
    ),
    single_attribute_templates={
        "size": ("a {size} graph", "a {size} network", "a {size} graph with {count}"),
        "family": ("a {family} graph", "a {family}", "a {family} with {count}"),
    },
    synonyms={
        "small": ("small", "little"),
        "medium": ("medium", "medium-sized"),
        "large": ("large", "big"),
        "cycle": ("cycle", "ring"),
        "path": ("path", "chain"),
        "complete": ("complete", "clique"),
        "grid": ("grid", "lattice"),
        "tree": ("tree", "random tree"),
        "one": ("one triangle attached", "one pendant triangle"),
        "two": ("two triangles attached", "two pendant triangles"),
        "three": ("three triangles attached", "three pendant triangles"),
        "four": ("four triangles attached", "four pendant triangles"),
    },
    prompt_templates=("a {} graph.", "a {}.", "a {} network."),
)

# Node counts of the size classes (before pendant triangles; ladders round down to even counts).
SIZES = {"small": (5, 9), "medium": (12, 16), "large": (20, 25)}


def family_graph(family: str, size: str, rng: np.random.Generator) -> nx.Graph:
    """A graph of ``family`` whose node count lies in the size class's range."""
    low, high = SIZES[size]
    n = int(rng.integers(low, high + 1))
    if family == "cycle":
        return nx.cycle_graph(n)
    if family == "path":
        return nx.path_graph(n)
    if family == "star":
        return nx.star_graph(n - 1)
    if family == "complete":
        return nx.complete_graph(n)
    if family == "wheel":
        return nx.wheel_graph(n)
    if family == "ladder":
        return nx.ladder_graph(max(3, n // 2))
    if family == "grid":
        # at least 3 rows: a 2 x k grid is a ladder
        shapes = [(r, c) for r in range(3, 6) for c in range(r, 9) if low <= r * c <= high]
        r, c = shapes[int(rng.integers(len(shapes)))]
        return nx.convert_node_labels_to_integers(nx.grid_2d_graph(r, c))
    if family == "tree":
        # a random recursive tree: node i hangs from a uniformly chosen earlier node
        return nx.Graph([(i, int(rng.integers(i))) for i in range(1, n)])
    raise ValueError(f"unknown graph family '{family}'")


def render_graph(concept: Mapping[str, str], rng: np.random.Generator, noise_edges: int = 2) -> Data:
    """A graph of the concept's family and size class, with its count of pendant
    triangles attached (the world's count, as a graph shows it), up to ``noise_edges``
    random extra edges and a random node order. Every choice comes from ``rng``.
    Returns an undirected, featureless Data."""
    graph = family_graph(concept["family"], concept["size"], rng)
    n = base = graph.number_of_nodes()
    for _ in range(COUNT["count"].index(concept["count"]) + 1 if "count" in concept else 0):
        anchor = int(rng.integers(base))
        graph.add_edges_from([(anchor, n), (n, n + 1), (n + 1, anchor)])
        n += 2
    for _ in range(int(rng.integers(0, noise_edges + 1))):
        u, v = (int(a) for a in rng.integers(n, size=2))
        if u != v:
            graph.add_edge(u, v)
    order = rng.permutation(n)
    edges = np.array([(order[u], order[v]) for u, v in graph.edges()], dtype=np.int64).reshape(-1, 2)
    edge_index = torch.from_numpy(np.concatenate([edges, edges[:, ::-1]]).T.copy())
    return Data(edge_index=edge_index, num_nodes=n)
