"""Pretrained encoder weights from local files: ``modalities.<key>.pretrained: PATH``.

The encoder reads the layouts of its peers first (``Encoder.pretrained_weights``: open_clip
for the image and text towers, timm for timm image towers); then, for any modality
(plugins too):

- an encoder export of ``mmssl-export --format state_dict`` (a folder with
  ``mmssl_encoder.json`` and ``model.safetensors``, or the export's root folder holding
  one such folder per modality: the one named like this modality, else the only one of
  its type);
- an mmssl checkpoint directory (``model.safetensors``, or a sharded run's
  ``sharded/``, beside ``config.yaml``): the tensors of ``encoders.<key>``;
- a state-dict file (``.safetensors``, or ``.pt``/``.pth``/``.bin`` read with
  ``torch.load(weights_only=True)``; a ``state_dict`` entry and ``module.`` prefixes, as
  trainers write them, are taken apart).

Tensors are matched by name and shape before anything is loaded: what does not fit is
one error naming the first few of each kind with their counts, or, with
``pretrained_strict: false``, left at the model's own initialisation with the counts
logged. Nothing is downloaded: a hub name is refused saying how to point at local files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from mmssl.common.sharded_files import full_weights, is_sharded
from mmssl.common.weights import describe_differences, fit_scalar_shapes, read_weights, tensor_differences
from mmssl.config import ConfigError, ModalitySpec
from modalities.base import PretrainedWeights

log = logging.getLogger(__name__)

EXPORT_META = "mmssl_encoder.json"  # beside the weights of an encoder export
WEIGHTS = "model.safetensors"
EXPORT_FORMAT = "mmssl-encoder"
HUB_PREFIXES = ("hf-hub:", "hf_hub:", "http://", "https://", "s3://", "gs://")


class PretrainedError(ConfigError):
    """A ``pretrained`` file that cannot be read into its encoder; names the key and the file."""


def load_pretrained(model: Any, key: str, specs: Mapping[str, ModalitySpec]) -> None:
    """Load ``spec.pretrained`` into ``model.encoders[key]``; a projection into a shared
    space and a logit scale the file holds go to the objective that pairs the modality
    (``pairing_objective``). What did not fit is logged (``pretrained_strict: false``).

    Raises:
        PretrainedError: naming ``modalities.<key>.pretrained``: no such file, a hub name,
            a file of another modality, or (``pretrained_strict``) tensors that do not fit.
    """
    spec = specs[key]
    where = f"'modalities.{key}.pretrained'"
    path = local_path(spec.pretrained, where)
    weights = read_pretrained(model.encoders[key], path, key, spec, where)
    load_tensors(model.encoders[key], weights, key, spec, path, where)
    if weights.projection is not None or weights.logit_scale is not None:
        give_to_objective(model, key, specs, weights, where)


def read_pretrained(encoder: nn.Module, path: Path, key: str, spec: ModalitySpec, where: str) -> PretrainedWeights:
    """The encoder's weights at ``path``: mmssl's own layouts, a peer's layout the encoder
    knows, or a plain state-dict file."""
    if path.is_dir():
        export = find_export(path, key, spec, where)
        if export is not None:
            return PretrainedWeights(read_file(export / WEIGHTS, where), f"the {spec.type} encoder export {export}")
        if ((path / WEIGHTS).is_file() or is_sharded(path)) and (path / "config.yaml").is_file():
            prefix = f"encoders.{key}."
            saved = read_sharded(path, where) if is_sharded(path) else read_file(path / WEIGHTS, where)
            state = {n[len(prefix):]: t for n, t in saved.items() if n.startswith(prefix)}
            if not state:
                raise PretrainedError(f"{where}: the checkpoint {path} has no encoder '{key}'")
            return PretrainedWeights(state, f"encoder '{key}' of the checkpoint {path}")
    try:
        weights = encoder.pretrained_weights(path)
    except ValueError as exc:
        raise PretrainedError(f"{where}: {exc}") from None
    if weights is not None:
        return weights
    if path.is_dir():
        raise PretrainedError(
            f"{where}: {path} is a folder mmssl cannot read weights from: expected an mmssl-export folder "
            f"({EXPORT_META} + {WEIGHTS}), an mmssl checkpoint directory, or a layout the {spec.type} encoder "
            "reads (open_clip's local-dir folder for image and text towers, a timm folder for timm towers)"
        )
    return PretrainedWeights(read_file(path, where), str(path))


def load_tensors(encoder: nn.Module, weights: PretrainedWeights, key: str, spec: ModalitySpec, path: Path,
                 where: str) -> None:
    """Load ``weights.tensors`` after comparing them with the encoder's by name and shape
    (a value saved 0-d where the encoder holds it as [1], or the other way round, fits:
    ``fit_scalar_shapes``)."""
    own = encoder.state_dict()
    state, source = fit_scalar_shapes(weights.tensors, {n: tuple(t.shape) for n, t in own.items()}), weights.source
    shapes, missing, unexpected = tensor_differences({n: tuple(t.shape) for n, t in state.items()}, own)
    if spec.pretrained_strict and (shapes or missing or unexpected):
        raise PretrainedError(
            f"{where}: {source} does not fit the '{key}' encoder ({spec.type}): {describe_differences(shapes, missing, unexpected, saved='file')}. "
            f"{option_differences(path, key, spec) or 'Check the modality options against the file'}, or set "
            "pretrained_strict: false to load what fits"
        )
    mismatched = {name for name, _, _ in shapes}
    fitting = {n: t for n, t in state.items() if n in own and n not in mismatched}
    encoder.load_state_dict(fitting, strict=False)
    if shapes or missing or unexpected:
        log.warning("modality '%s': %d tensors from %s; %s (pretrained_strict: false)", key, len(fitting), source,
                    describe_differences(shapes, missing, unexpected, saved="file"))
    else:
        log.info("modality '%s': all %d tensors from %s", key, len(fitting), source)


def pairing_objective(model: Any, key: str, specs: Mapping[str, ModalitySpec]) -> str | None:
    """The objective that takes a pretrained file's projection of modality ``key``: the
    first (in config order) with a head for ``key`` whose other modality starts from the
    same file, else the first with a head for ``key``; None when no objective has one."""
    with_head = [name for name, o in model.objectives.items()
                 if isinstance(getattr(o, "heads", None), nn.ModuleDict) and key in o.heads]
    same_file = [name for name in with_head if any(
        m != key and m in specs and specs[m].pretrained == specs[key].pretrained
        for m in model.objectives[name].modalities)]
    return (same_file or with_head or [None])[0]


def give_to_objective(model: Any, key: str, specs: Mapping[str, ModalitySpec], weights: PretrainedWeights, where: str) -> None:
    """The file's projection becomes the pairing objective's linear head for ``key``; its
    logit scale (and SigLIP's bias; 0-d in open_clip's files, [1] here) that objective's."""
    name = pairing_objective(model, key, specs)
    if name is None:
        log.info("modality '%s': no objective projects it; the file's projection and logit scale are not used", key)
        return
    objective = model.objectives[name]
    if weights.projection is not None:
        head = objective.heads[key]
        if not isinstance(head, nn.Linear) or head.bias is not None:
            raise PretrainedError(
                f"{where}: {weights.source} holds a linear projection for '{key}', but 'objectives.{name}.head' is not a "
                "bias-free linear head (head: linear)"
            )
        if tuple(head.weight.shape) != tuple(weights.projection.shape):
            raise PretrainedError(
                f"{where}: {weights.source} projects '{key}' to {weights.projection.shape[0]} dimensions, "
                f"'objectives.{name}.embed_dim' is {head.weight.shape[0]}"
            )
        with torch.no_grad():
            head.weight.copy_(weights.projection)
    with torch.no_grad():
        for attribute in ("logit_scale", "logit_bias"):
            value, mine = getattr(weights, attribute), getattr(objective, attribute, None)
            if value is not None and isinstance(mine, torch.Tensor):
                mine.copy_(fit_scalar_shapes({attribute: value}, {attribute: tuple(mine.shape)})[attribute])
    log.info("modality '%s': the projection and logit scale of %s went to objective '%s'", key, weights.source, name)


def option_differences(path: Path, key: str, spec: ModalitySpec) -> str:
    """For an encoder export: the options it was trained with that this config sets
    otherwise ("The export has width: 32 where this config has 64"), or ''."""
    if not path.is_dir():
        return ""
    try:
        export = find_export(path, key, spec, "")
    except PretrainedError:
        return ""
    if export is None:
        return ""
    theirs = read_meta(export, "").get("options", {})
    ours = json.loads(json.dumps(dataclasses.asdict(spec.options)))
    differ = [k for k in ours if k in theirs and theirs[k] != ours[k]]
    if not differ:
        return ""
    return "The export has " + ", ".join(f"{k}: {theirs[k]!r} where this config has {ours[k]!r}" for k in differ[:6])


def local_path(value: str | None, where: str) -> Path:
    """The file or folder ``value`` names, which must exist here; a name that only a hub
    resolves (``hf-hub:...``, a URL, ``timm/<model>``, an open_clip pretrained tag such as
    ``openai`` or ``ViT-B-32:laion2b_s34b_b79k``) is refused saying how to point at files."""
    if not value:
        raise PretrainedError(f"{where}: no path given")
    path = Path(value).expanduser()
    if path.exists() and not value.startswith(HUB_PREFIXES):
        return path
    if value.startswith(HUB_PREFIXES) or value.startswith("timm/") or is_open_clip_tag(value):
        raise PretrainedError(
            f"{where}: '{value}' names a download (a hub, a URL or a pretrained tag), and this machine does not "
            "download: fetch the files elsewhere and point at the local file or folder (open_clip's local-dir folder "
            "or checkpoint, a timm folder or checkpoint, a state-dict file, an mmssl export or checkpoint)"
        )
    raise PretrainedError(f"{where}: {path} does not exist (a relative path is read from {Path.cwd()})")


def is_open_clip_tag(value: str) -> bool:
    """Whether ``value`` is one of open_clip's pretrained tags (``openai``), a model name,
    or ``MODEL:TAG`` (open_clip's table of pretrained weights, known offline)."""
    import open_clip

    model, _, tag = value.partition(":")
    known = open_clip.list_pretrained()
    return (model, tag) in {(m, t) for m, t in known} or value in {t for _, t in known} or value in open_clip.list_models()


def find_export(root: Path, key: str, spec: ModalitySpec, where: str) -> Path | None:
    """The encoder export for this modality in ``root``: ``root`` itself, ``root/<key>``,
    or the one export of the modality's type among ``root``'s folders."""
    candidates = [root] if (root / EXPORT_META).is_file() else []
    if not candidates:
        named = root / key
        exports = [named] if (named / EXPORT_META).is_file() else [
            d for d in sorted(root.iterdir()) if (d / EXPORT_META).is_file() and read_meta(d, where).get("type") == spec.type
        ]
        if len(exports) > 1:
            raise PretrainedError(f"{where}: {root} holds several {spec.type} encoders ({', '.join(d.name for d in exports)}): name one folder")
        candidates = exports
    if not candidates:
        return None
    meta = read_meta(candidates[0], where)
    if meta.get("type") != spec.type:
        raise PretrainedError(
            f"{where}: {candidates[0]} holds a '{meta.get('type')}' encoder; modality '{key}' is of type '{spec.type}'"
        )
    return candidates[0]


def read_meta(folder: Path, where: str) -> dict[str, Any]:
    try:
        meta = json.loads((folder / EXPORT_META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PretrainedError(f"{where}: {folder / EXPORT_META} is unreadable: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise PretrainedError(f"{where}: {folder / EXPORT_META} is not an mmssl encoder export")
    return meta


def read_sharded(checkpoint: Path, where: str) -> dict[str, torch.Tensor]:
    """The whole weights of a sharded (``train.parallel: fsdp``) checkpoint."""
    try:
        return full_weights(checkpoint)
    except Exception as exc:  # noqa: BLE001 - DCP reports unreadable shards in many types
        raise PretrainedError(f"{where}: the sharded checkpoint {checkpoint} is unreadable: {exc}") from None


def read_file(path: Path, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors or torch file (``mmssl.common.weights.read_weights``)."""
    try:
        return read_weights(path)
    except ValueError as exc:
        raise PretrainedError(f"{where}: {exc}") from None
