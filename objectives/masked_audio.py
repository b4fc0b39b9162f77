"""Masked spectrogram modeling (SimMIM / AudioMAE style) on a patch-based audio encoder.

A share of the log-mel patches is masked (random patches, whole time steps, or whole
frequency bands); the encoder sees a learned mask token in their place and a head
predicts the masked patches' values, normalised per patch. The loss counts masked
patches only. The metrics put the loss of a trivial predictor (each patch's own mean)
beside it, so a log shows whether the model beats that baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

import numpy as np
import torch

from modalities.base import Modality, PatchEncoder, require_capability, upcast
from objectives.base import EXTRAS_KEY, DistContext, EncoderCall, EncoderHost, Objective, ObjectiveOutput
from objectives.heads import HeadKind, projection_head
from objectives.masked_patches import check_mask_ratio, masked_patch_loss, normalise_patches, patch_mask, trivial_patch_loss

__all__ = ["MaskedAudioConfig", "MaskedAudioObjective", "masked_patch_loss", "normalise_patches", "patch_mask"]


@dataclass(frozen=True)
class MaskedAudioConfig:
    modalities: tuple[str] = ("audio",)
    mask_ratio: float = 0.5
    mask_kind: Literal["random", "time", "frequency"] = "random"
    norm_targets: bool = True  # normalise each target patch to zero mean, unit variance
    head: HeadKind = "mlp"
    # let the encoder's local patch view (if it has one) take part in the masked pass;
    # false encodes the main grid alone there (cheaper; the local view then learns
    # from the other objectives only)
    local_view: bool = True


class MaskedAudioObjective(Objective):
    """Predict masked log-mel patches of the audio encoder's input."""

    Config = MaskedAudioConfig

    def __init__(self, config: MaskedAudioConfig, encoders: Mapping[str, Modality], dist: DistContext) -> None:
        super().__init__(config, encoders, dist)
        self.require_one_modality("masked audio modeling")
        check_mask_ratio(config.mask_ratio)
        self.key = self.modalities[0]
        encoder = encoders[self.key]
        require_capability(
            encoder, PatchEncoder, "masked audio modeling", forward_kwargs=("patch_mask",),
            hint="use the spectrogram_transformer audio encoder",
        )
        self.grid = tuple(encoder.grid)
        self.has_local_view = getattr(encoder, "local_grid", None) is not None
        self.head = projection_head(encoder.embed_dim, encoder.patch_dim, config.head)

    def prepare_sample(self, sample: Mapping[str, Any], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return {"patch_mask": patch_mask(self.grid, self.config.mask_ratio, self.config.mask_kind, rng)}

    def encoder_calls(self, batch: Mapping[str, Any]) -> dict[str, EncoderCall]:
        kwargs: dict[str, Any] = {"patch_mask": batch[EXTRAS_KEY]["patch_mask"]}
        if not self.config.local_view and self.has_local_view:
            kwargs["local_view"] = False
        return {"masked": EncoderCall(self.key, batch[self.key], kwargs)}

    def forward(self, model: EncoderHost, batch: Mapping[str, Any]) -> ObjectiveOutput:
        encoder = model.encoders[self.key]
        inputs = batch[self.key]
        masked = batch[EXTRAS_KEY]["patch_mask"]
        counted = masked & ~encoder.patch_padding_mask(inputs)  # padding after the audio ends is no target
        output = self.encode(model, batch, "masked")
        prediction = self.head(output.tokens)
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
