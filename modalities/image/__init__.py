"""The image modality: options (``config``), two encoders, each in its own module
(``timm_tower``, ``open_clip_tower``, over the shared parts in ``encoder``), processor
(decoding, transforms, views, collation) and renderer (shapes for the embedded world)."""

from modalities.base import Modality
from modalities.image.config import OPENAI_MEAN, OPENAI_STD, ImageConfig, ImageViews
from modalities.image.encoder import ImageEncoder, PatchLayout
from modalities.image.open_clip_tower import OpenClipImageEncoder, open_clip_model_config
from modalities.image.processor import IMAGE_EXTENSIONS, ChannelShift, ImageProcessor
from modalities.image.renderer import SHAPES_SPACE, ImageRenderer, render_shape
from modalities.image.timm_tower import TimmImageEncoder


class ImageModality(Modality):
    """Images: an encoder by ``tower`` (``encoders``), ``ImageProcessor``, ``ImageRenderer``."""

    Config = ImageConfig
    Encoder = ImageEncoder
    encoders = {"timm": TimmImageEncoder, "open_clip": OpenClipImageEncoder}
    encoder_option = "tower"
    Processor = ImageProcessor
    Renderer = ImageRenderer


__all__ = ["IMAGE_EXTENSIONS", "OPENAI_MEAN", "OPENAI_STD", "SHAPES_SPACE", "ChannelShift", "ImageConfig", "ImageEncoder",
           "ImageModality", "ImageProcessor", "ImageRenderer", "ImageViews", "OpenClipImageEncoder", "PatchLayout",
           "TimmImageEncoder", "open_clip_model_config", "render_shape"]
