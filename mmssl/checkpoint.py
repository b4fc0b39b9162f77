"""Checkpoints: one directory per save, written under a temporary name and renamed.

Layout of ``<output>/checkpoints/step_00000100/``:
    model.safetensors   encoder and head weights
    trainer_state.pt    optimizer, scheduler, step, RNG states, stream positions
                        (plain tensors and containers: loads with weights_only=True)
    config.yaml         the resolved run config
    tokenizer.json      per-modality extra state (tokenizer settings)
    meta.json           step and format version

A directory named ``step_*`` is complete by construction (rename is atomic); a kill
during a save leaves only a ``.tmp-*`` directory, which the next save removes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from mmssl.config import RunConfig, config_from_dict, read_yaml
from mmssl.model import MultimodalModel, build_model

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
STATE = "trainer_state.pt"
CONFIG = "config.yaml"
TOKENIZER = "tokenizer.json"
META = "meta.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(FileNotFoundError):
    """No usable checkpoint where one was expected; the message says where it looked."""


def checkpoints_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model: MultimodalModel,
    trainer_state: dict[str, Any],
    config: RunConfig,
) -> Path:
    """Write a complete checkpoint for ``step`` atomically; returns its directory."""
    root = checkpoints_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(root)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    save_model(model, str(tmp / WEIGHTS))
    torch.save(trainer_state, tmp / STATE)
    (tmp / CONFIG).write_text(config.to_yaml())
    extras = {key: enc.extra_state_dict() for key, enc in model.encoders.items() if enc.extra_state_dict()}
    (tmp / TOKENIZER).write_text(json.dumps(extras, indent=2))
    (tmp / META).write_text(json.dumps({"step": step, "format": FORMAT_VERSION}))
    _fsync_dir_files(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _fsync_dir_files(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def remove_stale_temporaries(root: Path) -> None:
    """Delete half-written checkpoints left by a killed save."""
    for tmp in root.glob(".tmp-step_*"):
        shutil.rmtree(tmp, ignore_errors=True)


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``output_dir``, oldest first."""
    root = checkpoints_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / WEIGHTS).is_file() and (Path(path) / CONFIG).is_file()


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory itself, or the latest complete one of a run directory."""
    path = Path(path)
    if is_checkpoint(path):
        return path
    found = list_checkpoints(path)
    if not found:
        raise CheckpointError(
            f"no checkpoint at {path}: expected a checkpoint directory (with {WEIGHTS}) "
            f"or a run directory with checkpoints/step_*"
        )
    return found[-1]


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints (0 keeps all)."""
    if keep <= 0:
        return
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / STATE, map_location="cpu", weights_only=True)


def load_run_config(checkpoint: Path) -> RunConfig:
    return config_from_dict(read_yaml((checkpoint / CONFIG).read_text()))


def load_weights(model: MultimodalModel, checkpoint: Path) -> None:
    """Load weights strictly and check each modality's extra state (tokenizer)."""
    missing, unexpected = load_model(model, str(checkpoint / WEIGHTS), strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{checkpoint / WEIGHTS} does not fit the model: missing {sorted(missing)[:10]}, "
            f"unexpected {sorted(unexpected)[:10]}"
        )
    tokenizer_file = checkpoint / TOKENIZER
    extras = json.loads(tokenizer_file.read_text()) if tokenizer_file.is_file() else {}
    for key, state in extras.items():
        if key in model.encoders:
            try:
                model.encoders[key].check_extra_state(state)
            except ValueError as exc:
                raise CheckpointError(f"{tokenizer_file}: modality '{key}': {exc}") from None


@dataclass(frozen=True)
class Pretrained:
    """A checkpoint's model (eval mode) with the run config it was trained with."""

    model: MultimodalModel
    config: RunConfig
    checkpoint: Path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Pretrained:
    """The model of a checkpoint (or of a run directory's latest), its run config and
    the checkpoint directory it came from.

    Example:
        loaded = mmssl.load_checkpoint("runs/default")
        loaded.config.world.eval_samples_per_class, loaded.checkpoint.name
    """
    checkpoint = resolve_checkpoint(path)
    config = load_run_config(checkpoint)
    model = build_model(config)
    load_weights(model, checkpoint)
    return Pretrained(model=model.to(device).eval(), config=config, checkpoint=checkpoint)


def load_pretrained(path: str | Path, device: str | torch.device = "cpu") -> MultimodalModel:
    """The model of a checkpoint (or of a run directory's latest), in eval mode
    (``load_checkpoint`` also gives its config).

    Example:
        model = mmssl.load_pretrained("runs/default")
        emb = model.encode("text", ["a red circle"])
    """
    return load_checkpoint(path, device).model
