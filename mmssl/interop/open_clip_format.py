"""An image–text pair of a run as an open_clip model: the ``local-dir`` folder that
``open_clip.create_model_and_transforms("local-dir:DIR")`` and
``open_clip.get_tokenizer("local-dir:DIR")`` load (strictly), giving mmssl's embeddings.

The mapping (the inverse of the towers' ``pretrained_weights``):

    visual.*                 the image encoder's open_clip ViT tower (``backbone.*``)
    visual.proj  [w, E]      backbone.proj [w, w] @ head.weight.T [w, E]: the tower's own
                             projection composed with the objective's linear image head
    token_embedding          the text tower's rows of open_clip's BPE vocabulary (mmssl's
                             <mask> and <pad> rows are left out)
    positional_embedding, transformer.*, ln_final.*   the text tower as it is
    text_projection [w, E]   the objective's linear text head, transposed
    logit_scale (logit_bias) the objective's, in open_clip's shape (0-d; mmssl's is [1])
    model_cfg                embed_dim, quick_gelu, the tower's vision_cfg, text_cfg
    preprocess_cfg           size, mean, std, interpolation, resize_mode shortest

What open_clip's CLIP cannot express is refused in one line naming the option.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from mmssl.common.open_clip_files import BPE_VOCAB, CONFIG_FILE
from mmssl.common.weights import fit_scalar_shapes
from mmssl.train.checkpoint import Pretrained

WEIGHTS = "open_clip_model.safetensors"


class ExportError(ValueError):
    """The run cannot be written in the asked format; names the option that stops it."""


def image_text_pair(loaded: Pretrained, modalities: list[str] | None) -> tuple[str, str, str]:
    """(objective, image key, text key): the first contrastive objective (config order)
    pairing an image modality on an open_clip tower with a text modality, among
    ``modalities`` if given."""
    config = loaded.config
    for name, objective in loaded.model.objectives.items():
        keys = list(getattr(objective, "modalities", ()))
        if len(keys) != 2 or not hasattr(objective, "logit_scale") or not isinstance(getattr(objective, "heads", None), nn.ModuleDict):
            continue
        types = {config.modalities[k].type: k for k in keys}
        if set(types) == {"image", "text"} and (modalities is None or set(keys) <= set(modalities)):
            image = types["image"]
            if config.modalities[image].options.tower != "open_clip":
                raise ExportError(f"'modalities.{image}.tower' is {config.modalities[image].options.tower!r}: an open_clip "
                                  "export needs tower: open_clip (a timm tower exports with --format timm)")
            return name, image, types["text"]
    raise ExportError("no contrastive objective pairs an image modality with a text modality"
                      + (f" among {modalities}" if modalities else "") + ": nothing to write as an open_clip model")


def open_clip_scalar_shape() -> tuple[int, ...]:
    """The shape of ``logit_scale`` and ``logit_bias`` in the CLIP that open_clip builds
    from the model_cfg an export writes (no ``nonscalar_logit_scale``): 0-d in open_clip
    3.3, [1] in one whose default is nonscalar. mmssl holds them as [1] (FSDP2 shards no
    0-d parameter); open_clip loads the file strictly, so it gets its own shape."""
    import inspect

    from open_clip.model import CLIP

    option = inspect.signature(CLIP.__init__).parameters.get("nonscalar_logit_scale")
    return (1,) if option is not None and option.default is True else ()


def write_open_clip(loaded: Pretrained, folder: Path, modalities: list[str] | None = None) -> dict[str, Any]:
    """Write the pair into ``folder`` (``open_clip_config.json``, ``open_clip_model.safetensors``);
    returns the model_cfg."""
    name, image, text = image_text_pair(loaded, modalities)
    config, model = loaded.config, loaded.model
    objective = model.objectives[name]
    image_cfg, text_cfg = config.modalities[image].options, config.modalities[text].options
    if getattr(objective.config, "head", "linear") != "linear":
        raise ExportError(f"'objectives.{name}.head' is {objective.config.head!r}: open_clip's projections are linear")
    if text_cfg.attention != "causal":
        raise ExportError(f"'modalities.{text}.attention' is {text_cfg.attention!r}: open_clip's text tower is causal")
    if text_cfg.pool != "eos":
        raise ExportError(f"'modalities.{text}.pool' is {text_cfg.pool!r}: open_clip pools the end-of-text token (pool: eos)")
    if text_cfg.quick_gelu != image_cfg.quick_gelu:
        raise ExportError(f"'modalities.{image}.quick_gelu' and 'modalities.{text}.quick_gelu' differ: open_clip has one")
    tower = model.encoders[image].backbone
    own_proj = getattr(tower, "proj", None)
    if not isinstance(own_proj, torch.Tensor):
        raise ExportError(f"'modalities.{image}.backbone': the open_clip export maps ViT towers with a projection")
    heads = objective.heads
    state: dict[str, torch.Tensor] = {}
    for key, tensor in model.encoders[image].state_dict().items():
        state["visual." + key[len("backbone."):]] = tensor
    state["visual.proj"] = own_proj.detach() @ heads[image].weight.detach().T
    for key, tensor in model.encoders[text].state_dict().items():
        state[key[len("tower."):]] = tensor
    state["token_embedding.weight"] = state["token_embedding.weight"][:BPE_VOCAB]
    state["text_projection"] = heads[text].weight.detach().T
    model_cfg: dict[str, Any] = {
        "embed_dim": int(heads[image].weight.shape[0]), "quick_gelu": bool(text_cfg.quick_gelu),
        "vision_cfg": dict(model.encoders[image].vision_cfg),
        "text_cfg": {"context_length": text_cfg.context_length, "vocab_size": BPE_VOCAB, "width": text_cfg.width,
                     "heads": text_cfg.heads, "layers": text_cfg.layers, "mlp_ratio": text_cfg.mlp_ratio},
    }
    scalars = {"logit_scale": objective.logit_scale.detach()}
    if getattr(objective, "logit_bias", None) is not None:
        scalars["logit_bias"] = objective.logit_bias.detach()
        model_cfg["init_logit_bias"] = float(objective.logit_bias)
    state.update(fit_scalar_shapes(scalars, dict.fromkeys(scalars, open_clip_scalar_shape())))
    preprocess = {"size": image_cfg.image_size, "mean": list(image_cfg.mean), "std": list(image_cfg.std),
                  "interpolation": image_cfg.interpolation, "resize_mode": "shortest"}
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(folder / WEIGHTS))
    (folder / CONFIG_FILE).write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}, indent=2),
                                      encoding="utf-8")
    return model_cfg
