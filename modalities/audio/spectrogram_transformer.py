"""The spectrogram transformer (AST / AudioMAE style): log-mel patches, a linear patch
embedding, learned positions, timm transformer blocks; optionally a second, finer patch
grid over the same log-mel (``local_patch_freq``, ``local_patch_time``) whose tokens join
the main grid's in the blocks and in the pooled embedding."""

from __future__ import annotations

from typing import Mapping

import torch
import torch.utils.checkpoint
from timm.models.vision_transformer import Block
from torch import nn

from modalities.audio.config import AudioConfig
from modalities.audio.encoder import PatchAudioEncoder
from modalities.base import ModalityOutput


class SpectrogramTransformer(PatchAudioEncoder):
    """``encoder: spectrogram_transformer``: a ViT over log-mel patches."""

    independent_samples = True  # LayerNorm only: a sample's output depends on it alone

    def __init__(self, config: AudioConfig) -> None:
        super().__init__(config)
        if config.local_patch_freq or config.local_patch_time:
            lf, lt = config.local_patch_freq, config.local_patch_time
            if lf <= 0 or lt <= 0 or config.n_mels % lf or self.frames % lt:
                raise ValueError(
                    f"audio local_patch_freq/local_patch_time ({lf}, {lt}) must be positive and divide "
                    f"n_mels {config.n_mels} and the {self.frames} patched frames"
                )
            self.local_grid = (config.n_mels // lf, self.frames // lt)
        self.patch_embed = nn.Linear(self.patch_dim, config.width)
        self.pos_embed = nn.Parameter(torch.randn(1, self.num_patches, config.width) * 0.02)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.width))
        if self.local_grid is not None:
            self.local_embed = nn.Linear(config.local_patch_freq * config.local_patch_time, config.width)
            n_local = self.local_grid[0] * self.local_grid[1]
            self.local_pos_embed = nn.Parameter(torch.randn(1, n_local, config.width) * 0.02)
            self.local_mask_value = nn.Parameter(torch.zeros(1))  # what masked input reads as; [1]: FSDP2 shards no 0-d parameter
        self.blocks = nn.ModuleList(
            [Block(config.width, config.heads, config.mlp_ratio, qkv_bias=True) for _ in range(config.depth)]
        )
        self.norm = nn.LayerNorm(config.width)

    def _local_tokens(self, mel: torch.Tensor, patch_mask: torch.Tensor | None) -> torch.Tensor:
        """Tokens of the local view [B, N_local, width]. Masked main patches are hidden in
        input space first, so the local view cannot reveal what masked modeling predicts."""
        if patch_mask is not None:
            mel = self._hide_masked(mel, patch_mask, self.local_mask_value)
        local = self.patchify(mel, (self.config.local_patch_freq, self.config.local_patch_time))
        return self.local_embed(local) + _first_columns(self.local_pos_embed, self.local_grid, self._local_grid_of(mel)[1])

    def _local_grid_of(self, mel: torch.Tensor) -> tuple[int, int]:
        """The local patch grid of a log-mel batch (fewer time columns for a shorter window)."""
        frames, patch_time = mel.shape[-1], self.config.local_patch_time
        if frames % patch_time:
            raise ValueError(f"audio log-mel of {frames} frames is no whole number of local patch columns "
                             f"(local_patch_time {patch_time})")
        return self.local_grid[0], frames // patch_time

    def forward(
        self, batch: Mapping[str, torch.Tensor], patch_mask: torch.Tensor | None = None, local_view: bool = True
    ) -> ModalityOutput:
        """Encode a batch; ``patch_mask`` [B, N] (True = masked) hides those patches
        (masked spectrogram modeling): the transformer sees its learned mask token in
        their place. ``local_view=False`` leaves out the local patch view (if
        configured): the main grid alone, a fifth of the tokens at 8x20 local patches.
        ``tokens`` and ``padding_mask`` are the main grid's (aligned with ``patchify``);
        the local view's tokens feed the pooled embedding only. A batch of fewer frames
        than the clip (a window of it: DINO's local views) takes the positions of the
        clip's first time columns."""
        grid = self.grid_of(batch["mel"])
        x = self.patch_embed(self.patchify(batch["mel"]))
        if patch_mask is not None:
            x = torch.where(patch_mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        x = x + _first_columns(self.pos_embed, self.grid, grid[1])
        padding = self.patch_padding_mask(batch)
        if self.local_grid is not None and local_view:
            x = torch.cat([x, self._local_tokens(batch["mel"], patch_mask)], 1)
            padding = torch.cat([padding, self._padding(batch, self._local_grid_of(batch["mel"]), self.config.local_patch_time)], 1)
        attn_mask = None
        if padding.any():
            # every query may attend to non-padding keys only; [B, 1, 1, N] broadcasts over heads
            attn_mask = (~padding)[:, None, None, :]
        checkpoint = self.checkpoint_now()
        for block in self.blocks:
            if checkpoint:
                x = torch.utils.checkpoint.checkpoint(block, x, attn_mask=attn_mask, use_reentrant=False)
            else:
                x = block(x, attn_mask=attn_mask)
        return self.pooled_output(self.norm(x), padding, grid[0] * grid[1])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Each timm ``Block`` under non-reentrant ``torch.utils.checkpoint``, in training
        mode with gradients enabled."""
        self.grad_checkpointing = enable


def _first_columns(positions: torch.Tensor, grid: tuple[int, int], columns: int) -> torch.Tensor:
    """The position embeddings [1, F * T, D] (frequency-major over ``grid`` (F, T)) of the
    first ``columns`` time columns: a window shorter than the clip takes the positions of
    the clip's start, as AST cuts its positions for shorter inputs. Shapes: -> [1, F * columns, D]."""
    if columns == grid[1]:
        return positions
    return positions.view(1, grid[0], grid[1], -1)[:, :, :columns].reshape(1, grid[0] * columns, -1)
