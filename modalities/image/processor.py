"""The image modality's processor: decoding files and bytes with PIL, torchvision v2
transforms for training and evaluation, the random views of view-contrastive learning,
collation. No parameters: what data loader workers and evaluation sets hold."""

from __future__ import annotations

import io
import warnings
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn
from torchvision.transforms import v2

from modalities.base import InvalidSample, require_file, seeded_torch_rng, Processor
from modalities.image.config import ImageConfig

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


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


class ImageProcessor(Processor):
    """Raw images (a path, PIL image, HxWx3 array or tensor) to normalised samples.

    Shapes:
        sample: FloatTensor [3, S, S] normalised (S = image_size).
        batch: {"pixels": [B, 3, S, S]}.
    """

    file_extensions = IMAGE_EXTENSIONS

    def __init__(self, config: ImageConfig) -> None:
        super().__init__(config)
        size = config.image_size
        resample = v2.InterpolationMode.BICUBIC if config.interpolation == "bicubic" else v2.InterpolationMode.BILINEAR
        normalize = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(config.mean, config.std)]
        self.eval_transform = v2.Compose([v2.Resize(size, interpolation=resample, antialias=True), v2.CenterCrop(size), *normalize])
        if tuple(config.train_crop_scale) == (1.0, 1.0):
            self.train_transform = self.eval_transform
        else:
            self.train_transform = v2.Compose(
                [v2.RandomResizedCrop(size, scale=tuple(config.train_crop_scale), interpolation=resample, antialias=True),
                 *normalize]
            )
        views = config.views
        self.view_transform = self._view_transform(size, views.crop_scale)
        self.local_size = views.local_size if views.local_size is not None else size // 2
        if not 0 < self.local_size <= size:
            raise ValueError(f"views.local_size must be in [1, image_size={size}], got {self.local_size}")
        self.local_view_transform = self._view_transform(self.local_size, views.local_crop_scale)

    def _view_transform(self, size: int, scale: tuple[float, float]) -> v2.Compose:
        """The views' transforms: a crop of ``scale`` of the area resized to ``size``, flip,
        blur (kernel about a tenth of ``size``), jitter, channel shift."""
        views = self.config.views
        return v2.Compose([
            v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True),
            v2.RandomHorizontalFlip(views.flip),
            v2.RandomApply([v2.GaussianBlur(2 * (size // 20) + 1, sigma=tuple(views.blur_sigma))], p=views.blur),
            v2.ColorJitter(brightness=views.brightness, contrast=views.contrast, saturation=views.saturation, hue=views.hue),
            *([ChannelShift(views.channel_shift)] if views.channel_shift else []),
        ])

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
        return self._view(sample, rng, self.view_transform)

    def local_augment(self, sample: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """A local view (DINO's multi-crop): as ``augment``, but a crop from a share of
        ``views.local_crop_scale`` of the area resized to ``views.local_size`` (half of
        ``image_size`` by default).

        Shapes: [3, S, S] -> [3, L, L], L = local size.
        """
        return self._view(sample, rng, self.local_view_transform)

    def _view(self, sample: torch.Tensor, rng: np.random.Generator, transform: v2.Compose) -> torch.Tensor:
        mean = torch.tensor(self.config.mean).view(3, 1, 1)
        std = torch.tensor(self.config.std).view(3, 1, 1)
        pixels = (sample * std + mean).clamp(0, 1)
        with seeded_torch_rng(rng):
            view = transform(pixels)
        return (view - mean) / std

    def collate(self, samples: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"pixels": torch.stack(list(samples))}
