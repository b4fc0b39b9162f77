"""The audio modality: its options (``config``), encoder (spectrogram transformer, timm
CNN or wav2vec2), processor (reading, log-mel front end, SpecAugment, views, collation)
and renderer (tones for the embedded world)."""

from modalities.audio.config import AudioConfig, AudioViews, clip_frames, clip_samples
from modalities.audio.encoder import AudioModality
from modalities.audio.processor import AUDIO_EXTENSIONS, AudioProcessor
from modalities.audio.renderer import TONES_SPACE, AudioRenderer, render_tone

__all__ = ["AUDIO_EXTENSIONS", "TONES_SPACE", "AudioConfig", "AudioModality", "AudioProcessor", "AudioRenderer",
           "AudioViews", "clip_frames", "clip_samples", "render_tone"]
