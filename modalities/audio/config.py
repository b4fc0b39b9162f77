"""The audio modality's options (``modalities.<key>.*``), read by its encoder, processor
and renderer alike, and the clip geometry they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class AudioViews:
    """The augmentations of ``augment`` (view-contrastive learning), on top of the
    training transform. The world's sound classes are contour x timbre, so a view may
    move the sound in time, change its level and hide a few mel bands or frames, but
    never reverse it (a rising tone would fall) or filter it hard (a square wave would
    lose its harmonics).
    """

    shift: float = 0.2  # time shift by up to this share of the clip, either way (silence fills in)
    gain_db: float = 6.0  # gain drawn from [-gain_db, gain_db] dB
    freq_mask: int = 4  # torchaudio FrequencyMasking: up to this many mel bins (0: off)
    time_mask: int = 8  # torchaudio TimeMasking: up to this many frames (0: off)
    # DINO's local views (``local_augment``, multi-crop): a random window of this share of
    # the clip (whole patch columns for the patch encoders), with the augmentations above
    local_share: float = 0.5


@dataclass(frozen=True)
class AudioConfig:
    # spectrogram_transformer: ViT over log-mel patches; timm: a timm CNN over the log-mel
    # (one input channel), its feature map pooled onto the patch grid; wav2vec2: waveform.
    encoder: Literal["spectrogram_transformer", "timm", "wav2vec2"] = "spectrogram_transformer"
    backbone: str = "resnet10t"  # timm model name (random init), for encoder: timm
    backbone_args: dict[str, Any] = field(default_factory=dict)
    sample_rate: int = 16000
    clip_seconds: float = 1.0
    # log-mel front end (torchaudio.transforms.MelSpectrogram)
    n_mels: int = 64
    n_fft: int = 400
    hop_length: int = 160
    f_min: float = 0.0
    f_max: float | None = None
    mel_mean: float = -1.5  # fixed normalisation of log-mel values (AST style; fits the embedded world)
    mel_std: float = 3.0
    # SpecAugment on training samples (0 turns a mask off)
    freq_mask: int = 0
    time_mask: int = 0
    # training: shift the log-mel up or down by up to this many mel bins (a cheap pitch
    # shift; vacated bins hold the log-mel of silence). 0 turns it off.
    freq_shift: int = 0
    # view-contrastive augmentations (``augment``)
    views: AudioViews = field(default_factory=AudioViews)
    # spectrogram transformer
    patch_freq: int = 16
    patch_time: int = 10
    # spectrogram transformer, optional second view of the same log-mel: a token set of
    # smaller patches beside the main grid (0 = off). Full-spectrum main patches see
    # harmonic structure; small local patches see pitch movement. Both go through the
    # same blocks and into the pooled embedding.
    local_patch_freq: int = 0
    local_patch_time: int = 0
    width: int = 128
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    # wav2vec2 (torchaudio.models.wav2vec2_model, random init)
    wav2vec2_layers: int = 2
    # input limits: longer files are refused rather than decoded whole
    max_file_seconds: float = 600.0
    max_channels: int = 8


def clip_samples(config: AudioConfig) -> int:
    """Samples in one clip at the configured rate."""
    return int(round(config.sample_rate * config.clip_seconds))


def clip_frames(config: AudioConfig) -> int:
    """Log-mel frames of a clip that the encoder reads: all of them for the waveform
    encoder, a whole number of patch columns for the patch encoders."""
    frames = clip_samples(config) // config.hop_length + 1
    if config.encoder == "wav2vec2":
        return frames
    return (frames // config.patch_time) * config.patch_time
