"""Run configuration: YAML -> frozen, typed dataclasses, checked before any work starts.

Every modality and objective declares its options as a dataclass (``Config``); a
config file is checked against those fields and types, so ``modalities.image.backbon``
fails at load time with "did you mean 'backbone'?". Overrides are ``key.sub=value``
strings, values parsed as YAML (``train.steps=200``, ``objectives.a.modalities=[image,text]``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar, Union

import yaml

from mmssl.registry import MODALITIES, OBJECTIVES, SOURCES, RegistryError, closest
from modalities.base import Encoder


T = TypeVar("T")


class ConfigError(ValueError):
    """A config value that is missing, unknown or of the wrong type; names the key."""


# --------------------------------------------------------------------------------------
# Sections owned by the core
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """One objective's data stream: the stream's own settings plus its source.

    ``source`` names a registered source kind (``world``, ``csv``, ``folder``, ``text``,
    ``graphs``, or a plugin's); the section's other keys are that kind's options
    (``options``, its ``Config``): ``path``, ``columns`` ..., as docs/data.md lists.
    """

    source: str = "world"
    batch_size: int = 64  # the global batch of one micro-step (cut by rank under DDP)
    num_workers: int = 0
    on_error: Literal["skip", "fail"] = "skip"
    max_skip_fraction: float = 0.5  # fail the run if more than this share of a batch's samples is bad
    options: Any = None  # the source kind's Config (flat beside the keys above in YAML)


STREAM_KEYS = ("batch_size", "num_workers", "on_error", "max_skip_fraction")


@dataclass(frozen=True)
class WorldConfig:
    """The embedded default world (generated data, nothing to download)."""

    seed: int = 0
    # Attribute combinations never seen in training, used for composition eval: one count
    # for every rendering modality, or per modality ({image: 6, audio: 4}).
    heldout: int | dict[str, int] = 6
    single_attribute_prob: float = 0.3  # share of captions that name one attribute only
    # share of captions that name the count, which cross-modal retrieval matches on
    # (null: as the templates fall, about 0.3)
    shared_attribute_prob: float | None = None
    # fresh samples a class for zero-shot: a held-out figure covers a few classes, and at
    # 25 a class sampling alone moves it by about +-0.09 (two SD); at 400, about +-0.025
    eval_samples_per_class: int = 400


@dataclass(frozen=True)
class DistributedConfig:
    """Data-parallel settings (under torchrun; a plain run ignores them)."""

    # every N steps compare a parameter checksum across ranks and stop naming the step
    # if they diverged (0 = off)
    check_every: int = 100


@dataclass(frozen=True)
class EmaConfig:
    """A moving average of the whole model's weights beside training (``train.ema``;
    ``mmssl.train.ema``), saved with every checkpoint for evaluation and export (``--ema``)."""

    # the weight the average keeps at each update: ema <- decay * ema + (1 - decay) * weights
    decay: float = 0.999
    # the decay ramps linearly from 0 (the average is the weights) after the first optimizer
    # step to ``decay`` after this many: decay * min(1, s / warmup_steps), s = steps before
    warmup_steps: int = 100
    # update after every N-th optimizer step (the decay is per update)
    every: int = 1


# the names train.loggers takes: jsonl (metrics.jsonl, always written) and the trackers
# of mmssl.train.trackers.TRACKERS
LOGGERS = ("jsonl", "tensorboard", "wandb", "mlflow")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    lr: float = 1e-3
    # multipliers on lr for one encoder's or objective's parameters ({text: 0.5});
    # the schedule scales each the same way
    lr_scale: dict[str, float] = field(default_factory=dict)
    min_lr_ratio: float = 0.0
    warmup_steps: int = 50
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip: float | None = 1.0
    # torch's fused AdamW kernel (CPU and CUDA): one pass over each parameter instead of
    # a dozen elementwise ops, 5x faster an update on CPU; its rounding differs from the
    # multi-tensor kernel's in the last bits (false: torch's multi-tensor AdamW)
    fused_optimizer: bool = True
    accum_steps: int = 1
    # auto: bf16 autocast on a GPU that has bf16, else fp32 (the CPU); bf16/fp16: autocast;
    # fp64: weights, batches and losses in float64, several times slower, for numerical
    # checks (two runs that should agree differ only by rounding)
    precision: Literal["auto", "fp32", "bf16", "fp16", "fp64"] = "auto"
    # CUDA only: TF32 tensor cores for float32 matmuls and convolutions (10-bit mantissa
    # products, float32 accumulation), and cuDNN picking the fastest convolution kernels
    tf32: bool = True
    cudnn_benchmark: bool = True
    # channels-last memory for the convolutional encoders and their 4-D inputs: auto (on
    # CUDA, where tensor-core convolutions want it), true, false
    channels_last: bool | Literal["auto"] = "auto"
    # which objectives run at a step: all | round_robin | weighted (objectives.<name>.probability)
    schedule: Literal["all", "round_robin", "weighted"] = "all"
    # how their losses combine: static | uncertainty (Kendall et al. 2018) | initial_loss
    weighting: Literal["static", "uncertainty", "initial_loss"] = "static"
    initial_loss_steps: int = 10  # weighting initial_loss: steps averaged for each loss's scale
    # every N steps: each objective's gradient norm on one shared encoder and the cosines
    # between objectives' gradients there (one extra backward per objective; 0 = off)
    grad_diagnostics_every: int = 0
    grad_diagnostics_modality: str = "text"
    # run the same encoder's calls of several objectives in a step as one batched call
    # (encoders whose samples do not interact: text, the audio transformer)
    share_encoder_calls: bool = False
    # activation checkpointing: false, true (every encoder that has it) or modality keys
    # ([text, image]): blocks' activations recomputed in the backward pass, for memory
    grad_checkpointing: bool | list[str] = False
    # torch.compile: false, true (every encoder) or modality keys; each encoder compiled in
    # place (Module.compile), so state dict keys and checkpoints stay as they are
    compile: bool | list[str] = False
    device: str = "auto"
    threads: int | None = None
    log_every: int = 10
    checkpoint_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    # a step with a non-finite loss or gradient is skipped; after more than this many in a
    # row the run saves a checkpoint and stops (0: stop at the first)
    max_bad_steps: int = 10
    resume: str = "auto"  # "auto" (latest in output dir, if any), "none", or a checkpoint dir
    progress: bool = True
    # training FLOPs of a step (torch's FlopCounterMode, once per active objectives and batch
    # shapes): tflops and mfu in the metrics and train_summary.json (docs/training.md)
    count_flops: bool = True
    # the peak TFLOP/s of one device for mfu; None: a known GPU's datasheet figure for the
    # precision, else (the CPU) a timed matmul
    peak_tflops: float | None = None
    # where the logged metrics go: metrics.jsonl always (jsonl), and the experiment
    # trackers listed (tensorboard, wandb, mlflow; mmssl/train/trackers.py)
    loggers: list[Literal[LOGGERS]] = field(default_factory=lambda: ["jsonl", "tensorboard"])
    # under data parallelism, BatchNorm statistics over the global batch (SyncBatchNorm on
    # GPU, an all-reduced BatchNorm on CPU), so a BN model trains as on one process
    sync_batchnorm: bool = True
    # how processes under torchrun share the model: ddp (each rank holds all of the weights,
    # gradients and optimizer state) | fsdp (FSDP2: each holds 1/N of them; sharded
    # checkpoints). A plain run has nothing to share and trains alike (docs/distributed.md)
    parallel: Literal["ddp", "fsdp"] = "ddp"
    # fsdp: checkpoints written by torch.distributed.checkpoint.async_save while training goes on
    async_checkpoint: bool = False
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    # a moving average of the model's weights, in every checkpoint (None: off)
    ema: EmaConfig | None = None


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 256


@dataclass(frozen=True)
class ModalitySpec:
    """One modality: its registered type, its class's options, and the core's keys every
    modality has (plugins too): where its encoder's weights start and whether they train."""

    type: str
    options: Any  # the modality class's Config
    # a local file or folder of pretrained encoder weights (mmssl.interop.pretrained);
    # relative paths are relative to the working directory. None: the model's own init
    pretrained: str | None = None
    # false: load the tensors that fit and log what did not (true: one error listing them)
    pretrained_strict: bool = True
    # true: the encoder is locked (no gradient, not optimised, BatchNorm and dropout in
    # eval mode: LiT); "all": its projection heads in every objective too
    freeze: bool | Literal["all"] = False


MODALITY_KEYS = ("type", "pretrained", "pretrained_strict", "freeze")  # the core's keys of a modality section


@dataclass(frozen=True)
class ObjectiveSpec:
    type: str
    weight: float
    data: DataConfig
    options: Any  # the objective class's Config
    probability: float = 1.0  # relative chance of running at a step, for train.schedule: weighted
    every: int = 1  # runs at steps divisible by this, for train.schedule: all (cheap auxiliaries)


@dataclass(frozen=True)
class RunConfig:
    seed: int
    modalities: dict[str, ModalitySpec]
    objectives: dict[str, ObjectiveSpec]
    world: WorldConfig
    train: TrainConfig
    eval: EvalConfig
    name: str = "run"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict in the file layout (round-trips through ``config_from_dict``)."""
        return {
            "name": self.name,
            "seed": self.seed,
            "modalities": {
                k: {"type": m.type, **_modality_core_keys(m), **_plain(m.options)} for k, m in self.modalities.items()
            },
            "objectives": {
                k: {
                    "type": o.type,
                    "weight": o.weight,
                    "probability": o.probability,
                    "every": o.every,
                    "data": {
                        "source": o.data.source,
                        **{k: getattr(o.data, k) for k in STREAM_KEYS},
                        **_plain(o.data.options),
                    },
                    **_plain(o.options),
                }
                for k, o in self.objectives.items()
            },
            "world": _plain(self.world),
            "train": _plain(self.train),
            "eval": _plain(self.eval),
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------------------
# Reading YAML: plain scalars are read by the field's declared type
# --------------------------------------------------------------------------------------


class PlainScalar(str):
    """An unquoted YAML scalar, kept as its text until the typed conversion reads it by
    the field's declared type.

    PyYAML resolves plain scalars by YAML 1.1's patterns, which surprise: ``2e-3`` and
    ``1e-3`` (no dot) are strings there, ``no``, ``on`` and ``off`` are booleans, ``010``
    is octal 8. Here ``lr: 2e-3`` is a float because ``lr`` is declared a float, and
    ``name: no`` stays the string "no" because ``name`` is declared a string.
    """


class _ConfigLoader(yaml.SafeLoader):
    """A SafeLoader that resolves only null (``null``, ``~``, empty) and merge keys
    implicitly: every other plain scalar is a ``PlainScalar``; quoted ones are strings."""


_IMPLICIT = ("tag:yaml.org,2002:null", "tag:yaml.org,2002:merge")
_ConfigLoader.yaml_implicit_resolvers = {
    first: kept
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    if (kept := [(tag, regexp) for tag, regexp in resolvers if tag in _IMPLICIT])
}


def _construct_str(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    value = loader.construct_scalar(node)
    return PlainScalar(value) if node.style is None else value


_ConfigLoader.add_constructor("tag:yaml.org,2002:str", _construct_str)


def read_yaml(text: str) -> Any:
    """Parse config YAML; plain scalars (other than null) come back as ``PlainScalar``
    for ``convert`` to read by type. Raises ``yaml.YAMLError`` on bad syntax."""
    return yaml.load(text, Loader=_ConfigLoader)


# YAML 1.2 core schema patterns (plus digit underscores, as Python and YAML 1.1 allow),
# for plain scalars in untyped places (``backbone_args`` passed on to timm).
_INT = re.compile(r"[-+]?[0-9](_?[0-9])*|0o[0-7]+|0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9](_?[0-9])*|[0-9](_?[0-9])*(\.([0-9](_?[0-9])*)?)?)([eE][-+]?[0-9]+)?")
_SPECIAL_FLOATS = {".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf, ".nan": math.nan}
_BOOLS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _untyped(value: Any) -> Any:
    """A value of no declared type, with plain scalars resolved as YAML 1.2's core
    schema does (``true``/``false``, ints, floats such as ``1e-3``, else strings)."""
    if isinstance(value, dict):
        return {_untyped(k): _untyped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_untyped(v) for v in value]
    if not isinstance(value, PlainScalar):
        return value
    text = str(value)
    if text in ("true", "True", "TRUE", "false", "False", "FALSE"):
        return text.lower() == "true"
    if _INT.fullmatch(text):
        return int(text, 0) if text[:2] in ("0o", "0x") else int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return _SPECIAL_FLOATS.get(text.lower(), text)


def _number(value: PlainScalar, tp: type) -> int | float | None:
    """The plain scalar read as Python's ``int()`` / ``float()`` read it (YAML's
    ``.inf``/``.nan`` too, and ``0x``/``0o``/``0b`` ints); None if it is no number."""
    text = str(value)
    try:
        return tp(text)
    except ValueError:
        pass
    try:
        return int(text, 0) if tp is int else _SPECIAL_FLOATS[text.lower()]
    except (ValueError, KeyError):
        return None


def _quoted_hint(value: Any, tp: type) -> str:
    """A hint for a quoted YAML string that would read as a number unquoted."""
    if isinstance(value, str) and _number(PlainScalar(value), tp) is not None:
        return " (a quoted string: write it without quotes)"
    return ""


def _type_name(value: Any) -> str:
    return "str" if isinstance(value, str) else type(value).__name__


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML run config, apply ``key.sub=value`` overrides, and validate it all."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = read_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides)
    try:
        return config_from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``raw`` with each ``a.b.c=value`` set (value parsed as YAML)."""
    out = copy.deepcopy(dict(raw))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        key, _, text = item.partition("=")
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override '{item}': empty key segment")
        try:
            value = read_yaml(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': value is not valid YAML: {exc}") from exc
        if len(parts) == 2 and parts[0] == "objectives" and value is None:
            # objectives.x=null drops objective x (in a file, an empty section means defaults)
            present = out.get("objectives") or {}
            if parts[1] not in present:
                raise ConfigError(f"override '{item}': no objective '{parts[1]}' to drop.{closest(parts[1], list(present))}")
            out["objectives"] = {k: v for k, v in present.items() if k != parts[1]}
            continue
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{'.'.join(parts[: i + 1])}' is not a section")
            node = child
        node[parts[-1]] = value
    return out


_TOP_KEYS = ("name", "seed", "modalities", "objectives", "world", "train", "eval")


def _check_parallel(train: TrainConfig) -> None:
    """What ``train.parallel: fsdp`` does not combine with, and what only it enables."""
    if train.parallel == "fsdp" and train.precision == "fp16":  # auto never means fp16
        raise ConfigError(
            "'train.precision': fp16 is not supported under train.parallel=fsdp (its gradient scaler does not run "
            "over sharded gradients); use bf16, which needs no scaler"
        )
    if train.parallel == "fsdp" and train.grad_diagnostics_every:
        raise ConfigError(
            "'train.grad_diagnostics_every': gradient diagnostics need each encoder's whole parameters, which "
            "train.parallel=fsdp shards; set it to 0 or train under ddp"
        )
    if train.async_checkpoint and train.parallel != "fsdp":
        raise ConfigError("'train.async_checkpoint': only sharded checkpoints save asynchronously (train.parallel=fsdp)")
    if train.ema is not None and train.parallel == "fsdp":
        raise ConfigError(
            "'train.ema': train.ema is not supported with train.parallel: fsdp yet (its average would need the "
            "parameters' shards and a place in the sharded checkpoint); train under ddp, or set train.ema=null"
        )


def _check_ema(ema: EmaConfig | None) -> None:
    if ema is None:
        return
    if not 0.0 < ema.decay < 1.0:
        raise ConfigError(f"'train.ema.decay': must be in (0, 1) (e.g. 0.999), got {ema.decay}")
    if ema.warmup_steps < 0:
        raise ConfigError(f"'train.ema.warmup_steps': must be >= 0 (0: the full decay from the first update), got {ema.warmup_steps}")
    if ema.every < 1:
        raise ConfigError(f"'train.ema.every': must be >= 1 (optimizer steps between updates), got {ema.every}")


def config_from_dict(raw: Mapping[str, Any]) -> RunConfig:
    """Validate a plain dict (the YAML layout) into a RunConfig."""
    _check_keys(raw, _TOP_KEYS, "")
    for required in ("modalities", "objectives"):
        if not raw.get(required):
            raise ConfigError(f"'{required}': required section is missing or empty")
    modalities = {
        str(name): _modality_spec(str(name), section)
        for name, section in _mapping(raw["modalities"], "modalities").items()
    }
    objectives = {
        str(name): _objective_spec(str(name), section, modalities)
        for name, section in _mapping(raw["objectives"], "objectives").items()
    }
    _check_spaces(objectives)
    train = convert(raw.get("train", {}), TrainConfig, "train")
    if train.grad_diagnostics_every and train.grad_diagnostics_modality not in modalities:
        raise ConfigError(
            f"'train.grad_diagnostics_modality': '{train.grad_diagnostics_modality}' is not a configured modality."
            f"{closest(train.grad_diagnostics_modality, list(modalities))} Configured: {sorted(modalities)}"
        )
    if train.max_bad_steps < 0:
        raise ConfigError(
            f"'train.max_bad_steps': must be >= 0 (0 stops at the first non-finite step), got {train.max_bad_steps}"
        )
    if train.peak_tflops is not None and not train.peak_tflops > 0:
        raise ConfigError(f"'train.peak_tflops': must be > 0 (TFLOP/s of one device), got {train.peak_tflops}")
    _check_parallel(train)
    _check_ema(train.ema)
    _check_encoder_selection(train.grad_checkpointing, "train.grad_checkpointing", modalities)
    _check_encoder_selection(train.compile, "train.compile", modalities)
    for owner, scale in train.lr_scale.items():
        if owner not in modalities and owner not in objectives:
            known = sorted({*modalities, *objectives})
            raise ConfigError(
                f"'train.lr_scale.{owner}': not a configured modality or objective.{closest(owner, known)} "
                f"Configured: {known}"
            )
        if not scale > 0:
            raise ConfigError(f"'train.lr_scale.{owner}': must be > 0, got {scale}")
    sparse = [n for n, o in objectives.items() if o.every > 1]
    if sparse and train.schedule != "all":
        raise ConfigError(
            f"'objectives.{sparse[0]}.every': only train.schedule 'all' runs objectives every N steps; "
            f"schedule '{train.schedule}' already runs one objective per step"
        )
    if objectives and all(o.every > 1 for o in objectives.values()):
        raise ConfigError("'objectives.<name>.every': at least one objective must run every step (every: 1)")
    if train.schedule == "weighted" and not any(o.probability > 0 for o in objectives.values()):
        raise ConfigError("'objectives.<name>.probability': train.schedule 'weighted' needs one objective with probability > 0")
    return RunConfig(
        name=convert(raw.get("name", "run"), str, "name"),
        seed=convert(raw.get("seed", 0), int, "seed"),
        modalities=modalities,
        objectives=objectives,
        world=convert(raw.get("world", {}), WorldConfig, "world"),
        train=train,
        eval=convert(raw.get("eval", {}), EvalConfig, "eval"),
    )


def _check_encoder_selection(selection: bool | list[str], key: str, modalities: Mapping[str, ModalitySpec]) -> None:
    """A ``train`` option naming encoders: every name a configured modality; for
    ``grad_checkpointing``, one whose class implements ``set_grad_checkpointing``
    (options that rule it out, such as audio's wav2vec2 encoder, are found when the model
    is built, as the same error)."""
    if isinstance(selection, bool):
        return
    for i, name in enumerate(selection):
        if name not in modalities:
            raise ConfigError(
                f"'{key}[{i}]': '{name}' is not a configured modality.{closest(name, list(modalities))} "
                f"Configured: {sorted(modalities)}"
            )
        if key == "train.grad_checkpointing":
            spec = modalities[name]
            encoder_class = MODALITIES.get(spec.type).encoder_class(spec.options)
            if encoder_class.set_grad_checkpointing is Encoder.set_grad_checkpointing:
                raise ConfigError(
                    f"'{key}[{i}]': modality '{name}' (type {spec.type}) has no activation checkpointing "
                    "(its encoder does not implement Encoder.set_grad_checkpointing); leave it out of the list"
                )


def _check_spaces(objectives: Mapping[str, ObjectiveSpec]) -> None:
    """Objectives naming one space share a head per modality: their head options must agree."""
    first: dict[str, tuple[str, Any]] = {}
    for name, spec in objectives.items():
        space = getattr(spec.options, "space", None)
        if not space:
            continue
        other, options = first.setdefault(space, (name, spec.options))
        for option in ("embed_dim", "head"):
            mine, theirs = getattr(spec.options, option, None), getattr(options, option, None)
            if other != name and mine != theirs:
                raise ConfigError(
                    f"'objectives.{name}.{option}': {mine!r}, but '{other}' in the same space '{space}' has {theirs!r}; "
                    "objectives in one space share their projection heads"
                )


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"'{key}': expected a mapping, got {type(value).__name__} {value!r}")
    return value


def _registry_class(registry: Any, name: Any, key: str) -> tuple[str, type]:
    """(name as a plain str, the registered class)."""
    if not isinstance(name, str):
        raise ConfigError(f"'{key}': expected a {registry.kind} name, got {name!r}")
    try:
        return str(name), registry.get(name)
    except RegistryError as exc:
        raise ConfigError(f"'{key}': {exc}") from None


def _modality_spec(name: str, section: Any) -> ModalitySpec:
    key = f"modalities.{name}"
    section = dict(_mapping(section or {}, key))
    type_name, cls = _registry_class(MODALITIES, section.pop("type", name), f"{key}.type")
    core = {k: section.pop(k) for k in MODALITY_KEYS[1:] if k in section}
    section.update(_pretrained_options(cls, core.get("pretrained"), section, key))
    options = convert(section, cls.Config, key, extra_valid=MODALITY_KEYS)
    hints = typing.get_type_hints(ModalitySpec)
    values = {}
    for k, v in core.items():
        if k == "freeze" and str(v).lower() not in ("true", "false", "all"):
            raise ConfigError(f"'{key}.freeze': true (the encoder), all (its heads too) or false; got {v!r}")
        values[k] = convert(v, hints[k], f"{key}.{k}")
    if values.get("pretrained") == "":
        raise ConfigError(f"'{key}.pretrained': an empty path (null: the model's own initialisation)")
    return ModalitySpec(type=type_name, options=options, **values)


def _pretrained_options(cls: Any, pretrained: Any, section: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The options a modality's pretrained folder decides (an open_clip model_cfg's tower
    shapes) that ``section`` leaves out; the config's own values win. Read from the
    folder's configuration only, and only while an option is missing: a resolved config
    (a checkpoint's) has them all and reads nothing."""
    held = {k for group in cls.pretrained_option_groups if any(g in section for g in group) for k in group}
    wanted = [k for k in cls.pretrained_options if k not in section and k not in held]
    if not pretrained or not wanted or not Path(str(pretrained)).expanduser().exists():
        return {}
    try:
        found = cls.options_from_pretrained(Path(str(pretrained)).expanduser())
    except ValueError as exc:
        raise ConfigError(f"'{key}.pretrained': {exc}") from None
    return {k: found[k] for k in wanted if k in found}


def _modality_core_keys(spec: ModalitySpec) -> dict[str, Any]:
    """The core's keys of a modality section that differ from their defaults (a config
    without them reads back the same)."""
    defaults = ModalitySpec(spec.type, None)
    return {k: getattr(spec, k) for k in MODALITY_KEYS[1:] if getattr(spec, k) != getattr(defaults, k)}


def _objective_spec(name: str, section: Any, modalities: Mapping[str, ModalitySpec]) -> ObjectiveSpec:
    key = f"objectives.{name}"
    section = dict(_mapping(section or {}, key))
    type_name, cls = _registry_class(OBJECTIVES, section.pop("type", name), f"{key}.type")
    weight = convert(section.pop("weight", 1.0), float, f"{key}.weight")
    if weight < 0:
        raise ConfigError(f"'{key}.weight': must be >= 0, got {weight}")
    probability = convert(section.pop("probability", 1.0), float, f"{key}.probability")
    if probability < 0:
        raise ConfigError(f"'{key}.probability': must be >= 0, got {probability}")
    every = convert(section.pop("every", 1), int, f"{key}.every")
    if every < 1:
        raise ConfigError(f"'{key}.every': must be >= 1, got {every}")
    data_section = section.pop("data", {})
    options = convert(section, cls.Config, key, extra_valid=("type", "weight", "probability", "every", "data"))
    for i, m in enumerate(getattr(options, "modalities", ())):
        if m not in modalities:
            raise ConfigError(
                f"'{key}.modalities[{i}]': modality '{m}' is not configured under 'modalities'."
                f"{closest(m, list(modalities))} Configured: {sorted(modalities)}"
            )
    data = _data_config(data_section, f"{key}.data", tuple(getattr(options, "modalities", ())))
    if data.batch_size < 1:
        raise ConfigError(f"'{key}.data.batch_size': must be >= 1, got {data.batch_size}")
    return ObjectiveSpec(type=type_name, weight=weight, data=data, options=options, probability=probability, every=every)


def _data_config(section: Any, key: str, modalities: Sequence[str]) -> DataConfig:
    """An objective's ``data`` section: the stream's keys, and the rest checked against
    the options of the source kind that ``source`` names (did-you-mean on a miss)."""
    section = dict(_mapping(section or {}, key))
    stream = {k: section.pop(k) for k in STREAM_KEYS if k in section}
    source, _, options = source_options(section, key, modalities, extra_valid=STREAM_KEYS)
    return dataclasses.replace(convert(stream, DataConfig, key), source=source, options=options)


def source_options(
    section: Mapping[str, Any], key: str, modalities: Sequence[str], extra_valid: Sequence[str] = ()
) -> tuple[str, type, Any]:
    """(kind name, kind class, its checked options) of a source section: ``source`` names
    a registered kind (default ``world``), the other keys are its options. ``extra_valid``
    are keys the caller took out before (listed in the unknown-key message)."""
    section = dict(section)
    source, kind = _registry_class(SOURCES, section.pop("source", "world"), f"{key}.source")
    options = convert(section, kind.Config, key, extra_valid=("source", *extra_valid))
    kind.check(options, key, modalities)
    return source, kind, options


# --------------------------------------------------------------------------------------
# Typed conversion
# --------------------------------------------------------------------------------------


def _check_keys(raw: Mapping[str, Any], valid: Sequence[str], key: str) -> None:
    for k in raw:
        if k not in valid:
            where = f"'{key}.{k}'" if key else f"'{k}'"
            raise ConfigError(f"{where}: unknown key.{closest(str(k), list(valid))} Valid keys: {sorted(valid)}")


def convert(value: Any, tp: Any, key: str, extra_valid: Sequence[str] = ()) -> Any:
    """``value`` checked against type ``tp`` (dataclass, Literal, Optional, list, dict ...).

    A ``PlainScalar`` (unquoted YAML) is read by ``tp``: every spelling Python's
    ``int()`` / ``float()`` accepts for numbers, true/false/yes/no/on/off for booleans,
    its text for strings. The result holds only built-in types.
    """
    if is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}': expected a mapping, got {_type_name(value)} {value!r}")
        hints = typing.get_type_hints(tp)
        dc_fields = {f.name: f for f in fields(tp) if f.init}
        for k in value:
            if k not in dc_fields:
                valid = list(dc_fields) + list(extra_valid)
                raise ConfigError(f"'{_join(key, k)}': unknown key.{closest(str(k), valid)} Valid keys: {sorted(valid)}")
        kwargs = {}
        for name, f in dc_fields.items():
            if name in value:
                kwargs[name] = convert(value[name], hints[name], _join(key, name))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"'{_join(key, name)}': required value is missing")
        return tp(**kwargs)

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    plain = isinstance(value, PlainScalar)
    if tp is Any:
        return _untyped(value)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"'{key}': {value!r} is not one of {list(args)}.{closest(str(value), [str(a) for a in args])}")
        return args[args.index(value)]  # the declared value itself, not a PlainScalar
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        # a plain scalar is read as a string only when no other member type reads it
        for arg in sorted((a for a in args if a is not type(None)), key=lambda a: plain and a is str):
            try:
                return convert(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"'{key}': {value!r} matches none of {tp}")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}': expected a list, got {_type_name(value)} {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"'{key}': expected {len(args)} items, got {len(value)}: {value!r}")
            return tuple(convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}': expected a mapping, got {_type_name(value)} {value!r}")
        kt, vt = args if args else (Any, Any)
        return {convert(k, kt, key): convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if plain and str(value).lower() in _BOOLS:
            return _BOOLS[str(value).lower()]
        if not isinstance(value, bool):
            raise ConfigError(f"'{key}': expected true/false, got {_type_name(value)} {value!r}")
        return value
    if tp in (int, float) and plain:
        number = _number(value, tp)
        if number is None:
            expected = "an integer" if tp is int else "a number"
            raise ConfigError(f"'{key}': expected {expected}, got str {value!r}")
        return number
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{key}': expected an integer, got {_type_name(value)} {value!r}{_quoted_hint(value, tp)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{key}': expected a number, got {_type_name(value)} {value!r}{_quoted_hint(value, tp)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{key}': expected a string, got {_type_name(value)} {value!r}")
        return str(value)
    raise ConfigError(f"'{key}': unsupported config type {tp}")


def _join(key: str, name: Any) -> str:
    return f"{key}.{name}" if key else str(name)


def load_options(
    cls: type[T], path: str | Path | None = None, values: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (), sections: Mapping[str, type] | None = None,
) -> T:
    """Options of a recipe (fine-tuning, self-training, evaluation) read as run configs
    are: a YAML file (if any), then ``values`` (what command-line flags set), then
    ``key=value`` overrides, checked against the dataclass ``cls`` by type, with errors
    naming the key and the closest valid one. ``sections`` are nested dataclasses under
    their own key (``self_training:``); with them the result is (options, {section: its
    options, or None where the recipe has none})."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe file not found: {path}")
        try:
            raw = read_yaml(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    for key, value in (values or {}).items():
        *parents, last = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"'{part}': expected a section, got {node!r}")
        node[last] = value
    raw = apply_overrides(raw, overrides)
    sections = dict(sections or {})
    try:
        found = {}
        for name, tp in sections.items():
            section = raw.pop(name, None)
            found[name] = None if section is None else convert(section, tp, name)
        options = convert(raw, cls, "", extra_valid=tuple(sections))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path is not None else str(exc)) from None
    return (options, found) if sections else options


def _plain(obj: Any) -> Any:
    """Dataclass -> plain dict/list values for YAML."""
    if is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj
