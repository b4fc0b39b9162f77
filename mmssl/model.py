"""The multimodal model: encoders by modality name plus objectives (with their heads), and
beside them each modality's processor and renderer."""

from __future__ import annotations

import contextlib
import inspect
import logging
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.common.weights import shared_reads
from mmssl.config import ConfigError, RunConfig
from mmssl.interop.pretrained import load_pretrained
from mmssl.interop.teacher import frozen_model_loader
from mmssl.registry import get_modality, get_objective
from modalities.base import (
    Encoder,
    ModalityOutput,
    Processor,
    Renderer,
    keep_norm_statistics_on_recompute,
    modality_roles,
    upcast,
)
from objectives.base import DistContext, Objective, ObjectiveOutput

log = logging.getLogger(__name__)


class MultimodalModel(nn.Module):
    """Encoders and objectives in one module, so one optimizer, one DDP wrapper and
    one state dict cover them all. ``processors`` and ``renderers`` (key -> the
    modality's processor, and its renderer or None) are plain attributes beside them:
    no parameters, not in the state dict; data pipelines take them from here.

    ``model(objective_name, batch)`` runs one objective; that is the call DDP wraps.
    """

    def __init__(
        self,
        encoders: Mapping[str, Encoder],
        objectives: Mapping[str, Objective],
        processors: Mapping[str, Processor],
        renderers: Mapping[str, Renderer | None] | None = None,
    ) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(dict(encoders))
        self.objectives = nn.ModuleDict(dict(objectives))
        self.processors: dict[str, Processor] = dict(processors)
        self.renderers: dict[str, Renderer | None] = {key: (renderers or {}).get(key) for key in self.encoders}
        if set(self.processors) != set(self.encoders):
            raise ValueError(f"every encoder needs a processor: encoders {list(self.encoders)}, processors {list(self.processors)}")
        for key, encoder in self.encoders.items():
            for part in (encoder, self.processors[key], self.renderers[key]):
                if part is not None:
                    part.key = key
        for name, objective in self.objectives.items():
            missing = [m for m in objective.modalities if m not in self.encoders]
            if missing:
                raise ValueError(f"objective '{name}' needs modalities {missing}; the model has {list(self.encoders)}")
        tie_spaces(self.objectives)
        self.frozen: dict[str, list[nn.Module]] = {}  # modality -> its locked modules (``freeze``)

    def freeze(self, modality: str, heads: bool = False) -> None:
        """Lock ``modality``'s encoder (LiT): no gradient, so no optimizer entry, weight
        decay or clipping; kept in eval mode (BatchNorm statistics and dropout) whatever
        ``train()`` is asked. ``heads``: its projection heads in every objective too (the
        ``heads`` of objectives that keep one per modality)."""
        locked: list[nn.Module] = [self.encoders[modality]]
        if heads:
            locked += [o.heads[modality] for o in self.objectives.values()
                       if isinstance(getattr(o, "heads", None), nn.ModuleDict) and modality in o.heads]
        for module in locked:
            module.requires_grad_(False)
            module.eval()
        self.frozen[modality] = locked

    def train(self, mode: bool = True) -> MultimodalModel:
        super().train(mode)
        for modules in getattr(self, "frozen", {}).values():
            for module in modules:
                module.eval()
        return self

    def forward(self, objective: str, batch: Mapping[str, Any]) -> ObjectiveOutput:
        return self.objectives[objective](self, batch)

    def roles(self, keys: Sequence[str] | None = None) -> Any:
        """``modality_roles`` of the modalities ``keys`` (default: all), in order."""
        keys = list(self.encoders) if keys is None else list(keys)
        return modality_roles({k: self.processors[k] for k in keys}, self.renderers)

    @property
    def spaces(self) -> dict[str, list[str]]:
        """Named spaces and the objectives in each."""
        found: dict[str, list[str]] = {}
        for name, obj in self.objectives.items():
            if obj.space:
                found.setdefault(obj.space, []).append(name)
        return found

    def shared_space(self, modality: str, objective: str | None = None, space: str | None = None) -> str:
        """The objective whose shared space embeds ``modality``: the one named, or the first
        of the named ``space`` that projects it, or the first objective that projects it
        and pairs it with a caption modality, or any that projects it."""
        if objective is not None:
            if objective not in self.objectives:
                raise KeyError(f"no objective '{objective}'; the model has {list(self.objectives)}")
            return objective
        if space is not None and space not in self.spaces:
            raise KeyError(f"no space '{space}'; the model has {sorted(self.spaces) or 'none'} (objectives name one with space: NAME)")
        candidates = [
            name for name, obj in self.objectives.items()
            if modality in obj.modalities and _has_space(obj) and (space is None or obj.space == space)
        ]
        if space is not None and not candidates:
            raise ValueError(f"space '{space}' embeds no '{modality}' (its objectives: {self.spaces[space]})")
        with_text = [
            n for n in candidates if any(m != modality for m in self.roles(self.objectives[n].modalities).captioners)
        ]
        if not candidates:
            raise ValueError(f"no objective gives modality '{modality}' a shared embedding space")
        return (with_text or candidates)[0]

    @torch.no_grad()
    def encode(
        self,
        modality: str,
        inputs: Sequence[Any] | Mapping[str, torch.Tensor],
        objective: str | None = None,
        batch_size: int = 256,
        space: str | None = None,
    ) -> torch.Tensor:
        """L2-normalised embeddings [N, E] in a shared space.

        Args:
            modality: encoder name ("image", "text").
            inputs: raw items (strings, PIL images, paths, graphs ...) or an already collated
                batch (a dict, or a PyG ``Batch``).
            objective: whose space; by default the first contrastive space pairing
                ``modality`` with text.
            space: a named space (``space: hub`` in the objectives' configs), where
                every modality its objectives project shares one space.
        """
        if modality not in self.encoders:
            raise KeyError(f"no modality '{modality}'; the model has {list(self.encoders)}")
        encoder, processor = self.encoders[modality], self.processors[modality]
        head = self.objectives[self.shared_space(modality, objective, space)]
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        try:
            if isinstance(inputs, Mapping) or hasattr(inputs, "num_graphs"):  # a collated batch (PyG: a Batch)
                batches = [inputs]
            else:
                items = list(inputs)
                batches = [
                    processor.collate([processor.transform(x, None) for x in items[i : i + batch_size]])
                    for i in range(0, len(items), batch_size)
                ]
            out = []
            for batch in batches:
                output: ModalityOutput = encoder(processor.move_batch(batch, device))
                out.append(F.normalize(upcast(head.embed(modality, output)), dim=-1))
            return torch.cat(out) if out else torch.empty(0)
        finally:
            self.train(was_training)


def _has_space(objective: Objective) -> bool:
    return type(objective).embed is not Objective.embed


def tie_spaces(objectives: Mapping[str, Objective]) -> None:
    """Give the objectives of one named space one projection head per modality: the
    first objective's head (in config order) replaces the others'. Their own heads were
    built first, so every other parameter's initial value is as without the space.
    A shared head's parameters take the lr scale of that first objective."""
    owners: dict[tuple[str, str], tuple[str, nn.Module]] = {}
    for name, objective in objectives.items():
        if not objective.space:
            continue
        heads = getattr(objective, "heads", None)
        if not isinstance(heads, nn.ModuleDict):
            raise ValueError(f"objective '{name}' names space '{objective.space}' but keeps no heads (nn.ModuleDict) to share")
        for modality in list(heads):
            first = owners.setdefault((objective.space, modality), (name, heads[modality]))
            if first[1] is heads[modality]:
                continue
            shapes = [tuple(p.shape) for p in heads[modality].parameters()]
            if type(first[1]) is not type(heads[modality]) or shapes != [tuple(p.shape) for p in first[1].parameters()]:
                raise ValueError(
                    f"objectives '{first[0]}' and '{name}' share space '{objective.space}' but their '{modality}' heads "
                    "differ; give them the same embed_dim and head"
                )
            heads[modality] = first[1]


def build_model(config: RunConfig, dist: DistContext | None = None, pretrained: bool = True) -> MultimodalModel:
    """Encoders and objectives from a validated config, through the registry.

    Initial weights depend only on ``config.seed`` (the global torch RNG is seeded here);
    then each modality's ``pretrained`` file is read into its encoder (``pretrained``
    false: not read, as when a checkpoint's own weights follow), and ``freeze`` locks it.

    Raises:
        ConfigError: a modality or objective refused its options (a ValueError from its
            constructor), naming its config key; a ``pretrained`` file that cannot load.
    """
    torch.manual_seed(config.seed)
    encoders: dict[str, Encoder] = {}
    processors: dict[str, Processor] = {}
    renderers: dict[str, Renderer | None] = {}
    for key, spec in config.modalities.items():
        with _names_the_key(f"modalities.{key}"):
            parts = get_modality(spec.type).build(spec.options, key)
        encoders[key], processors[key], renderers[key] = parts.encoder, parts.processor, parts.renderer
    objectives = {}
    load_model = frozen_model_loader(build_model)
    for name, spec in config.objectives.items():
        with _names_the_key(f"objectives.{name}"):
            objectives[name] = build_objective(get_objective(spec.type), spec.options, encoders, processors, renderers, dist,
                                               load_model)
    model = MultimodalModel(encoders, objectives, processors, renderers)
    with shared_reads():  # a file two modalities start from (an open_clip CLIP) is read once
        for key, spec in config.modalities.items():
            if pretrained and spec.pretrained:
                load_pretrained(model, key, config.modalities)
    for key, spec in config.modalities.items():
        if spec.freeze:
            model.freeze(key, heads=spec.freeze == "all")
    return model


def build_objective(
    cls: type[Objective], options: Any, encoders: Mapping[str, Encoder], processors: Mapping[str, Processor],
    renderers: Mapping[str, Renderer | None], dist: DistContext | None = None,
    load_model: Callable[..., Any] | None = None,
) -> Objective:
    """``cls(options, encoders, dist)``, with ``processors=`` and ``renderers=`` too where
    its ``__init__`` takes them (objectives that make views, corrupt tokens in the data
    pipeline, or read their modality's concept space), and ``load_model=`` where it names
    it: ``load_model(path, key, weights="weights" | "ema")`` reads a whole trained model,
    frozen (a teacher; ``mmssl.interop.teacher``); ``build_model`` hands every objective
    one loader, so objectives naming one folder share its model."""
    params = inspect.signature(cls.__init__).parameters
    every = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    parts = {"processors": processors, "renderers": renderers}
    kwargs = {key: value for key, value in parts.items() if every or key in params}
    if "load_model" in params:
        kwargs["load_model"] = load_model or frozen_model_loader(build_model)
    return cls(options, encoders, dist or DistContext(), **kwargs)


@contextlib.contextmanager
def _names_the_key(key: str) -> Iterator[None]:
    """A ValueError raised inside becomes a ConfigError that starts with ``key``."""
    try:
        yield
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"'{key}': {exc}") from exc


def block_modules(encoder: torch.nn.Module) -> list[torch.nn.Module]:
    """An encoder's blocks, unordered: what fine-tuning decays layer by layer and FSDP
    shards one at a time. A modality may define ``finetune_blocks()`` (a list of
    modules); else they are its parameter-holding children, a lone wrapper child opened
    up and a ``ModuleList`` or ``Sequential`` standing for its elements (a timm ResNet
    gives its stem layers, norm and each residual block; a transformer its patch
    embedding, each block and the final norm; a GNN its input layer, each convolution
    and each norm)."""
    hook = getattr(encoder, "finetune_blocks", None)
    if callable(hook):
        return list(hook())
    return _expand(encoder)


def _holds_parameters(module: torch.nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _expand(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The parameter-holding children of ``module``; a lone wrapper child is opened up,
    and a ModuleList/Sequential child stands for its elements."""
    children = [c for c in module.children() if _holds_parameters(c)]
    if len(children) == 1 and not isinstance(children[0], (torch.nn.ModuleList, torch.nn.Sequential)):
        return _expand(children[0]) or children
    return [block for child in children for block in _elements(child)]


def _elements(child: torch.nn.Module) -> list[torch.nn.Module]:
    """A ModuleList/Sequential's elements; a wrapper that holds nothing but such a list
    (open_clip's ``Transformer`` and its ``resblocks``) its elements; else the child."""
    if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)):
        return [c for c in child.children() if _holds_parameters(c)]
    inner = [c for c in child.children() if _holds_parameters(c)]
    own = any(True for _ in child.parameters(recurse=False))
    if len(inner) == 1 and isinstance(inner[0], (torch.nn.ModuleList, torch.nn.Sequential)) and not own:
        return _elements(inner[0])
    return [child]


def enable_grad_checkpointing(model: MultimodalModel, selection: bool | Sequence[str]) -> list[str]:
    """Activation checkpointing (``train.grad_checkpointing``) on the selected encoders:
    ``True`` every encoder that has it, a list those keys. Returns the keys switched on.

    Raises:
        ConfigError: a listed encoder has none (``Encoder.set_grad_checkpointing``
            raised NotImplementedError), naming the key and the modality.
    """
    if selection is False:
        return []
    enabled = []
    keys = list(model.encoders) if selection is True else list(dict.fromkeys(selection))
    for i, key in enumerate(keys):
        encoder = model.encoders[key]
        try:
            encoder.set_grad_checkpointing(True)
        except NotImplementedError as exc:
            if selection is True:
                log.info("train.grad_checkpointing: leaving out modality '%s': %s", key, exc)
                continue
            raise ConfigError(f"'train.grad_checkpointing[{i}]': modality '{key}': {exc}") from None
        keep_norm_statistics_on_recompute(encoder)  # also for plugins' BatchNorm layers
        enabled.append(key)
    return enabled


def compile_encoders(model: MultimodalModel, selection: bool | Sequence[str]) -> list[str]:
    """``torch.compile`` on the selected encoders (``train.compile``): ``True`` every
    encoder, a list those keys. Each is compiled in place (``Module.compile``), so its
    parameters, state dict keys and checkpoints are those of the plain module; the first
    calls compile (and again when shapes or the training mode change). Returns the keys.

    Raises:
        RuntimeError: torch.compile does not work here (no C compiler, no Python headers...),
            found by compiling a one-line function on the model's device first.
    """
    if selection is False:
        return []
    keys = list(model.encoders) if selection is True else list(dict.fromkeys(selection))
    if keys:
        check_compile(next(model.parameters()).device)
    for key in keys:
        model.encoders[key].compile()
    return keys


def check_compile(device: torch.device) -> None:
    """Compile and run a one-line function, so a machine where torch.compile cannot work
    fails here with the reason, not mid-step."""
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(2, device=device))
    except Exception as exc:  # noqa: BLE001 - any backend failure means the same to the user
        raise RuntimeError(
            f"train.compile: torch.compile does not work on this machine ({device}): {type(exc).__name__}: {exc}. "
            "Train without it (train.compile=false)."
        ) from exc
