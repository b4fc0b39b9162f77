"""A timm CNN over the log-mel (one input channel), its feature map pooled onto the
patch grid: one token per patch. Masked patches are hidden in the input (a learned
value in their place), so no masked content leaks through overlapping kernels."""

from __future__ import annotations

from typing import Mapping

import torch
from einops import rearrange
from torch import nn

from modalities.audio.config import AudioConfig
from modalities.audio.encoder import PatchAudioEncoder
from modalities.base import ModalityOutput, keep_norm_statistics_on_recompute


class TimmAudioEncoder(PatchAudioEncoder):
    """``encoder: timm``: ``backbone`` (a timm model name, random init) over the log-mel."""

    independent_samples = False  # timm CNNs may hold BatchNorm

    def __init__(self, config: AudioConfig) -> None:
        super().__init__(config)
        self._refuse_local_patches()
        import timm

        self.backbone = timm.create_model(config.backbone, pretrained=False, num_classes=0, in_chans=1, **config.backbone_args)
        self.embed_dim = int(self.backbone.num_features)
        self.mask_value = nn.Parameter(torch.zeros(1))  # what masked input patches read as; [1]: FSDP2 shards no 0-d parameter

    def forward(self, batch: Mapping[str, torch.Tensor], patch_mask: torch.Tensor | None = None) -> ModalityOutput:
        """Encode a batch; ``patch_mask`` [B, N] (True = masked) sets those patches of the
        log-mel to the learned ``mask_value`` before the CNN sees it."""
        mel = batch["mel"]
        if patch_mask is not None:
            mel = self._hide_masked(mel, patch_mask, self.mask_value)
        features = self.backbone.forward_features(mel.unsqueeze(1))  # [B, C, h, w]
        grid = torch.nn.functional.adaptive_avg_pool2d(features, self.grid_of(batch["mel"]))
        return self.pooled_output(rearrange(grid, "b c f t -> b (f t) c"), self.patch_padding_mask(batch))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's own ``set_grad_checkpointing`` (BatchNorm statistics still updated once
        per step), in training mode only (``train`` sets it).

        Raises:
            NotImplementedError: the backbone has no activation checkpointing.
        """
        if enable:
            self._switch_checkpointing(True)  # raises here, at build time, if the backbone has none
            keep_norm_statistics_on_recompute(self)
        self._switch_checkpointing(enable and self.training)
        self.grad_checkpointing = enable

    def _switch_checkpointing(self, enable: bool) -> None:
        try:
            self.backbone.set_grad_checkpointing(enable)
        except (AssertionError, NotImplementedError) as exc:  # timm models without it assert
            raise NotImplementedError(f"audio backbone '{self.config.backbone}' has no activation checkpointing: {exc}") from None

    def train(self, mode: bool = True) -> TimmAudioEncoder:
        super().train(mode)
        if self.grad_checkpointing:
            self._switch_checkpointing(mode)
        return self
