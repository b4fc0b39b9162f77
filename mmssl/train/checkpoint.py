"""Checkpoints: one directory per save, written under a temporary name, made durable,
then renamed into place.

Layout of ``<output>/checkpoints/step_00000100/``:
    model.safetensors   encoder and head weights
    trainer_state.pt    optimizer, scheduler, step, RNG states, stream positions
                        (plain tensors and containers: loads with weights_only=True)
    config.yaml         the resolved run config
    tokenizer.json      per-modality extra state (tokenizer settings)
    meta.json           step and format version ("ema": true with ema.safetensors)
    ema.safetensors     a run with train.ema: the moving average of the weights
                        (mmssl.train.ema), named as model.safetensors names them

A run under ``train.parallel: fsdp`` writes its weights and optimizer state as the
ranks' shards instead (``sharded/``, ``mmssl.train.sharded_checkpoint``); every reader
here reads both layouts.

A directory named ``step_*`` is complete by construction: its files and the directory
are fsynced before the rename, and the parent after it. Names that are not
``step_*`` are never read as checkpoints; a kill can leave these, which
``remove_stale_temporaries`` clears at the next start or save:

    .tmp-step_N-<pid>        a checkpoint being written: removed
    .replaced-step_N-<pid>   the old step_N, moved aside while a re-save of step N put
                             the new one in place: put back if step_N is missing,
                             removed otherwise
    .trash-step_N-<pid>      a pruned checkpoint being removed: removed

A run uses these through ``mmssl.train.checkpoints.CheckpointManager`` (the run lock,
saves, resume, every generator's state), pretraining and fine-tuning alike.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file, save_model

from mmssl.common.atomic import OutputError, fsync_dir, fsync_file
from mmssl.common.weights import describe_differences, fit_scalar_shapes, fits_as_scalar, tensor_differences
from mmssl.config import ConfigError, RunConfig, config_from_dict, read_yaml
from mmssl.model import MultimodalModel, build_model
from mmssl.common.sharded_files import SHARDED, full_weights, is_sharded, missing_shard_files, saved_shapes
from modalities.base import Processor, Renderer

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
STATE = "trainer_state.pt"
CONFIG = "config.yaml"
TOKENIZER = "tokenizer.json"
META = "meta.json"
FILES = (WEIGHTS, STATE, CONFIG, TOKENIZER, META)  # every file a save writes
EMA_WEIGHTS = "ema.safetensors"  # and a save of a run with train.ema (meta.json says so)
_STEP_DIR = re.compile(r"^step_(\d+)$")
_REPLACED = re.compile(r"^\.replaced-(step_\d+)-\d+$")
_DEBRIS_PREFIXES = (".tmp-step_", ".replaced-step_", ".trash-step_")


class CheckpointError(FileNotFoundError):
    """No usable checkpoint where one was expected; the message says where it looked."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file is missing, truncated, unreadable or refused (a pickle that is not
    plain tensors and containers). Resume skips such a checkpoint for the previous one; a
    checkpoint of another model is a ``CheckpointError``, which it does not skip."""


def checkpoints_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of ``step`` goes: ``checkpoints/step_00000100``."""
    return checkpoints_root(output_dir) / f"step_{step:08d}"


def checkpoint_writer(
    step: int, model: MultimodalModel, trainer_state: dict[str, Any], config: RunConfig,
    sharded_by: int | None = None, ema: Mapping[str, torch.Tensor] | None = None,
) -> Callable[[Path], None]:
    """What writes a pretraining checkpoint's files (``FILES``) into a directory, for
    ``write_checkpoint_dir``. ``sharded_by``: the number of ranks whose shards
    (``mmssl.train.sharded_checkpoint``) stand for the weights file, which rank 0 then
    leaves out, and which ``meta.json`` records with the layout. ``ema``: the moving
    average of the weights (``train.ema``), written as ``ema.safetensors``."""

    def write(tmp: Path) -> None:
        if sharded_by is None:
            save_model(model, str(tmp / WEIGHTS))
        if ema is not None:
            save_file({name: t.contiguous() for name, t in ema.items()}, str(tmp / EMA_WEIGHTS))  # channels-last too
        _save_trainer_state(trainer_state, tmp / STATE)
        (tmp / CONFIG).write_text(config.to_yaml(), encoding="utf-8")
        extras = {key: p.extra_state_dict() for key, p in model.processors.items() if p.extra_state_dict()}
        (tmp / TOKENIZER).write_text(json.dumps(extras, indent=2), encoding="utf-8")
        meta = {"step": step, "format": FORMAT_VERSION}
        if sharded_by is not None:
            meta |= {"layout": "sharded", "world_size": sharded_by}
        if ema is not None:
            meta["ema"] = True
        (tmp / META).write_text(json.dumps(meta), encoding="utf-8")

    return write


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model: MultimodalModel,
    trainer_state: dict[str, Any],
    config: RunConfig,
) -> Path:
    """Write a complete checkpoint for ``step`` durably and atomically; returns its directory.

    Raises:
        OutputError: the directory could not be written (disk full, no permission), in
            one line naming it; no temporary is left and earlier checkpoints are intact.
    """
    return write_checkpoint_dir(output_dir, step, checkpoint_writer(step, model, trainer_state, config))


def write_checkpoint_dir(output_dir: str | Path, step: int, write: Callable[[Path], None]) -> Path:
    """``checkpoints/step_N`` of ``output_dir``, whole or not at all: ``write(tmp)`` fills a
    temporary directory, whose files and itself are fsynced before it is renamed into
    place (``_put_in_place``) and the parent fsynced. Every checkpoint format of mmssl
    (pretraining, fine-tuning) is written through it.

    Raises:
        OutputError: the directory could not be written (disk full, no permission), in
            one line naming it; no temporary is left and earlier checkpoints are intact.
    """
    return finish_checkpoint_dir(output_dir, step, begin_checkpoint_dir(output_dir, step), write)


def begin_checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    """A new, empty temporary directory for ``step``'s checkpoint (what earlier killed
    saves left is cleared first), for ``finish_checkpoint_dir``. A sharded save's ranks
    write their shards into it before rank 0 finishes it.

    Raises:
        OutputError: it could not be made, in one line naming it.
    """
    root = checkpoints_root(output_dir)
    tmp = root / f".tmp-{checkpoint_dir(output_dir, step).name}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(root)
        tmp.mkdir()
    except OSError as exc:
        raise OutputError(f"cannot save checkpoint {checkpoint_dir(output_dir, step)}: {exc.strerror or exc}") from exc
    return tmp


def discard_checkpoint_dir(tmp: Path) -> None:
    """Remove the temporary directory of a save that failed."""
    shutil.rmtree(tmp, ignore_errors=True)


def finish_checkpoint_dir(output_dir: str | Path, step: int, tmp: Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` adds its files to the temporary ``tmp`` (of ``begin_checkpoint_dir``);
    then every file and directory in it is fsynced, it is renamed to ``checkpoints/step_N``
    (``_put_in_place``) and the parent fsynced. On any failure ``tmp`` is removed.

    Raises:
        OutputError: the directory could not be written (disk full, no permission), in
            one line naming it; no temporary is left and earlier checkpoints are intact.
    """
    root = checkpoints_root(output_dir)
    final = checkpoint_dir(output_dir, step)
    try:
        write(tmp)
        for directory in sorted({tmp, *(p for p in tmp.rglob("*") if p.is_dir())}, reverse=True):
            for f in sorted(p for p in directory.iterdir() if p.is_file()):
                fsync_file(f)
            fsync_dir(directory)
        _put_in_place(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            remove_stale_temporaries(root)  # puts step N's old directory back if it was moved aside
        if not isinstance(exc, (OSError, SafetensorError)):  # safetensors reports a failed write as its own error
            raise
        kept = [p.name for p in list_checkpoints(output_dir)]
        raise OutputError(
            f"cannot save checkpoint {final}: {getattr(exc, 'strerror', None) or _first_line(exc)}; "
            + (f"the checkpoints saved before are intact ({', '.join(kept)})" if kept else "no checkpoint was saved")
        ) from exc
    return final


def _save_trainer_state(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` through a Python file. torch reports a failed write (a full disk) as
    a RuntimeError that does not say why ("unexpected pos 704 vs 598"); the ``OSError``
    the file raised is its context, and is raised instead."""
    with open(path, "wb") as f:
        try:
            torch.save(state, f)
        except RuntimeError as exc:
            if isinstance(exc.__context__, OSError):
                raise exc.__context__ from None
            raise


def _put_in_place(tmp: Path, final: Path) -> None:
    """Rename the complete ``tmp`` to ``final``. ``rename`` cannot replace a non-empty
    directory, so a re-save of a step moves the old directory aside first and removes it
    only once the new one is in place: a kill in between leaves the old one under
    ``.replaced-*``, which ``remove_stale_temporaries`` puts back."""
    root = final.parent
    aside = root / f".replaced-{final.name}-{os.getpid()}" if final.exists() else None
    if aside is not None:
        os.replace(final, aside)
    os.replace(tmp, final)
    fsync_dir(root)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def remove_stale_temporaries(root: Path) -> None:
    """Clear what a killed save or prune left in ``root`` (see the module docstring): a
    step's old directory moved aside by an unfinished re-save is put back, every other
    temporary is removed. Never touches a ``step_*`` directory."""
    if not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        replaced = _REPLACED.match(path.name)
        if replaced and not (root / replaced.group(1)).exists():
            os.replace(path, root / replaced.group(1))
            fsync_dir(root)
            log.warning("put back checkpoint %s, moved aside by a save that did not finish", root / replaced.group(1))
        elif path.name.startswith(_DEBRIS_PREFIXES):
            shutil.rmtree(path, ignore_errors=True)


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoints (``step_*`` directories) under ``output_dir``, oldest first."""
    root = checkpoints_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def is_checkpoint(path: str | Path) -> bool:
    return ((Path(path) / WEIGHTS).is_file() or is_sharded(path)) and (Path(path) / CONFIG).is_file()


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
    """Keep the newest ``keep`` checkpoints (0 keeps all). Each old one is renamed out of
    the ``step_*`` names before it is removed, so a kill mid-removal never leaves a
    half-deleted ``step_*`` directory for resume to find."""
    if keep <= 0:
        return
    for old in list_checkpoints(output_dir)[:-keep]:
        trash = old.with_name(f".trash-{old.name}-{os.getpid()}")
        try:
            os.replace(old, trash)
            fsync_dir(old.parent)
        except OSError as exc:
            log.warning("could not remove old checkpoint %s: %s", old, exc)
            continue
        shutil.rmtree(trash, ignore_errors=True)


def check_complete(checkpoint: Path, files: Sequence[str] = FILES) -> None:
    """Raise ``CorruptCheckpointError`` unless every file a save writes (``files``: a
    pretraining checkpoint's by default; ``ema.safetensors`` too where ``meta.json`` says
    the run kept one) is there and ``meta.json`` names this directory's step."""
    checkpoint = Path(checkpoint)
    if (checkpoint / SHARDED).is_dir():  # the ranks' shards stand for the weights file
        files = [name for name in files if name != WEIGHTS]
        missing_shards = missing_shard_files(checkpoint)
        if missing_shards:
            raise CorruptCheckpointError(f"{checkpoint} is incomplete: {', '.join(missing_shards)} missing")
    missing = [name for name in files if not (checkpoint / name).is_file()]
    if missing:
        raise CorruptCheckpointError(f"{checkpoint} is incomplete: {', '.join(missing)} missing")
    try:
        meta = json.loads((checkpoint / META).read_text(encoding="utf-8"))
        step = int(meta["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptCheckpointError(f"{checkpoint / META} is unreadable: {_first_line(exc)}") from None
    named = _STEP_DIR.match(checkpoint.name)
    if named and int(named.group(1)) != step:
        raise CorruptCheckpointError(f"{checkpoint / META} says step {step}, the directory step {int(named.group(1))}")
    if meta.get("ema") and not (checkpoint / EMA_WEIGHTS).is_file():
        raise CorruptCheckpointError(f"{checkpoint} is incomplete: {EMA_WEIGHTS} missing")


def load_trainer_state(checkpoint: Path, name: str = STATE) -> dict[str, Any]:
    """The trainer state of a checkpoint (its file ``name``), read with
    ``torch.load(weights_only=True)``: tensors and plain containers only, so a pickle
    that would run code or build other objects is refused, never executed.

    Raises:
        CorruptCheckpointError: naming the file: missing, truncated, unreadable or refused.
    """
    path = Path(checkpoint) / name
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickling_reason(exc)
        if "Unsupported global" not in reason:  # garbled bytes, not a refused object
            raise CorruptCheckpointError(f"{path} is unreadable: {reason}") from None
        raise CorruptCheckpointError(
            f"{path} refused: not plain tensors and containers (read with torch.load(weights_only=True)): {reason}"
        ) from None
    except Exception as exc:  # torch reports a truncated or garbled file in many types (RuntimeError, EOFError, ...)
        raise CorruptCheckpointError(f"{path} is unreadable: {_first_line(exc)}") from None


def load_run_config(checkpoint: Path) -> RunConfig:
    """The run config a checkpoint was saved with.

    Raises:
        CorruptCheckpointError: ``config.yaml`` is missing, unreadable or not YAML.
        CheckpointError: it is YAML but not a valid run config (of another mmssl).
    """
    path = checkpoint / CONFIG
    try:
        raw = read_yaml(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise CorruptCheckpointError(f"{path} is unreadable: {' '.join(str(exc).split())}") from None
    try:
        return config_from_dict(raw if isinstance(raw, dict) else {})
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def load_weights(model: MultimodalModel, checkpoint: Path, built_from: str = "its config.yaml", ema: bool = False) -> None:
    """Load weights strictly and check each modality's extra state (tokenizer).

    The file's tensor names and shapes are compared with the model's before anything is
    loaded, so a checkpoint of another config is one error listing what differs.

    Args:
        built_from: what ``model`` was built from, for the error message.
        ema: load the moving average of the weights (``train.ema``) instead.

    Raises:
        CorruptCheckpointError: the weights file is missing, truncated or unreadable.
        CheckpointError: the weights or extra state do not fit ``model``; ``ema`` of a
            checkpoint trained without ``train.ema``.
    """
    mismatch = _mismatch(checkpoint, built_from)
    if ema:
        load_checked(model, read_ema_weights(checkpoint), mismatch)
    elif is_sharded(checkpoint):
        load_checked(model, read_checkpoint_weights(checkpoint), mismatch)
    else:
        load_safetensors(model, checkpoint / WEIGHTS, mismatch)
    check_extra_state(model, checkpoint)


def check_extra_state(model: MultimodalModel, checkpoint: Path) -> None:
    """Check each modality's extra state (tokenizer settings) saved with a checkpoint
    against the model's processors.

    Raises:
        CorruptCheckpointError: ``tokenizer.json`` is unreadable.
        CheckpointError: a modality's extra state does not fit.
    """
    tokenizer_file = checkpoint / TOKENIZER
    try:
        extras = json.loads(tokenizer_file.read_text()) if tokenizer_file.is_file() else {}
    except (OSError, ValueError) as exc:
        raise CorruptCheckpointError(f"{tokenizer_file} is unreadable: {_first_line(exc)}") from None
    for key, state in extras.items():
        if key in model.processors:
            try:
                model.processors[key].check_extra_state(state)
            except ValueError as exc:
                raise CheckpointError(f"{tokenizer_file}: modality '{key}': {exc}") from None


def load_safetensors(module: torch.nn.Module, weights: Path, mismatch: str) -> None:
    """Load the safetensors file ``weights`` into ``module`` strictly. The file's tensor
    names and shapes are compared with the module's before anything is loaded, so
    weights of another model are one error, ``mismatch`` followed by what differs. A
    value saved 0-d where the module holds it as [1] (files from before the logit scales
    and mask values became [1]), or the other way round, is reshaped (``fit_scalar_shapes``).

    Raises:
        CorruptCheckpointError: the file is missing, truncated or unreadable.
        CheckpointError: its tensors do not fit ``module``.
    """
    try:
        saved = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise CorruptCheckpointError(f"{weights} is unreadable: {_first_line(exc)}") from None
    load_checked(module, saved, mismatch)


def load_checked(module: torch.nn.Module, saved: dict[str, torch.Tensor], mismatch: str) -> None:
    """Load the tensors ``saved`` into ``module`` as ``load_safetensors`` does: one
    ``CheckpointError`` (``mismatch`` and what differs) when they do not fit."""
    own = module.state_dict()
    state = fit_scalar_shapes(saved, {name: tuple(t.shape) for name, t in own.items()})
    _check_fit({name: tuple(t.shape) for name, t in state.items()}, own, mismatch)
    # Not strict: every name the file lacks shares memory with one it holds (safetensors
    # saves one name of tied weights), as tensor_differences checked; loading that one fills both.
    module.load_state_dict(state, strict=False)


def read_checkpoint_weights(checkpoint: Path, model: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """A checkpoint's weights, whole, from either layout (a sharded one's shards put
    together in this process); where ``model`` is given, values saved 0-d for its [1]
    tensors (or the other way round) are reshaped to its shapes.

    Raises:
        CorruptCheckpointError: the weights are missing, truncated or unreadable.
    """
    try:
        weights = full_weights(checkpoint) if is_sharded(checkpoint) else load_file(str(checkpoint / WEIGHTS))
    except Exception as exc:  # safetensors and DCP report unreadable files in many types
        raise CorruptCheckpointError(f"the weights of {checkpoint} are unreadable: {_first_line(exc)}") from None
    if model is None:
        return weights
    return fit_scalar_shapes(weights, {name: tuple(t.shape) for name, t in model.state_dict().items()})


def read_ema_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The moving average of the weights a checkpoint of a run with ``train.ema`` holds
    (``ema.safetensors``), by state dict name.

    Raises:
        CheckpointError: the checkpoint has none (its run had no ``train.ema``).
        CorruptCheckpointError: the file is truncated or unreadable.
    """
    path = Path(checkpoint) / EMA_WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"checkpoint {checkpoint} has no EMA weights ({EMA_WEIGHTS}): it was trained without train.ema")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CorruptCheckpointError(f"{path} is unreadable: {_first_line(exc)}") from None


def check_weights_fit(model: torch.nn.Module, checkpoint: Path, built_from: str) -> None:
    """Raise ``CheckpointError`` naming what differs when a checkpoint's weight names and
    shapes (read from its header or DCP metadata, not its data) do not fit ``model``
    (sharded parameters count by their whole shapes)."""
    try:
        if is_sharded(checkpoint):
            shapes = saved_shapes(checkpoint)
        else:
            with safe_open(str(checkpoint / WEIGHTS), framework="pt") as f:
                shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except Exception as exc:  # noqa: BLE001 - an unreadable header or metadata, in whatever type
        raise CorruptCheckpointError(f"the weights of {checkpoint} are unreadable: {_first_line(exc)}") from None
    own = model.state_dict()
    wanted = {name: tuple(t.shape) for name, t in own.items()}
    fitted = {n: wanted[n] if n in wanted and fits_as_scalar(shape, wanted[n]) else shape for n, shape in shapes.items()}
    _check_fit(fitted, own, _mismatch(checkpoint, built_from))


def _mismatch(checkpoint: Path, built_from: str) -> str:
    return f"checkpoint {checkpoint} does not fit the model built from {built_from} (saved with another config?)"


def _check_fit(shapes: dict[str, tuple[int, ...]], own: dict[str, torch.Tensor], mismatch: str) -> None:
    """Raise ``CheckpointError`` (``mismatch`` and what differs) unless the saved
    ``shapes`` fit the state dict ``own``."""
    differences = tensor_differences(shapes, own)
    if any(differences):
        raise CheckpointError(f"{mismatch}: {describe_differences(*differences)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _unpickling_reason(exc: pickle.UnpicklingError) -> str:
    """What torch's long weights-only message says was wrong, in one line
    (``Unsupported global: GLOBAL io.open was not an allowed global by default``)."""
    text = str(exc)
    _, marker, rest = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (rest if marker else text).splitlines() if line.strip()]
    return lines[0].split(". Please use")[0].rstrip(".") if lines else type(exc).__name__


@dataclass(frozen=True)
class Pretrained:
    """A checkpoint's model (eval mode) with the run config it was trained with; its
    config rebuilds every modality's processor and renderer, given here beside the model
    (as open_clip returns ``preprocess`` with its model)."""

    model: MultimodalModel
    config: RunConfig
    checkpoint: Path
    ema: bool = False  # the model holds the checkpoint's moving average of the weights (train.ema)

    @property
    def processors(self) -> dict[str, Processor]:
        """Each modality's processor, by key: raw items to the model's batches."""
        return self.model.processors

    @property
    def renderers(self) -> dict[str, Renderer | None]:
        """Each modality's renderer of the embedded world (None where it renders nothing)."""
        return self.model.renderers


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", ema: bool = False) -> Pretrained:
    """The model of a checkpoint (or of a run directory's latest), its run config, the
    checkpoint directory it came from, and the processors and renderers its config builds.
    ``ema``: the model with the moving average of its weights (``train.ema``) instead.

    Example:
        loaded = mmssl.load_checkpoint("runs/default")
        loaded.config.world.eval_samples_per_class, loaded.checkpoint.name
        batch = loaded.processors["image"].collate([loaded.processors["image"].transform("cat.png")])

    Raises:
        CheckpointError: no checkpoint there, or one that does not fit its config; with
            ``ema``, one trained without ``train.ema``.
    """
    checkpoint = resolve_checkpoint(path)
    config = load_run_config(checkpoint)
    model = build_model(config, pretrained=False)  # the checkpoint holds the weights it trained
    load_weights(model, checkpoint, ema=ema)
    return Pretrained(model=model.to(device).eval(), config=config, checkpoint=checkpoint, ema=ema)


def load_pretrained(path: str | Path, device: str | torch.device = "cpu", ema: bool = False) -> MultimodalModel:
    """The model of a checkpoint (or of a run directory's latest), in eval mode
    (``load_checkpoint`` also gives its config); ``ema``: with the moving average of its
    weights (``train.ema``).

    Example:
        model = mmssl.load_pretrained("runs/default")
        emb = model.encode("text", ["a red circle"])
    """
    return load_checkpoint(path, device, ema=ema).model
