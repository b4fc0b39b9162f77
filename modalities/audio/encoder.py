"""What the audio modality's encoders share: the clip's geometry, and for the encoders
that read the log-mel in patches (spectrogram transformer, timm CNN) the patch grid,
its padding and the hooks of masked spectrogram modeling. Each architecture is its own
class in its own module; ``AudioModality`` picks one by ``modalities.<key>.encoder``."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from einops import rearrange

from modalities.audio.config import AudioConfig, clip_frames, clip_samples
from modalities.base import Encoder, ModalityOutput


class AudioEncoder(Encoder):
    """Base of the audio encoders over fixed-length clips (``AudioProcessor`` makes the batches).

    Shapes:
        output: pooled [B, D]; tokens [B, N, D]; padding_mask [B, N] (True = padding)
    """

    Config = AudioConfig

    def __init__(self, config: AudioConfig) -> None:
        super().__init__(config)
        self.clip_samples = clip_samples(config)
        self.embed_dim = config.width
        self.local_grid: tuple[int, int] | None = None  # a second, finer patch grid (spectrogram transformer)

    def _refuse_local_patches(self) -> None:
        if self.config.local_patch_freq or self.config.local_patch_time:
            raise ValueError("audio local patches need encoder: spectrogram_transformer")

    @staticmethod
    def pooled_output(tokens: torch.Tensor, padding: torch.Tensor, n: int | None = None) -> ModalityOutput:
        """The mean of the non-padding tokens as ``pooled``; ``tokens`` and
        ``padding_mask`` cut to the first ``n`` tokens (the main grid's), if given."""
        keep = (~padding).unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        n = tokens.shape[1] if n is None else n
        return ModalityOutput(pooled=pooled, tokens=tokens[:, :n], padding_mask=padding[:, :n])


class PatchAudioEncoder(AudioEncoder):
    """An audio encoder over the log-mel cut into a (frequency, time) grid of patches: a
    ``PatchEncoder`` whose patches masked spectrogram modeling can hide and predict.

    Shapes:
        batch: {"mel": [B, n_mels, frames], "valid_frames": [B]}; fewer frames (whole patch
            columns) for a window of the clip, on a grid of fewer time columns (``grid_of``)
    """

    def __init__(self, config: AudioConfig) -> None:
        super().__init__(config)
        if config.n_mels % config.patch_freq:
            raise ValueError(f"audio n_mels {config.n_mels} is not divisible by patch_freq {config.patch_freq}")
        self.frames = clip_frames(config)
        if self.frames == 0:
            raise ValueError(f"audio clip of {config.clip_seconds}s has fewer frames than one patch ({config.patch_time})")
        self.grid = (config.n_mels // config.patch_freq, self.frames // config.patch_time)
        self.num_patches = self.grid[0] * self.grid[1]
        self.patch_dim = config.patch_freq * config.patch_time

    def call_defaults(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        mel = inputs["mel"]
        grid = self.grid_of(mel)
        return {"patch_mask": torch.zeros(mel.shape[0], grid[0] * grid[1], dtype=torch.bool, device=mel.device)}

    def grid_of(self, mel: torch.Tensor) -> tuple[int, int]:
        """The patch grid of a log-mel batch: the clip's (``grid``), or fewer time columns
        for a shorter window of it (DINO's local views, ``AudioProcessor.local_augment``).

        Raises:
            ValueError: the frames are no whole number of patch columns, or more than the clip's.
        """
        frames, patch_time = mel.shape[-1], self.config.patch_time
        if frames == self.frames:
            return self.grid
        if frames % patch_time or not 0 < frames < self.frames:
            raise ValueError(f"audio log-mel of {frames} frames: the encoder takes whole patch columns (patch_time "
                             f"{patch_time}) up to the clip's {self.frames} frames")
        return self.grid[0], frames // patch_time

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
        return self._padding(batch, self.grid_of(batch["mel"]), self.config.patch_time)

    @staticmethod
    def _padding(batch: Mapping[str, torch.Tensor], grid: tuple[int, int], patch_time: int) -> torch.Tensor:
        start_frame = torch.arange(grid[1], device=batch["valid_frames"].device) * patch_time
        padded_time = start_frame.unsqueeze(0) >= batch["valid_frames"].unsqueeze(1)  # [B, T']
        return padded_time.unsqueeze(1).expand(-1, grid[0], -1).reshape(padded_time.shape[0], -1)

    def _hide_masked(self, mel: torch.Tensor, patch_mask: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``mel`` with every masked main-grid patch set to ``value``: masking in input space."""
        return self.unpatchify(torch.where(patch_mask.unsqueeze(-1), value.to(mel.dtype), self.patchify(mel)))
