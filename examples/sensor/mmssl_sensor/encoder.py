"""The sensor modality's encoder: the window cut into patches of ``patch`` samples over
all channels, a linear patch embedding, a timm transformer, and the mean over the
patches that hold data; it hides patches under a ``patch_mask`` (masked or forecast
modeling)."""

from __future__ import annotations

from typing import Mapping

import torch
from einops import rearrange
from timm.models.vision_transformer import Block
from torch import nn

from mmssl_sensor.config import SensorConfig
from modalities.base import Encoder, ModalityOutput


class SensorEncoder(Encoder):
    """Motion sensor windows through a patch transformer."""

    independent_samples = True

    def __init__(self, config: SensorConfig) -> None:
        super().__init__(config)
        if config.length % config.patch:
            raise ValueError(f"sensor length {config.length} is not a multiple of patch {config.patch}")
        self.embed_dim = config.width
        self.grid = (1, config.length // config.patch)  # one row of patches over time
        self.patch_dim = config.channels * config.patch
        self.patch_embed = nn.Linear(self.patch_dim, config.width)
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid[1], config.width) * 0.02)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.blocks = nn.Sequential(*[Block(config.width, config.heads) for _ in range(config.depth)])
        self.norm = nn.LayerNorm(config.width)

    def patchify(self, signal: torch.Tensor) -> torch.Tensor:
        """[B, C, L] -> [B, N, C * patch], patches in time order."""
        return rearrange(signal, "b c (n p) -> b n (c p)", p=self.config.patch)

    def patch_targets(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """What masked modeling predicts: the signal's patches, [B, N, C * patch]."""
        return self.patchify(batch["signal"])

    def patch_padding_mask(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """[B, N] True for patches that lie wholly in padding."""
        return ~rearrange(batch["valid"], "b (n p) -> b n p", p=self.config.patch).any(-1)

    def forward(self, batch: Mapping[str, torch.Tensor], patch_mask: torch.Tensor | None = None) -> ModalityOutput:
        x = self.patch_embed(self.patchify(batch["signal"]))
        if patch_mask is not None:
            x = torch.where(patch_mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        tokens = self.norm(self.blocks(x + self.pos_embed))
        padding = self.patch_padding_mask(batch)
        keep = (~padding).unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * keep).sum(1) / keep.sum(1).clamp(min=1)
        return ModalityOutput(pooled=pooled, tokens=tokens, padding_mask=padding)
