"""Audio: soundfile reading, torchaudio log-mel front end, a spectrogram transformer
(AST / AudioMAE style, timm blocks) or a torchaudio wav2vec2 encoder; tones for the world.
"""

from __future__ import annotations

import io
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import soundfile
import torch
import torch.utils.checkpoint
import torchaudio
from einops import rearrange
from timm.models.vision_transformer import Block
from torch import nn

from modalities.base import (
    COUNT,
    ConceptSpace,
    InvalidSample,
    Modality,
    ModalityOutput,
    keep_norm_statistics_on_recompute,
    require_file,
    seeded_torch_rng,
)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".au")
# libsndfile reads a WAV file cut short up to the cut without an error; its own header
# log says so: "data : 32000 (should be 15978)".
_WAV_DATA_SIZE = re.compile(r"^data : (\d+) \(should be (\d+)\)", re.MULTILINE)
_STREAMED_SIZES = (0, 0xFFFFFFFF)  # written by a streaming encoder (ffmpeg to a pipe): length unknown, not cut


def _truncated_wav(header_log: str) -> str | None:
    """Why a WAV file is cut short, from libsndfile's header log; None if it is whole."""
    match = _WAV_DATA_SIZE.search(header_log)
    if match is None:
        return None
    declared, present = int(match.group(1)), int(match.group(2))
    if declared in _STREAMED_SIZES or declared <= present:
        return None
    return f"truncated: the header declares {declared} bytes of audio data, the file holds {present}"


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


def _shift_time(values: torch.Tensor, steps: int, fill: float) -> torch.Tensor:
    """``values`` moved ``steps`` along the last axis (later if positive), ``fill`` in
    the vacated places. Shapes: [..., T] -> [..., T]."""
    if steps == 0:
        return values.clone()
    out = torch.full_like(values, fill)
    if steps > 0:
        out[..., steps:] = values[..., :-steps]
    else:
        out[..., :steps] = values[..., -steps:]
    return out


class AudioModality(Modality):
    """Audio encoder over fixed-length clips.

    Shapes:
        sample (spectrogram_transformer, timm): {"mel": [n_mels, frames], "valid_frames": int}
        sample (wav2vec2): {"wave": [clip_samples], "valid_samples": int}
        batch: {"mel": [B, n_mels, frames], "valid_frames": [B]} or {"wave": [B, S], "valid_samples": [B]}
        output: pooled [B, width]; tokens [B, N, width]; padding_mask [B, N] (True = padding)
    """

    Config = AudioConfig
    file_extensions = AUDIO_EXTENSIONS

    def __init__(self, config: AudioConfig) -> None:
        super().__init__(config)
        self.clip_samples = int(round(config.sample_rate * config.clip_seconds))
        # The front end runs in the data pipeline, on the CPU: kept out of the module tree
        # so model.to(device) and the state dict leave it alone.
        mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=config.sample_rate,
            n_fft=config.n_fft,
            hop_length=config.hop_length,
            n_mels=config.n_mels,
            f_min=config.f_min,
            f_max=config.f_max,
            power=2.0,
        )
        object.__setattr__(self, "_mel", mel)
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
        augment = nn.Sequential(
            *([torchaudio.transforms.FrequencyMasking(config.freq_mask)] if config.freq_mask else []),
            *([torchaudio.transforms.TimeMasking(config.time_mask)] if config.time_mask else []),
        )
        object.__setattr__(self, "_augment", augment)
        views = config.views
        # masks on the log-mel (frames), or on the waveform (samples: a frame's hop each)
        hop = config.hop_length if config.encoder == "wav2vec2" else 1
        view_masks = nn.Sequential(
            *([torchaudio.transforms.FrequencyMasking(views.freq_mask)] if views.freq_mask and config.encoder != "wav2vec2" else []),
            *([torchaudio.transforms.TimeMasking(views.time_mask * hop)] if views.time_mask else []),
        )
        object.__setattr__(self, "_view_masks", view_masks)

    # --- reading ------------------------------------------------------------------------
    def load(self, path: str) -> tuple[np.ndarray, int]:
        """(samples [T, C] float32, sample rate) from a wav/flac/ogg/... file."""
        require_file(str(path))  # soundfile reports a missing file as a "System error"
        return self._decode(lambda: path, str(path))

    def load_bytes(self, data: bytes, name: str) -> tuple[np.ndarray, int]:
        """The same from an audio file's bytes (a tar shard member)."""
        return self._decode(lambda: io.BytesIO(data), name)

    def _decode(self, open_source: Callable[[], Any], where: str) -> tuple[np.ndarray, int]:
        try:
            info = soundfile.info(open_source())
        except (soundfile.LibsndfileError, RuntimeError, OSError) as exc:
            raise InvalidSample(f"unsupported or corrupt audio file: {exc}", source=where) from None
        if info.frames <= 0:
            raise InvalidSample("audio file has no samples (zero length)", source=where)
        cut = _truncated_wav(info.extra_info)
        if cut is not None:
            raise InvalidSample(cut, source=where)
        if info.duration > self.config.max_file_seconds:
            raise InvalidSample(
                f"audio is {info.duration:.2f}s long, over max_file_seconds={self.config.max_file_seconds}", source=where
            )
        try:
            data, rate = soundfile.read(open_source(), dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
            raise InvalidSample(f"cannot decode audio: {exc}", source=where) from None
        return data, int(rate)

    def waveform(self, raw: Any) -> torch.Tensor:
        """Any raw audio item to a mono float waveform [T] at the configured rate."""
        source = None
        if isinstance(raw, (str, os.PathLike)):
            source = str(raw)
            raw = self.load(source)
        if isinstance(raw, Mapping):
            raw = (raw["array"], raw["sample_rate"])
        if isinstance(raw, tuple):
            data, rate = raw
        else:
            data, rate = raw, self.config.sample_rate
        data = torch.as_tensor(np.asarray(data, dtype=np.float32))
        if data.ndim == 1:
            data = data.unsqueeze(1)
        if data.ndim != 2:
            raise InvalidSample(f"audio must be [samples] or [samples, channels], got shape {tuple(data.shape)}", source)
        channels = data.shape[1]
        if channels < 1 or channels > self.config.max_channels:
            raise InvalidSample(f"audio has {channels} channels; expected 1 to {self.config.max_channels}", source)
        if data.shape[0] == 0:
            raise InvalidSample("audio has no samples (zero length)", source)
        if not torch.isfinite(data).all():
            raise InvalidSample("audio contains NaN or infinite samples", source)
        wave = data.mean(dim=1)  # mono mixdown
        if rate <= 0:
            raise InvalidSample(f"invalid sample rate {rate}", source)
        if rate != self.config.sample_rate:
            wave = torchaudio.functional.resample(wave, rate, self.config.sample_rate)
        return wave

    def crop(self, wave: torch.Tensor, rng: np.random.Generator | None) -> tuple[torch.Tensor, int]:
        """Fixed-length clip: random crop (train) or centre crop (eval); zero-pad short audio.

        Returns (clip [clip_samples], number of real samples in it).
        """
        n, length = wave.shape[0], self.clip_samples
        if n >= length:
            start = int(rng.integers(n - length + 1)) if rng is not None else (n - length) // 2
            return wave[start : start + length], length
        return torch.nn.functional.pad(wave, (0, length - n)), n

    def log_mel(self, clip: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel [n_mels, frames] of a clip [clip_samples]."""
        mel = torch.log(self._mel(clip) + 1e-6)
        return ((mel - self.config.mel_mean) / self.config.mel_std)[:, : self.frames]

    def _shift_frequency(self, mel: torch.Tensor, bins: int) -> torch.Tensor:
        if bins == 0:
            return mel
        silence = (math.log(1e-6) - self.config.mel_mean) / self.config.mel_std
        shifted = torch.full_like(mel, silence)
        if bins > 0:
            shifted[bins:] = mel[:-bins]
        else:
            shifted[:bins] = mel[-bins:]
        return shifted

    def transform(self, raw: Any, rng: np.random.Generator | None = None) -> dict[str, Any]:
        clip, valid = self.crop(self.waveform(raw), rng)
        if self.config.encoder == "wav2vec2":
            return {"wave": clip, "valid_samples": valid}
        with torch.no_grad():
            mel = self.log_mel(clip)
            if rng is not None and self.config.freq_shift:
                mel = self._shift_frequency(mel, int(rng.integers(-self.config.freq_shift, self.config.freq_shift + 1)))
            if rng is not None and len(self._augment):
                with seeded_torch_rng(rng):
                    mel = self._augment(mel.unsqueeze(0)).squeeze(0)
        # frames whose (centred) window touches real audio; later ones are pure padding
        c = self.config
        valid_frames = min(self.frames, (valid + c.n_fft // 2 + c.hop_length - 1) // c.hop_length)
        return {"mel": mel, "valid_frames": valid_frames}

    def augment(self, sample: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """A random view of a transformed clip (``AudioViews``): a time shift (silence
        fills the vacated frames), a gain (exact on the log-mel: the log of the gained
        power plus the front end's floor), then torchaudio's frequency and time masking.

        Shapes: {"mel": [n_mels, frames], "valid_frames"} or {"wave": [S], "valid_samples"}, as the sample.
        """
        views = self.config.views
        wave = self.config.encoder == "wav2vec2"
        key, count = ("wave", "valid_samples") if wave else ("mel", "valid_frames")
        values, valid = sample[key], int(sample[count])
        length = values.shape[-1]
        steps = int(rng.integers(-round(views.shift * length), round(views.shift * length) + 1))
        gain = float(rng.uniform(-views.gain_db, views.gain_db))
        with torch.no_grad():
            if wave:
                out = torchaudio.functional.gain(values, gain)
                silence = 0.0
            else:
                floor = 1e-6  # log_mel's
                power = (values * self.config.mel_std + self.config.mel_mean).exp() - floor
                out = (torch.log(power.clamp_min(0) * 10 ** (gain / 10) + floor) - self.config.mel_mean) / self.config.mel_std
                silence = (math.log(floor) - self.config.mel_mean) / self.config.mel_std
            out = _shift_time(out, steps, silence)
            if len(self._view_masks):
                with seeded_torch_rng(rng):
                    out = self._view_masks(out.unsqueeze(0)).squeeze(0)
        return {key: out, count: min(length, max(1, valid + steps))}

    def collate(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        key, count = ("wave", "valid_samples") if self.config.encoder == "wav2vec2" else ("mel", "valid_frames")
        return {key: torch.stack([s[key] for s in samples]), count: torch.tensor([s[count] for s in samples])}

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

    def train(self, mode: bool = True) -> AudioModality:
        super().train(mode)
        if self.grad_checkpointing and self.config.encoder == "timm":
            self._switch_checkpointing(mode)
        return self

    # --- embedded world -------------------------------------------------------------------
    def concept_space(self) -> ConceptSpace:
        return TONES_SPACE

    def render(self, concept: Mapping[str, str], rng: np.random.Generator) -> tuple[np.ndarray, int]:
        return render_tone(concept, rng, self.config.sample_rate, self.config.clip_seconds), self.config.sample_rate


TONES_SPACE = ConceptSpace(
    class_attributes={
        "contour": ("steady", "rising", "falling", "warbling"),
        "timbre": ("sine", "square", "sawtooth", "noise"),
    },
    nuisance_attributes={"register": ("low", "middle", "high")},
    shared_attributes=COUNT,
    caption_templates=(
        "a {contour} {timbre} tone",
        "a {register} {contour} {timbre} tone",
        "the sound of a {contour} {timbre} tone",
        "a {timbre} tone that is {contour}",
        "{contour} {timbre}",
        "a {register} pitched {timbre} sound, {contour}",
        "a {contour} {timbre} tone in {count}",
        "{count} of a {contour} {timbre} tone",
        "a {register} {contour} {timbre} tone in {count}",
    ),
    single_attribute_templates={
        "contour": ("a {contour} sound", "a {register} {contour} tone", "something {contour}", "a {contour} sound in {count}"),
        "timbre": ("a {timbre} tone", "the sound of a {timbre} wave", "a {register} {timbre} sound", "{count} of a {timbre} tone"),
    },
    synonyms={
        "one": ("one note",),
        "two": ("two notes",),
        "three": ("three notes",),
        "four": ("four notes",),
        "sine": ("sine", "pure"),
        "square": ("square", "square wave"),
        "sawtooth": ("sawtooth", "buzzy"),
        "noise": ("noise", "noisy"),
        "rising": ("rising", "upward"),
        "falling": ("falling", "downward"),
        "warbling": ("warbling", "wobbling"),
        "steady": ("steady", "constant"),
        "middle": ("middle", "medium"),
    },
    prompt_templates=("a {} tone.", "the sound of a {} tone.", "a {} sound."),
)

# Registers and contour spans keep the third harmonic under 4 kHz, so square and
# sawtooth tones keep their timbre even at an 8 kHz sample rate.
_REGISTER_HZ = {"low": (100.0, 160.0), "middle": (200.0, 320.0), "high": (400.0, 640.0)}


def _frequency_track(contour: str, f0: float, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    span = rng.uniform(1.4, 1.8)
    progress = t / max(t[-1], 1e-9)
    if contour == "rising":
        return f0 * np.exp(np.log(span) * progress)
    if contour == "falling":
        return f0 * np.exp(np.log(span) * (1 - progress))
    if contour == "warbling":
        return f0 * (1 + rng.uniform(0.08, 0.14) * np.sin(2 * np.pi * rng.uniform(4, 8) * t + rng.uniform(0, 2 * np.pi)))
    return np.full_like(t, f0 * span**0.5)


def _notes_envelope(duration: int, notes: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """An envelope that plays the tone as ``notes`` equal notes parted by 80-120 ms of
    silence (the world's count, as a sound shows it), each with 10 ms fades. A gap
    covers most of a 0.1 s patch of the default audio encoder: with 40-60 ms gaps a
    probe read the count from the main job's audio embeddings at 0.68, with these 0.81.
    Clips too short for four notes with such gaps get narrower gaps."""
    gap = int(rng.uniform(0.08, 0.12) * sample_rate) if notes > 1 else 0
    shortest = int(0.02 * sample_rate)  # a short clip narrows the gaps so each note keeps 20 ms
    if notes > 1:
        gap = min(gap, (duration - notes * shortest) // (notes - 1))
    length = (duration - (notes - 1) * gap) // notes
    fade = min(int(0.01 * sample_rate), length // 2)
    note = np.ones(length, dtype=np.float32)
    note[:fade] = np.linspace(0, 1, fade)
    note[length - fade :] = np.linspace(1, 0, fade)
    envelope = np.zeros(duration, dtype=np.float32)
    for i in range(notes):
        envelope[i * (length + gap) : i * (length + gap) + length] = note
    return envelope


def render_tone(concept: Mapping[str, str], rng: np.random.Generator, sample_rate: int, seconds: float) -> np.ndarray:
    """A tone of the concept's contour, timbre and register, played as its count of
    notes, with random onset, duration, phase, level and background noise. Returns
    float32 [samples]."""
    total = int(round(sample_rate * seconds))
    duration = int(total * rng.uniform(0.6, 0.95))
    onset = int(rng.integers(0, total - duration + 1))
    t = np.arange(duration) / sample_rate
    low, high = _REGISTER_HZ[concept["register"]]
    freq = _frequency_track(concept["contour"], rng.uniform(low, high), t, rng)
    nyquist = sample_rate / 2
    timbre = concept["timbre"]
    cycles = 2 * np.pi * np.cumsum(freq) / sample_rate  # the phase: running integral of the track
    # Trigonometry runs in float32 (several times faster than float64 in numpy); the
    # phase's float32 rounding (under 1e-3 rad at a second of 1 kHz) is inaudible here.
    if timbre == "noise":
        # a band of partials around the track: pitched noise that follows the contour
        draws = rng.random((24, 2), dtype=np.float32)  # per partial: frequency ratio in [0.85, 1.15), phase offset
        ratio, offset = 0.85 + 0.3 * draws[:, :1], 2 * np.pi * draws[:, 1:]
        tone = np.sin(ratio * cycles.astype(np.float32) + offset).sum(0) / np.sqrt(24)
    else:
        top = {"sine": 1, "square": 15, "sawtooth": 15}[timbre]
        step = 2 if timbre == "square" else 1  # square waves have odd harmonics only
        # sin(k * phase) = Im(z**k) with z = exp(i * phase): one complex product per
        # harmonic instead of a sine over the whole clip; the phase is wrapped first so
        # float32 keeps its precision
        phase = cycles + rng.uniform(0, 2 * np.pi)
        phase = (phase - 2 * np.pi * np.floor(phase / (2 * np.pi))).astype(np.float32)
        z = (np.cos(phase) + 1j * np.sin(phase)).astype(np.complex64)
        power = np.ones(duration, dtype=np.complex64)
        tone = np.zeros(duration, dtype=np.float32)
        lowest, highest = freq.min(), freq.max()
        for k in range(1, top + 1):
            if k * lowest >= nyquist:
                break  # band-limited: no aliasing partials, and none above this one either
            power *= z
            if (k - 1) % step:
                continue
            if k * highest < nyquist:
                tone += power.imag / k
            else:
                tone += (k * freq < nyquist) * power.imag / k
    envelope = _notes_envelope(duration, COUNT["count"].index(concept["count"]) + 1 if "count" in concept else 1, sample_rate, rng)
    tone = tone / (np.abs(tone).max() + 1e-9) * envelope * rng.uniform(0.3, 0.9)
    out = rng.normal(0, rng.uniform(0.005, 0.03), total)
    out[onset : onset + duration] += tone
    return out.astype(np.float32)
