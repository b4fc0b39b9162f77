"""The image modality's encoder: any timm backbone by name, or an open_clip vision
tower, with the patch hooks of masked image modeling."""

from __future__ import annotations

import json
from typing import Any, Mapping

import torch
from einops import rearrange, repeat
from torch import nn

from modalities.base import Encoder, ModalityOutput, keep_norm_statistics_on_recompute
from modalities.image.config import ImageConfig


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


class ImageEncoder(Encoder):
    """Image encoder: a timm backbone or an open_clip vision tower.

    Shapes:
        batch: {"pixels": [B, 3, S, S]} (``ImageProcessor``).
        output: pooled [B, D]; tokens [B, N, D] (feature-map cells or ViT patches).
    """

    Config = ImageConfig

    def __init__(self, config: ImageConfig) -> None:
        super().__init__(config)
        if config.tower == "timm":
            import timm

            self.backbone = timm.create_model(config.backbone, pretrained=False, num_classes=0, **config.backbone_args)
            self.embed_dim = int(self.backbone.num_features)
        else:
            from open_clip.model import _build_vision_tower

            model_cfg = open_clip_model_config(config.backbone)
            vision_cfg = {**model_cfg["vision_cfg"], "image_size": config.image_size, **config.backbone_args}
            vision_cfg["output_tokens"] = True
            width = int(vision_cfg.get("width", model_cfg["embed_dim"]))
            self.backbone = _build_vision_tower(embed_dim=width, vision_cfg=vision_cfg)
            self.embed_dim = width
        self._init_patches()

    # --- model --------------------------------------------------------------------
    def forward(
        self, batch: Mapping[str, torch.Tensor], patch_mask: torch.Tensor | None = None, visible_only: bool = False
    ) -> ModalityOutput:
        """Encode a batch; ``patch_mask`` [B, N] (True = hidden) hides those patches of
        the grid (masked image modeling): a ViT sees its mask token in their place, a
        CNN its mask value in their pixels. ``visible_only`` (ViTs) leaves the hidden
        patches out of the sequence (MAE), so ``tokens`` are the visible patches'."""
        pixels = batch["pixels"]
        if patch_mask is not None or visible_only:
            pixels = self._start_hiding(pixels, patch_mask, visible_only)
        try:
            return self._encode(pixels)
        finally:
            self._hidden, self._visible_only = None, False

    def _encode(self, pixels: torch.Tensor) -> ModalityOutput:
        if self.config.tower == "open_clip":
            pooled, tokens = self.backbone(pixels)
            return ModalityOutput(pooled=pooled, tokens=tokens)
        features = self.backbone.forward_features(pixels)
        pooled = self.backbone.forward_head(features, pre_logits=True)
        if features.ndim == 4:
            tokens = rearrange(features, "b c h w -> b (h w) c")
        else:  # a ViT's sequence: the patch tokens, without the class (and register) tokens
            tokens = features[:, getattr(self.backbone, "num_prefix_tokens", 0) :]
        return ModalityOutput(pooled=pooled, tokens=tokens)

    # --- patches (PatchEncoder, VisiblePatchEncoder: masked image modeling) ------------
    def _init_patches(self) -> None:
        """Find how this tower can hide patches, and set the PatchEncoder members where
        it can. A ViT (timm's VisionTransformer; open_clip's without attentional pooling)
        without patch dropout takes a learned ``mask_token`` in place of a hidden patch's
        embedding, before the position embedding is added (SimMIM, BEiT), and can leave
        hidden patches out of the sequence (MAE), both through forward hooks on the
        library's own modules. A timm CNN whose features are a map [C, h, w] has that map
        as its grid and hides patches in its input (SimMIM's input-space variant), a
        learned ``mask_value`` per channel in their pixels. Other towers (open_clip's
        ResNets and timm wrappers) set none: they are no PatchEncoder."""
        from open_clip.transformer import VisionTransformer as OpenClipViT
        from timm.models.vision_transformer import VisionTransformer as TimmViT

        self._hidden: torch.Tensor | None = None  # the patch mask of the running forward call
        self._visible_only = False
        backbone, size = self.backbone, self.config.image_size
        if isinstance(backbone, TimmViT) and isinstance(backbone.patch_drop, nn.Identity):
            built = backbone.patch_embed.img_size
            if built is not None and tuple(built) != (size, size):
                raise ValueError(
                    f"image backbone '{self.config.backbone}' is built for {tuple(built)} images but image_size is "
                    f"{size}: set modalities.<image>.backbone_args.img_size: {size}"
                )
            grid, patch = tuple(backbone.patch_embed.grid_size), tuple(backbone.patch_embed.patch_size)
            self._prefix_tokens, self._embeddings_channels_first = backbone.num_prefix_tokens, False
            embedding, after_positions, width = backbone.patch_embed, backbone.patch_drop, backbone.embed_dim
        elif (
            isinstance(backbone, OpenClipViT) and backbone.attn_pool is None and backbone.pool_type in ("avg", "tok")
            and isinstance(backbone.patch_dropout, nn.Identity)
        ):
            grid, patch = tuple(backbone.grid_size), tuple(backbone.patch_size)
            self._prefix_tokens, self._embeddings_channels_first = 1, True  # conv1 gives [B, D, R, C]
            embedding, after_positions, width = backbone.conv1, backbone.patch_dropout, backbone.conv1.out_channels
        elif self.config.tower == "timm":
            cells = self._feature_map_cells()
            if cells is None or size % cells[0] or size % cells[1]:
                return
            grid, patch = cells, (size // cells[0], size // cells[1])
            self._mask_shape = (3,)  # mask_value: what hidden pixels read as (normalised), per channel
            embedding = None
        else:
            return
        self.grid: tuple[int, int] = grid
        self.patch_size: tuple[int, int] = patch
        self.patch_dim = 3 * patch[0] * patch[1]
        if embedding is not None:
            self._mask_shape = (width,)  # mask_token: a hidden patch's embedding
            self.encodes_visible_only = True
            embedding.register_forward_hook(self._hide_embeddings)
            after_positions.register_forward_hook(self._keep_visible)

    def enable_patch_masking(self) -> None:
        """Create the learned ``mask_token`` (ViT) or ``mask_value`` (CNN) that hidden
        patches take. The masked-patch objective calls it when it is built; an image
        modality no such objective uses has neither parameter, so its state dict is the
        one it had before masked image modeling existed and older checkpoints load."""
        name = "mask_token" if getattr(self, "encodes_visible_only", False) else "mask_value"
        if not hasattr(self, name):
            setattr(self, name, nn.Parameter(torch.zeros(self._mask_shape)))

    def _feature_map_cells(self) -> tuple[int, int] | None:
        """(h, w) of a timm tower's feature map [C, h, w] at image_size, or None when its
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

    def patchify(self, pixels: torch.Tensor) -> torch.Tensor:
        """Shapes: pixels [B, 3, H, W] -> patches [B, N, ph * pw * 3], row-major, each
        patch's values pixel by pixel (MAE's order)."""
        ph, pw = self.patch_size
        return rearrange(pixels, "b c (h p) (w q) -> b (h w) (p q c)", p=ph, q=pw)

    def patch_targets(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """What masked image modeling predicts: the batch's (normalised) pixels, patchified."""
        return self.patchify(batch["pixels"])

    def patch_padding_mask(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Images have no padding: [B, N] all False."""
        pixels = batch["pixels"]
        return torch.zeros(pixels.shape[0], self.grid[0] * self.grid[1], dtype=torch.bool, device=pixels.device)

    def call_defaults(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"patch_mask": self.patch_padding_mask(inputs)} if hasattr(self, "grid") else {}

    def _start_hiding(self, pixels: torch.Tensor, patch_mask: torch.Tensor | None, visible_only: bool) -> torch.Tensor:
        """Check a forward call's patch mask and arm the hiding: the pixels a CNN sees, or
        the ViT hooks' state."""
        if not hasattr(self, "grid"):
            raise ValueError(
                f"image tower '{self.config.backbone}' takes no patch masks: patches hide in timm and open_clip ViTs "
                "and in timm CNNs whose features are a map that divides image_size"
            )
        n = self.grid[0] * self.grid[1]
        if patch_mask is None or patch_mask.dtype != torch.bool or tuple(patch_mask.shape) != (pixels.shape[0], n):
            got = None if patch_mask is None else f"{patch_mask.dtype} {list(patch_mask.shape)}"
            raise ValueError(f"image patch_mask must be bool [batch, {n}] over the {self.grid} grid, got {got}")
        if visible_only:
            if not getattr(self, "encodes_visible_only", False):
                raise ValueError(f"image tower '{self.config.backbone}' hides patches in its input and cannot leave them out (visible_only)")
            counts = patch_mask.sum(1)
            if not bool((counts == counts[0]).all()):
                raise ValueError(f"visible_only needs the same number of hidden patches in every sample, got {counts.tolist()}")
        if not hasattr(self, "mask_token" if getattr(self, "encodes_visible_only", False) else "mask_value"):
            raise ValueError(
                f"image modality '{self.key}' has no learned mask yet: call enable_patch_masking() when the model is "
                "built (the masked_image objective does), so the optimizer and checkpoints include it"
            )
        if not getattr(self, "encodes_visible_only", False):  # a CNN: hidden in the input
            hidden = repeat(patch_mask, "b (h w) -> b 1 (h p) (w q)", h=self.grid[0], p=self.patch_size[0], q=self.patch_size[1])
            return torch.where(hidden, self.mask_value.view(1, 3, 1, 1).to(pixels.dtype), pixels)
        self._hidden, self._visible_only = patch_mask, visible_only
        return pixels

    def _hide_embeddings(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        """Forward hook on a ViT's patch embedding: the mask token in place of hidden
        patches' embeddings (timm: [B, N, D] or [B, R, C, D]; open_clip: [B, D, R, C]).
        With ``visible_only`` they are left out later instead (``_keep_visible``)."""
        if self._hidden is None or self._visible_only:
            return None
        if self._embeddings_channels_first:
            hidden, token = self._hidden.view(-1, 1, *self.grid), self.mask_token.view(1, -1, 1, 1)
        else:
            hidden, token = self._hidden.view(*output.shape[:-1], 1), self.mask_token
        return torch.where(hidden, token.to(output.dtype), output)

    def _keep_visible(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        """Forward hook on the module after a ViT's position embedding: with
        ``visible_only``, the class (and register) tokens and the visible patches' tokens.
        Shapes: [B, prefix + N, D] -> [B, prefix + N - M, D]."""
        if not self._visible_only:
            return None
        prefix, patches = output[:, : self._prefix_tokens], output[:, self._prefix_tokens :]
        visible = patches[~self._hidden].view(output.shape[0], -1, output.shape[-1])
        return torch.cat([prefix, visible], 1)

    # --- training options ----------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """The tower's own switch, in training mode only (``train`` sets it): timm's
        ``set_grad_checkpointing`` (its stages or blocks under non-reentrant
        ``torch.utils.checkpoint``), or open_clip's on a ViT or timm vision tower.
        BatchNorm layers update their running statistics once per step all the same.

        Raises:
            NotImplementedError: the backbone has no activation checkpointing (open_clip's
                ModifiedResNet towers, timm models without it).
        """
        if enable:
            self._switch_checkpointing(True)  # raises here, at build time, if the backbone has none
            keep_norm_statistics_on_recompute(self)
        self.grad_checkpointing = enable
        self._switch_checkpointing(enable and self.training)

    def _switch_checkpointing(self, enable: bool) -> None:
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.timm_model import TimmModel

        backbone = self.backbone
        if isinstance(backbone, ModifiedResNet):  # its set_grad_checkpointing does nothing
            raise NotImplementedError(f"open_clip's ModifiedResNet tower ('{self.config.backbone}') has no activation checkpointing")
        if isinstance(backbone, TimmModel):
            backbone = backbone.trunk  # open_clip's wrapper would only log a warning if the trunk has none
        try:
            backbone.set_grad_checkpointing(enable)
        except (AssertionError, NotImplementedError) as exc:  # timm models without it assert
            raise NotImplementedError(f"image backbone '{self.config.backbone}' has no activation checkpointing: {exc}") from None

    def train(self, mode: bool = True) -> ImageEncoder:
        super().train(mode)
        if self.grad_checkpointing:
            self._switch_checkpointing(mode)
        return self
