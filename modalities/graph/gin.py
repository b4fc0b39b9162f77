"""GIN (Xu et al., 2019): sum aggregation and an MLP update, PyG's ``GINConv``."""

from __future__ import annotations

from torch import nn
from torch_geometric.nn import GINConv

from modalities.graph.config import GraphConfig
from modalities.graph.encoder import GraphEncoder


class GINEncoder(GraphEncoder):
    """``encoder: gin``."""

    def check_options(self, config: GraphConfig) -> None:
        if config.edge_features > 0:
            raise ValueError("graph encoder 'gin' ignores edge features: use 'gine', 'gat' or 'gps' with edge_features")

    def make_layer(self, edge_dim: int | None) -> nn.Module:
        return GINConv(self.mlp(), train_eps=True)
