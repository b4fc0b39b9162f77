"""Images: any timm backbone by name, or an open_clip vision tower; shapes for the world."""

from __future__ import annotations

import io
import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
from einops import rearrange, repeat
from PIL import Image, ImageDraw, UnidentifiedImageError
from torch import nn
from torchvision.transforms import v2

from modalities.base import (
    COUNT,
    ConceptSpace,
    InvalidSample,
    Modality,
    ModalityOutput,
    keep_norm_statistics_on_recompute,
    require_file,
    seeded_torch_rng,
)

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


class ChannelShift(nn.Module):
    """Adds one offset drawn uniformly from [-shift, shift] per channel to every pixel of
    a [C, H, W] image in [0, 1] (clamped), from torch's generator. No library has it
    (albumentations' RGBShift is the same idea)."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        if not 0 <= shift <= 1:
            raise ValueError(f"views.channel_shift must be in [0, 1] (a share of the pixel range), got {shift}")
        self.shift = shift

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        offset = (torch.rand(pixels.shape[0], 1, 1) * 2 - 1) * self.shift
        return (pixels + offset).clamp(0, 1)


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
        self._init_patches()
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
            *([ChannelShift(views.channel_shift)] if views.channel_shift else []),
        ])

    # --- data ---------------------------------------------------------------------
    def load(self, path: str) -> Image.Image:
        require_file(str(path))
        return self._decode(path, str(path))

    def load_bytes(self, data: bytes, name: str) -> Image.Image:
        return self._decode(io.BytesIO(data), name)

    @staticmethod
    def _decode(source: Any, where: str) -> Image.Image:
        try:
            with warnings.catch_warnings():
                # over Image.MAX_IMAGE_PIXELS PIL only warns (it refuses at twice that):
                # refuse before decoding, as a decompression bomb would fill memory
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(source) as img:
                    img.load()  # decode now, so truncated files fail here and not in collate
                    return img.convert("RGB")
        except FileNotFoundError:
            raise InvalidSample("image file not found", source=where) from None
        except UnidentifiedImageError:
            raise InvalidSample("not a readable image (cannot identify image file)", source=where) from None
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise InvalidSample(f"image too large: {exc}", source=where) from None
        except (OSError, ValueError, SyntaxError) as exc:  # PIL reports some bad headers as SyntaxError
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
    def forward(
        self, batch: Mapping[str, torch.Tensor], patch_mask: torch.Tensor | None = None, visible_only: bool = False
    ) -> ModalityOutput:
        """Encode a batch; ``patch_mask`` [B, N] (True = hidden) hides those patches of
        the grid (masked image modeling): a ViT sees its mask token in their place, a
        CNN its mask value in their pixels. ``visible_only`` (ViTs) leaves the hidden
        patches out of the sequence (MAE), so ``tokens`` are the visible patches'."""
        pixels = batch["pixels"]
        if patch_mask is not None or visible_only:
            pixels = self._start_hiding(pixels, patch_mask, visible_only)
        try:
            return self._encode(pixels)
        finally:
            self._hidden, self._visible_only = None, False

    def _encode(self, pixels: torch.Tensor) -> ModalityOutput:
        if self.config.tower == "open_clip":
            pooled, tokens = self.backbone(pixels)
            return ModalityOutput(pooled=pooled, tokens=tokens)
        features = self.backbone.forward_features(pixels)
        pooled = self.backbone.forward_head(features, pre_logits=True)
        if features.ndim == 4:
            tokens = rearrange(features, "b c h w -> b (h w) c")
        else:  # a ViT's sequence: the patch tokens, without the class (and register) tokens
            tokens = features[:, getattr(self.backbone, "num_prefix_tokens", 0) :]
        return ModalityOutput(pooled=pooled, tokens=tokens)

    # --- patches (PatchEncoder, VisiblePatchEncoder: masked image modeling) ------------
    def _init_patches(self) -> None:
        """Find how this tower can hide patches, and set the PatchEncoder members where
        it can. A ViT (timm's VisionTransformer; open_clip's without attentional pooling)
        without patch dropout takes a learned ``mask_token`` in place of a hidden patch's
        embedding, before the position embedding is added (SimMIM, BEiT), and can leave
        hidden patches out of the sequence (MAE), both through forward hooks on the
        library's own modules. A timm CNN whose features are a map [C, h, w] has that map
        as its grid and hides patches in its input (SimMIM's input-space variant), a
        learned ``mask_value`` per channel in their pixels. Other towers (open_clip's
        ResNets and timm wrappers) set none: they are no PatchEncoder."""
        from open_clip.transformer import VisionTransformer as OpenClipViT
        from timm.models.vision_transformer import VisionTransformer as TimmViT

        self._hidden: torch.Tensor | None = None  # the patch mask of the running forward call
        self._visible_only = False
        backbone, size = self.backbone, self.config.image_size
        if isinstance(backbone, TimmViT) and isinstance(backbone.patch_drop, nn.Identity):
            built = backbone.patch_embed.img_size
            if built is not None and tuple(built) != (size, size):
                raise ValueError(
                    f"image backbone '{self.config.backbone}' is built for {tuple(built)} images but image_size is "
                    f"{size}: set modalities.<image>.backbone_args.img_size: {size}"
                )
            grid, patch = tuple(backbone.patch_embed.grid_size), tuple(backbone.patch_embed.patch_size)
            self._prefix_tokens, self._embeddings_channels_first = backbone.num_prefix_tokens, False
            embedding, after_positions, width = backbone.patch_embed, backbone.patch_drop, backbone.embed_dim
        elif (
            isinstance(backbone, OpenClipViT) and backbone.attn_pool is None and backbone.pool_type in ("avg", "tok")
            and isinstance(backbone.patch_dropout, nn.Identity)
        ):
            grid, patch = tuple(backbone.grid_size), tuple(backbone.patch_size)
            self._prefix_tokens, self._embeddings_channels_first = 1, True  # conv1 gives [B, D, R, C]
            embedding, after_positions, width = backbone.conv1, backbone.patch_dropout, backbone.conv1.out_channels
        elif self.config.tower == "timm":
            cells = self._feature_map_cells()
            if cells is None or size % cells[0] or size % cells[1]:
                return
            grid, patch = cells, (size // cells[0], size // cells[1])
            self._mask_shape = (3,)  # mask_value: what hidden pixels read as (normalised), per channel
            embedding = None
        else:
            return
        self.grid: tuple[int, int] = grid
        self.patch_size: tuple[int, int] = patch
        self.patch_dim = 3 * patch[0] * patch[1]
        if embedding is not None:
            self._mask_shape = (width,)  # mask_token: a hidden patch's embedding
            self.encodes_visible_only = True
            embedding.register_forward_hook(self._hide_embeddings)
            after_positions.register_forward_hook(self._keep_visible)

    def enable_patch_masking(self) -> None:
        """Create the learned ``mask_token`` (ViT) or ``mask_value`` (CNN) that hidden
        patches take. The masked-patch objective calls it when it is built; an image
        modality no such objective uses has neither parameter, so its state dict is the
        one it had before masked image modeling existed and older checkpoints load."""
        name = "mask_token" if getattr(self, "encodes_visible_only", False) else "mask_value"
        if not hasattr(self, name):
            setattr(self, name, nn.Parameter(torch.zeros(self._mask_shape)))

    def _feature_map_cells(self) -> tuple[int, int] | None:
        """(h, w) of a timm tower's feature map [C, h, w] at image_size, or None when its
        features are no such map; one forward pass of a blank image in eval mode."""
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            with torch.no_grad():
                features = self.backbone.forward_features(torch.zeros(1, 3, self.config.image_size, self.config.image_size))
        finally:
            self.backbone.train(was_training)
        if features.ndim != 4 or features.shape[1] != self.embed_dim:
            return None
        return int(features.shape[2]), int(features.shape[3])

    def patchify(self, pixels: torch.Tensor) -> torch.Tensor:
        """Shapes: pixels [B, 3, H, W] -> patches [B, N, ph * pw * 3], row-major, each
        patch's values pixel by pixel (MAE's order)."""
        ph, pw = self.patch_size
        return rearrange(pixels, "b c (h p) (w q) -> b (h w) (p q c)", p=ph, q=pw)

    def patch_targets(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """What masked image modeling predicts: the batch's (normalised) pixels, patchified."""
        return self.patchify(batch["pixels"])

    def patch_padding_mask(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Images have no padding: [B, N] all False."""
        pixels = batch["pixels"]
        return torch.zeros(pixels.shape[0], self.grid[0] * self.grid[1], dtype=torch.bool, device=pixels.device)

    def call_defaults(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"patch_mask": self.patch_padding_mask(inputs)} if hasattr(self, "grid") else {}

    def _start_hiding(self, pixels: torch.Tensor, patch_mask: torch.Tensor | None, visible_only: bool) -> torch.Tensor:
        """Check a forward call's patch mask and arm the hiding: the pixels a CNN sees, or
        the ViT hooks' state."""
        if not hasattr(self, "grid"):
            raise ValueError(
                f"image tower '{self.config.backbone}' takes no patch masks: patches hide in timm and open_clip ViTs "
                "and in timm CNNs whose features are a map that divides image_size"
            )
        n = self.grid[0] * self.grid[1]
        if patch_mask is None or patch_mask.dtype != torch.bool or tuple(patch_mask.shape) != (pixels.shape[0], n):
            got = None if patch_mask is None else f"{patch_mask.dtype} {list(patch_mask.shape)}"
            raise ValueError(f"image patch_mask must be bool [batch, {n}] over the {self.grid} grid, got {got}")
        if visible_only:
            if not getattr(self, "encodes_visible_only", False):
                raise ValueError(f"image tower '{self.config.backbone}' hides patches in its input and cannot leave them out (visible_only)")
            counts = patch_mask.sum(1)
            if not bool((counts == counts[0]).all()):
                raise ValueError(f"visible_only needs the same number of hidden patches in every sample, got {counts.tolist()}")
        if not hasattr(self, "mask_token" if getattr(self, "encodes_visible_only", False) else "mask_value"):
            raise ValueError(
                f"image modality '{self.key}' has no learned mask yet: call enable_patch_masking() when the model is "
                "built (the masked_image objective does), so the optimizer and checkpoints include it"
            )
        if not getattr(self, "encodes_visible_only", False):  # a CNN: hidden in the input
            hidden = repeat(patch_mask, "b (h w) -> b 1 (h p) (w q)", h=self.grid[0], p=self.patch_size[0], q=self.patch_size[1])
            return torch.where(hidden, self.mask_value.view(1, 3, 1, 1).to(pixels.dtype), pixels)
        self._hidden, self._visible_only = patch_mask, visible_only
        return pixels

    def _hide_embeddings(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        """Forward hook on a ViT's patch embedding: the mask token in place of hidden
        patches' embeddings (timm: [B, N, D] or [B, R, C, D]; open_clip: [B, D, R, C]).
        With ``visible_only`` they are left out later instead (``_keep_visible``)."""
        if self._hidden is None or self._visible_only:
            return None
        if self._embeddings_channels_first:
            hidden, token = self._hidden.view(-1, 1, *self.grid), self.mask_token.view(1, -1, 1, 1)
        else:
            hidden, token = self._hidden.view(*output.shape[:-1], 1), self.mask_token
        return torch.where(hidden, token.to(output.dtype), output)

    def _keep_visible(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        """Forward hook on the module after a ViT's position embedding: with
        ``visible_only``, the class (and register) tokens and the visible patches' tokens.
        Shapes: [B, prefix + N, D] -> [B, prefix + N - M, D]."""
        if not self._visible_only:
            return None
        prefix, patches = output[:, : self._prefix_tokens], output[:, self._prefix_tokens :]
        visible = patches[~self._hidden].view(output.shape[0], -1, output.shape[-1])
        return torch.cat([prefix, visible], 1)

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
