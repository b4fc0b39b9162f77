"""Any timm backbone by name (random init), as the image encoder: a ViT hides patches
with a mask token at its patch embedding (and can leave them out, MAE); a CNN whose
features are a map that divides the image hides them in its input pixels.

It starts from timm's own files too (``pretrained``): a checkpoint of a timm model (its
state dict, as ``torch.save`` or timm's trainer writes it, or safetensors), or the folder
``timm.create_model("local-dir:DIR", pretrained=True)`` reads (``config.json`` with the
architecture, its ``model_args`` and ``pretrained_cfg``, beside ``model.safetensors``:
what timm's ``save_for_hf`` and ``push_to_hf_hub`` write, and ``mmssl-export --format
timm``). The model's tensors become ``backbone.*``; its classifier is left out (the tower
is built with ``num_classes=0``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import nn

from mmssl.common.weights import read_weights
from modalities.base import ModalityOutput, PretrainedWeights
from modalities.image.config import ImageConfig
from modalities.image.encoder import ImageEncoder, PatchLayout

CONFIG_FILE = "config.json"
OPEN_CLIP_CONFIG = "open_clip_config.json"  # a folder with it is open_clip's, not timm's
# timm's preference among a local-dir folder's weights (timm.models._hub.load_state_dict_from_path),
# then the first file of a suffix, in its order
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".bin")


def read_timm_config(path: Path) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
    """(architecture, model_args, pretrained_cfg) of timm's local-dir folder, or None when
    ``path`` is no such folder (a file, an open_clip folder, a folder without a
    ``config.json`` naming an ``architecture``). Reads timm's legacy single-dict
    ``config.json`` too, as timm does.

    Raises:
        ValueError: its ``config.json`` is unreadable.
    """
    config = path / CONFIG_FILE
    if not path.is_dir() or (path / OPEN_CLIP_CONFIG).is_file() or not config.is_file():
        return None
    try:
        found = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{config} is unreadable: {exc}") from None
    if not isinstance(found, dict) or not isinstance(found.get("architecture"), str):
        return None  # another library's config.json
    pretrained_cfg = found.get("pretrained_cfg")
    if not isinstance(pretrained_cfg, dict):  # legacy: the pretrained_cfg is the whole file
        pretrained_cfg = {k: v for k, v in found.items() if k != "architecture"}
    if "num_classes" in found:
        pretrained_cfg = {**pretrained_cfg, "num_classes": found["num_classes"]}
    model_args = found.get("model_args") or {}
    if not isinstance(model_args, dict):
        raise ValueError(f"{config}: 'model_args' is no mapping")
    return found["architecture"], dict(model_args), dict(pretrained_cfg)


def timm_weights_file(folder: Path) -> Path:
    """The weights of timm's local-dir folder, as timm would pick them."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    for suffix in WEIGHT_SUFFIXES:
        files = sorted(folder.glob(f"*{suffix}"))
        if files:
            return files[0]
    raise ValueError(f"{folder} has timm's {CONFIG_FILE} but no weights ({', '.join(WEIGHT_FILES[:2])}, ...)")


def read_timm_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a timm checkpoint file: safetensors, or a torch file read with
    ``torch.load(weights_only=True)`` allowing what timm's trainer pickles beside the
    weights (its ``argparse.Namespace`` of arguments), as timm itself does; its
    ``last.pth.tar`` and ``model_best.pth.tar`` too. A trainer's ``state_dict`` entry is
    taken (not ``state_dict_ema``), and DDP's ``module.`` and torch.compile's
    ``_orig_mod.`` prefixes are taken off.

    Raises:
        ValueError: an unreadable file, saying why.
    """
    with torch.serialization.safe_globals([argparse.Namespace]):
        state = read_weights(path)
    for prefix in ("_orig_mod.", "module."):  # torch.compile around DDP, or DDP around it
        if state and all(n.startswith(prefix) for n in state):
            state = {n[len(prefix):]: t for n, t in state.items()}
    return state


def timm_folder_options(path: Path) -> dict[str, Any] | None:
    """The image options timm's local-dir folder decides, or None when ``path`` is none:
    ``tower: timm``, ``backbone`` (its architecture), ``backbone_args`` (its model_args
    less ``num_classes``, as the tower has no classifier, and ``in_chans``, which is 3),
    ``image_size`` (its model_args ``img_size``, else its pretrained_cfg ``input_size``),
    ``mean``, ``std``, ``interpolation``. Its ``crop_pct`` is not taken: mmssl resizes
    the shortest side to ``image_size`` and crops the centre square.

    Raises:
        ValueError: what mmssl's image modality cannot be (not RGB, not square, a resize
            neither bicubic nor bilinear).
    """
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    found = read_timm_config(path)
    if found is None:
        return None
    architecture, model_args, pretrained_cfg = found
    args = {k: v for k, v in model_args.items() if k != "num_classes"}
    input_size = list(pretrained_cfg.get("input_size") or (3, 224, 224))
    channels = args.pop("in_chans", input_size[0])
    if channels != 3 or input_size[0] != 3:
        raise ValueError(f"{path}: timm's {architecture!r} takes {channels}-channel images; mmssl's images are RGB")
    size = args.get("img_size", input_size[1:])
    size = size if isinstance(size, int) else size[0] if len(set(size)) == 1 else None
    if size is None:
        raise ValueError(f"{path}: input_size {input_size} (model_args img_size {args.get('img_size')!r}): mmssl's "
                         "images are square")
    interpolation = pretrained_cfg.get("interpolation") or "bicubic"
    if interpolation not in ("bicubic", "bilinear"):
        raise ValueError(f"{path}: pretrained_cfg interpolation {interpolation!r}: mmssl resizes bicubic or bilinear")
    mean, std = pretrained_cfg.get("mean") or IMAGENET_DEFAULT_MEAN, pretrained_cfg.get("std") or IMAGENET_DEFAULT_STD
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"{path}: pretrained_cfg mean {mean!r}, std {std!r}: mmssl's images are RGB")
    return {"tower": "timm", "backbone": architecture, "backbone_args": args, "image_size": int(size),
            "mean": tuple(float(v) for v in mean), "std": tuple(float(v) for v in std), "interpolation": interpolation}


class TimmImageEncoder(ImageEncoder):
    """``tower: timm``: ``timm.create_model(backbone, pretrained=False, **backbone_args)``."""

    def build_backbone(self, config: ImageConfig) -> tuple[nn.Module, int]:
        import timm

        try:
            backbone = timm.create_model(config.backbone, pretrained=False, num_classes=0, **config.backbone_args)
        except TypeError as exc:  # an argument the architecture does not take
            if not config.backbone_args:
                raise
            raise ValueError(f"timm's {config.backbone!r} does not take backbone_args {config.backbone_args} ({exc}); a "
                             "pretrained timm folder gives its model_args where the config leaves backbone_args out") from None
        return backbone, int(backbone.num_features)

    def pretrained_weights(self, path: Path) -> PretrainedWeights | None:
        """A timm model's tensors as ``backbone.*``, from timm's local-dir folder (its
        architecture must be ``backbone``) or a checkpoint file in timm's names; its
        classifier (the pretrained_cfg's ``classifier``) is left out. A file whose names
        are not timm's (a state dict of this encoder) is taken as it is, as a plain
        state-dict file; None for a folder that is not timm's. The encoder's mask parameter (masked image
        modeling), which no timm model has, keeps its initialisation.

        Raises:
            ValueError: a timm folder of another architecture, or unreadable files.
        """
        classifiers = (getattr(self.backbone, "pretrained_cfg", None) or {}).get("classifier")
        if path.is_dir():
            found = read_timm_config(path)
            if found is None:
                return None
            architecture, _, pretrained_cfg = found
            if architecture.split(".")[0] != self.config.backbone.split(".")[0]:
                raise ValueError(f"{path} holds timm's {architecture!r}, but 'backbone' is {self.config.backbone!r}: "
                                 "leave backbone (and backbone_args) out to take the folder's")
            classifiers = pretrained_cfg.get("classifier", classifiers)
            file, source = timm_weights_file(path), f"the timm model {architecture!r} of {path}"
        else:
            file, source = path, f"the timm checkpoint {path}"
        state = read_timm_checkpoint(file)
        own = self.state_dict()
        as_timm = sum(f"backbone.{n}" in own for n in state)
        if not path.is_dir() and (as_timm == 0 or sum(n in own for n in state) > as_timm):
            return PretrainedWeights(state, str(path))  # not in timm's names: a plain state dict, as the core reads it
        dropped = set()
        for name in [classifiers] if isinstance(classifiers, str) else classifiers or ():
            dropped |= {f"{name}.{p}" for p in ("weight", "bias") if f"backbone.{name}.{p}" not in own}
        tensors = {f"backbone.{n}": t for n, t in state.items() if n not in dropped}
        tensors.update({n: t for n, t in own.items() if n in ("mask_token", "mask_value")})
        return PretrainedWeights(tensors, source)

    def encode(self, pixels: torch.Tensor) -> ModalityOutput:
        features = self.backbone.forward_features(pixels)
        pooled = self.backbone.forward_head(features, pre_logits=True)
        if features.ndim == 4:
            tokens = rearrange(features, "b c h w -> b (h w) c")
        else:  # a ViT's sequence: the patch tokens, without the class (and register) tokens
            tokens = features[:, getattr(self.backbone, "num_prefix_tokens", 0) :]
        return ModalityOutput(pooled=pooled, tokens=tokens)

    def patch_layout(self) -> PatchLayout | None:
        """A VisionTransformer without patch dropout: its patch grid, hooks on its patch
        embedding and on the patch dropout after the positions. A CNN: its feature map's
        cells, if they divide the image."""
        from timm.models.vision_transformer import VisionTransformer

        backbone, size = self.backbone, self.config.image_size
        if isinstance(backbone, VisionTransformer) and isinstance(backbone.patch_drop, nn.Identity):
            built = backbone.patch_embed.img_size
            if built is not None and tuple(built) != (size, size):
                raise ValueError(
                    f"image backbone '{self.config.backbone}' is built for {tuple(built)} images but image_size is "
                    f"{size}: set modalities.<image>.backbone_args.img_size: {size}"
                )
            return PatchLayout(
                grid=tuple(backbone.patch_embed.grid_size), patch=tuple(backbone.patch_embed.patch_size),
                embedding=backbone.patch_embed, after_positions=backbone.patch_drop, width=backbone.embed_dim,
                prefix_tokens=backbone.num_prefix_tokens,
            )
        cells = self._feature_map_cells()
        if cells is None or size % cells[0] or size % cells[1]:
            return None
        return PatchLayout(grid=cells, patch=(size // cells[0], size // cells[1]))

    def _feature_map_cells(self) -> tuple[int, int] | None:
        """(h, w) of the tower's feature map [C, h, w] at image_size, or None when its
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

    def switch_checkpointing(self, enable: bool) -> None:
        """timm's ``set_grad_checkpointing`` (its stages or blocks under non-reentrant
        ``torch.utils.checkpoint``)."""
        try:
            self.backbone.set_grad_checkpointing(enable)
        except (AssertionError, NotImplementedError) as exc:  # timm models without it assert
            raise NotImplementedError(f"image backbone '{self.config.backbone}' has no activation checkpointing: {exc}") from None
