"""GINE (Hu et al., 2020): GIN with edge features added to the messages, PyG's ``GINEConv``."""

from __future__ import annotations

from torch import nn
from torch_geometric.nn import GINEConv

from modalities.graph.config import GraphConfig
from modalities.graph.encoder import GraphEncoder


class GINEEncoder(GraphEncoder):
    """``encoder: gine``."""

    def check_options(self, config: GraphConfig) -> None:
        if config.edge_features == 0:
            raise ValueError("graph encoder 'gine' needs edge features: set edge_features > 0 (or use encoder 'gin')")

    def make_layer(self, edge_dim: int | None) -> nn.Module:
        return GINEConv(self.mlp(), train_eps=True, edge_dim=edge_dim)
