"""The Modality contract: an encoder plus the data handling that belongs to it.

A modality turns raw items (a path, a PIL image, a string, ...) into model-ready
samples (``transform``), samples into batches (``collate``) and batches into
embeddings (``forward``). For the embedded world it also describes its concept
space and renders concepts (``concept_space``, ``render``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn


@contextlib.contextmanager
def seeded_torch_rng(rng: np.random.Generator) -> Iterator[None]:
    """Seed torch's global CPU generator from a sample's own generator, restoring it
    afterwards: library transforms (torchvision, torchaudio, PyG) draw from it.

    Seeds the CPU generator only: ``torch.manual_seed`` also queues accelerator seeds,
    which would reseed the model's dropout on a GPU, and cost 0.35 ms per call here.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(rng.integers(2**62)))
        yield


class InvalidSample(ValueError):
    """A raw item that cannot become a sample. The data layer decides skip vs fail.

    Args:
        reason: what was wrong, e.g. "cannot identify image file".
        source: where the item came from (file path, row number), if known.
    """

    def __init__(self, reason: str, source: str | None = None) -> None:
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {reason}" if source else reason)


@dataclass
class ModalityOutput:
    """What an encoder returns.

    Shapes:
        pooled: [B, D] always.
        tokens: [B, N, D] where the encoder has tokens (text, patches), else None.
        padding_mask: [B, N] bool, True at padded positions, or None.
    """

    pooled: torch.Tensor
    tokens: torch.Tensor | None = None
    padding_mask: torch.Tensor | None = None


@dataclass(frozen=True)
class ConceptSpace:
    """The concepts a modality can render in the embedded world, and how to caption them.

    A class is one value for each of ``class_attributes`` (e.g. colour x shape); the
    ``nuisance_attributes`` (size, position) vary within a class and may appear in
    captions. Templates use ``{attribute}`` fields; a value is written as itself or
    one of its ``synonyms``.
    """

    class_attributes: Mapping[str, Sequence[str]]
    nuisance_attributes: Mapping[str, Sequence[str]] = field(default_factory=dict)
    caption_templates: Sequence[str] = ()
    single_attribute_templates: Mapping[str, Sequence[str]] = field(default_factory=dict)
    synonyms: Mapping[str, Sequence[str]] = field(default_factory=dict)
    prompt_templates: Sequence[str] = ("a {}.",)

    def class_name(self, concept: Mapping[str, str]) -> str:
        """Human-readable class name: the class attribute values in declared order."""
        return " ".join(concept[a] for a in self.class_attributes)


class Modality(nn.Module):
    """Base class for a modality: subclass it and declare it as an entry point.

    Class attributes:
        name: the registry key ("image"); set by the registry too.
        Config: a dataclass of the modality's options; config files are checked
            against its fields and types.
        file_extensions: lower-case suffixes of this modality's files (".wav").
        consumes_captions: True for language modalities, which receive the
            world's captions and zero-shot prompts as raw items.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    consumes_captions: ClassVar[bool] = False
    file_extensions: ClassVar[tuple[str, ...]] = ()  # what a data folder of this modality holds
    # True when each sample's output depends on that sample alone (no BatchNorm or other
    # cross-sample layers): then several objectives' calls may run as one batched call.
    independent_samples: bool = False

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.key: str = self.name  # its name in the model (the config key); set when built
        self.embed_dim: int = 0

    # --- data -------------------------------------------------------------------
    def load(self, path: str) -> Any:
        """Read one raw item from a file. Raises InvalidSample naming the file."""
        raise NotImplementedError(f"modality '{self.name}' does not read files")

    def transform(self, raw: Any, rng: np.random.Generator | None = None) -> Any:
        """One raw item to a model-ready sample; ``rng`` None means eval (deterministic)."""
        raise NotImplementedError

    def collate(self, samples: Sequence[Any]) -> Any:
        """A list of samples to a batch: a dict of tensors, or a PyG ``Batch`` for graphs."""
        raise NotImplementedError

    # --- model ------------------------------------------------------------------
    def forward(self, batch: Mapping[str, torch.Tensor]) -> ModalityOutput:
        raise NotImplementedError

    # --- embedded world and zero-shot ---------------------------------------------
    def concept_space(self) -> ConceptSpace | None:
        """The concepts this modality renders in the embedded world (None if it renders none)."""
        return None

    def render(self, concept: Mapping[str, str], rng: np.random.Generator) -> Any:
        """A raw item showing ``concept`` (values for every attribute of the concept space)."""
        raise NotImplementedError(f"modality '{self.name}' renders no concepts")

    def prompt_templates(self) -> Sequence[str]:
        """Zero-shot prompt templates for class names of real datasets ("a photo of a {}.")."""
        space = self.concept_space()
        return tuple(space.prompt_templates) if space is not None else ("{}",)

    # --- checkpoint extras -----------------------------------------------------------
    def extra_state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state beyond weights (a tokenizer's settings), saved with checkpoints."""
        return {}

    def check_extra_state(self, state: Mapping[str, Any]) -> None:
        """Raise ValueError if a checkpoint's extra state does not fit this modality."""

    def call_defaults(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments of ``forward`` that equal leaving them out, for ``inputs``
        (an all-False patch mask), so a plain call can join a batched call that passes them."""
        return {}

    def move_batch(self, batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
        """Batch to device (non-blocking where possible)."""
        return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
