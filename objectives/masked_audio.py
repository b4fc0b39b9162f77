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

from modalities.base import Modality, PatchEncoder, require_capability
from objectives.base import (
    EXTRAS_KEY,
    DistContext,
    EncoderCall,
    EncoderHost,
    Objective,
    ObjectiveOutput,
    mean_over_global_count,
)
from objectives.heads import HeadKind, projection_head

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


def patch_mask(grid: tuple[int, int], ratio: float, kind: str, rng: np.random.Generator) -> torch.Tensor:
    """A [F' * T'] bool mask over a frequency-major patch grid (True = masked).

    ``random`` masks round(ratio * N) patches; ``time`` masks whole time steps (all
    frequency patches of round(ratio * T') columns); ``frequency`` whole bands.
    """
    f, t = grid
    mask = np.zeros((f, t), dtype=bool)
    if kind == "random":
        flat = mask.reshape(-1)
        flat[rng.permutation(f * t)[: max(1, round(ratio * f * t))]] = True
    elif kind == "time":
        mask[:, rng.permutation(t)[: max(1, round(ratio * t))]] = True
    elif kind == "frequency":
        mask[rng.permutation(f)[: max(1, round(ratio * f))], :] = True
    else:
        raise ValueError(f"unknown mask kind '{kind}': use random, time or frequency")
    return torch.from_numpy(mask.reshape(-1))


def normalise_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch zero mean, unit variance (MAE's normalised pixel targets). Shapes: [..., P]."""
    mean = patches.mean(-1, keepdim=True)
    var = patches.var(-1, keepdim=True, unbiased=False)
    return (patches - mean) / (var + eps).sqrt()


def masked_patch_loss(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, dist: DistContext | None = None
) -> torch.Tensor:
    """Mean squared error over masked patches only (over every rank's masked patches
    under data parallelism; see ``mean_over_global_count``).

    Shapes:
        prediction, target: [B, N, P]; mask: [B, N] bool (True = counts).
    """
    per_patch = (prediction.float() - target.float()).pow(2).mean(-1)
    weights = mask.to(per_patch.dtype)
    return mean_over_global_count((per_patch * weights).sum(), weights.sum(), dist or DistContext())


class MaskedAudioObjective(Objective):
    """Predict masked log-mel patches of the audio encoder's input."""

    Config = MaskedAudioConfig

    def __init__(self, config: MaskedAudioConfig, encoders: Mapping[str, Modality], dist: DistContext) -> None:
        super().__init__(config, encoders, dist)
        if len(self.modalities) != 1:
            raise ValueError(f"masked audio modeling takes one modality, got {list(self.modalities)}")
        if not 0 < config.mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {config.mask_ratio}")
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
        target = encoder.patchify(inputs["mel"]).float()
        if self.config.norm_targets:
            target = normalise_patches(target)
        loss = masked_patch_loss(prediction, target, counted, self.dist)
        with torch.no_grad():
            trivial = target.mean(-1, keepdim=True).expand_as(target)
            baseline = masked_patch_loss(trivial, target, counted, self.dist)
        metrics = {
            "loss": loss.item(),
            "trivial_loss": baseline.item(),
            "loss_vs_trivial": loss.item() / max(baseline.item(), 1e-12),
            "masked_patches": float(counted.sum().item()),
        }
        return ObjectiveOutput(loss=loss, metrics=metrics)
