"""The Modality contract: three parts, each with one job, bundled under one registered name.

- ``Encoder`` (an ``nn.Module``): parameters and the forward pass, batches to embeddings,
  with the capability hooks objectives ask for (patches, maskable tokens, checkpointing).
- ``Processor`` (no parameters): raw items (a path, file bytes, a PIL image, a string)
  to model-ready samples (``transform``), random views of a sample (``augment``) and
  samples to batches (``collate``). Data loader workers and evaluation sets hold
  processors, never encoders.
- ``Renderer`` (optional): the modality's concepts in the embedded world and one
  rendered raw item per concept.

``Modality`` names the three classes and the options they share (``Config``); the
registry holds it, and ``Modality.build`` makes the parts of one configured modality.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Protocol, Sequence, runtime_checkable

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


def require_file(path: str) -> None:
    """Raise InvalidSample naming ``path`` unless it is a regular file a reader can open:
    not missing, a directory, a broken or looping symbolic link, or a pipe or device
    (opening a FIFO would wait for a writer forever)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        reason = "broken symbolic link (its target does not exist)" if os.path.islink(path) else "file not found"
        raise InvalidSample(reason, source=path) from None
    except OSError as exc:
        reason = "symbolic link loop" if exc.errno == errno.ELOOP else f"cannot read: {exc.strerror}"
        raise InvalidSample(reason, source=path) from None
    if stat.S_ISDIR(mode):
        raise InvalidSample("is a directory, not a file", source=path)
    if not stat.S_ISREG(mode):
        raise InvalidSample("not a regular file (a pipe, socket or device)", source=path)


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


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 at least: half-precision values (under autocast) go up to float32,
    where losses and normalisations are computed; float64 (``train.precision: fp64``)
    stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


# The world's attribute that crosses modalities: an image shows that many dots, a tone
# plays that many notes, a graph carries that many pendant triangles, and every caption
# that names it uses the same number word. No pair of two non-text modalities is ever
# trained, so matching an image and a sound on it is emergent, through the text.
COUNT = {"count": ("one", "two", "three", "four")}


@dataclass(frozen=True)
class ConceptSpace:
    """The concepts a modality can render in the embedded world, and how to caption them.

    A class is one value for each of ``class_attributes`` (e.g. colour x shape); the
    ``nuisance_attributes`` (size, position) vary within a class and may appear in
    captions. ``shared_attributes`` (``COUNT``) vary within a class too, but every
    modality that renders one uses the same values and captions name them with the same
    words; a caption that names one matches only items of its value (contrastive
    positives), and cross-modal retrieval matches items on it. Templates use
    ``{attribute}`` fields; a value is written as itself or one of its ``synonyms``.
    """

    class_attributes: Mapping[str, Sequence[str]]
    nuisance_attributes: Mapping[str, Sequence[str]] = field(default_factory=dict)
    shared_attributes: Mapping[str, Sequence[str]] = field(default_factory=dict)
    caption_templates: Sequence[str] = ()
    single_attribute_templates: Mapping[str, Sequence[str]] = field(default_factory=dict)
    synonyms: Mapping[str, Sequence[str]] = field(default_factory=dict)
    prompt_templates: Sequence[str] = ("a {}.",)

    def class_name(self, concept: Mapping[str, str]) -> str:
        """Human-readable class name: the class attribute values in declared order."""
        return " ".join(concept[a] for a in self.class_attributes)


@dataclass
class PretrainedWeights:
    """What an encoder takes from a peer's pretrained file: its own tensors (by its
    ``state_dict`` names), and what the file holds for the objective that pairs it
    (open_clip's projection into the shared space, its logit scale and bias).

    Shapes:
        projection: [embed_dim, encoder.embed_dim], a bias-free linear head's weight.
    """

    tensors: dict[str, torch.Tensor]
    source: str
    projection: torch.Tensor | None = None
    logit_scale: torch.Tensor | None = None
    logit_bias: torch.Tensor | None = None


class Encoder(nn.Module):
    """Base class of a modality's encoder: parameters and the forward pass.

    Class attributes:
        Config: the modality's options dataclass (the one its ``Modality`` names).
    """

    Config: ClassVar[type] = object
    # True when each sample's output depends on that sample alone (no BatchNorm or other
    # cross-sample layers): then several objectives' calls may run as one batched call.
    independent_samples: bool = False
    grad_checkpointing: bool = False  # activation checkpointing, by set_grad_checkpointing

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.key: str = ""  # its name in the model (the config key); set when built
        self.embed_dim: int = 0

    def forward(self, batch: Any) -> ModalityOutput:
        raise NotImplementedError

    def call_defaults(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments of ``forward`` that equal leaving them out, for ``inputs``
        (an all-False patch mask), so a plain call can join a batched call that passes them."""
        return {}

    # --- training options ---------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn activation checkpointing of the encoder on or off (``train.grad_checkpointing``).

        When on, in training mode with gradients enabled, the encoder keeps only the
        inputs of its blocks and recomputes their activations in the backward pass: less
        activation memory for about one more forward pass. Evaluation is unchanged. An
        implementation sets ``self.grad_checkpointing``, uses non-reentrant checkpointing
        (``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``, which works under
        DDP and with ``torch.autograd.grad``) or its library's own switch, and calls
        ``keep_norm_statistics_on_recompute(self)`` if BatchNorm may be recomputed.

        Raises:
            NotImplementedError: this default; an encoder opts in by overriding it.
        """
        raise NotImplementedError(
            f"modality '{self.key}' ({type(self).__name__}) has no activation checkpointing: "
            "its encoder does not implement Encoder.set_grad_checkpointing"
        )

    def checkpoint_now(self) -> bool:
        """Whether this call should checkpoint: switched on, training mode, grad enabled."""
        return self.grad_checkpointing and self.training and torch.is_grad_enabled()

    # --- pretrained weights ---------------------------------------------------------------
    def pretrained_weights(self, path: Path) -> PretrainedWeights | None:
        """This encoder's weights from a peer's file or folder at ``path`` in a layout the
        encoder knows (an open_clip model, a timm model), or None when ``path`` is none
        of them (the core then reads mmssl's own layouts and plain state dicts).

        Raises:
            ValueError: the file is of a layout it knows but cannot map, saying why.
        """
        return None


class Processor:
    """Base class of a modality's processor: everything between a raw item and a batch.

    No parameters and no modules that train (library transforms such as torchaudio's
    front end are fine): loader workers, evaluation sets and fine-tuning hold it, and
    it pickles into spawned workers. Every random choice comes from the ``rng`` handed
    in (library transforms under ``seeded_torch_rng``).

    Class attributes:
        file_extensions: lower-case suffixes of this modality's files (".wav").
        consumes_captions: True for language modalities, which receive the world's
            captions and zero-shot prompts as raw items.
    """

    file_extensions: ClassVar[tuple[str, ...]] = ()  # what a data folder of this modality holds
    consumes_captions: ClassVar[bool] = False

    def __init__(self, config: Any) -> None:
        self.config = config
        self.key: str = ""  # its modality's name in the model; set when built

    def load(self, path: str) -> Any:
        """Read one raw item from a file. Raises InvalidSample naming the file."""
        raise NotImplementedError(f"modality '{self.key}' does not read files")

    def load_bytes(self, data: bytes, name: str) -> Any:
        """Read one raw item from a file's bytes (a member of a tar shard); ``name`` is
        the member's name, for messages and format detection. Raises InvalidSample."""
        raise InvalidSample(f"modality '{self.key}' reads no file bytes", source=name)

    def transform(self, raw: Any, rng: np.random.Generator | None = None) -> Any:
        """One raw item to a model-ready sample; ``rng`` None means eval (deterministic)."""
        raise NotImplementedError

    def collate(self, samples: Sequence[Any]) -> Any:
        """A list of samples to a batch: a dict of tensors, or a PyG ``Batch`` for graphs."""
        raise NotImplementedError

    def move_batch(self, batch: Any, device: torch.device) -> Any:
        """Batch to device (non-blocking where possible)."""
        return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    # --- checkpoint extras -----------------------------------------------------------
    def extra_state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state beyond weights (a tokenizer's settings), saved with checkpoints."""
        return {}

    def check_extra_state(self, state: Mapping[str, Any]) -> None:
        """Raise ValueError if a checkpoint's extra state does not fit this processor."""


class Renderer:
    """Base class of a modality's renderer for the embedded world (optional: a modality
    without one takes no part in the world but as a caption reader or with files)."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.key: str = ""  # its modality's name in the model; set when built

    def concept_space(self) -> ConceptSpace:
        """The concepts this modality renders in the embedded world."""
        raise NotImplementedError

    def render(self, concept: Mapping[str, str], rng: np.random.Generator) -> Any:
        """A raw item showing ``concept`` (values for every attribute of the concept space)."""
        raise NotImplementedError


def prompt_templates(renderer: Renderer | None) -> tuple[str, ...]:
    """Zero-shot prompt templates for class names of real datasets ("a photo of a {}."):
    the renderer's concept space's, or the bare class name for a modality that renders
    nothing."""
    return tuple(renderer.concept_space().prompt_templates) if renderer is not None else ("{}",)


@dataclass
class ModalityParts:
    """One configured modality: its encoder, processor and renderer (None if it renders nothing)."""

    encoder: Encoder
    processor: Processor
    renderer: Renderer | None


class Modality:
    """A modality as the registry holds it: the classes of its three parts and the
    options they share. Subclass it and declare it as an entry point.

    Class attributes:
        name: the registry key ("image"); set by the registry too.
        Config: a dataclass of the modality's options; config files are checked
            against its fields and types.
        Encoder, Processor, Renderer: the part classes (Renderer None: no world).
        encoders: a modality with several architectures names each encoder class here
            (its own class in its own module), chosen by the option ``encoder_option``
            of its config; ``Encoder`` is then their common base.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    Encoder: ClassVar[type[Encoder]] = Encoder
    Processor: ClassVar[type[Processor]] = Processor
    Renderer: ClassVar[type[Renderer] | None] = None
    encoders: ClassVar[Mapping[str, type[Encoder]]] = {}
    encoder_option: ClassVar[str] = "encoder"
    # options a pretrained folder may decide (an open_clip model_cfg's text_cfg): those a
    # config leaves out are taken from ``options_from_pretrained``
    pretrained_options: ClassVar[tuple[str, ...]] = ()
    # options a folder decides together: where the config sets one of a group, none of it
    # comes from the folder (a config's own backbone with the folder's model_args would
    # mix two architectures)
    pretrained_option_groups: ClassVar[tuple[tuple[str, ...], ...]] = ()

    @classmethod
    def options_from_pretrained(cls, path: Path) -> dict[str, Any]:
        """Options (of ``pretrained_options``) that the pretrained file or folder at
        ``path`` decides, read from its configuration only (no weights); {} when it
        decides none. Raises ValueError when it describes what this modality cannot be."""
        return {}

    @classmethod
    def encoder_class(cls, config: Any) -> type[Encoder]:
        """The encoder class ``config`` selects: ``encoders[config.<encoder_option>]``, or
        ``Encoder`` for a modality of one architecture."""
        if not cls.encoders:
            return cls.Encoder
        choice = getattr(config, cls.encoder_option)
        if choice not in cls.encoders:
            raise ValueError(f"{cls.encoder_option} '{choice}' is none of this modality's encoders {sorted(cls.encoders)}")
        return cls.encoders[choice]

    @classmethod
    def build(cls, config: Any, key: str | None = None) -> ModalityParts:
        """The three parts of this modality under ``config``, named ``key`` in the model."""
        encoder = cls.encoder_class(config)(config)
        processor = cls.Processor(config)
        renderer = cls.Renderer(config) if cls.Renderer is not None else None
        for part in (encoder, processor, renderer):
            if part is not None:
                part.key = key or cls.name
        return ModalityParts(encoder, processor, renderer)



def keep_norm_statistics_on_recompute(module: nn.Module) -> None:
    """Make every BatchNorm layer in ``module`` update its running statistics once per
    forward pass, also where activation checkpointing recomputes it in the backward pass.

    A recomputed BatchNorm (training mode) would update ``running_mean``,
    ``running_var`` and ``num_batches_tracked`` a second time with the same batch. A
    forward pre-hook notices a forward that runs inside a backward pass (a recompute),
    keeps the buffers as they were and puts them back when that backward pass ends.
    Idempotent: a layer gets its hook once.
    """
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and not getattr(layer, "_keeps_statistics", False):
            layer.register_forward_pre_hook(_keep_statistics)
            layer._keeps_statistics = True


# buffers of the layers recomputed in a running backward pass, by (layer, graph task)
_KEPT_STATISTICS: dict[tuple[nn.Module, int], list[torch.Tensor]] = {}


def _keep_statistics(layer: nn.Module, args: Any) -> None:
    # the graph task is -1 outside a backward pass (torch.utils.module_tracker asks the
    # same way); a layer recomputed twice in one backward pass (an encoder several
    # objectives call) keeps the buffers saved first
    if torch.compiler.is_compiling():  # compiled code recomputes in its own backward graph, without hooks
        return
    key = (layer, torch._C._current_graph_task_id())
    if key[1] == -1 or not layer.training or key in _KEPT_STATISTICS:
        return
    _KEPT_STATISTICS[key] = [b.clone() for b in layer.buffers(recurse=False)]

    def restore() -> None:
        with torch.no_grad():
            for buffer, kept in zip(layer.buffers(recurse=False), _KEPT_STATISTICS.pop(key)):
                buffer.copy_(kept)

    torch.autograd.Variable._execution_engine.queue_callback(restore)


# --------------------------------------------------------------------------------------
# Roles: which modalities render the embedded world, which take captions
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModalityRoles:
    """The keys of a set of modalities by the part they play in the embedded world.

    Attributes:
        renderers: modalities with a concept space (they render world concepts).
        captioners: language modalities (``consumes_captions``): they take the world's
            captions and zero-shot prompts as raw items.
        items: every modality that is not a captioner, rendering or not.
    """

    renderers: tuple[str, ...]
    captioners: tuple[str, ...]
    items: tuple[str, ...]


def modality_roles(processors: Mapping[str, Processor], renderers: Mapping[str, Renderer | None]) -> ModalityRoles:
    """Split the modalities of ``processors`` (key -> processor, in order) into their
    world roles; ``renderers`` holds the renderer of every modality that has one."""
    return ModalityRoles(
        renderers=tuple(k for k in processors if renderers.get(k) is not None),
        captioners=tuple(k for k, p in processors.items() if p.consumes_captions),
        items=tuple(k for k, p in processors.items() if not p.consumes_captions),
    )


# --------------------------------------------------------------------------------------
# Capabilities: what an objective needs of a modality beyond the base contract
# --------------------------------------------------------------------------------------


@runtime_checkable
class PatchEncoder(Protocol):
    """A patch-based encoder whose input patches can be hidden and predicted (masked
    spectrogram and image modeling). The audio modality's spectrogram transformer and
    timm encoders are ones, and the image modality's timm and open_clip ViTs and timm
    CNNs (which hide patches in the input, SimMIM style).

    Members:
        embed_dim: token width D.
        grid: the patch grid (R, C); N = R * C tokens, row-major (audio: frequency
            rows, time columns; images: pixel rows, columns).
        patch_dim: values per patch, P (the size of a prediction target).
        patchify(values): the encoder's input values cut into patches aligned with its
            tokens. Shapes: [B, ...] (a log-mel [B, F, T], pixels [B, C, H, W]) -> [B, N, P].
        patch_targets(batch): ``patchify`` of the input values ``batch`` holds: what
            masked modeling predicts. Shapes: [B, N, P].
        patch_padding_mask(batch): True for patches that lie wholly in padding.
            Shapes: [B, N].
        forward(batch, patch_mask=...): a [B, N] bool ``patch_mask`` (True = hidden)
            hides those patches; the output's ``tokens`` are [B, N, D], one per patch.

    Optional: ``enable_patch_masking()``, which a masked-patch objective calls when it is
    built, for an encoder that makes its learned mask parameters only on request (the
    image modality: so a model without masked image modeling keeps its old state dict).
    """

    embed_dim: int
    grid: tuple[int, int]
    patch_dim: int

    def patchify(self, values: torch.Tensor) -> torch.Tensor: ...

    def patch_targets(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor: ...

    def patch_padding_mask(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor: ...


@runtime_checkable
class VisiblePatchEncoder(PatchEncoder, Protocol):
    """A PatchEncoder that can also encode its visible patches alone, leaving the hidden
    ones out of the sequence (MAE's encoder). The image modality's ViT towers are ones.

    Members:
        encodes_visible_only: True (a marker: only encoders that can set it).
        forward(batch, patch_mask=..., visible_only=True): every row of ``patch_mask``
            must hide the same number of patches, M; the output's ``tokens`` are
            [B, N - M, D], the visible patches' in grid order.
    """

    encodes_visible_only: bool


@runtime_checkable
class MaskableTokenEncoder(Protocol):
    """A token encoder whose input ids can be corrupted and predicted (masked language
    modeling). The text modality is one.

    Members:
        embed_dim: token width D.
        vocab_size: size V of the id space the output projection covers.
        mask_token_id: the id that replaces a masked token.
        num_regular_tokens: ids below it are ordinary tokens (what a random
            replacement draws from); special tokens lie above.
        token_embedding: the input embedding [V, D] (tied to the output projection).
        bidirectional: whether the configured attention is bidirectional; if it is
            not, ``forward`` must take ``attention="bidirectional"`` per call.
        maskable_positions(ids): True where a token may be selected. Shapes: [..., L].
    """

    embed_dim: int
    vocab_size: int
    mask_token_id: int
    num_regular_tokens: int
    token_embedding: nn.Embedding
    bidirectional: bool

    def maskable_positions(self, ids: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class ViewAugmenter(Protocol):
    """A processor that makes random views of its modality's samples (view-contrastive
    learning: SimCLR, BYOL, GraphCL). The image, audio and graph processors are ones.

    Members:
        augment(sample, rng): a new random view of one transformed sample (what
            ``transform`` returns), shaped as the sample, so ``collate`` batches views
            as samples. Every choice comes from ``rng`` (library transforms under
            ``seeded_torch_rng``), and ``sample`` is left unchanged: two calls give an
            item's two views. The strengths are the modality's own options, chosen so
            that a view keeps the item's class (what a view may change is the modality's
            to know).

    Optional: ``view_maker(**options)``, the same with other view options, checked
    when it is called (the graph processor's, for ``graph_contrastive``'s own keys).
    """

    def augment(self, sample: Any, rng: np.random.Generator) -> Any: ...


@runtime_checkable
class LocalViewAugmenter(ViewAugmenter, Protocol):
    """A ``ViewAugmenter`` that also makes small views (DINO's multi-crop: local crops
    beside the global views of ``augment``). The image, audio and graph processors are ones.

    Members:
        local_augment(sample, rng): a random local view of one transformed sample: a
            smaller part of the item (an image's crop from a smaller area at a smaller
            size, a shorter window of a clip, a smaller connected subgraph) with the
            augmentations of ``augment``. Every choice comes from ``rng``, ``sample`` is
            left unchanged, and local views have one shape among themselves, so
            ``collate`` batches them and the encoder takes the batch (a smaller one than
            the samples' where the modality makes local views smaller).
    """

    def local_augment(self, sample: Any, rng: np.random.Generator) -> Any: ...


def capability_members(capability: type) -> list[str]:
    """The public members a capability Protocol declares (its own and inherited)."""
    names: list[str] = []
    for cls in reversed(capability.__mro__):
        if not getattr(cls, "_is_protocol", False) or cls is Protocol:
            continue
        for name in (*getattr(cls, "__annotations__", {}), *vars(cls)):
            if not name.startswith("_") and name not in names:
                names.append(name)
    return names


def require_capability(
    modality: Encoder | Processor, capability: type, purpose: str, forward_kwargs: Sequence[str] = (), hint: str = ""
) -> None:
    """Check that a modality's encoder (or, for ``ViewAugmenter``, its processor) meets
    ``capability`` before an objective uses it.

    A runtime-checkable Protocol only checks that members exist; this names the ones
    missing, and also checks that ``forward`` takes the keyword arguments the
    objective will pass (``forward_kwargs``).

    Raises:
        ValueError naming the modality, the capability and what is missing; ``hint``
        (e.g. which encoder to configure) is appended.
    """
    suffix = f"; {hint}" if hint else ""
    missing = [name for name in capability_members(capability) if not hasattr(modality, name)]
    if missing:
        raise ValueError(
            f"modality '{modality.key}' is no {capability.__name__} (modalities/base.py), which {purpose} needs: "
            f"it lacks {missing}{suffix}"
        )
    if not forward_kwargs:
        return
    params = inspect.signature(modality.forward).parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        names = {p.name for p in params}
        absent = [k for k in forward_kwargs if k not in names]
        if absent:
            raise ValueError(
                f"{purpose} calls modality '{modality.key}' with {absent}, but its forward takes no "
                + ", ".join(repr(k) for k in absent)
                + f" argument{suffix}"
            )
