"""The image modality's options (``modalities.<key>.*``), read by its encoder, processor
and renderer alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageViews:
    """The augmentations of ``augment`` (view-contrastive learning), on top of the
    training transform. The world's image classes are colour x shape, so a view may
    change a colour's brightness and contrast but by default not its hue or saturation
    (SimCLR's hue jitter and random greyscale would turn a red shape orange or grey:
    after the world's own colour noise red and orange shapes lie about 10 degrees of hue
    apart, so even ``hue: 0.02``, 7 degrees, lets them cross); it may crop, flip
    left-right (every shape of the world is mirror-symmetric) and blur.
    """

    crop_scale: tuple[float, float] = (0.4, 1.0)  # RandomResizedCrop's area share
    flip: float = 0.5  # probability of a horizontal flip
    blur: float = 0.5  # probability of a Gaussian blur (kernel about a tenth of the image)
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    brightness: float = 0.3  # ColorJitter: factor drawn from [1 - x, 1 + x]
    contrast: float = 0.3
    saturation: float = 0.0
    hue: float = 0.0  # ColorJitter: hue shift drawn from [-x, x] of the colour circle
    # an offset drawn from [-x, x] for each RGB channel, added to every pixel: moves the
    # background's colour and the shape's alike. 0.08 (20 of 255) is the world's own
    # colour noise, well inside the distance between two colour names
    channel_shift: float = 0.0
    # DINO's local views (``local_augment``, multi-crop): crops from a smaller share of the
    # area, resized to a smaller size, with the augmentations above; DINO's defaults
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    local_size: int | None = None  # pixels; None: half of image_size


@dataclass(frozen=True)
class ImageConfig:
    tower: Literal["timm", "open_clip"] = "timm"
    # timm model name (created with pretrained=False), or an open_clip model config name
    # or the path of a JSON file in open_clip's model-config format.
    backbone: str = "resnet10t"
    # Extra keyword arguments: timm.create_model kwargs, or open_clip vision_cfg fields.
    backbone_args: dict[str, Any] = field(default_factory=dict)
    # tower open_clip: the vision_cfg itself, instead of the one of the model config
    # ``backbone`` names (a pretrained open_clip folder's, written into the resolved config)
    vision_cfg: dict[str, Any] | None = None
    # QuickGELU activations (open_clip's model_cfg quick_gelu, as OpenAI's CLIP weights)
    quick_gelu: bool = False
    image_size: int = 32
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    # resampling of the resize to image_size (shortest side) and of training crops;
    # open_clip's preprocessing is bicubic (a pretrained open_clip folder sets it)
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    # RandomResizedCrop scale for training on files; (1.0, 1.0) turns cropping off.
    train_crop_scale: tuple[float, float] = (0.9, 1.0)
    # view-contrastive augmentations (``augment``)
    views: ImageViews = field(default_factory=ImageViews)
