"""What the graph modality's encoders share: structural node features in, a stack of
message-passing layers (each encoder's own: GIN, GINE, GATv2, GPS, each in its module),
mean, add or attention readout out. ``GraphModality`` picks one by
``modalities.<key>.encoder``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.nn import AttentionalAggregation, global_add_pool, global_mean_pool
from torch_geometric.utils import to_dense_batch

from modalities.base import Encoder, ModalityOutput
from modalities.graph.config import GraphConfig, check_categorical, edge_vocabulary, node_dim, node_vocabulary, structural_dim
from modalities.graph.views import KEEP_KEY


class GraphEncoder(Encoder):
    """Base of the graph encoders over PyG mini-batches (``GraphProcessor`` collates them,
    with the structural node features). A subclass builds its layer (``make_layer``) and
    refuses options that do not fit it (``check_options``).

    Shapes:
        batch: a PyG ``Batch`` of B graphs: x [sum N, node_dim] (node_dim = in_features
            + max_degree + 1 + walk_length + size_feature), edge_index, batch [sum N].
        output: pooled [B, width]; tokens [B, N_max, width]; padding_mask [B, N_max]
            (True = padding, graphs have different node counts).
    """

    Config = GraphConfig
    # a per-node LayerNorm after each message-passing layer (GPS layers normalise inside)
    layer_norms: bool = True
    # multi-head attention in each layer: ``width`` must divide over ``heads``
    attention_heads: bool = False

    def __init__(self, config: GraphConfig) -> None:
        super().__init__(config)
        c = config
        self.structural_dim = structural_dim(c)
        self.node_dim = node_dim(c)
        if self.node_dim == 0:
            raise ValueError("graph nodes have no input features: set in_features, max_degree or walk_length above 0")
        check_categorical(c)
        self.check_options(c)
        self.embed_dim = c.width
        # Categorical columns (the first of x and of edge_attr): one embedding a column,
        # summed, with one row more than the vocabulary, the mask token of feature masking
        node_vocab, edge_vocab = node_vocabulary(c), edge_vocabulary(c)
        self.node_embeddings = nn.ModuleList([nn.Embedding(size + 1, c.width) for size in node_vocab])
        self.edge_embeddings = nn.ModuleList([nn.Embedding(size + 1, c.width) for size in edge_vocab])
        if node_vocab:  # each column's mask token: its vocabulary size
            self.register_buffer("node_mask_codes", torch.tensor(node_vocab, dtype=torch.long), persistent=False)
        continuous = self.node_dim - len(node_vocab)
        self.input = nn.Linear(continuous, c.width) if continuous else None
        edge_dim = c.edge_features or None
        if edge_vocab:  # the summed embeddings, then the other columns as they are
            edge_dim = c.width + c.edge_features - len(edge_vocab)
        self.convs = nn.ModuleList([self.make_layer(edge_dim) for _ in range(c.depth)])
        self.norms = nn.ModuleList([nn.LayerNorm(c.width) for _ in range(c.depth if self.layer_norms else 0)])
        self.out_norm = nn.LayerNorm(c.width)
        self.pool = AttentionalAggregation(gate_nn=nn.Linear(c.width, 1)) if c.readout == "attention" else None

    def check_options(self, config: GraphConfig) -> None:
        """Raise a ValueError naming the option this encoder cannot take."""
        if self.attention_heads and config.width % config.heads:
            raise ValueError(f"graph width {config.width} is not divisible by heads {config.heads}")

    def make_layer(self, edge_dim: int | None) -> nn.Module:
        """One message-passing layer, [sum N, width] -> [sum N, width]."""
        raise NotImplementedError

    def mlp(self) -> nn.Module:
        """The two-layer MLP of a GIN-style update."""
        w = self.config.width
        return nn.Sequential(nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w))

    # --- model --------------------------------------------------------------------------
    def embed_nodes(self, batch: Batch) -> torch.Tensor:
        """The first node states: the categorical columns' embeddings summed, plus the
        linear input of the other columns. A node whose features a view masked
        (``keep_features`` False) reads each categorical column's mask token.
        Shapes: batch.x [sum N, node_dim] -> [sum N, width]."""
        x = batch.x
        columns = len(self.node_embeddings)
        h = self.input(x[:, columns:]) if self.input is not None else None
        if columns:
            codes = x[:, :columns].long()
            if KEEP_KEY in batch:
                codes = torch.where(batch[KEEP_KEY], codes, self.node_mask_codes)
            for i, embedding in enumerate(self.node_embeddings):
                h = embedding(codes[:, i]) if h is None else h + embedding(codes[:, i])
        return h

    def embed_edges(self, edge_attr: torch.Tensor) -> torch.Tensor:
        """Edge features as the layers read them: the categorical columns' embeddings
        summed, then the other columns. Shapes: [E, edge_features] -> [E, edge_dim]."""
        columns = len(self.edge_embeddings)
        if not columns:
            return edge_attr
        codes = edge_attr[:, :columns].long()
        embedded = sum(embedding(codes[:, i]) for i, embedding in enumerate(self.edge_embeddings))
        return torch.cat([embedded, edge_attr[:, columns:].to(embedded.dtype)], dim=1)

    def forward_features(self, batch: Batch) -> torch.Tensor:
        """Node embeddings. Shapes: batch.x [sum N, node_dim] -> [sum N, width]."""
        h = self.embed_nodes(batch)
        edge_attr = self.embed_edges(batch.edge_attr) if self.config.edge_features else None
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
        """Layer ``i``: message passing, LayerNorm, ReLU and a residual.
        Shapes: h [sum N, width] -> [sum N, width]; graph [sum N], the graph of each node."""
        kwargs = {"edge_attr": edge_attr} if edge_attr is not None else {}
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
