"""The graph modality: options (``config``), four encoders, each in its own module (``gin``,
``gine``, ``gat``, ``gps``, over the shared parts in ``encoder``), processor (checked PyG
graphs, structural features, collation), GraphCL's views (``views``) and renderer (graph
families for the embedded world)."""

from modalities.base import Modality
from modalities.graph.config import GraphConfig, node_dim, structural_dim
from modalities.graph.encoder import GraphEncoder
from modalities.graph.gat import GATv2Encoder
from modalities.graph.gin import GINEncoder
from modalities.graph.gine import GINEEncoder
from modalities.graph.gps import GPSEncoder
from modalities.graph.processor import GraphProcessor, random_walk_pe
from modalities.graph.renderer import GRAPH_SPACE, SIZES, GraphRenderer, family_graph, render_graph
from modalities.graph.views import GraphViews


class GraphModality(Modality):
    """Graphs: an encoder by ``encoder`` (``encoders``), ``GraphProcessor``, ``GraphRenderer``."""

    Config = GraphConfig
    Encoder = GraphEncoder
    encoders = {"gin": GINEncoder, "gine": GINEEncoder, "gat": GATv2Encoder, "gps": GPSEncoder}
    Processor = GraphProcessor
    Renderer = GraphRenderer


__all__ = ["GATv2Encoder", "GINEEncoder", "GINEncoder", "GPSEncoder", "GRAPH_SPACE", "SIZES", "GraphConfig", "GraphEncoder", "GraphModality", "GraphProcessor", "GraphRenderer",
           "GraphViews", "family_graph", "node_dim", "random_walk_pe", "render_graph", "structural_dim"]
