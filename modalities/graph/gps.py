"""GPS (Rampasek et al., 2022): per layer, local message passing (GIN, or GINE with edge
features) and global multi-head attention over all nodes of a graph, PyG's ``GPSConv``
(which normalises inside its layer)."""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn import GINConv, GINEConv, GPSConv

from modalities.graph.encoder import GraphEncoder


class GPSEncoder(GraphEncoder):
    """``encoder: gps``."""

    layer_norms = False
    attention_heads = True

    def make_layer(self, edge_dim: int | None) -> nn.Module:
        c = self.config
        local = GINEConv(self.mlp(), edge_dim=edge_dim) if edge_dim else GINConv(self.mlp())
        return GPSConv(c.width, local, heads=c.heads, dropout=c.dropout, norm="layer_norm", norm_kwargs={"mode": "node"})

    def _run_layer(
        self, i: int, h: torch.Tensor, edge_index: torch.Tensor, graph: torch.Tensor, edge_attr: torch.Tensor | None
    ) -> torch.Tensor:
        """A GPS layer: its own residuals and norms. Shapes: h [sum N, width] -> [sum N, width]."""
        kwargs = {"edge_attr": edge_attr} if edge_attr is not None else {}
        return self.convs[i](h, edge_index, graph, **kwargs)
