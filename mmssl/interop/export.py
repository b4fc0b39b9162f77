"""``mmssl-export``: a run's encoders as files that others load, with a model card.

``state_dict``: each encoder as ``<output>/<modality>/model.safetensors`` beside
``mmssl_encoder.json`` (its modality type and options, the run it came from), which
``modalities.<key>.pretrained`` reads back into an encoder of the same options — any
modality, plugins too. ``open_clip``: an image–text pair as open_clip's local-dir
folder (``mmssl.interop.open_clip_format``). ``timm``: an image encoder on a timm tower as
timm's local-dir folder (``mmssl.interop.timm_format``). Every export writes ``<output>/README.md``, a model card: each
encoder's architecture and size, the training config's objectives and data sources, the
steps trained, and the run's evaluation figures where a report exists. The output
directory is written whole or not at all (a temporary folder renamed into place).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from safetensors.torch import save_model

from mmssl.common.atomic import OutputError, fsync_dir
from mmssl.interop.open_clip_format import image_text_pair, write_open_clip
from mmssl.interop.pretrained import EXPORT_FORMAT, EXPORT_META, WEIGHTS
from mmssl.interop.timm_format import write_timm
from mmssl.train.checkpoint import Pretrained

FORMATS = ("state_dict", "open_clip", "timm")


def export(loaded: Pretrained, output: str | Path, fmt: str = "state_dict", modalities: Sequence[str] | None = None) -> list[str]:
    """Write ``loaded``'s encoders (all, or ``modalities``) to ``output`` in ``fmt``; returns
    the modalities written (open_clip: the image-text pair; timm: the image tower).

    Raises:
        ValueError: an unknown format or modality.
        OutputError: ``output`` exists and is not empty, or cannot be written.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format '{fmt}': {', '.join(FORMATS)}")
    keys = list(modalities or loaded.model.encoders)
    unknown = [k for k in keys if k not in loaded.model.encoders]
    if unknown:
        raise ValueError(f"the checkpoint has no modality {unknown}; it has {sorted(loaded.model.encoders)}")
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise OutputError(f"{output} exists and is not an empty directory: export into a new one")
    tmp = output.with_name(f".tmp-{output.name}-{os.getpid()}")
    try:
        tmp.mkdir(parents=True)
        if fmt == "open_clip":
            write_open_clip(loaded, tmp, modalities)
            _, image, text = image_text_pair(loaded, modalities)
            keys = [image, text]
        elif fmt == "timm":
            keys = [write_timm(loaded, tmp, modalities)]
        else:
            for key in keys:
                write_encoder(loaded, key, tmp / key)
        (tmp / "README.md").write_text(model_card(loaded, keys, fmt), encoding="utf-8")
        if output.exists():
            output.rmdir()
        os.replace(tmp, output)
        fsync_dir(output.parent)
    except OSError as exc:
        raise OutputError(f"cannot write the export {output}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return keys


def write_encoder(loaded: Pretrained, key: str, folder: Path) -> None:
    """One encoder's weights and what ``pretrained`` needs to read them back."""
    spec = loaded.config.modalities[key]
    folder.mkdir()
    save_model(loaded.model.encoders[key], str(folder / WEIGHTS))
    meta = {
        "format": EXPORT_FORMAT, "version": 1, "modality": key, "type": spec.type, "options": dataclasses.asdict(spec.options),
        "checkpoint": str(loaded.checkpoint), "step": _step(loaded), **({"weights": "ema"} if loaded.ema else {}),
    }
    (folder / EXPORT_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def _step(loaded: Pretrained) -> int | None:
    try:
        return int(json.loads((loaded.checkpoint / "meta.json").read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def model_card(loaded: Pretrained, keys: Sequence[str], fmt: str) -> str:
    """The export's README.md: what each encoder is, how it was trained, how it scored."""
    config = loaded.config
    lines = [f"# {config.name}: mmssl encoders ({fmt})", "",
             f"Exported from `{loaded.checkpoint}` (step {_step(loaded)}"
             f"{', the moving average of its weights (train.ema)' if loaded.ema else ''}) by `mmssl-export`.", "", "## Encoders", "",
             "| modality | type | parameters | options |", "| --- | --- | --- | --- |"]
    for key in keys:
        spec = config.modalities[key]
        size = sum(p.numel() for p in loaded.model.encoders[key].parameters())
        values = dataclasses.asdict(spec.options)
        if values.get("vision_cfg"):  # an open_clip tower built from its own vision_cfg: backbone is not read
            values = {k: v for k, v in values.items() if k != "backbone"}
        options = ", ".join(f"{k}: {v}" for k, v in values.items() if v not in (None, {}) and k != "views")
        lines.append(f"| {key} | {spec.type} | {size:,} | {options} |")
    usage = ("Load it with `open_clip.create_model_and_transforms(\"local-dir:<this folder>\")`, or into a run with "
             "`modalities.<key>.pretrained: <this folder>` for the image and the text modality." if fmt == "open_clip" else
             "Load it with `timm.create_model(\"local-dir:<this folder>\", pretrained=True)` (pooled features; pass "
             "num_classes for a new classifier), or into a run with `modalities.<key>.pretrained: <this folder>` for an "
             "image modality." if fmt == "timm" else
             "Load one into a run: `modalities.<key>.pretrained: <this folder>/<modality>` (or this folder).")
    lines += ["", usage,
              "", "## Training", "", f"{config.train.steps} steps configured, seed {config.seed}.", "",
              "| objective | type | modalities | weight | data |", "| --- | --- | --- | --- | --- |"]
    for name, objective in config.objectives.items():
        modalities = ", ".join(getattr(objective.options, "modalities", ()))
        source = objective.data.source + (f" {objective.data.options.path}" if getattr(objective.data.options, "path", None) else "")
        lines.append(f"| {name} | {objective.type} | {modalities} | {objective.weight:g} | {source} |")
    figures = _figures(loaded, keys)
    if figures:
        lines += ["", "## Evaluation", "", "| modality | data | top-1 | top-5 | held-out top-1 |", "| --- | --- | --- | --- | --- |"]
        lines += figures
    return "\n".join(lines) + "\n"


def _figures(loaded: Pretrained, keys: Sequence[str]) -> list[str]:
    """The run's zero-shot reports (``zero_shot_<modality>.json`` beside its checkpoints;
    ``zero_shot_<modality>_ema.json`` for the moving average of the weights)."""
    checkpoint = loaded.checkpoint
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint
    rows = []
    for key in keys:
        try:
            report: dict[str, Any] = json.loads((run / f"zero_shot_{key}{'_ema' if loaded.ema else ''}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        held = report.get("composition_top1")
        rows.append(f"| {key} | {report.get('data')} | {report.get('top1', float('nan')):.4f} | "
                    f"{report.get('top5', float('nan')):.4f} | {'-' if held is None else f'{held:.4f}'} |")
    return rows
