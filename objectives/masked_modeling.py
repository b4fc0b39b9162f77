"""Masked patch modeling (SimMIM, and MAE as an option) on any encoder that cuts its
input into patches (the ``PatchEncoder`` capability): spectrograms, images, a plugin's
signals.

A share of the patches is hidden (random patches, BEiT's rectangular blocks, whole
time steps or whole frequency bands). The encoder sees them hidden in its own way (a
learned mask token at the patch embedding of a transformer, blanked input for a CNN),
a head on each patch's token predicts its values, normalised per patch (MAE's
``norm_pix_loss``), and the loss counts hidden patches only. With ``mae: true`` the
encoder encodes the visible patches alone (``VisiblePatchEncoder``) and a small decoder
(mask tokens, fixed 2-D sin-cos positions, transformer blocks) predicts the hidden
ones, as MAE. The metrics put the loss of the trivial predictor (each patch's own mean)
beside it, so a log shows whether the model beats that baseline.

One objective, three registered names: ``masked_patches`` for any patch encoder, and
``masked_audio`` and ``masked_image``, which keep the keys and defaults they had as
objectives of their own (SimMIM / AudioMAE on log-mel patches; SimMIM / MAE on pixels).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal, Mapping

import numpy as np
import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from modalities.base import Encoder, PatchEncoder, VisiblePatchEncoder, require_capability, upcast
from objectives.base import EXTRAS_KEY, DistContext, EncoderCall, EncoderHost, Objective, ObjectiveOutput, SamplePrep
from objectives.helpers.heads import HeadKind, projection_head
from objectives.helpers.patch_masking import (
    check_mask_ratio,
    masked_patch_loss,
    normalise_patches,
    patch_mask,
    trivial_patch_loss,
)


@dataclass(frozen=True)
class MaskedPatchConfig:
    modalities: tuple[str, ...] = ()  # one modality whose encoder is a PatchEncoder
    mask_ratio: float = 0.6
    # random patches; block: BEiT's rectangles; time / frequency: whole grid columns / rows
    mask_kind: Literal["random", "block", "time", "frequency"] = "random"
    norm_targets: bool = True  # normalise each target patch to zero mean, unit variance
    head: HeadKind = "linear"  # SimMIM's one linear layer per patch; the MAE decoder ends in one too
    # let the encoder's local patch view (if it has one: the audio spectrogram
    # transformer) take part in the masked pass; false encodes the main grid alone there
    local_view: bool = True
    # MAE: the encoder sees the visible patches alone, the decoder below predicts the rest
    mae: bool = False
    decoder_width: int = 64
    decoder_depth: int = 1
    decoder_heads: int = 2


@dataclass(frozen=True)
class MaskedAudioConfig:
    """``masked_audio``: SimMIM / AudioMAE on log-mel patches (no MAE decoder)."""

    modalities: tuple[str] = ("audio",)
    mask_ratio: float = 0.5
    mask_kind: Literal["random", "time", "frequency"] = "random"
    norm_targets: bool = True
    head: HeadKind = "mlp"
    local_view: bool = True


@dataclass(frozen=True)
class MaskedImageConfig:
    """``masked_image``: SimMIM on pixels, MAE with ``mae: true`` (a ViT tower)."""

    modalities: tuple[str] = ("image",)
    mask_ratio: float = 0.6  # SimMIM's; MAE's is 0.75
    mask_kind: Literal["random", "block"] = "random"
    norm_targets: bool = True
    head: HeadKind = "linear"
    mae: bool = False
    decoder_width: int = 64
    decoder_depth: int = 1
    decoder_heads: int = 2


class MAEDecoder(nn.Module):
    """MAE's decoder: the encoder's visible tokens, a learned mask token at every hidden
    patch, fixed 2-D sin-cos positions, a few transformer blocks, then values per patch.

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


@dataclass(frozen=True)
class PatchMaskPrep(SamplePrep):
    """Each sample's patch mask, drawn in the data pipeline from its own generator."""

    grid: tuple[int, int]
    ratio: float
    kind: str

    def prepare_sample(self, sample: Mapping[str, Any], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return {"patch_mask": patch_mask(self.grid, self.ratio, self.kind, rng)}


class MaskedPatchObjective(Objective):
    """Predict hidden patches of a ``PatchEncoder``'s input from the rest."""

    Config = MaskedPatchConfig
    purpose: ClassVar[str] = "masked patch modeling"
    hint: ClassVar[str] = "configure an encoder that cuts patches (modalities/base.py: PatchEncoder)"
    mae_hint: ClassVar[str] = "use an encoder that can encode its visible patches alone, or mae: false"

    def __init__(self, config: Any, encoders: Mapping[str, Encoder], dist: DistContext) -> None:
        super().__init__(config, encoders, dist)
        self.require_one_modality(self.purpose)
        # every registered name's config is a subset of MaskedPatchConfig's keys
        self.options = MaskedPatchConfig(**{f.name: getattr(config, f.name) for f in fields(config)})
        options = self.options
        check_mask_ratio(options.mask_ratio)
        self.key = self.modalities[0]
        encoder = encoders[self.key]
        if options.mae:
            require_capability(encoder, VisiblePatchEncoder, f"{self.purpose} with mae: true",
                               forward_kwargs=("patch_mask", "visible_only"), hint=self.mae_hint)
        else:
            require_capability(encoder, PatchEncoder, self.purpose, forward_kwargs=("patch_mask",), hint=self.hint)
        enable = getattr(encoder, "enable_patch_masking", None)  # an encoder that makes its mask parameters on request
        if enable is not None:
            enable()
        self.grid = tuple(encoder.grid)
        self.prep = PatchMaskPrep(self.grid, options.mask_ratio, options.mask_kind)
        self.has_local_view = getattr(encoder, "local_grid", None) is not None
        if options.mae:
            self.decoder = MAEDecoder(encoder.embed_dim, self.grid, encoder.patch_dim, options.decoder_width,
                                      options.decoder_depth, options.decoder_heads)
        else:
            self.head = projection_head(encoder.embed_dim, encoder.patch_dim, options.head)

    def encoder_calls(self, batch: Mapping[str, Any]) -> dict[str, EncoderCall]:
        kwargs: dict[str, Any] = {"patch_mask": batch[EXTRAS_KEY]["patch_mask"]}
        if self.options.mae:
            kwargs["visible_only"] = True
        if not self.options.local_view and self.has_local_view:
            kwargs["local_view"] = False
        return {"masked": EncoderCall(self.key, batch[self.key], kwargs)}

    def forward(self, model: EncoderHost, batch: Mapping[str, Any]) -> ObjectiveOutput:
        encoder = model.encoders[self.key]
        inputs = batch[self.key]
        hidden = batch[EXTRAS_KEY]["patch_mask"]
        counted = hidden & ~encoder.patch_padding_mask(inputs)  # patches wholly in padding are no target
        tokens = self.encode(model, batch, "masked").tokens
        prediction = self.decoder(tokens, hidden) if self.options.mae else self.head(tokens)
        target = upcast(encoder.patch_targets(inputs))
        if self.options.norm_targets:
            target = normalise_patches(target)
        loss = masked_patch_loss(prediction, target, counted, self.dist)
        baseline = trivial_patch_loss(target, counted, self.dist)
        loss_value, baseline = loss.detach(), baseline.detach()
        metrics = {
            "loss": loss_value,
            "trivial_loss": baseline,
            "loss_vs_trivial": loss_value.double() / baseline.double().clamp_min(1e-12),
            "masked_patches": counted.sum(),
        }
        return ObjectiveOutput(loss=loss, metrics=metrics)


class MaskedAudioObjective(MaskedPatchObjective):
    """``masked_audio``: masked log-mel patches of an audio encoder."""

    Config = MaskedAudioConfig
    purpose = "masked audio modeling"
    hint = "use the spectrogram_transformer audio encoder"


class MaskedImageObjective(MaskedPatchObjective):
    """``masked_image``: hidden image patches' pixels (SimMIM; MAE with ``mae``)."""

    Config = MaskedImageConfig
    purpose = "masked image modeling"
    hint = ("use an image tower that hides patches: a timm or open_clip ViT, or a timm CNN whose feature map "
            "divides image_size")
    mae_hint = "use a ViT image tower (timm VisionTransformer or open_clip ViT), or mae: false for CNN towers"
