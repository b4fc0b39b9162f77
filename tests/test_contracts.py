"""The built-in modalities and objectives pass the contract suite plugins run (mmssl.testing)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import mmssl
from mmssl.registry import MODALITIES, OBJECTIVES, get_modality
from mmssl.testing import ContractError, check_modality, check_objective
from mmssl.train.checkpoint import save_checkpoint
from modalities.base import Encoder, Modality, ModalityOutput, Processor

REPO = Path(__file__).resolve().parents[1]
TINY_JOINT = REPO / "configs" / "tiny_joint.yaml"
TINY_SSL = REPO / "configs" / "tiny_ssl.yaml"  # tiny_joint's objectives and the rest of the family
BUILT_IN = "entry point in mmssl)"


def _tiny_modalities() -> dict[str, object]:
    config = mmssl.load_config(TINY_JOINT)
    return {spec.type: spec.options for spec in config.modalities.values()}


@pytest.mark.parametrize("name", [e.name for e in MODALITIES.entries() if e.source.endswith(BUILT_IN)])
def test_built_in_modalities_meet_the_contract(name):
    options = _tiny_modalities()
    assert name in options, f"built-in modality '{name}' has no case in configs/tiny_joint.yaml"
    items = ["a red circle", "a rising sine tone in three notes", "a small cycle graph", "x"] if name == "text" else None
    check_modality(get_modality(name), options[name], items=items)


# Cases beside tiny_ssl's own objectives, added by override: the generic masked-patch
# objective on a modality of its own choosing, BYOL on graph views, distillation from a
# saved configs/tiny.yaml model (TEACHER: written by the case), DINO on sounds.
EXTRA_OBJECTIVES = {
    "patches": "{type: masked_patches, modalities: [audio], mask_kind: time, data: {batch_size: 16}}",
    "graph_byol": "{type: view_contrastive, modalities: [graph], method: byol, embed_dim: 16, data: {batch_size: 16}}",
    "distill": "{type: distill, modalities: [image, text], teacher: TEACHER, data: {batch_size: 16}}",
    "audio_dino": "{type: dino, modalities: [audio], local_crops: 2, prototypes: 32, hidden_dim: 32, bottleneck_dim: 16, "
                  "data: {batch_size: 16}}",
}


def _ssl_case(objective: str, tmp_path: Path) -> list[str]:
    extra = EXTRA_OBJECTIVES.get(objective)
    if extra is not None and "TEACHER" in extra:
        teacher = mmssl.load_config(REPO / "configs" / "tiny.yaml")
        save_checkpoint(tmp_path, 6, mmssl.build_model(teacher), {}, teacher)
        extra = extra.replace("TEACHER", str(tmp_path))
    return ["train.threads=1", *([f"objectives.{objective}={extra}"] if extra is not None else [])]


@pytest.mark.parametrize("objective", [*mmssl.load_config(TINY_SSL).objectives, *EXTRA_OBJECTIVES])
def test_built_in_objectives_meet_the_contract(objective, tmp_path):
    check_objective(TINY_SSL, objective, _ssl_case(objective, tmp_path))


def test_every_built_in_objective_kind_is_covered():
    config = mmssl.load_config(TINY_SSL, [f"objectives.{k}={v}" for k, v in EXTRA_OBJECTIVES.items()])
    kinds = {spec.type for spec in config.objectives.values()}
    assert {e.name for e in OBJECTIVES.entries() if e.source.endswith(BUILT_IN)} <= kinds


@dataclass(frozen=True)
class _CarelessConfig:
    broken: str = ""


class _CarelessEncoder(Encoder):
    """Breaks one rule at a time, as told."""

    def __init__(self, config):
        super().__init__(config)
        self.embed_dim = 0 if config.broken == "embed_dim" else 4
        self.linear = torch.nn.Linear(3, 4)

    def forward(self, batch):
        pooled = self.linear(batch["x"])
        if self.config.broken == "batch_dependent":
            pooled = pooled - pooled.mean(0)
        return ModalityOutput(pooled=pooled)


class _CarelessProcessor(Processor):
    def __init__(self, config):
        super().__init__(config)
        if config.broken == "parameters":
            self.weights = torch.nn.Linear(3, 3)  # a trainable module where loader workers would hold it

    def transform(self, raw, rng=None):
        if self.config.broken == "mutates":
            raw += 1
        if rng is not None:
            noise = rng.normal()
        else:  # eval: deterministic, unless told otherwise
            noise = np.random.normal() if self.config.broken == "eval_random" else 0.0
        return torch.as_tensor(raw + noise, dtype=torch.float32)

    def collate(self, samples):
        return {"x": torch.stack(samples)}


class _Careless(Modality):
    name = "careless"
    Config = _CarelessConfig
    Encoder = _CarelessEncoder
    Processor = _CarelessProcessor


@pytest.mark.parametrize("broken, message", [
    ("embed_dim", "must set embed_dim"),
    ("mutates", "transform must not modify its raw item"),
    ("eval_random", "transform(raw, None) (eval) must be deterministic"),
    ("batch_dependent", "independent_samples is True, but a sample's output depends on its batch"),
    ("parameters", "the processor must hold no parameters"),
])
def test_contract_names_the_rule_a_modality_breaks(broken, message):
    _CarelessEncoder.independent_samples = broken == "batch_dependent"
    items = [np.arange(3, dtype=np.float64) + i for i in range(3)]
    with pytest.raises(ContractError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_modality(_Careless, {"broken": broken}, items=items)
    check_modality(_Careless, {}, items=items)  # the same modality, unbroken, passes
