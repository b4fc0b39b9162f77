"""A whole trained model read from local files, frozen, for objectives that learn from
one (``distill``'s teacher). They receive ``load_frozen_model`` from the model builder
(``load_model=`` of ``Objective.__init__``), as they receive processors, so no objective
imports the core.

What it reads:

- an mmssl run directory (its latest ``checkpoints/step_*``) or checkpoint directory,
  whole weights (``model.safetensors``) or a sharded run's (``sharded/``): the model its
  ``config.yaml`` builds, with those weights and its tokenizer settings checked, as
  ``mmssl.load_checkpoint`` reads it; ``weights="ema"``: the moving average of its
  weights (``ema.safetensors``, a run trained with ``train.ema``) instead;
- an open_clip ``local-dir`` folder (``open_clip_config.json``; ``mmssl-export --format
  open_clip`` writes one): an ``image`` and a ``text`` modality read from it, paired by one
  contrastive objective ``image_text`` that holds its projections and logit scale.

The model comes back in eval mode with no parameter requiring a gradient. Nothing is
downloaded (``local_path``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import yaml

from mmssl.common.open_clip_files import read_open_clip_config
from mmssl.common.sharded_files import is_sharded
from mmssl.common.weights import describe_differences, fit_scalar_shapes, tensor_differences
from mmssl.config import ConfigError, RunConfig, config_from_dict, read_yaml
from mmssl.interop.pretrained import WEIGHTS, PretrainedError, local_path, read_file, read_sharded

CONFIG = "config.yaml"
TOKENIZER = "tokenizer.json"
EMA_WEIGHTS = "ema.safetensors"  # as mmssl.train.checkpoint writes it (train.ema)
TeacherWeights = Literal["weights", "ema"]
_LOADING: list[Path] = []  # the folders being read now: a teacher whose config names one of them again loops


def load_frozen_model(value: str, where: str, build: Callable[..., Any], weights: TeacherWeights = "weights") -> Any:
    """The frozen model at ``value`` (see the module docstring), built by ``build``
    (``mmssl.model.build_model``, handed in: the builder hands this function to objectives);
    ``weights="ema"``: a checkpoint's moving average of its weights.

    Raises:
        PretrainedError: naming ``where`` (the config key) and the path: it does not exist,
            is a download, holds neither layout, is unreadable, does not fit its config, or
            has no moving average where ``weights="ema"`` asks for one.
    """
    if weights not in ("weights", "ema"):
        raise PretrainedError(f"{where}: weights must be 'weights' or 'ema', got {weights!r}")
    path = local_path(value, where)
    try:
        open_clip = read_open_clip_config(path)
    except ValueError as exc:
        raise PretrainedError(f"{where}: {exc}") from None
    source = path if open_clip is not None else checkpoint_of(path, where)
    if source.resolve() in _LOADING:
        raise PretrainedError(f"{where}: {source} is being read already: its config (or its teacher's) names it again")
    _LOADING.append(source.resolve())
    try:
        with torch.random.fork_rng():  # building seeds torch: the caller's generator (a student's build) goes on as before
            if open_clip is not None:
                if weights == "ema":
                    raise PretrainedError(f"{where}: {path} is an open_clip folder, one set of weights: no moving "
                                          f"average to read (teacher_weights: ema is for mmssl runs with train.ema)")
                model = build(open_clip_run_config(path, open_clip[0], where), pretrained=True)
            else:
                model = build(run_config(source, where), pretrained=False)  # the checkpoint holds the weights it trained
                load_whole(model, source, where, ema=weights == "ema")
    except ConfigError as exc:
        if isinstance(exc, PretrainedError):
            raise
        raise PretrainedError(f"{where}: the model at {source}: {exc}") from None
    finally:
        _LOADING.pop()
    model.requires_grad_(False)
    return model.eval()


def frozen_model_loader(build: Callable[..., Any]) -> Callable[..., Any]:
    """``load_frozen_model`` for the objectives of one model: each folder (and set of
    weights) is read once and its model shared (three objectives distilling from one
    teacher hold one copy)."""
    read: dict[tuple[Path, str], Any] = {}

    def load(value: str, where: str, weights: TeacherWeights = "weights") -> Any:
        key = (Path(value).expanduser().resolve(), weights)
        if key not in read:
            read[key] = load_frozen_model(value, where, build, weights)
        return read[key]

    return load


def checkpoint_of(path: Path, where: str) -> Path:
    """``path`` itself where it is a checkpoint directory, else a run directory's latest
    ``checkpoints/step_*``."""
    if is_checkpoint(path):
        return path
    steps = sorted((int(p.name[len("step_"):]), p) for p in (path / "checkpoints").glob("step_*")
                   if p.name[len("step_"):].isdigit() and is_checkpoint(p))
    if not steps:
        raise PretrainedError(
            f"{where}: {path} holds no model: expected an mmssl run directory (checkpoints/step_*), a checkpoint "
            f"directory ({CONFIG} beside {WEIGHTS} or sharded/) or an open_clip local-dir folder (open_clip_config.json)"
        )
    return steps[-1][1]


def is_checkpoint(path: Path) -> bool:
    return ((path / WEIGHTS).is_file() or is_sharded(path)) and (path / CONFIG).is_file()


def run_config(checkpoint: Path, where: str) -> RunConfig:
    """The run config a checkpoint was saved with."""
    try:
        raw = read_yaml((checkpoint / CONFIG).read_text(encoding="utf-8"))
        return config_from_dict(raw if isinstance(raw, dict) else {})
    except (OSError, ValueError, yaml.YAMLError) as exc:  # ConfigError is a ValueError
        raise PretrainedError(f"{where}: {checkpoint / CONFIG} is unreadable: {' '.join(str(exc).split())}") from None


def open_clip_run_config(path: Path, model_cfg: dict[str, Any], where: str) -> RunConfig:
    """An image-text CLIP read from an open_clip folder: the towers' shapes and the image
    preprocessing come from the folder (``Modality.options_from_pretrained``)."""
    if not isinstance(model_cfg.get("embed_dim"), int):
        raise PretrainedError(f"{where}: {path}/open_clip_config.json has no integer model_cfg.embed_dim")
    return config_from_dict({
        "name": f"open_clip:{path.name}",
        "modalities": {"image": {"pretrained": str(path)}, "text": {"pretrained": str(path)}},
        "objectives": {"image_text": {"type": "contrastive", "modalities": ["image", "text"],
                                      "embed_dim": model_cfg["embed_dim"], "head": "linear"}},
    })


def load_whole(model: Any, checkpoint: Path, where: str, ema: bool = False) -> None:
    """Every weight of ``checkpoint`` (``ema``: its moving average) into ``model``, after
    comparing names and shapes, and its tokenizer settings checked against the model's
    processors."""
    if ema:
        if not (checkpoint / EMA_WEIGHTS).is_file():
            raise PretrainedError(f"{where}: {checkpoint} has no moving average of its weights ({EMA_WEIGHTS}): "
                                  f"it was trained without train.ema; read its weights (teacher_weights: weights)")
        saved = read_file(checkpoint / EMA_WEIGHTS, where)
    else:
        saved = read_sharded(checkpoint, where) if is_sharded(checkpoint) else read_file(checkpoint / WEIGHTS, where)
    own = model.state_dict()
    state = fit_scalar_shapes(saved, {name: tuple(t.shape) for name, t in own.items()})
    differences = tensor_differences({name: tuple(t.shape) for name, t in state.items()}, own)
    if any(differences):
        raise PretrainedError(
            f"{where}: {checkpoint} does not fit the model its {CONFIG} builds: {describe_differences(*differences)}"
        )
    # not strict: a name the file lacks shares memory with one it holds (tied weights)
    model.load_state_dict(state, strict=False)
    tokenizer = checkpoint / TOKENIZER
    try:
        extras = json.loads(tokenizer.read_text(encoding="utf-8")) if tokenizer.is_file() else {}
        for key, extra in extras.items():
            if key in model.processors:
                model.processors[key].check_extra_state(extra)
    except (OSError, ValueError) as exc:
        raise PretrainedError(f"{where}: {tokenizer}: {exc}") from None
