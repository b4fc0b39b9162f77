"""mmssl: multimodal self-supervised pretraining over text, images, audio and graphs.

Public API:
    load_config, config_from_dict, RunConfig     configs (YAML -> typed dataclasses)
    build_model, MultimodalModel                 encoders + objectives from a config
    Pretrainer                                   the joint training loop
    load_pretrained                              a checkpoint's model, for encode()
    load_checkpoint, Pretrained                  a checkpoint's model with its run config
    register_modality, register_objective,       plugins (or entry points)
    register_source
    list_modalities, list_objectives, list_sources
    World, world_for, sample_rng                 the embedded world and its seeded generators
    finetune, FinetuneOptions                    a pretrained encoder + linear head on labelled data
    self_train, SelfTrainingOptions              fine-tuning rounds with pseudo-labels
    run_tasks, EvalOptions                       registered evaluation tasks of a loaded checkpoint
    load_options                                 a recipe (fine-tune, evaluation) from YAML + overrides
"""

import mmssl.import_warnings  # noqa: F401  (first: before any import of PyTorch Geometric)
from mmssl.train.checkpoint import Pretrained, load_checkpoint, load_pretrained
from mmssl.config import ConfigError, RunConfig, config_from_dict, load_config, load_options
from mmssl.eval.tasks import EvalOptions, run_tasks
from mmssl.transfer.finetune import FinetuneOptions, finetune
from mmssl.transfer.self_training import SelfTrainingOptions, self_train
from mmssl.model import MultimodalModel, build_model
from mmssl.registry import (
    list_modalities,
    list_objectives,
    list_sources,
    register_modality,
    register_objective,
    register_source,
)
from mmssl.train.trainer import Pretrainer
from mmssl.common.seeding import sample_rng
from mmssl.world import World, world_for

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "EvalOptions",
    "FinetuneOptions",
    "MultimodalModel",
    "Pretrained",
    "Pretrainer",
    "RunConfig",
    "SelfTrainingOptions",
    "World",
    "build_model",
    "config_from_dict",
    "finetune",
    "list_modalities",
    "list_objectives",
    "list_sources",
    "load_checkpoint",
    "load_config",
    "load_options",
    "load_pretrained",
    "register_modality",
    "register_objective",
    "register_source",
    "run_tasks",
    "sample_rng",
    "self_train",
    "world_for",
]
