"""The graph modality: PyG graphs in, GIN / GINE / GATv2 / GPS encoders, GraphCL views
(``views``), graph families for the embedded world."""

from modalities.graph.modality import GRAPH_SPACE, SIZES, GraphConfig, GraphModality, family_graph, random_walk_pe, render_graph
from modalities.graph.views import GraphViews

__all__ = ["GRAPH_SPACE", "SIZES", "GraphConfig", "GraphModality", "GraphViews", "family_graph", "random_walk_pe", "render_graph"]
