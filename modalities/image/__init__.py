"""The image modality: its options (``config``), encoder (timm or open_clip towers),
processor (decoding, transforms, views, collation) and renderer (shapes for the
embedded world)."""

from modalities.image.config import OPENAI_MEAN, OPENAI_STD, ImageConfig, ImageViews
from modalities.image.encoder import ImageModality, open_clip_model_config
from modalities.image.processor import IMAGE_EXTENSIONS, ChannelShift, ImageProcessor
from modalities.image.renderer import SHAPES_SPACE, ImageRenderer, render_shape

__all__ = ["IMAGE_EXTENSIONS", "OPENAI_MEAN", "OPENAI_STD", "SHAPES_SPACE", "ChannelShift", "ImageConfig", "ImageModality",
           "ImageProcessor", "ImageRenderer", "ImageViews", "open_clip_model_config", "render_shape"]
