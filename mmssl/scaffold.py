"""``python -m mmssl new-plugin NAME``: a plugin package skeleton that installs, passes
its own contract tests and trains as generated.

It writes ``mmssl-NAME/`` with a pyproject declaring the entry points, a modality
(a fixed-length vector signal with a small MLP encoder and a concept space for the
embedded world), an objective (reconstruction of the input from the pooled
embedding), a config training both with text in the shared space, and a test running
``mmssl.testing``. Each file says what to replace.
"""

from __future__ import annotations

import keyword
from pathlib import Path

from mmssl.common.atomic import write_text_atomic


class ScaffoldError(ValueError):
    """The plugin cannot be written as asked; the message says why."""


PYPROJECT = '''[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "mmssl-{name}"
version = "0.1.0"
description = "An mmssl plugin: the {name} modality and its reconstruction objective"
requires-python = ">=3.11"
dependencies = ["mmssl", "torch", "numpy"]

[project.optional-dependencies]
test = ["pytest>=8"]

[project.entry-points."mmssl.modalities"]
{name} = "mmssl_{name}.modality:{title}Modality"

[project.entry-points."mmssl.objectives"]
{name}_reconstruct = "mmssl_{name}.objective:{title}ReconstructObjective"

[tool.setuptools]
packages = ["mmssl_{name}"]
'''

INIT = '''"""mmssl-{name}: the {name} modality and its objective, registered through entry points."""
'''

CONFIG_MODULE = '''"""The {name} modality's options, read by its encoder, processor and renderer alike."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class {title}Config:
    dim: int = 32  # values an item holds
    width: int = 64  # embed_dim of the encoder
    noise: float = 0.05  # training augmentation
'''

MODALITY = '''"""The {name} modality: the three parts a modality is made of, each in a module of its
own (encoder.py, processor.py, renderer.py), over its options (config.py). Replace them
with your own; mmssl.testing.check_modality checks the contract."""

from __future__ import annotations

from mmssl_{name}.config import {title}Config
from mmssl_{name}.encoder import {title}Encoder
from mmssl_{name}.processor import {title}Processor
from mmssl_{name}.renderer import {title}Renderer
from modalities.base import Modality


class {title}Modality(Modality):
    """Names the encoder, processor and renderer; the entry point points here."""

    Config = {title}Config
    Encoder = {title}Encoder
    Processor = {title}Processor
    Renderer = {title}Renderer
'''

ENCODER = '''"""The {name} encoder: parameters and the forward pass, batches to embeddings."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from mmssl_{name}.config import {title}Config
from modalities.base import Encoder, ModalityOutput


class {title}Encoder(Encoder):
    """A float vector of ``dim`` values through an MLP."""

    independent_samples = True

    def __init__(self, config: {title}Config) -> None:
        super().__init__(config)
        self.embed_dim = config.width  # required: the width of ``pooled``
        self.mlp = nn.Sequential(nn.Linear(config.dim, config.width), nn.GELU(), nn.Linear(config.width, config.width))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> ModalityOutput:
        return ModalityOutput(pooled=self.mlp(batch["values"]))
'''

PROCESSOR = '''"""The {name} processor: files and raw items to samples, samples to batches. No
parameters: data loader workers hold it."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from modalities.base import InvalidSample, Processor


class {title}Processor(Processor):
    """Reads ``.npy`` vectors of ``dim`` values; training adds a little noise."""

    file_extensions = (".npy",)

    def load(self, path: str) -> np.ndarray:
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InvalidSample(f"unreadable {name} file: {{exc}}", source=path) from None

    def transform(self, raw: Any, rng: np.random.Generator | None = None) -> torch.Tensor:
        if isinstance(raw, str):
            raw = self.load(raw)
        values = np.asarray(raw, dtype=np.float32)
        if values.shape != (self.config.dim,) or not np.isfinite(values).all():
            raise InvalidSample(f"expected {{self.config.dim}} finite values, got shape {{list(values.shape)}}")
        if rng is not None:  # training: a new array, the raw item is left as it was
            values = values + rng.normal(0, self.config.noise, values.shape).astype(np.float32)
        return torch.tensor(values)

    def collate(self, samples: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {{"values": torch.stack(list(samples))}}
'''

RENDERER = '''"""The {name} renderer: the modality's concepts in the embedded world."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from modalities.base import COUNT, ConceptSpace, Renderer

SPACE = ConceptSpace(
    class_attributes={{"pattern": ("flat", "ramp", "wave", "spike")}},
    shared_attributes=COUNT,  # the world's count: render it, and cross-modal retrieval can match on it
    caption_templates=("a {{pattern}} {name} signal", "a {name} {{pattern}} with {{count}}"),
    synonyms={{"one": ("one peak",), "two": ("two peaks",), "three": ("three peaks",), "four": ("four peaks",)}},
    prompt_templates=("a {{}} {name} signal.",),
)


class {title}Renderer(Renderer):
    """Patterns over ``dim`` values, with the world's count as narrow peaks."""

    def concept_space(self) -> ConceptSpace:
        return SPACE

    def render(self, concept: Mapping[str, str], rng: np.random.Generator) -> np.ndarray:
        x = np.linspace(0, 1, self.config.dim)
        base = {{"flat": 0 * x, "ramp": x, "wave": np.sin(6 * np.pi * x), "spike": (np.abs(x - 0.5) < 0.05) * 2.0}}
        signal = base[concept["pattern"]] * rng.uniform(0.8, 1.2)
        peaks = COUNT["count"].index(concept.get("count", "one")) + 1
        for i in range(peaks):  # the count: that many narrow peaks near the end
            signal = signal + 1.5 * np.exp(-((x - 0.6 - 0.1 * i) ** 2) / 0.0004)
        return (signal + rng.normal(0, 0.05, x.shape)).astype(np.float32)
'''

OBJECTIVE = '''"""The {name} objective: reconstruct the input from the pooled embedding. Replace the
loss with your own; keep the members: mmssl.testing.check_objective checks them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch.nn.functional as F

from modalities.base import Encoder
from objectives.base import DistContext, EncoderHost, Objective, ObjectiveOutput
from objectives.helpers.heads import projection_head


@dataclass(frozen=True)
class {title}ReconstructConfig:
    modalities: tuple[str] = ("{name}",)


class {title}ReconstructObjective(Objective):
    """Mean squared error of a head's reconstruction of each item's values."""

    Config = {title}ReconstructConfig

    def __init__(self, config: {title}ReconstructConfig, encoders: Mapping[str, Encoder], dist: DistContext) -> None:
        super().__init__(config, encoders, dist)
        (self.key,) = self.modalities
        encoder = encoders[self.key]
        self.head = projection_head(encoder.embed_dim, encoder.config.dim, "mlp")

    def forward(self, model: EncoderHost, batch: Mapping[str, Any]) -> ObjectiveOutput:
        values = batch[self.key]["values"]
        loss = F.mse_loss(self.head(model.encoders[self.key](batch[self.key]).pooled), values)
        # metrics as detached tensors: the trainer reads them with the step's others
        return ObjectiveOutput(loss=loss, metrics={{"loss": loss.detach(), "variance": values.var().detach()}})
'''

CONFIG = '''# {name} with text in the shared space, plus its own objective, on the embedded world.
#   pip install -e .
#   mmssl-pretrain configs/{name}.yaml --output-dir runs/{name}
#   mmssl-zero-shot --checkpoint runs/{name} --modality {name} --task all
name: {name}
seed: 0
modalities:
  {name}: {{width: 64}}
  text: {{context_length: 24, width: 64, layers: 1, heads: 4, pool: mean}}
objectives:
  {name}_text:
    type: contrastive
    modalities: [{name}, text]
    embed_dim: 64
    space: hub
    data: {{batch_size: 64}}
  {name}_reconstruct:
    modalities: [{name}]
    weight: 0.5
    data: {{batch_size: 32}}
world:
  heldout: {{{name}: 0}}   # one class attribute: holding a class out would hide its value
  eval_samples_per_class: 50
train:
  steps: 200
  lr: 0.002
  warmup_steps: 20
  log_every: 20
'''

TEST = '''"""The plugin's contract tests (mmssl.testing) and a short training run."""

from pathlib import Path

import mmssl
from mmssl.testing import check_modality, check_objective
from mmssl_{name}.modality import {title}Modality

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "{name}.yaml"


def test_{name}_meets_the_modality_contract():
    check_modality({title}Modality, {{"width": 16}})


def test_{name}_reconstruct_meets_the_objective_contract():
    check_objective(CONFIG, "{name}_reconstruct")


def test_{name}_trains(tmp_path):
    config = mmssl.load_config(CONFIG, ["train.steps=3", "train.log_every=1", "train.progress=false", "train.checkpoint_every=0"])
    mmssl.Pretrainer(config, tmp_path).fit()
    assert (tmp_path / "metrics.jsonl").read_text().count("\\n") == 3
'''


def write_plugin(name: str, output: str | Path = ".") -> Path:
    """Write the skeleton of plugin ``name`` under ``output``/mmssl-``name``; returns its folder."""
    if not name.isidentifier() or keyword.iskeyword(name) or not name.islower():
        raise ScaffoldError(f"plugin name must be a lower-case Python identifier (it names the modality), got {name!r}")
    root = Path(output) / f"mmssl-{name}"
    if root.exists():
        raise ScaffoldError(f"{root} already exists; choose another name or --output")
    title = "".join(part.capitalize() for part in name.split("_"))
    files = {
        "pyproject.toml": PYPROJECT,
        f"mmssl_{name}/__init__.py": INIT,
        f"mmssl_{name}/config.py": CONFIG_MODULE,
        f"mmssl_{name}/modality.py": MODALITY,
        f"mmssl_{name}/encoder.py": ENCODER,
        f"mmssl_{name}/processor.py": PROCESSOR,
        f"mmssl_{name}/renderer.py": RENDERER,
        f"mmssl_{name}/objective.py": OBJECTIVE,
        f"configs/{name}.yaml": CONFIG,
        f"tests/test_{name}.py": TEST,
    }
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, template.format(name=name, title=title))
    return root
