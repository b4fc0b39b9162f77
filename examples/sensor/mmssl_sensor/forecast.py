"""Forecasting as masked modeling of a window's future: the encoder sees the window with
its last ``horizon`` patches hidden (the mask token in their place) and a head predicts
their values from the tokens at those positions. The metrics put the loss of the
persistence forecast (the last visible patch, repeated) beside it.

It needs of a modality only what mmssl's ``PatchEncoder`` capability declares, so any
patch-based encoder of a signal can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from modalities.base import Encoder, PatchEncoder, require_capability
from objectives.base import DistContext, EncoderCall, EncoderHost, Objective, ObjectiveOutput
from objectives.helpers.heads import HeadKind, projection_head
from objectives.helpers.patch_masking import masked_patch_loss


@dataclass(frozen=True)
class ForecastConfig:
    modalities: tuple[str] = ("sensor",)
    horizon: int = 3  # patches to predict at the end of each window
    head: HeadKind = "mlp"


class ForecastObjective(Objective):
    """Predict the last ``horizon`` patches of each window from the patches before them."""

    Config = ForecastConfig

    def __init__(self, config: ForecastConfig, encoders: Mapping[str, Encoder], dist: DistContext) -> None:
        super().__init__(config, encoders, dist)
        self.require_one_modality("forecast")
        self.key = self.modalities[0]
        encoder = encoders[self.key]
        require_capability(encoder, PatchEncoder, "forecasting", forward_kwargs=("patch_mask",))
        patches = encoder.grid[0] * encoder.grid[1]
        if not 0 < config.horizon < patches:
            raise ValueError(f"forecast horizon must be in [1, {patches - 1}] patches, got {config.horizon}")
        future = torch.zeros(patches, dtype=torch.bool)
        future[-config.horizon :] = True
        self.register_buffer("future", future, persistent=False)
        self.head = projection_head(encoder.embed_dim, encoder.patch_dim, config.head)

    def _hidden(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.future.unsqueeze(0).expand(inputs["signal"].shape[0], -1)

    def encoder_calls(self, batch: Mapping[str, Any]) -> dict[str, EncoderCall]:
        return {"past": EncoderCall(self.key, batch[self.key], {"patch_mask": self._hidden(batch[self.key])})}

    def forward(self, model: EncoderHost, batch: Mapping[str, Any]) -> ObjectiveOutput:
        encoder = model.encoders[self.key]
        inputs = batch[self.key]
        counted = self._hidden(inputs) & ~encoder.patch_padding_mask(inputs)
        prediction = self.head(self.encode(model, batch, "past").tokens)
        target = encoder.patchify(inputs["signal"]).float()
        loss = masked_patch_loss(prediction, target, counted, self.dist)
        with torch.no_grad():
            last_seen = target[:, -self.config.horizon - 1 : -self.config.horizon]  # [B, 1, P]
            persistence = masked_patch_loss(last_seen.expand_as(target), target, counted, self.dist)
        return ObjectiveOutput(loss=loss, metrics={
            "loss": loss.item(),
            "persistence_loss": persistence.item(),
            "loss_vs_persistence": loss.item() / max(persistence.item(), 1e-12),
        })

