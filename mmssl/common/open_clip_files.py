"""Reading open_clip's files: a ``local-dir`` folder (``open_clip_config.json`` with
``model_cfg`` and ``preprocess_cfg``, weights in ``open_clip_model.safetensors`` or its
kin, in open_clip's order of preference), a state-dict file of a CLIP model, or a
checkpoint of open_clip's trainer (``epoch_N.pt``: ``state_dict``, ``module.`` prefixes).
Tensors come back in ``open_clip.CLIP``'s layout (``visual.*``, ``token_embedding.weight``,
``transformer.*``, ``text_projection``, ``logit_scale`` ...): a ``CustomTextCLIP``'s
``text.`` prefix is taken off. The image and text modalities map them onto their towers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mmssl.common.weights import read_weights

CONFIG_FILE = "open_clip_config.json"
# open_clip's preference among a local-dir folder's weights (factory._find_checkpoint_in_dir)
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")
BPE_VOCAB = 49408  # open_clip's SimpleTokenizer
TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection", "attn_mask")


def read_open_clip_config(path: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(model_cfg, preprocess_cfg) of a local-dir folder (or its config file), or None
    when ``path`` is neither.

    Raises:
        ValueError: the config file is unreadable or has no ``model_cfg``.
    """
    config = path / CONFIG_FILE if path.is_dir() else path if path.name == CONFIG_FILE else None
    if config is None or not config.is_file():
        return None
    try:
        found = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{config} is unreadable: {exc}") from None
    if not isinstance(found, dict) or not isinstance(found.get("model_cfg"), dict):
        raise ValueError(f"{config} has no 'model_cfg' (open_clip's local-dir layout)")
    return found["model_cfg"], found.get("preprocess_cfg") or {}


def weights_file(folder: Path) -> Path:
    """The weights of a local-dir folder, as open_clip would pick them."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ValueError(f"{folder} has {CONFIG_FILE} but no weights ({', '.join(WEIGHT_FILES[:3])}, ...)")


def read_open_clip_state(path: Path) -> dict[str, torch.Tensor] | None:
    """An open_clip model's tensors in CLIP's layout from a local-dir folder or a file;
    None when ``path`` holds no open_clip model (a folder of another layout, a file whose
    tensors are not a CLIP model's). The image and text towers each ask for it: build the
    model inside ``mmssl.common.weights.shared_reads()`` to read the file once.

    Raises:
        ValueError: an open_clip folder or a file that cannot be read.
    """
    if path.is_dir():
        if read_open_clip_config(path) is None:
            return None
        path = weights_file(path)
    state = read_weights(path)
    if any(n.startswith("text.") for n in state) and not any(n.startswith("token_embedding.") for n in state):
        state = {(n[len("text."):] if n.startswith("text.") else n): t for n, t in state.items()}  # CustomTextCLIP
    if not any(n.startswith("visual.") for n in state) and "token_embedding.weight" not in state:
        return None
    return state


def text_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text tower's tensors of a CLIP state dict (its projection and scale apart)."""
    return {n: t for n, t in state.items() if n.startswith(TEXT_KEYS) and n not in ("text_projection", "attn_mask")}
