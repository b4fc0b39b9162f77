"""An open_clip vision tower (a model config by name, or an open_clip model-config JSON
file), as the image encoder: a ViT without attentional pooling hides patches with a
mask token at its patch embedding (and can leave them out, MAE); open_clip's ResNets
and timm wrappers hide none."""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from modalities.base import ModalityOutput
from modalities.image.config import ImageConfig
from modalities.image.encoder import ImageEncoder, PatchLayout


def open_clip_model_config(name: str) -> dict[str, Any]:
    """open_clip's model config by name, or read from a JSON file in open_clip's format
    (a custom architecture that open_clip's own trainer can also take)."""
    import open_clip

    if name.endswith(".json"):
        try:
            with open(name, encoding="utf-8") as f:
                model_cfg = json.load(f)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read open_clip model config {name}: {exc}") from None
        if not isinstance(model_cfg, dict) or "vision_cfg" not in model_cfg:
            raise ValueError(f"open_clip model config {name} has no 'vision_cfg'")
        return model_cfg
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise ValueError(f"unknown open_clip model config '{name}'")
    return model_cfg


class OpenClipImageEncoder(ImageEncoder):
    """``tower: open_clip``: ``backbone`` names the model config; ``backbone_args``
    overrides its ``vision_cfg`` fields; the tower is built at ``image_size``."""

    def build_backbone(self, config: ImageConfig) -> tuple[nn.Module, int]:
        from open_clip.model import _build_vision_tower

        model_cfg = open_clip_model_config(config.backbone)
        vision_cfg = {**model_cfg["vision_cfg"], "image_size": config.image_size, **config.backbone_args}
        vision_cfg["output_tokens"] = True
        width = int(vision_cfg.get("width", model_cfg["embed_dim"]))
        return _build_vision_tower(embed_dim=width, vision_cfg=vision_cfg), width

    def encode(self, pixels: torch.Tensor) -> ModalityOutput:
        pooled, tokens = self.backbone(pixels)
        return ModalityOutput(pooled=pooled, tokens=tokens)

    def patch_layout(self) -> PatchLayout | None:
        """A VisionTransformer without attentional pooling or patch dropout: its patch
        grid, hooks on ``conv1`` (which gives [B, D, R, C]) and on the patch dropout."""
        from open_clip.transformer import VisionTransformer

        backbone = self.backbone
        if not (
            isinstance(backbone, VisionTransformer) and backbone.attn_pool is None and backbone.pool_type in ("avg", "tok")
            and isinstance(backbone.patch_dropout, nn.Identity)
        ):
            return None
        return PatchLayout(
            grid=tuple(backbone.grid_size), patch=tuple(backbone.patch_size), embedding=backbone.conv1,
            after_positions=backbone.patch_dropout, width=backbone.conv1.out_channels, prefix_tokens=1, channels_first=True,
        )

    def switch_checkpointing(self, enable: bool) -> None:
        """open_clip's switch on a ViT, or timm's on the trunk of a timm vision tower.

        Raises:
            NotImplementedError: open_clip's ModifiedResNet (its switch does nothing), or a
                trunk without one.
        """
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.timm_model import TimmModel

        backbone = self.backbone
        if isinstance(backbone, ModifiedResNet):
            raise NotImplementedError(f"open_clip's ModifiedResNet tower ('{self.config.backbone}') has no activation checkpointing")
        if isinstance(backbone, TimmModel):
            backbone = backbone.trunk  # open_clip's wrapper would only log a warning if the trunk has none
        try:
            backbone.set_grad_checkpointing(enable)
        except (AssertionError, NotImplementedError) as exc:  # timm models without it assert
            raise NotImplementedError(f"image backbone '{self.config.backbone}' has no activation checkpointing: {exc}") from None
