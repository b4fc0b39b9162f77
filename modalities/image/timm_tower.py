"""Any timm backbone by name (random init), as the image encoder: a ViT hides patches
with a mask token at its patch embedding (and can leave them out, MAE); a CNN whose
features are a map that divides the image hides them in its input pixels."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from modalities.base import ModalityOutput
from modalities.image.config import ImageConfig
from modalities.image.encoder import ImageEncoder, PatchLayout


class TimmImageEncoder(ImageEncoder):
    """``tower: timm``: ``timm.create_model(backbone, pretrained=False, **backbone_args)``."""

    def build_backbone(self, config: ImageConfig) -> tuple[nn.Module, int]:
        import timm

        backbone = timm.create_model(config.backbone, pretrained=False, num_classes=0, **config.backbone_args)
        return backbone, int(backbone.num_features)

    def encode(self, pixels: torch.Tensor) -> ModalityOutput:
        features = self.backbone.forward_features(pixels)
        pooled = self.backbone.forward_head(features, pre_logits=True)
        if features.ndim == 4:
            tokens = rearrange(features, "b c h w -> b (h w) c")
        else:  # a ViT's sequence: the patch tokens, without the class (and register) tokens
            tokens = features[:, getattr(self.backbone, "num_prefix_tokens", 0) :]
        return ModalityOutput(pooled=pooled, tokens=tokens)

    def patch_layout(self) -> PatchLayout | None:
        """A VisionTransformer without patch dropout: its patch grid, hooks on its patch
        embedding and on the patch dropout after the positions. A CNN: its feature map's
        cells, if they divide the image."""
        from timm.models.vision_transformer import VisionTransformer

        backbone, size = self.backbone, self.config.image_size
        if isinstance(backbone, VisionTransformer) and isinstance(backbone.patch_drop, nn.Identity):
            built = backbone.patch_embed.img_size
            if built is not None and tuple(built) != (size, size):
                raise ValueError(
                    f"image backbone '{self.config.backbone}' is built for {tuple(built)} images but image_size is "
                    f"{size}: set modalities.<image>.backbone_args.img_size: {size}"
                )
            return PatchLayout(
                grid=tuple(backbone.patch_embed.grid_size), patch=tuple(backbone.patch_embed.patch_size),
                embedding=backbone.patch_embed, after_positions=backbone.patch_drop, width=backbone.embed_dim,
                prefix_tokens=backbone.num_prefix_tokens,
            )
        cells = self._feature_map_cells()
        if cells is None or size % cells[0] or size % cells[1]:
            return None
        return PatchLayout(grid=cells, patch=(size // cells[0], size // cells[1]))

    def _feature_map_cells(self) -> tuple[int, int] | None:
        """(h, w) of the tower's feature map [C, h, w] at image_size, or None when its
        features are no such map; one forward pass of a blank image in eval mode."""
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            with torch.no_grad():
                features = self.backbone.forward_features(torch.zeros(1, 3, self.config.image_size, self.config.image_size))
        finally:
            self.backbone.train(was_training)
        if features.ndim != 4 or features.shape[1] != self.embed_dim:
            return None
        return int(features.shape[2]), int(features.shape[3])

    def switch_checkpointing(self, enable: bool) -> None:
        """timm's ``set_grad_checkpointing`` (its stages or blocks under non-reentrant
        ``torch.utils.checkpoint``)."""
        try:
            self.backbone.set_grad_checkpointing(enable)
        except (AssertionError, NotImplementedError) as exc:  # timm models without it assert
            raise NotImplementedError(f"image backbone '{self.config.backbone}' has no activation checkpointing: {exc}") from None
