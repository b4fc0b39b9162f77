"""An image encoder of a run on a timm tower as timm's ``local-dir`` folder, which
``timm.create_model("local-dir:DIR", pretrained=True)`` loads (strictly), giving mmssl's
pooled features (the inverse of ``TimmImageEncoder.pretrained_weights``):

    model.safetensors    the tower's timm model as it is (``backbone.*`` without the
                         prefix); no classifier, and no mask parameter (masked image
                         modeling's, which timm's model has no place for)
    config.json          architecture (the ``backbone``), num_classes 0, num_features,
                         global_pool, model_args (``backbone_args``, where set), and a
                         pretrained_cfg with mmssl's preprocessing: input_size
                         [3, image_size, image_size], mean, std, interpolation, crop_pct
                         1.0 and crop_mode center (the shortest side resized to
                         image_size, the centre square), first_conv and classifier

What timm cannot take is refused in one line naming the option.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save_file

CONFIG_FILE = "config.json"
WEIGHTS = "model.safetensors"
MASK_PARAMETERS = ("mask_token", "mask_value")  # the encoder's own, around the timm model


def timm_image(loaded: Any, modalities: Sequence[str] | None) -> str:
    """The image modality to write (``loaded``: an ``mmssl.train.checkpoint.Pretrained``):
    the one named in ``modalities``, else the only image modality on a timm tower.

    Raises:
        ValueError: none or several such modalities, or the chosen one is not on a timm
            tower, naming the option.
    """
    specs = loaded.config.modalities
    if modalities:
        images = [k for k in modalities if specs[k].type == "image"]
        if len(images) != 1:
            raise ValueError(f"--modalities {' '.join(modalities)}: a timm export writes one image modality; name one "
                             f"(image modalities: {', '.join(k for k, s in specs.items() if s.type == 'image') or 'none'})")
        key = images[0]
    else:
        images = [k for k, s in specs.items() if s.type == "image"]
        on_timm = [k for k in images if specs[k].options.tower == "timm"]
        if len(on_timm) > 1:
            raise ValueError(f"image modalities {', '.join(on_timm)} are on timm towers: name one with --modalities")
        if not images:
            raise ValueError("the run has no image modality: nothing to write as a timm model")
        key = (on_timm or images)[0]
    tower = specs[key].options.tower
    if tower != "timm":
        raise ValueError(f"'modalities.{key}.tower' is {tower!r}: a timm export needs tower: timm"
                         + (" (an open_clip tower exports with --format open_clip)" if tower == "open_clip" else ""))
    return key


def write_timm(loaded: Any, folder: Path, modalities: Sequence[str] | None = None) -> str:
    """Write the image encoder into ``folder`` (``config.json``, ``model.safetensors``);
    returns its modality key."""
    key = timm_image(loaded, modalities)
    options = loaded.config.modalities[key].options
    encoder = loaded.model.encoders[key]
    backbone = encoder.backbone
    state: dict[str, torch.Tensor] = {}
    for name, tensor in encoder.state_dict().items():
        if name.startswith("backbone."):
            state[name[len("backbone."):]] = tensor.detach().contiguous().clone()
        elif name not in MASK_PARAMETERS:
            raise ValueError(f"'modalities.{key}': its encoder holds {name!r} outside the timm model; timm has no place for it")
    try:
        model_args = json.loads(json.dumps(dict(options.backbone_args)))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"'modalities.{key}.backbone_args' cannot be written to timm's config.json: {exc}") from None
    base = dict(getattr(backbone, "pretrained_cfg", None) or {})
    pool = getattr(backbone, "global_pool", None)
    pool = pool if isinstance(pool, str) else getattr(pool, "pool_type", None)
    size = int(options.image_size)
    pretrained_cfg = {
        "input_size": [3, size, size], "fixed_input_size": bool(base.get("fixed_input_size", False)),
        "interpolation": options.interpolation, "crop_pct": 1.0, "crop_mode": "center",
        "mean": [float(v) for v in options.mean], "std": [float(v) for v in options.std], "num_classes": 0,
        **{k: base[k] for k in ("first_conv", "classifier") if base.get(k) is not None},
    }
    config: dict[str, Any] = {"architecture": str(base.get("architecture") or options.backbone.split(".")[0]),
                              "num_classes": 0, "num_features": int(encoder.embed_dim)}
    if isinstance(pool, str) and pool:
        config["global_pool"] = pool
    if model_args:
        config["model_args"] = model_args
    config["pretrained_cfg"] = pretrained_cfg
    save_file(state, str(folder / WEIGHTS))
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    return key
