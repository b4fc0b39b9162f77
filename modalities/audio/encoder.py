"""The audio modality's encoder: a spectrogram transformer (AST / AudioMAE style, timm
blocks) or a timm CNN over the log-mel, or a torchaudio wav2vec2 over the waveform, with
the patch hooks of masked spectrogram modeling."""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.utils.checkpoint
import torchaudio
from einops import rearrange
from timm.models.vision_transformer import Block
from torch import nn

from modalities.audio.config import AudioConfig
from modalities.base import Encoder, ModalityOutput, keep_norm_statistics_on_recompute


class AudioEncoder(Encoder):
    """Audio encoder over fixed-length clips (``AudioProcessor`` makes the batches).

    Shapes:
        batch: {"mel": [B, n_mels, frames], "valid_frames": [B]} or {"wave": [B, S], "valid_samples": [B]}
        output: pooled [B, width]; tokens [B, N, width]; padding_mask [B, N] (True = padding)
    """

    Config = AudioConfig

    def __init__(self, config: AudioConfig) -> None:
        super().__init__(config)
        self.clip_samples = int(round(config.sample_rate * config.clip_seconds))
        frames = self.clip_samples // config.hop_length + 1
        self.embed_dim = config.width
        if config.encoder in ("spectrogram_transformer", "timm"):
            if config.n_mels % config.patch_freq:
                raise ValueError(f"audio n_mels {config.n_mels} is not divisible by patch_freq {config.patch_freq}")
            self.frames = (frames // config.patch_time) * config.patch_time
            if self.frames == 0:
                raise ValueError(f"audio clip of {config.clip_seconds}s has fewer frames than one patch ({config.patch_time})")
            self.grid = (config.n_mels // config.patch_freq, self.frames // config.patch_time)
            self.num_patches = self.grid[0] * self.grid[1]
            self.patch_dim = config.patch_freq * config.patch_time
        self.local_grid: tuple[int, int] | None = None
        if (config.local_patch_freq or config.local_patch_time) and config.encoder == "spectrogram_transformer":
            lf, lt = config.local_patch_freq, config.local_patch_time
            if lf <= 0 or lt <= 0 or config.n_mels % lf or self.frames % lt:
                raise ValueError(
                    f"audio local_patch_freq/local_patch_time ({lf}, {lt}) must be positive and divide "
                    f"n_mels {config.n_mels} and the {self.frames} patched frames"
                )
            self.local_grid = (config.n_mels // lf, self.frames // lt)
        elif config.local_patch_freq or config.local_patch_time:
            raise ValueError("audio local patches need encoder: spectrogram_transformer")
        if config.encoder == "timm":
            import timm

            self.backbone = timm.create_model(
                config.backbone, pretrained=False, num_classes=0, in_chans=1, **config.backbone_args
            )
            self.embed_dim = int(self.backbone.num_features)
            self.mask_value = nn.Parameter(torch.zeros(()))  # what masked input patches read as
        elif config.encoder == "spectrogram_transformer":
            self.patch_embed = nn.Linear(self.patch_dim, config.width)
            self.pos_embed = nn.Parameter(torch.randn(1, self.num_patches, config.width) * 0.02)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, config.width))
            if self.local_grid is not None:
                self.local_embed = nn.Linear(config.local_patch_freq * config.local_patch_time, config.width)
                n_local = self.local_grid[0] * self.local_grid[1]
                self.local_pos_embed = nn.Parameter(torch.randn(1, n_local, config.width) * 0.02)
                self.local_mask_value = nn.Parameter(torch.zeros(()))  # what masked input reads as
            self.blocks = nn.ModuleList(
                [Block(config.width, config.heads, config.mlp_ratio, qkv_bias=True) for _ in range(config.depth)]
            )
            self.norm = nn.LayerNorm(config.width)
        else:
            self.frames = frames
            self.wav2vec2 = torchaudio.models.wav2vec2_model(
                extractor_mode="group_norm",
                extractor_conv_layer_config=[(config.width, 10, 5)] + [(config.width, 3, 2)] * 4 + [(config.width, 2, 2)] * 2,
                extractor_conv_bias=False,
                encoder_embed_dim=config.width,
                encoder_projection_dropout=0.0,
                encoder_pos_conv_kernel=16,
                encoder_pos_conv_groups=4,
                encoder_num_layers=config.wav2vec2_layers,
                encoder_num_heads=config.heads,
                encoder_attention_dropout=0.0,
                encoder_ff_interm_features=int(config.width * config.mlp_ratio),
                encoder_ff_interm_dropout=0.0,
                encoder_dropout=0.0,
                encoder_layer_norm_first=False,
                encoder_layer_drop=0.0,
                aux_num_out=None,
            )
        # timm CNNs may hold BatchNorm; the transformer and wav2vec2 (group norm) do not
        self.independent_samples = config.encoder != "timm"
    def call_defaults(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        if self.config.encoder == "wav2vec2":
            return {}
        return {"patch_mask": torch.zeros(inputs["mel"].shape[0], self.num_patches, dtype=torch.bool, device=inputs["mel"].device)}

    # --- model --------------------------------------------------------------------------
    def patchify(self, mel: torch.Tensor, patch: tuple[int, int] | None = None) -> torch.Tensor:
        """Shapes: mel [B, F, T] -> patches [B, N, pf * pt], frequency-major; ``patch``
        (pf, pt) defaults to the main grid's (patch_freq, patch_time)."""
        pf, pt = patch or (self.config.patch_freq, self.config.patch_time)
        return rearrange(mel, "b (f pf) (t pt) -> b (f t) (pf pt)", pf=pf, pt=pt)

    def patch_targets(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """What masked modeling predicts: the batch's log-mel cut into the main grid's
        patches. Shapes: [B, N, patch_dim]."""
        return self.patchify(batch["mel"])

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """Inverse of ``patchify``: [B, N, patch_dim] -> mel [B, F, T]."""
        c = self.config
        return rearrange(patches, "b (f t) (pf pt) -> b (f pf) (t pt)", f=self.grid[0], pf=c.patch_freq, pt=c.patch_time)

    def patch_padding_mask(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """[B, N] True for patches that lie wholly in zero padding after the audio ends."""
        return self._padding(batch, self.grid, self.config.patch_time)

    @staticmethod
    def _padding(batch: Mapping[str, torch.Tensor], grid: tuple[int, int], patch_time: int) -> torch.Tensor:
        start_frame = torch.arange(grid[1], device=batch["valid_frames"].device) * patch_time
        padded_time = start_frame.unsqueeze(0) >= batch["valid_frames"].unsqueeze(1)  # [B, T']
        return padded_time.unsqueeze(1).expand(-1, grid[0], -1).reshape(padded_time.shape[0], -1)

    def _hide_masked(self, mel: torch.Tensor, patch_mask: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``mel`` with every masked main-grid patch set to ``value``: masking in input space."""
        return self.unpatchify(torch.where(patch_mask.unsqueeze(-1), value.to(mel.dtype), self.patchify(mel)))

    def _local_tokens(self, mel: torch.Tensor, patch_mask: torch.Tensor | None) -> torch.Tensor:
        """Tokens of the local view [B, N_local, width]. Masked main patches are hidden in
        input space first, so the local view cannot reveal what masked modeling predicts."""
        if patch_mask is not None:
            mel = self._hide_masked(mel, patch_mask, self.local_mask_value)
        local = self.patchify(mel, (self.config.local_patch_freq, self.config.local_patch_time))
        return self.local_embed(local) + self.local_pos_embed

    def forward(
        self, batch: Mapping[str, torch.Tensor], patch_mask: torch.Tensor | None = None, local_view: bool = True
    ) -> ModalityOutput:
        """Encode a batch; ``patch_mask`` [B, N] (True = masked) hides those patches
        (masked spectrogram modeling): the transformer sees its learned mask token in
        their place, the CNN a learned input value. ``local_view=False`` leaves out the
        local patch view (if configured): the main grid alone, a fifth of the tokens at
        8x20 local patches."""
        if self.config.encoder == "wav2vec2":
            if patch_mask is not None:
                raise ValueError("the wav2vec2 audio encoder does not take patch masks")
            tokens, lengths = self.wav2vec2.extract_features(batch["wave"], batch["valid_samples"])
            tokens = tokens[-1]
            positions = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)
            padding = positions >= lengths.unsqueeze(1) if lengths is not None else torch.zeros_like(positions, dtype=torch.bool)
        elif self.config.encoder == "timm":
            mel = batch["mel"]
            if patch_mask is not None:
                # mask in input space, so no masked content leaks through overlapping kernels
                mel = self._hide_masked(mel, patch_mask, self.mask_value)
            features = self.backbone.forward_features(mel.unsqueeze(1))  # [B, C, h, w]
            grid = torch.nn.functional.adaptive_avg_pool2d(features, self.grid)
            tokens = rearrange(grid, "b c f t -> b (f t) c")
            padding = self.patch_padding_mask(batch)
        else:
            x = self.patch_embed(self.patchify(batch["mel"]))
            if patch_mask is not None:
                x = torch.where(patch_mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
            x = x + self.pos_embed
            padding = self.patch_padding_mask(batch)
            if self.local_grid is not None and local_view:
                x = torch.cat([x, self._local_tokens(batch["mel"], patch_mask)], 1)
                padding = torch.cat([padding, self._padding(batch, self.local_grid, self.config.local_patch_time)], 1)
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
            tokens = self.norm(x)
        keep = (~padding).unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        # tokens and padding stay those of the main grid (aligned with patchify); the
        # local view's tokens feed the pooled embedding only
        n = tokens.shape[1] if self.local_grid is None else self.num_patches
        return ModalityOutput(pooled=pooled, tokens=tokens[:, :n], padding_mask=padding[:, :n])

    # --- training options --------------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Spectrogram transformer: each timm ``Block`` under non-reentrant
        ``torch.utils.checkpoint``; timm CNN: timm's own ``set_grad_checkpointing``
        (BatchNorm statistics still updated once per step). In training mode with
        gradients enabled only.

        Raises:
            NotImplementedError: for the wav2vec2 encoder (torchaudio has no switch for it),
                or a timm backbone without activation checkpointing.
        """
        if self.config.encoder == "wav2vec2":
            raise NotImplementedError("the wav2vec2 audio encoder has no activation checkpointing")
        if self.config.encoder == "timm":
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

    def train(self, mode: bool = True) -> AudioEncoder:
        super().train(mode)
        if self.grad_checkpointing and self.config.encoder == "timm":
            self._switch_checkpointing(mode)
        return self
