"""Images: any timm backbone by name, or an open_clip vision tower; shapes for the world."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
from einops import rearrange
from PIL import Image, ImageDraw, UnidentifiedImageError
from torchvision.transforms import v2

from modalities.base import (
    COUNT,
    ConceptSpace,
    InvalidSample,
    Modality,
    ModalityOutput,
    keep_norm_statistics_on_recompute,
    seeded_torch_rng,
)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageViews:
    """The augmentations of ``augment`` (view-contrastive learning), on top of the
    training transform. The world's image classes are colour x shape, so a view may
    change a colour's brightness and contrast but never its hue or saturation (SimCLR's
    hue jitter and random greyscale would turn a red shape orange or grey); it may
    crop, flip left-right (every shape of the world is mirror-symmetric) and blur.
    """

    crop_scale: tuple[float, float] = (0.4, 1.0)  # RandomResizedCrop's area share
    flip: float = 0.5  # probability of a horizontal flip
    blur: float = 0.5  # probability of a Gaussian blur (kernel about a tenth of the image)
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    brightness: float = 0.3  # ColorJitter: factor drawn from [1 - x, 1 + x]
    contrast: float = 0.3
    saturation: float = 0.0
    hue: float = 0.0  # ColorJitter: hue shift drawn from [-x, x] of the colour circle


@dataclass(frozen=True)
class ImageConfig:
    tower: Literal["timm", "open_clip"] = "timm"
    # timm model name (created with pretrained=False), or an open_clip model config name
    # or the path of a JSON file in open_clip's model-config format.
    backbone: str = "resnet10t"
    # Extra keyword arguments: timm.create_model kwargs, or open_clip vision_cfg fields.
    backbone_args: dict[str, Any] = field(default_factory=dict)
    image_size: int = 32
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    # RandomResizedCrop scale for training on files; (1.0, 1.0) turns cropping off.
    train_crop_scale: tuple[float, float] = (0.9, 1.0)
    # view-contrastive augmentations (``augment``)
    views: ImageViews = field(default_factory=ImageViews)


def open_clip_model_config(name: str) -> dict[str, Any]:
    """open_clip's model config by name, or read from a JSON file in open_clip's format
    (a custom architecture that open_clip's own trainer can also take)."""
    import open_clip

    if name.endswith(".json"):
        try:
            with open(name, encoding="utf-8") as f:
                model_cfg = json.load(f)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read open_clip model config {name}: {exc}") from None
        if not isinstance(model_cfg, dict) or "vision_cfg" not in model_cfg:
            raise ValueError(f"open_clip model config {name} has no 'vision_cfg'")
        return model_cfg
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise ValueError(f"unknown open_clip model config '{name}'")
    return model_cfg


class ImageModality(Modality):
    """Image encoder.

    Shapes:
        sample: FloatTensor [3, S, S] normalised (S = image_size).
        batch: {"pixels": [B, 3, S, S]}.
        output: pooled [B, D]; tokens [B, N, D] (feature-map cells or ViT patches).
    """

    Config = ImageConfig
    file_extensions = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

    def __init__(self, config: ImageConfig) -> None:
        super().__init__(config)
        if config.tower == "timm":
            import timm

            self.backbone = timm.create_model(config.backbone, pretrained=False, num_classes=0, **config.backbone_args)
            self.embed_dim = int(self.backbone.num_features)
        else:
            from open_clip.model import _build_vision_tower

            model_cfg = open_clip_model_config(config.backbone)
            vision_cfg = {**model_cfg["vision_cfg"], "image_size": config.image_size, **config.backbone_args}
            vision_cfg["output_tokens"] = True
            width = int(vision_cfg.get("width", model_cfg["embed_dim"]))
            self.backbone = _build_vision_tower(embed_dim=width, vision_cfg=vision_cfg)
            self.embed_dim = width
        size = config.image_size
        normalize = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(config.mean, config.std)]
        self.eval_transform = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), *normalize])
        if tuple(config.train_crop_scale) == (1.0, 1.0):
            self.train_transform = self.eval_transform
        else:
            self.train_transform = v2.Compose(
                [v2.RandomResizedCrop(size, scale=tuple(config.train_crop_scale), antialias=True), *normalize]
            )
        views = config.views
        self.view_transform = v2.Compose([
            v2.RandomResizedCrop(size, scale=tuple(views.crop_scale), antialias=True),
            v2.RandomHorizontalFlip(views.flip),
            v2.RandomApply([v2.GaussianBlur(2 * (size // 20) + 1, sigma=tuple(views.blur_sigma))], p=views.blur),
            v2.ColorJitter(brightness=views.brightness, contrast=views.contrast, saturation=views.saturation, hue=views.hue),
        ])

    # --- data ---------------------------------------------------------------------
    def load(self, path: str) -> Image.Image:
        return self._decode(path, str(path))

    def load_bytes(self, data: bytes, name: str) -> Image.Image:
        return self._decode(io.BytesIO(data), name)

    @staticmethod
    def _decode(source: Any, where: str) -> Image.Image:
        try:
            with Image.open(source) as img:
                img.load()  # decode now, so truncated files fail here and not in collate
                return img.convert("RGB")
        except FileNotFoundError:
            raise InvalidSample("image file not found", source=where) from None
        except UnidentifiedImageError:
            raise InvalidSample("not a readable image (cannot identify image file)", source=where) from None
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise InvalidSample(f"corrupt image: {exc}", source=where) from None

    def transform(self, raw: Any, rng: np.random.Generator | None = None) -> torch.Tensor:
        if isinstance(raw, str):
            raw = self.load(raw)
        if isinstance(raw, np.ndarray):
            if raw.ndim != 3 or raw.shape[2] != 3:
                raise InvalidSample(f"image array must be HxWx3, got shape {raw.shape}")
            raw = Image.fromarray(raw.astype(np.uint8))
        if isinstance(raw, Image.Image):
            raw = raw.convert("RGB")
        elif not torch.is_tensor(raw):
            raise InvalidSample(f"image must be a path, PIL image, HxWx3 array or tensor, got {type(raw).__name__}")
        if rng is None or self.train_transform is self.eval_transform:
            return self.eval_transform(raw)
        with seeded_torch_rng(rng):
            return self.train_transform(raw)

    def augment(self, sample: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """A random view of a transformed image (``ImageViews``): undone normalisation,
        crop, flip, blur, brightness and contrast on [0, 1] pixels, normalised again.

        Shapes: [3, S, S] -> [3, S, S].
        """
        mean = torch.tensor(self.config.mean).view(3, 1, 1)
        std = torch.tensor(self.config.std).view(3, 1, 1)
        pixels = (sample * std + mean).clamp(0, 1)
        with seeded_torch_rng(rng):
            view = self.view_transform(pixels)
        return (view - mean) / std

    def collate(self, samples: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"pixels": torch.stack(list(samples))}

    # --- model --------------------------------------------------------------------
    def forward(self, batch: Mapping[str, torch.Tensor]) -> ModalityOutput:
        pixels = batch["pixels"]
        if self.config.tower == "open_clip":
            pooled, tokens = self.backbone(pixels)
            return ModalityOutput(pooled=pooled, tokens=tokens)
        features = self.backbone.forward_features(pixels)
        pooled = self.backbone.forward_head(features, pre_logits=True)
        tokens = rearrange(features, "b c h w -> b (h w) c") if features.ndim == 4 else features
        return ModalityOutput(pooled=pooled, tokens=tokens)

    # --- training options ----------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """The tower's own switch, in training mode only (``train`` sets it): timm's
        ``set_grad_checkpointing`` (its stages or blocks under non-reentrant
        ``torch.utils.checkpoint``), or open_clip's on a ViT or timm vision tower.
        BatchNorm layers update their running statistics once per step all the same.

        Raises:
            NotImplementedError: the backbone has no activation checkpointing (open_clip's
                ModifiedResNet towers, timm models without it).
        """
        if enable:
            self._switch_checkpointing(True)  # raises here, at build time, if the backbone has none
            keep_norm_statistics_on_recompute(self)
        self.grad_checkpointing = enable
        self._switch_checkpointing(enable and self.training)

    def _switch_checkpointing(self, enable: bool) -> None:
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.timm_model import TimmModel

        backbone = self.backbone
        if isinstance(backbone, ModifiedResNet):  # its set_grad_checkpointing does nothing
            raise NotImplementedError(f"open_clip's ModifiedResNet tower ('{self.config.backbone}') has no activation checkpointing")
        if isinstance(backbone, TimmModel):
            backbone = backbone.trunk  # open_clip's wrapper would only log a warning if the trunk has none
        try:
            backbone.set_grad_checkpointing(enable)
        except (AssertionError, NotImplementedError) as exc:  # timm models without it assert
            raise NotImplementedError(f"image backbone '{self.config.backbone}' has no activation checkpointing: {exc}") from None

    def train(self, mode: bool = True) -> ImageModality:
        super().train(mode)
        if self.grad_checkpointing:
            self._switch_checkpointing(mode)
        return self

    # --- embedded world -------------------------------------------------------------
    def concept_space(self) -> ConceptSpace:
        return SHAPES_SPACE

    def render(self, concept: Mapping[str, str], rng: np.random.Generator) -> Image.Image:
        return render_shape(concept, rng, self.config.image_size)


SHAPES_SPACE = ConceptSpace(
    class_attributes={
        "colour": ("red", "green", "blue", "yellow", "purple", "orange"),
        "shape": ("circle", "square", "triangle", "cross", "star", "diamond"),
    },
    nuisance_attributes={
        "size": ("small", "large"),
        "position": ("left", "right", "top", "bottom", "middle"),
    },
    shared_attributes=COUNT,
    caption_templates=(
        "a {colour} {shape}",
        "a {size} {colour} {shape}",
        "a {colour} {shape} {position}",
        "a picture of a {colour} {shape}",
        "a {size} {colour} {shape} {position}",
        "there is a {colour} {shape} {position}",
        "a {shape} that is {colour}",
        "a {size} {shape} coloured {colour}",
        "{colour} {shape}",
        "a {colour} {shape} with {count}",
        "{count} and a {colour} {shape}",
        "a {size} {colour} {shape} with {count}",
        "a picture of a {colour} {shape} and {count}",
    ),
    single_attribute_templates={
        "colour": ("a {colour} shape", "something {colour}", "a {size} {colour} thing", "a {colour} shape with {count}"),
        "shape": ("a {shape}", "a picture of a {shape}", "a {size} {shape}", "a {shape} with {count}"),
    },
    synonyms={
        "one": ("one dot",),
        "two": ("two dots",),
        "three": ("three dots",),
        "four": ("four dots",),
        "circle": ("circle", "disc"),
        "square": ("square", "box"),
        "cross": ("cross", "plus sign"),
        "diamond": ("diamond", "rhombus"),
        "large": ("large", "big"),
        "small": ("small", "little"),
        "left": ("on the left",),
        "right": ("on the right",),
        "top": ("at the top", "near the top"),
        "bottom": ("at the bottom", "near the bottom"),
        "middle": ("in the middle", "in the centre"),
    },
    prompt_templates=("a {}.", "a photo of a {}.", "a picture of a {}.", "an image of a {}."),
)

_RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 195),
    "orange": (245, 140, 25),
}
_OFFSETS = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1), "middle": (0, 0)}


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(math.cos(a), math.sin(a)) for a in np.linspace(math.pi / 4, 2 * math.pi + math.pi / 4, 4, endpoint=False)]
        pts = [(x * 0.95, y * 0.95) for x, y in pts]
    elif shape == "diamond":
        pts = [(0, -1.0), (0.65, 0), (0, 1.0), (-0.65, 0)]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in np.linspace(-math.pi / 2, 1.5 * math.pi, 3, endpoint=False)]
    elif shape == "star":
        pts = []
        for i in range(10):
            a = -math.pi / 2 + i * math.pi / 5
            rad = 1.0 if i % 2 == 0 else 0.42
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif shape == "cross":
        t = 0.33
        pts = [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t), (-t, -t)]
    else:
        raise ValueError(f"no polygon for shape '{shape}'")
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in pts]


def _draw_dots(draw: ImageDraw.ImageDraw, n: int, at_bottom: bool, canvas: int, rng: np.random.Generator) -> None:
    """``n`` light dots in a row along the top edge (the bottom one when the shape sits
    at the top), clear of the shape: the world's count, as an image shows it."""
    r, gap = canvas * 0.045, canvas * 0.13
    x = canvas * rng.uniform(0.08, 0.92 - 3 * 0.13 - 0.09)
    y = canvas * (0.92 if at_bottom else 0.08) + rng.normal(0, canvas * 0.005)
    grey = int(rng.integers(200, 256))
    for i in range(n):
        draw.ellipse([x + i * gap - r, y - r, x + i * gap + r, y + r], fill=(grey, grey, grey))


def render_shape(concept: Mapping[str, str], rng: np.random.Generator, size: int) -> Image.Image:
    """One coloured shape on a noisy background, with the concept's count of dots if it
    has one; every choice comes from ``rng``."""
    scale = 4  # draw large, downsample with antialiasing
    canvas = size * scale
    background = rng.integers(10, 90, size=3)
    img = Image.new("RGB", (canvas, canvas), tuple(int(c) for c in background))
    draw = ImageDraw.Draw(img)
    radius = canvas * (rng.uniform(0.15, 0.2) if concept["size"] == "small" else rng.uniform(0.24, 0.31))
    dx, dy = _OFFSETS[concept["position"]]
    shift = canvas * 0.5 - radius - canvas * 0.04
    cx = canvas / 2 + dx * shift * rng.uniform(0.7, 1.0) + rng.normal(0, canvas * 0.02)
    cy = canvas / 2 + dy * shift * rng.uniform(0.7, 1.0) + rng.normal(0, canvas * 0.02)
    colour = np.clip(np.array(_RGB[concept["colour"]]) + rng.integers(-20, 21, size=3), 0, 255)
    fill = tuple(int(c) for c in colour)
    shape = concept["shape"]
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, radius, rng.uniform(-0.25, 0.25)), fill=fill)
    if "count" in concept:
        _draw_dots(draw, COUNT["count"].index(concept["count"]) + 1, concept["position"] == "top", canvas, rng)
    img = img.resize((size, size), Image.Resampling.LANCZOS)
    pixels = np.asarray(img, dtype=np.float32) + rng.normal(0, 8.0, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
