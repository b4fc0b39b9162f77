"""The graph modality's encoder: GIN / GINE / GATv2 / GPS message passing (PyG) with
mean, add or attention readout."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.nn import (
    AttentionalAggregation,
    GATv2Conv,
    GINConv,
    GINEConv,
    GPSConv,
    global_add_pool,
    global_mean_pool,
)
from torch_geometric.utils import to_dense_batch

from modalities.base import Encoder, ModalityOutput
from modalities.graph.config import GraphConfig, node_dim, structural_dim


class GraphEncoder(Encoder):
    """Graph encoder over PyG mini-batches (``GraphProcessor`` collates them, with the
    structural node features).

    Shapes:
        batch: a PyG ``Batch`` of B graphs: x [sum N, node_dim] (node_dim = in_features
            + max_degree + 1 + walk_length + size_feature), edge_index, batch [sum N].
        output: pooled [B, width]; tokens [B, N_max, width]; padding_mask [B, N_max]
            (True = padding, graphs have different node counts).
    """

    Config = GraphConfig

    def __init__(self, config: GraphConfig) -> None:
        super().__init__(config)
        c = config
        self.structural_dim = structural_dim(c)
        self.node_dim = node_dim(c)
        if self.node_dim == 0:
            raise ValueError("graph nodes have no input features: set in_features, max_degree or walk_length above 0")
        if c.encoder == "gine" and c.edge_features == 0:
            raise ValueError("graph encoder 'gine' needs edge features: set edge_features > 0 (or use encoder 'gin')")
        if c.encoder == "gin" and c.edge_features > 0:
            raise ValueError("graph encoder 'gin' ignores edge features: use 'gine', 'gat' or 'gps' with edge_features")
        if c.encoder in ("gat", "gps") and c.width % c.heads:
            raise ValueError(f"graph width {c.width} is not divisible by heads {c.heads}")
        self.embed_dim = c.width
        self.input = nn.Linear(self.node_dim, c.width)
        edge_dim = c.edge_features or None
        self.convs = nn.ModuleList([self._layer(edge_dim) for _ in range(c.depth)])
        # GPSConv normalises inside; the message-passing layers get a per-node LayerNorm.
        self.norms = nn.ModuleList([nn.LayerNorm(c.width) for _ in range(c.depth if c.encoder != "gps" else 0)])
        self.out_norm = nn.LayerNorm(c.width)
        self.pool = AttentionalAggregation(gate_nn=nn.Linear(c.width, 1)) if c.readout == "attention" else None

    def _mlp(self) -> nn.Module:
        w = self.config.width
        return nn.Sequential(nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w))

    def _layer(self, edge_dim: int | None) -> nn.Module:
        c = self.config
        if c.encoder == "gin":
            return GINConv(self._mlp(), train_eps=True)
        if c.encoder == "gine":
            return GINEConv(self._mlp(), train_eps=True, edge_dim=edge_dim)
        if c.encoder == "gat":
            return GATv2Conv(c.width, c.width // c.heads, heads=c.heads, edge_dim=edge_dim, dropout=c.dropout)
        local = GINEConv(self._mlp(), edge_dim=edge_dim) if edge_dim else GINConv(self._mlp())
        return GPSConv(c.width, local, heads=c.heads, dropout=c.dropout, norm="layer_norm", norm_kwargs={"mode": "node"})

    # --- model --------------------------------------------------------------------------
    def forward_features(self, batch: Batch) -> torch.Tensor:
        """Node embeddings. Shapes: batch.x [sum N, node_dim] -> [sum N, width]."""
        h = self.input(batch.x)
        edge_attr = batch.edge_attr if self.config.edge_features else None
        checkpoint = self.checkpoint_now()
        for i in range(len(self.convs)):
            if checkpoint:
                h = torch.utils.checkpoint.checkpoint(
                    self._run_layer, i, h, batch.edge_index, batch.batch, edge_attr, use_reentrant=False
                )
            else:
                h = self._run_layer(i, h, batch.edge_index, batch.batch, edge_attr)
        return self.out_norm(h)

    def _run_layer(
        self, i: int, h: torch.Tensor, edge_index: torch.Tensor, graph: torch.Tensor, edge_attr: torch.Tensor | None
    ) -> torch.Tensor:
        """Layer ``i``: a GPS layer, or message passing, LayerNorm, ReLU and a residual.
        Shapes: h [sum N, width] -> [sum N, width]; graph [sum N], the graph of each node."""
        kwargs = {"edge_attr": edge_attr} if edge_attr is not None else {}
        if self.config.encoder == "gps":
            return self.convs[i](h, edge_index, graph, **kwargs)
        update = F.relu(self.norms[i](self.convs[i](h, edge_index, **kwargs)))
        return h + F.dropout(update, self.config.dropout, self.training)

    # --- training options --------------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Each layer (GIN / GINE / GATv2 with its norm, or a GPS layer) under non-reentrant
        ``torch.utils.checkpoint``, in training mode with gradients enabled: PyG has no
        switch of its own. Dropout draws the same values when a layer is recomputed."""
        self.grad_checkpointing = enable

    def forward(self, batch: Batch) -> ModalityOutput:
        nodes = self.forward_features(batch)
        size = int(batch.num_graphs)
        if self.config.readout == "mean":
            pooled = global_mean_pool(nodes, batch.batch, size)
        elif self.config.readout == "add":
            pooled = global_add_pool(nodes, batch.batch, size)
        else:
            pooled = self.pool(nodes, batch.batch, dim_size=size)
        tokens, real = to_dense_batch(nodes, batch.batch, batch_size=size)
        return ModalityOutput(pooled=pooled, tokens=tokens, padding_mask=~real)
