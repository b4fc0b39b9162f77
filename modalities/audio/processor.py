"""The audio modality's processor: reading files and bytes with soundfile, mono
mixdown and resampling, random or centre crops, torchaudio's log-mel front end and
SpecAugment, the random views of view-contrastive learning, collation. No parameters:
what data loader workers and evaluation sets hold."""

from __future__ import annotations

import io
import math
import os
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import soundfile
import torch
import torchaudio
from torch import nn

from modalities.audio.config import AudioConfig, clip_frames, clip_samples
from modalities.base import InvalidSample, require_file, seeded_torch_rng, Processor

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


class AudioProcessor(Processor):
    """Raw audio (a path, (samples, rate), a mapping with ``array`` and ``sample_rate``, or
    samples at the configured rate) to fixed-length clips.

    Shapes:
        sample (spectrogram_transformer, timm): {"mel": [n_mels, frames], "valid_frames": int}
        sample (wav2vec2): {"wave": [clip_samples], "valid_samples": int}
        batch: {"mel": [B, n_mels, frames], "valid_frames": [B]} or {"wave": [B, S], "valid_samples": [B]}
    """

    file_extensions = AUDIO_EXTENSIONS

    def __init__(self, config: AudioConfig) -> None:
        super().__init__(config)
        self.clip_samples = clip_samples(config)
        self.frames = clip_frames(config)
        # what the configured encoder reads: the waveform (wav2vec2) or the log-mel (the rest)
        self.reads_waveform = config.encoder == "wav2vec2"
        self.value_key, self.count_key = ("wave", "valid_samples") if self.reads_waveform else ("mel", "valid_frames")
        self._mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=config.sample_rate,
            n_fft=config.n_fft,
            hop_length=config.hop_length,
            n_mels=config.n_mels,
            f_min=config.f_min,
            f_max=config.f_max,
            power=2.0,
        )
        self._augment = nn.Sequential(
            *([torchaudio.transforms.FrequencyMasking(config.freq_mask)] if config.freq_mask else []),
            *([torchaudio.transforms.TimeMasking(config.time_mask)] if config.time_mask else []),
        )
        views = config.views
        # masks on the log-mel (frames), or on the waveform (samples: a frame's hop each)
        hop = config.hop_length if self.reads_waveform else 1
        self._view_masks = nn.Sequential(
            *([torchaudio.transforms.FrequencyMasking(views.freq_mask)] if views.freq_mask and not self.reads_waveform else []),
            *([torchaudio.transforms.TimeMasking(views.time_mask * hop)] if views.time_mask else []),
        )
        if not 0.0 < views.local_share <= 1.0:
            raise ValueError(f"audio views.local_share must be in (0, 1], got {views.local_share}")
        if self.reads_waveform:
            self.local_length = max(1, int(views.local_share * self.clip_samples))
        else:  # whole patch columns, as the patch encoders read them
            self.local_length = max(config.patch_time, int(views.local_share * self.frames) // config.patch_time * config.patch_time)

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
        if self.reads_waveform:
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
        return self._view(sample[self.value_key], int(sample[self.count_key]), rng)

    def local_augment(self, sample: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """A local view (DINO's multi-crop): a random window of ``views.local_share`` of
        the clip (whole patch columns of the log-mel; samples of the waveform), inside the
        real audio where the clip is longer than the window, then ``augment``'s shift,
        gain and masks on the window.

        Shapes: {"mel": [n_mels, W], "valid_frames"} or {"wave": [W], "valid_samples"}, W = ``local_length``.
        """
        values, valid = sample[self.value_key], int(sample[self.count_key])
        width = self.local_length
        start = int(rng.integers(max(0, valid - width) + 1))
        return self._view(values[..., start : start + width], max(1, min(width, valid - start)), rng)

    def _view(self, values: torch.Tensor, valid: int, rng: np.random.Generator) -> dict[str, Any]:
        """``augment``'s view of ``values`` (a clip or a window of one, ``valid`` of it real)."""
        views = self.config.views
        wave = self.reads_waveform
        key, count = self.value_key, self.count_key
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
        key, count = self.value_key, self.count_key
        return {key: torch.stack([s[key] for s in samples]), count: torch.tensor([s[count] for s in samples])}
