"""GATv2 (Brody et al., 2022): dynamic attention over neighbours, PyG's ``GATv2Conv``,
with edge features where configured."""

from __future__ import annotations

from torch import nn
from torch_geometric.nn import GATv2Conv

from modalities.graph.encoder import GraphEncoder


class GATv2Encoder(GraphEncoder):
    """``encoder: gat``."""

    attention_heads = True

    def make_layer(self, edge_dim: int | None) -> nn.Module:
        c = self.config
        return GATv2Conv(c.width, c.width // c.heads, heads=c.heads, edge_dim=edge_dim, dropout=c.dropout)
