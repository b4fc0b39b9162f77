"""The graph modality: options (``config``), encoder (GIN / GINE / GATv2 / GPS), processor
(checked PyG graphs, structural features, collation), GraphCL's views (``views``) and
renderer (graph families for the embedded world)."""

from modalities.base import Modality
from modalities.graph.config import GraphConfig, node_dim, structural_dim
from modalities.graph.encoder import GraphEncoder
from modalities.graph.processor import GraphProcessor, random_walk_pe
from modalities.graph.renderer import GRAPH_SPACE, SIZES, GraphRenderer, family_graph, render_graph
from modalities.graph.views import GraphViews


class GraphModality(Modality):
    """Graphs: ``GraphEncoder``, ``GraphProcessor``, ``GraphRenderer`` over ``GraphConfig``."""

    Config = GraphConfig
    Encoder = GraphEncoder
    Processor = GraphProcessor
    Renderer = GraphRenderer


__all__ = ["GRAPH_SPACE", "SIZES", "GraphConfig", "GraphEncoder", "GraphModality", "GraphProcessor", "GraphRenderer",
           "GraphViews", "family_graph", "node_dim", "random_walk_pe", "render_graph", "structural_dim"]
