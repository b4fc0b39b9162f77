"""torchaudio's wav2vec2 (random init) over the waveform: a convolutional feature
extractor, then transformer layers; its frames are the tokens."""

from __future__ import annotations

from typing import Mapping

import torch
import torchaudio

from modalities.audio.config import AudioConfig, clip_frames
from modalities.audio.encoder import AudioEncoder
from modalities.base import ModalityOutput


class Wav2Vec2Encoder(AudioEncoder):
    """``encoder: wav2vec2``. No patches: it is no ``PatchEncoder``.

    Shapes:
        batch: {"wave": [B, S], "valid_samples": [B]}
    """

    independent_samples = True  # group norm: a sample's output depends on it alone

    def __init__(self, config: AudioConfig) -> None:
        super().__init__(config)
        self._refuse_local_patches()
        self.frames = clip_frames(config)
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

    def forward(self, batch: Mapping[str, torch.Tensor], patch_mask: torch.Tensor | None = None) -> ModalityOutput:
        if patch_mask is not None:
            raise ValueError("the wav2vec2 audio encoder does not take patch masks")
        tokens, lengths = self.wav2vec2.extract_features(batch["wave"], batch["valid_samples"])
        tokens = tokens[-1]
        positions = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)
        padding = positions >= lengths.unsqueeze(1) if lengths is not None else torch.zeros_like(positions, dtype=torch.bool)
        return self.pooled_output(tokens, padding)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Raises NotImplementedError: torchaudio has no switch for wav2vec2."""
        raise NotImplementedError("the wav2vec2 audio encoder has no activation checkpointing")
