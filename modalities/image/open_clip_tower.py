"""An open_clip vision tower (a model config by name, or an open_clip model-config JSON
file), as the image encoder: a ViT without attentional pooling hides patches with a
mask token at its patch embedding (and can leave them out, MAE); open_clip's ResNets
and timm wrappers hide none."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmssl.common.open_clip_files import read_open_clip_config, read_open_clip_state
from modalities.base import ModalityOutput, PretrainedWeights
from modalities.image.config import ImageConfig
from modalities.image.encoder import ImageEncoder, PatchLayout


def open_clip_model_config(name: str) -> dict[str, Any]:
    """open_clip's model config by name, or read from a JSON file in open_clip's format
    (a custom architecture that open_clip's own trainer can also take), or the
    ``model_cfg`` of a local-dir folder (or its ``open_clip_config.json``)."""
    import open_clip

    local = read_open_clip_config(Path(name)) if Path(name).exists() else None
    if local is not None:
        return local[0]
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

        base = config.vision_cfg if config.vision_cfg is not None else open_clip_model_config(config.backbone)["vision_cfg"]
        vision_cfg = {**base, "image_size": config.image_size, **config.backbone_args}
        self.vision_cfg = dict(vision_cfg)  # what an open_clip export writes as its model_cfg's vision_cfg
        vision_cfg["output_tokens"] = True
        width = int(vision_cfg.get("width", 768))
        # the tower's own projection is width x width; the objectives' heads project
        # into their spaces (pretrained_weights: how open_clip's projection maps onto both)
        return _build_vision_tower(embed_dim=width, vision_cfg=vision_cfg, quick_gelu=config.quick_gelu), width

    def pretrained_weights(self, path: Path) -> PretrainedWeights | None:
        """The vision tower of an open_clip model (local-dir folder, state dict, trainer
        checkpoint) as ``backbone.*``. open_clip's ``visual.proj`` P [width, E] maps onto
        two parts: the tower's own width x width projection starts as the identity, and
        the pairing objective's linear head gets P.T, so the image embedding is x @ P as
        in open_clip (export composes them back)."""
        state = read_open_clip_state(path)
        if state is None:
            return None
        tensors = {f"backbone.{n[len('visual.'):]}": t for n, t in state.items() if n.startswith("visual.")}
        if not tensors:
            raise ValueError(f"{path} holds an open_clip model without a vision tower")
        own_proj = getattr(self.backbone, "proj", None)
        projection = state.get("visual.proj")
        if not isinstance(own_proj, torch.Tensor) or projection is None or projection.ndim != 2:
            raise ValueError(f"{path}: its vision tower is no ViT with a linear projection; the open_clip import maps "
                             "ViT towers (tower: open_clip with a ViT vision_cfg)")
        tensors["backbone.proj"] = torch.eye(own_proj.shape[0], own_proj.shape[1], dtype=projection.dtype)
        return PretrainedWeights(tensors, f"the open_clip vision tower of {path}", projection=projection.T.contiguous(),
                                 logit_scale=state.get("logit_scale"), logit_bias=state.get("logit_bias"))

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
