"""The audio modality: options (``config``), three encoders, each in its own module
(``spectrogram_transformer``, ``timm_cnn``, ``wav2vec2``, over the shared parts in
``encoder``), processor (reading, log-mel front end, SpecAugment, views, collation) and
renderer (tones for the embedded world)."""

from modalities.audio.config import AudioConfig, AudioViews, clip_frames, clip_samples
from modalities.audio.encoder import AudioEncoder, PatchAudioEncoder
from modalities.audio.processor import AUDIO_EXTENSIONS, AudioProcessor
from modalities.audio.renderer import TONES_SPACE, AudioRenderer, render_tone
from modalities.audio.spectrogram_transformer import SpectrogramTransformer
from modalities.audio.timm_cnn import TimmAudioEncoder
from modalities.audio.wav2vec2 import Wav2Vec2Encoder
from modalities.base import Modality


class AudioModality(Modality):
    """Sounds: an encoder by ``encoder`` (``encoders``), ``AudioProcessor``, ``AudioRenderer``."""

    Config = AudioConfig
    Encoder = AudioEncoder
    encoders = {
        "spectrogram_transformer": SpectrogramTransformer,
        "timm": TimmAudioEncoder,
        "wav2vec2": Wav2Vec2Encoder,
    }
    Processor = AudioProcessor
    Renderer = AudioRenderer


__all__ = ["AUDIO_EXTENSIONS", "TONES_SPACE", "AudioConfig", "AudioEncoder", "AudioModality", "AudioProcessor",
           "AudioRenderer", "AudioViews", "PatchAudioEncoder", "SpectrogramTransformer", "TimmAudioEncoder",
           "Wav2Vec2Encoder", "clip_frames", "clip_samples", "render_tone"]
