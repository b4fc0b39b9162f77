"""The audio modality: options (``config``), encoder (spectrogram transformer, timm CNN or
wav2vec2), processor (reading, log-mel front end, SpecAugment, views, collation) and
renderer (tones for the embedded world)."""

from modalities.audio.config import AudioConfig, AudioViews, clip_frames, clip_samples
from modalities.audio.encoder import AudioEncoder
from modalities.audio.processor import AUDIO_EXTENSIONS, AudioProcessor
from modalities.audio.renderer import TONES_SPACE, AudioRenderer, render_tone
from modalities.base import Modality


class AudioModality(Modality):
    """Sounds: ``AudioEncoder``, ``AudioProcessor``, ``AudioRenderer`` over ``AudioConfig``."""

    Config = AudioConfig
    Encoder = AudioEncoder
    Processor = AudioProcessor
    Renderer = AudioRenderer


__all__ = ["AUDIO_EXTENSIONS", "TONES_SPACE", "AudioConfig", "AudioEncoder", "AudioModality", "AudioProcessor",
           "AudioRenderer", "AudioViews", "clip_frames", "clip_samples", "render_tone"]
