"""What the image modality's encoders share: a backbone's forward, and the patch hooks
of masked image modeling (a learned mask token at a ViT's patch embedding, or a learned
value in a CNN's input pixels; MAE's visible patches alone). Each tower library is its
own encoder class in its own module (``timm_tower``, ``open_clip_tower``);
``ImageModality`` picks one by ``modalities.<key>.tower``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from einops import rearrange, repeat
from torch import nn

from modalities.base import Encoder, ModalityOutput, keep_norm_statistics_on_recompute
from modalities.image.config import ImageConfig


@dataclass(frozen=True)
class PatchLayout:
    """How a tower hides patches: its grid and patch size, and for a ViT the modules whose
    outputs the hooks change (the patch embedding, the module after the positions), the
    width of a token and the class (and register) tokens before the patches; a CNN has
    none of those and hides patches in its input."""

    grid: tuple[int, int]
    patch: tuple[int, int]
    embedding: nn.Module | None = None
    after_positions: nn.Module | None = None
    width: int = 0
    prefix_tokens: int = 0
    channels_first: bool = False  # the embedding's output is [B, D, R, C] (open_clip's conv1)


class ImageEncoder(Encoder):
    """Base of the image encoders: a subclass builds its tower (``build_backbone``), runs it
    (``encode``), says how it hides patches (``patch_layout``) and switches its
    activation checkpointing (``switch_checkpointing``).

    Shapes:
        batch: {"pixels": [B, 3, S, S]} (``ImageProcessor``).
        output: pooled [B, D]; tokens [B, N, D] (feature-map cells or ViT patches).
    """

    Config = ImageConfig

    def __init__(self, config: ImageConfig) -> None:
        super().__init__(config)
        self.backbone, self.embed_dim = self.build_backbone(config)
        self._init_patches()

    def build_backbone(self, config: ImageConfig) -> tuple[nn.Module, int]:
        """The tower and the width of its pooled output."""
        raise NotImplementedError

    def encode(self, pixels: torch.Tensor) -> ModalityOutput:
        """The tower's pooled output and tokens (feature-map cells or ViT patches)."""
        raise NotImplementedError

    def patch_layout(self) -> PatchLayout | None:
        """How this tower hides patches, or None if it cannot (it is then no PatchEncoder)."""
        return None

    def switch_checkpointing(self, enable: bool) -> None:
        """The tower's own activation checkpointing switch; NotImplementedError if it has none."""
        raise NotImplementedError(f"image backbone '{self.config.backbone}' has no activation checkpointing")

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
            return self.encode(pixels)
        finally:
            self._hidden, self._visible_only = None, False

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
        self._hidden: torch.Tensor | None = None  # the patch mask of the running forward call
        self._visible_only = False
        layout = self.patch_layout()
        if layout is None:
            return
        self.grid: tuple[int, int] = layout.grid
        self.patch_size: tuple[int, int] = layout.patch
        self.patch_dim = 3 * layout.patch[0] * layout.patch[1]
        if layout.embedding is None:
            self._mask_shape = (3,)  # mask_value: what hidden pixels read as (normalised), per channel
            return
        self._prefix_tokens, self._embeddings_channels_first = layout.prefix_tokens, layout.channels_first
        self._mask_shape = (layout.width,)  # mask_token: a hidden patch's embedding
        self.encodes_visible_only = True
        layout.embedding.register_forward_hook(self._hide_embeddings)
        layout.after_positions.register_forward_hook(self._keep_visible)

    def enable_patch_masking(self) -> None:
        """Create the learned ``mask_token`` (ViT) or ``mask_value`` (CNN) that hidden
        patches take. The masked-patch objective calls it when it is built; an image
        modality no such objective uses has neither parameter, so its state dict is the
        one it had before masked image modeling existed and older checkpoints load."""
        name = "mask_token" if getattr(self, "encodes_visible_only", False) else "mask_value"
        if not hasattr(self, name):
            setattr(self, name, nn.Parameter(torch.zeros(self._mask_shape)))

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
            self.switch_checkpointing(True)  # raises here, at build time, if the backbone has none
            keep_norm_statistics_on_recompute(self)
        self.grad_checkpointing = enable
        self.switch_checkpointing(enable and self.training)

    def train(self, mode: bool = True) -> ImageEncoder:
        super().train(mode)
        if self.grad_checkpointing:
            self.switch_checkpointing(mode)
        return self
