"""Masked image modeling: SimMIM, and MAE as an option, on any patch-based image encoder.

A share of the image's patches is hidden (random patches, or BEiT's rectangular
blocks). A ViT tower sees a learned mask token in their place (at the patch
embedding); a CNN tower sees them blanked in its input (SimMIM's input-space
variant). A head on each patch's token predicts its pixels, normalised per patch
(MAE's ``norm_pix_loss``); the loss counts hidden patches only. With ``mae: true`` the
encoder encodes the visible patches alone and a small decoder (mask tokens, fixed 2-D
sin-cos positions, transformer blocks) predicts the hidden ones, as MAE. The metrics
put the loss of the trivial predictor (each patch's own mean) beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

import numpy as np
import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from modalities.base import Modality, PatchEncoder, VisiblePatchEncoder, require_capability, upcast
from objectives.base import EXTRAS_KEY, DistContext, EncoderCall, EncoderHost, Objective, ObjectiveOutput
from objectives.heads import HeadKind, projection_head
from objectives.masked_patches import check_mask_ratio, masked_patch_loss, normalise_patches, patch_mask, trivial_patch_loss


@dataclass(frozen=True)
class MaskedImageConfig:
    modalities: tuple[str] = ("image",)
    mask_ratio: float = 0.6  # SimMIM's; MAE's is 0.75
    mask_kind: Literal["random", "block"] = "random"
    norm_targets: bool = True  # normalise each target patch to zero mean, unit variance
    head: HeadKind = "linear"  # SimMIM's one linear layer per patch; the MAE decoder ends in one too
    # MAE: the encoder sees the visible patches alone (a ViT tower), the decoder below the rest
    mae: bool = False
    decoder_width: int = 64
    decoder_depth: int = 1
    decoder_heads: int = 2


class MAEDecoder(nn.Module):
    """MAE's decoder: the encoder's visible tokens, a learned mask token at every hidden
    patch, fixed 2-D sin-cos positions, a few transformer blocks, then pixels per patch.

    Shapes:
        visible: [B, N - M, D] (grid order); hidden: [B, N] bool, M True per row
        -> prediction [B, N, patch_dim].
    """

    def __init__(self, in_dim: int, grid: tuple[int, int], patch_dim: int, width: int, depth: int, heads: int) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(width))
        self.register_buffer("pos_embed", build_sincos2d_pos_embed(list(grid), width), persistent=False)
        self.blocks = nn.Sequential(*[Block(width, heads, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.predict = nn.Linear(width, patch_dim)

    def forward(self, visible: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        x = self.embed(visible)
        b, n, width = hidden.shape[0], hidden.shape[1], x.shape[-1]
        # each row's visible tokens back into their grid places, the mask token elsewhere
        places = (~hidden).unsqueeze(-1).expand(b, n, width)
        full = self.mask_token.to(x.dtype).expand(b, n, width).masked_scatter(places, x)
        return self.predict(self.norm(self.blocks(full + self.pos_embed.to(x.dtype))))


class MaskedImageObjective(Objective):
    """Predict hidden image patches' pixels from the rest (SimMIM; MAE with ``mae``)."""

    Config = MaskedImageConfig

    def __init__(self, config: MaskedImageConfig, encoders: Mapping[str, Modality], dist: DistContext) -> None:
        super().__init__(config, encoders, dist)
        self.require_one_modality("masked image modeling")
        check_mask_ratio(config.mask_ratio)
        self.key = self.modalities[0]
        encoder = encoders[self.key]
        if config.mae:
            require_capability(
                encoder, VisiblePatchEncoder, "masked image modeling with mae: true",
                forward_kwargs=("patch_mask", "visible_only"),
                hint="use a ViT image tower (timm VisionTransformer or open_clip ViT), or mae: false for CNN towers",
            )
        else:
            require_capability(
                encoder, PatchEncoder, "masked image modeling", forward_kwargs=("patch_mask",),
                hint="use an image tower that hides patches: a timm or open_clip ViT, or a timm CNN whose feature map "
                "divides image_size",
            )
        enable = getattr(encoder, "enable_patch_masking", None)  # an encoder that makes its mask parameters on request
        if enable is not None:
            enable()
        self.grid = tuple(encoder.grid)
        if config.mae:
            self.decoder = MAEDecoder(
                encoder.embed_dim, self.grid, encoder.patch_dim, config.decoder_width, config.decoder_depth, config.decoder_heads
            )
        else:
            self.head = projection_head(encoder.embed_dim, encoder.patch_dim, config.head)

    def prepare_sample(self, sample: Mapping[str, Any], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return {"patch_mask": patch_mask(self.grid, self.config.mask_ratio, self.config.mask_kind, rng)}

    def encoder_calls(self, batch: Mapping[str, Any]) -> dict[str, EncoderCall]:
        kwargs: dict[str, Any] = {"patch_mask": batch[EXTRAS_KEY]["patch_mask"]}
        if self.config.mae:
            kwargs["visible_only"] = True
        return {"masked": EncoderCall(self.key, batch[self.key], kwargs)}

    def forward(self, model: EncoderHost, batch: Mapping[str, Any]) -> ObjectiveOutput:
        encoder = model.encoders[self.key]
        inputs = batch[self.key]
        hidden = batch[EXTRAS_KEY]["patch_mask"]
        counted = hidden & ~encoder.patch_padding_mask(inputs)
        tokens = self.encode(model, batch, "masked").tokens
        prediction = self.decoder(tokens, hidden) if self.config.mae else self.head(tokens)
        target = upcast(encoder.patch_targets(inputs))
        if self.config.norm_targets:
            target = normalise_patches(target)
        loss = masked_patch_loss(prediction, target, counted, self.dist)
        baseline = trivial_patch_loss(target, counted, self.dist)
        metrics = {
            "loss": loss.item(),
            "trivial_loss": baseline.item(),
            "loss_vs_trivial": loss.item() / max(baseline.item(), 1e-12),
            "masked_patches": float(counted.sum().item()),
        }
        return ObjectiveOutput(loss=loss, metrics=metrics)
