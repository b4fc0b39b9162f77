"""Pretrained encoder weights from local files: ``modalities.<key>.pretrained: PATH``.

Read here, for any modality (plugins too):

- an encoder export of ``mmssl-export --format state_dict`` (a folder with
  ``mmssl_encoder.json`` and ``model.safetensors``, or the export's root folder holding
  one such folder per modality: the one named like this modality, else the only one of
  its type);
- an mmssl checkpoint directory (``model.safetensors`` beside ``config.yaml``): the
  tensors of ``encoders.<key>``;
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
from safetensors import SafetensorError
from safetensors.torch import load_file

from mmssl.common.weights import describe_differences, tensor_differences
from mmssl.config import ConfigError, ModalitySpec

log = logging.getLogger(__name__)

EXPORT_META = "mmssl_encoder.json"  # beside the weights of an encoder export
WEIGHTS = "model.safetensors"
EXPORT_FORMAT = "mmssl-encoder"
HUB_PREFIXES = ("hf-hub:", "hf_hub:", "http://", "https://", "s3://", "gs://")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class PretrainedError(ConfigError):
    """A ``pretrained`` file that cannot be read into its encoder; names the key and the file."""


def load_pretrained_encoder(encoder: torch.nn.Module, key: str, spec: ModalitySpec) -> dict[str, int]:
    """Load ``spec.pretrained`` into ``encoder`` (the modality ``key``'s); returns the counts
    of tensors loaded, left at their initialisation, and in the file but unused.

    Raises:
        PretrainedError: naming ``modalities.<key>.pretrained``: no such file, a hub name,
            a file of another modality, or (``pretrained_strict``) tensors that do not fit.
    """
    where = f"'modalities.{key}.pretrained'"
    path = local_path(spec.pretrained, where)
    state, source = read_state(path, key, spec, where)
    own = encoder.state_dict()
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
    counts = {"loaded": len(fitting), "initialised": len(missing) + len(shapes), "unused": len(unexpected) + len(shapes)}
    if shapes or missing or unexpected:
        log.warning("modality '%s': %d tensors from %s; %s (pretrained_strict: false)", key, len(fitting), source,
                    describe_differences(shapes, missing, unexpected, saved="file"))
    else:
        log.info("modality '%s': all %d tensors from %s", key, len(fitting), source)
    return counts


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
    """The file or folder ``value`` names, which must exist here."""
    if not value:
        raise PretrainedError(f"{where}: no path given")
    if value.startswith(HUB_PREFIXES):
        raise PretrainedError(
            f"{where}: '{value}' is a hub or web name, and this machine does not download: download the files "
            "elsewhere and point at the local file or folder (a state-dict file, an mmssl-export folder or an mmssl "
            "checkpoint directory)"
        )
    path = Path(value).expanduser()
    if not path.exists():
        raise PretrainedError(f"{where}: {path} does not exist (a relative path is read from {Path.cwd()})")
    return path


def read_state(path: Path, key: str, spec: ModalitySpec, where: str) -> tuple[dict[str, torch.Tensor], str]:
    """(the encoder's tensors by name, a description of where they came from)."""
    if path.is_dir():
        export = find_export(path, key, spec, where)
        if export is not None:
            return read_file(export / WEIGHTS, where), f"the {spec.type} encoder export {export}"
        if (path / WEIGHTS).is_file() and (path / "config.yaml").is_file():
            prefix = f"encoders.{key}."
            state = {n[len(prefix):]: t for n, t in read_file(path / WEIGHTS, where).items() if n.startswith(prefix)}
            if not state:
                raise PretrainedError(f"{where}: the checkpoint {path} has no encoder '{key}'")
            return state, f"encoder '{key}' of the checkpoint {path}"
        raise PretrainedError(
            f"{where}: {path} is a folder mmssl cannot read weights from: expected an mmssl-export folder "
            f"({EXPORT_META} + {WEIGHTS}) or an mmssl checkpoint directory"
        )
    return unwrap(read_file(path, where)), str(path)


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


def read_file(path: Path, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors or torch file (torch's read with weights_only)."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        if path.suffix in TORCH_SUFFIXES:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, Mapping):
                raise ValueError(f"holds a {type(state).__name__}, not a state dict")
            return dict(state)
    except (SafetensorError, OSError, ValueError, RuntimeError, EOFError) as exc:
        raise PretrainedError(f"{where}: {path} is unreadable: {' '.join(str(exc).split())[:300]}") from None
    except Exception as exc:  # torch's weights-only unpickler refuses objects with its own error types
        raise PretrainedError(f"{where}: {path} is unreadable: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None
    raise PretrainedError(f"{where}: {path} is no weights file mmssl reads (.safetensors, {', '.join(TORCH_SUFFIXES)})")


def unwrap(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a trainer's checkpoint dict: its ``state_dict`` entry if it has one,
    with DDP's ``module.`` prefixes taken off."""
    if isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    tensors = {n: t for n, t in state.items() if torch.is_tensor(t)}
    if tensors and all(n.startswith("module.") for n in tensors):
        tensors = {n[len("module."):]: t for n, t in tensors.items()}
    return tensors
