"""The image modality: options (``config``), encoder (timm or open_clip towers), processor
(decoding, transforms, views, collation) and renderer (shapes for the embedded world)."""

from modalities.base import Modality
from modalities.image.config import OPENAI_MEAN, OPENAI_STD, ImageConfig, ImageViews
from modalities.image.encoder import ImageEncoder, open_clip_model_config
from modalities.image.processor import IMAGE_EXTENSIONS, ChannelShift, ImageProcessor
from modalities.image.renderer import SHAPES_SPACE, ImageRenderer, render_shape


class ImageModality(Modality):
    """Images: ``ImageEncoder``, ``ImageProcessor``, ``ImageRenderer`` over ``ImageConfig``."""

    Config = ImageConfig
    Encoder = ImageEncoder
    Processor = ImageProcessor
    Renderer = ImageRenderer


__all__ = ["IMAGE_EXTENSIONS", "OPENAI_MEAN", "OPENAI_STD", "SHAPES_SPACE", "ChannelShift", "ImageConfig", "ImageEncoder",
           "ImageModality", "ImageProcessor", "ImageRenderer", "ImageViews", "open_clip_model_config", "render_shape"]
