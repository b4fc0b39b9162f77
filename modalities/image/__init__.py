"""The image modality: options (``config``), two encoders, each in its own module
(``timm_tower``, ``open_clip_tower``, over the shared parts in ``encoder``), processor
(decoding, transforms, views, collation) and renderer (shapes for the embedded world)."""

from pathlib import Path
from typing import Any

from mmssl.common.open_clip_files import read_open_clip_config
from modalities.base import Modality
from modalities.image.config import OPENAI_MEAN, OPENAI_STD, ImageConfig, ImageViews
from modalities.image.encoder import ImageEncoder, PatchLayout
from modalities.image.open_clip_tower import OpenClipImageEncoder, open_clip_model_config
from modalities.image.processor import IMAGE_EXTENSIONS, ChannelShift, ImageProcessor
from modalities.image.renderer import SHAPES_SPACE, ImageRenderer, render_shape
from modalities.image.timm_tower import TimmImageEncoder, timm_folder_options


class ImageModality(Modality):
    """Images: an encoder by ``tower`` (``encoders``), ``ImageProcessor``, ``ImageRenderer``."""

    Config = ImageConfig
    Encoder = ImageEncoder
    encoders = {"timm": TimmImageEncoder, "open_clip": OpenClipImageEncoder}
    encoder_option = "tower"
    Processor = ImageProcessor
    Renderer = ImageRenderer
    pretrained_options = ("tower", "vision_cfg", "quick_gelu", "backbone", "backbone_args", "image_size", "mean", "std",
                          "interpolation")
    pretrained_option_groups = (("backbone", "backbone_args"),)

    @classmethod
    def options_from_pretrained(cls, path: Path) -> dict[str, Any]:
        """An open_clip local-dir folder decides the tower (its model_cfg's vision_cfg,
        quick_gelu) and the preprocessing (its preprocess_cfg: size, mean, std, bicubic
        or bilinear resize of the shortest side); a timm local-dir folder decides
        ``tower: timm``, ``backbone``, ``backbone_args``, ``image_size``, ``mean``,
        ``std`` and ``interpolation``."""
        found = read_open_clip_config(path)
        if found is None:
            # timm's local-dir folder (config.json): tower timm, its architecture and
            # model_args, and its pretrained_cfg's preprocessing (timm_folder_options)
            return timm_folder_options(path) or {}
        model_cfg, preprocess = found
        vision = dict(model_cfg.get("vision_cfg", {}))
        if vision.get("timm_model_name"):
            raise ValueError(f"{path}: its vision tower is timm's {vision['timm_model_name']!r} inside open_clip; the "
                             "open_clip import maps open_clip's own ViT towers")
        size = preprocess.get("size", vision.get("image_size", 224))
        size = size if isinstance(size, int) else size[0] if len(set(size)) == 1 else None
        if size is None or preprocess.get("resize_mode", "shortest") != "shortest":
            raise ValueError(f"{path}: preprocess_cfg size {preprocess.get('size')!r}, resize_mode "
                             f"{preprocess.get('resize_mode')!r}: mmssl resizes the shortest side to a square crop")
        interpolation = preprocess.get("interpolation", "bicubic")
        if interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"{path}: preprocess_cfg interpolation {interpolation!r}: mmssl resizes bicubic or bilinear")
        return {
            "tower": "open_clip", "vision_cfg": vision, "quick_gelu": bool(model_cfg.get("quick_gelu", False)),
            "image_size": size, "mean": tuple(preprocess.get("mean", OPENAI_MEAN)),
            "std": tuple(preprocess.get("std", OPENAI_STD)), "interpolation": interpolation,
        }


__all__ = ["IMAGE_EXTENSIONS", "OPENAI_MEAN", "OPENAI_STD", "SHAPES_SPACE", "ChannelShift", "ImageConfig", "ImageEncoder",
           "ImageModality", "ImageProcessor", "ImageRenderer", "ImageViews", "OpenClipImageEncoder", "PatchLayout",
           "TimmImageEncoder", "open_clip_model_config", "render_shape"]
