"""Contract checks a modality or objective author runs with one pytest line:

    from mmssl.testing import check_modality, check_objective

    def test_sensor_meets_the_modality_contract():
        check_modality(SensorModality, {"width": 32, "depth": 1})  # encoder, processor, renderer

    def test_forecast_meets_the_objective_contract():
        check_objective("configs/sensor.yaml", "forecast")

Each check fails with an ``AssertionError`` that names the contract rule and what was
found. The built-in modalities and objectives pass the same checks (tests/test_contracts.py).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from mmssl.config import RunConfig, convert, load_config
from mmssl.common.seeding import sample_rng
from modalities.base import (
    Encoder,
    MaskableTokenEncoder,
    Modality,
    ModalityOutput,
    ModalityParts,
    PatchEncoder,
    LocalViewAugmenter,
    Processor,
    Renderer,
    ViewAugmenter,
    VisiblePatchEncoder,
)
from objectives.base import ObjectiveOutput


class ContractError(AssertionError):
    """A contract rule a modality or objective breaks; the message names the rule."""


def _require(condition: bool, rule: str, found: str = "") -> None:
    if not condition:
        raise ContractError(f"{rule}" + (f": {found}" if found else ""))


def _fingerprint(value: Any) -> Any:
    """A comparable copy of a raw item or sample (arrays, tensors, images, graphs, dicts)."""
    if torch.is_tensor(value):
        return ("tensor", value.detach().clone())
    if isinstance(value, np.ndarray):
        return ("array", value.copy())
    if hasattr(value, "tobytes") and hasattr(value, "size"):  # a PIL image
        return ("image", value.tobytes(), value.size)
    if hasattr(value, "to_dict") and hasattr(value, "num_nodes"):  # a PyG Data
        return ("graph", {k: _fingerprint(v) for k, v in value.to_dict().items()})
    if isinstance(value, Mapping):
        return {k: _fingerprint(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_fingerprint(v) for v in value]
    return copy.deepcopy(value)


def _same(a: Any, b: Any) -> bool:
    """Exact equality of two fingerprints."""
    if torch.is_tensor(a) or isinstance(a, np.ndarray):
        if not (torch.is_tensor(b) or isinstance(b, np.ndarray)):
            return False
        x, y = torch.as_tensor(a), torch.as_tensor(b)
        return x.shape == y.shape and x.dtype == y.dtype and bool(torch.equal(x, y))
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _output_close(a: ModalityOutput, b: ModalityOutput, atol: float = 1e-5) -> bool:
    return torch.allclose(a.pooled, b.pooled, atol=atol) and (
        a.tokens is None or b.tokens is None or torch.allclose(a.tokens, b.tokens, atol=atol)
    )


def _raw_items(renderer: Renderer | None, items: Sequence[Any] | None, count: int) -> list[Any]:
    if items is not None:
        return list(items)
    _require(renderer is not None, "check_modality needs raw items: pass items=[...] for a modality that renders no concepts")
    from mmssl.world import World

    world = World(renderer.concept_space(), seed=0, num_heldout=0)
    raws = []
    for i in range(count):
        rng = sample_rng(0, "contract", i)
        raws.append(renderer.render(world.concept(i % len(world.classes), rng), rng))
    return raws


def _has_no_parameters(processor: Processor) -> bool:
    """No nn.Parameter anywhere in the processor's attributes (library transforms that hold
    buffers, such as torchaudio's mel filter bank, are fine)."""
    seen: set[int] = set()

    def walk(value: Any, depth: int = 0) -> bool:
        if id(value) in seen or depth > 6:
            return True
        seen.add(id(value))
        if isinstance(value, torch.nn.Parameter) or isinstance(value, (Encoder, torch.nn.Module)) and any(
            True for _ in value.parameters()
        ):
            return False
        if isinstance(value, Mapping):
            return all(walk(v, depth + 1) for v in value.values())
        if isinstance(value, (list, tuple)):
            return all(walk(v, depth + 1) for v in value)
        if hasattr(value, "__dict__") and not isinstance(value, type) and not callable(getattr(value, "__func__", None)):
            return all(walk(v, depth + 1) for v in vars(value).values())
        return True

    return walk(processor)


def check_modality(
    cls: type[Modality], options: Mapping[str, Any] | Any = None, items: Sequence[Any] | None = None, batch: int = 4
) -> ModalityParts:
    """Run the modality contract on ``cls`` (a ``Modality``: encoder, processor and
    renderer) built from ``options`` (a mapping checked against ``cls.Config``, or a
    Config instance); ``items``: raw items to use (default: ``batch`` renders of the
    embedded world). Returns the built parts.

    Rules: the encoder is an ``Encoder`` that sets ``embed_dim``; the processor is a
    ``Processor`` with no parameters that survives pickling (spawned loader workers get
    it so) and transforms alike after it; ``transform`` is deterministic under a seeded
    generator and in eval (``rng`` None), and never modifies its raw item; ``render`` is
    a function of its generator; ``collate`` + ``forward`` give ``pooled`` [B, embed_dim]
    (finite), ``tokens`` [B, N, D] and ``padding_mask`` [B, N] bool with a real token per
    sample; eval-mode forward is deterministic; ``independent_samples`` holds if
    declared; a state-dict round trip into a fresh encoder gives the same outputs; the
    extra state is JSON and accepted back; each capability the parts declare
    (PatchEncoder, MaskableTokenEncoder, ViewAugmenter, LocalViewAugmenter) keeps its promises.
    """
    import pickle

    _require(isinstance(cls, type) and issubclass(cls, Modality),
             "a modality is a modalities.base.Modality subclass naming its Encoder, Processor and Renderer",
             f"got {cls!r}")
    if options is None or isinstance(options, Mapping):
        config = convert(dict(options or {}), cls.Config, cls.name or cls.__name__)
    else:
        config = options
    torch.manual_seed(0)
    parts = cls.build(config)
    encoder, processor, renderer = parts.encoder, parts.processor, parts.renderer
    name = f"modality '{cls.name or cls.__name__}'"
    _require(isinstance(encoder, Encoder), f"{name}: its encoder must be a modalities.base.Encoder", type(encoder).__name__)
    _require(isinstance(processor, Processor), f"{name}: its processor must be a modalities.base.Processor",
             type(processor).__name__)
    _require(renderer is None or isinstance(renderer, Renderer), f"{name}: its renderer must be a modalities.base.Renderer",
             type(renderer).__name__)
    _require(isinstance(encoder.embed_dim, int) and encoder.embed_dim > 0,
             f"{name}: the encoder must set embed_dim (the width of pooled) in __init__", f"got {encoder.embed_dim!r}")
    _require(_has_no_parameters(processor), f"{name}: the processor must hold no parameters (loader workers hold it)")
    raws = _raw_items(renderer, items, batch)
    if renderer is not None and items is None:
        from mmssl.world import World

        space = renderer.concept_space()
        world = World(space, seed=0, num_heldout=0)
        concept = world.concept(0, sample_rng(0, "contract", "render"))
        a, b = (renderer.render(concept, sample_rng(1, "render")) for _ in range(2))
        _require(_same(_fingerprint(a), _fingerprint(b)), f"{name}: render must be a function of its generator")
        for template in (*space.caption_templates, *(t for ts in space.single_attribute_templates.values() for t in ts)):
            try:
                template.format(**concept)
            except KeyError as exc:
                raise ContractError(f"{name}: caption template {template!r} names {exc}, not an attribute of the space") from None
    try:
        unpickled = pickle.loads(pickle.dumps(processor))
    except Exception as exc:  # noqa: BLE001 - any pickling failure breaks spawned workers alike
        raise ContractError(f"{name}: the processor must pickle (spawned loader workers get a copy): {exc}") from None
    samples = []
    for i, raw in enumerate(raws):
        before = _fingerprint(raw)
        first = processor.transform(raw, sample_rng(0, "transform", i))
        _require(_same(before, _fingerprint(raw)), f"{name}: transform must not modify its raw item (item {i})")
        again = processor.transform(raw, sample_rng(0, "transform", i))
        _require(_same(_fingerprint(first), _fingerprint(again)), f"{name}: transform must be a function of its generator")
        copied = unpickled.transform(raw, sample_rng(0, "transform", i))
        _require(_same(_fingerprint(first), _fingerprint(copied)), f"{name}: a pickled processor must transform alike")
        evals = [processor.transform(raw, None) for _ in range(2)]
        _require(_same(_fingerprint(evals[0]), _fingerprint(evals[1])), f"{name}: transform(raw, None) (eval) must be deterministic")
        samples.append(evals[0])
    collated = processor.collate(samples)
    encoder.eval()
    with torch.no_grad():
        out = encoder(collated)
        again = encoder(collated)
    _require(isinstance(out, ModalityOutput), f"{name}: forward must return a ModalityOutput", type(out).__name__)
    _require(tuple(out.pooled.shape) == (len(samples), encoder.embed_dim),
             f"{name}: pooled must be [batch, embed_dim]", f"got {list(out.pooled.shape)}, embed_dim {encoder.embed_dim}")
    _require(bool(torch.isfinite(out.pooled).all()), f"{name}: pooled must be finite")
    _require(_output_close(out, again, atol=0), f"{name}: forward in eval mode must be deterministic")
    if out.tokens is not None:
        _require(out.tokens.ndim == 3 and out.tokens.shape[0] == len(samples), f"{name}: tokens must be [batch, N, D]",
                 f"got {list(out.tokens.shape)}")
    if out.padding_mask is not None:
        _require(out.tokens is not None and out.padding_mask.dtype == torch.bool
                 and tuple(out.padding_mask.shape) == tuple(out.tokens.shape[:2]),
                 f"{name}: padding_mask must be a [batch, N] bool mask over tokens")
        _require(not bool(out.padding_mask.all(1).any()), f"{name}: padding_mask must leave every sample a real token")
    if encoder.independent_samples:
        with torch.no_grad():
            alone = torch.cat([encoder(processor.collate([s])).pooled for s in samples])
        _require(torch.allclose(alone, out.pooled, atol=1e-4),
                 f"{name}: independent_samples is True, but a sample's output depends on its batch")
    fresh = cls.encoder_class(config)(config)
    fresh.load_state_dict(encoder.state_dict())
    fresh.eval()
    with torch.no_grad():
        _require(_output_close(fresh(collated), out), f"{name}: a state-dict round trip must give the same outputs")
    extra = processor.extra_state_dict()
    _require(json.loads(json.dumps(extra)) == extra, f"{name}: extra_state_dict must be JSON-serialisable")
    processor.check_extra_state(extra)
    _check_capabilities(encoder, name, collated, out)
    if isinstance(processor, ViewAugmenter):
        view = processor.augment(samples[0], sample_rng(0, "view"))
        again = processor.augment(samples[0], sample_rng(0, "view"))
        _require(_same(_fingerprint(view), _fingerprint(again)), f"{name} (ViewAugmenter): augment must be a function of its generator")
        views = [processor.augment(sample, sample_rng(0, "view", i)) for i, sample in enumerate(samples)]
        with torch.no_grad():
            viewed = encoder(processor.collate(views))
        _require(tuple(viewed.pooled.shape) == tuple(out.pooled.shape),
                 f"{name} (ViewAugmenter): views must batch and encode as samples do")
    if isinstance(processor, LocalViewAugmenter):  # whether the encoder takes them is the dino objective's to check
        local = processor.local_augment(samples[0], sample_rng(0, "local view"))
        again = processor.local_augment(samples[0], sample_rng(0, "local view"))
        _require(_same(_fingerprint(local), _fingerprint(again)),
                 f"{name} (LocalViewAugmenter): local_augment must be a function of its generator")
        try:
            processor.collate([processor.local_augment(sample, sample_rng(0, "local view", i)) for i, sample in enumerate(samples)])
        except (RuntimeError, ValueError) as exc:
            raise ContractError(f"{name} (LocalViewAugmenter): local views must batch (one shape among them): {exc}") from None
    return parts


def _check_capabilities(modality: Encoder, name: str, collated: Any, out: ModalityOutput) -> None:
    if isinstance(modality, PatchEncoder):
        n = modality.grid[0] * modality.grid[1]
        padding = modality.patch_padding_mask(collated)
        _require(padding.dtype == torch.bool and tuple(padding.shape) == (out.pooled.shape[0], n),
                 f"{name} (PatchEncoder): patch_padding_mask must be [batch, grid cells] bool", f"got {list(padding.shape)}")
        _require(out.tokens is not None and out.tokens.shape[1] == n,
                 f"{name} (PatchEncoder): forward must give one token per patch of the grid")
        enable = getattr(modality, "enable_patch_masking", None)
        if enable is not None:  # mask parameters made on request, as a masked-patch objective does
            enable()
        none = torch.zeros(out.pooled.shape[0], n, dtype=torch.bool)
        with torch.no_grad():
            unmasked = modality(collated, patch_mask=none)
            hidden = modality(collated, patch_mask=~none)
        _require(_output_close(unmasked, out), f"{name} (PatchEncoder): an all-False patch_mask must equal no mask")
        _require(not torch.allclose(hidden.tokens, out.tokens), f"{name} (PatchEncoder): patch_mask must hide patches")
        targets = modality.patch_targets(collated)
        _require(tuple(targets.shape) == (out.pooled.shape[0], n, modality.patch_dim),
                 f"{name} (PatchEncoder): patch_targets must be [batch, grid cells, patch_dim]", f"got {list(targets.shape)}")
    if isinstance(modality, VisiblePatchEncoder):
        half = torch.zeros(out.pooled.shape[0], n, dtype=torch.bool)
        half[:, : n // 2] = True
        with torch.no_grad():
            visible = modality(collated, patch_mask=half, visible_only=True)
        _require(visible.tokens.shape[1] == n - n // 2,
                 f"{name} (VisiblePatchEncoder): visible_only must give one token per visible patch",
                 f"got {visible.tokens.shape[1]} for {n - n // 2}")
    if isinstance(modality, MaskableTokenEncoder):
        _require(0 <= modality.mask_token_id < modality.vocab_size,
                 f"{name} (MaskableTokenEncoder): mask_token_id must lie in [0, vocab_size)")
        _require(modality.num_regular_tokens <= modality.vocab_size,
                 f"{name} (MaskableTokenEncoder): num_regular_tokens must not exceed vocab_size")
        _require(tuple(modality.token_embedding.weight.shape) == (modality.vocab_size, modality.embed_dim),
                 f"{name} (MaskableTokenEncoder): token_embedding must be [vocab_size, embed_dim]")


def _is_metric(value: Any) -> bool:
    """A float, or a detached 0-d tensor (``ObjectiveOutput``)."""
    if torch.is_tensor(value):
        return value.dim() == 0 and not value.requires_grad
    return isinstance(value, float)


def check_objective(config: RunConfig | str | Path, objective: str, overrides: Sequence[str] = ()) -> ObjectiveOutput:
    """Run the objective contract on ``objective`` of a run config (a path or a
    RunConfig): build the model and the objective's stream, take one batch, and check
    that ``forward`` gives a finite scalar loss whose gradient reaches the objective's
    own parameters and its encoders, metrics that are floats or detached 0-d tensors
    (``loss`` among them), the same loss in eval mode twice, and that ``prepare_sample``
    (drawn in the stream) and the batch do not depend on the number of workers. Returns
    the training output."""
    from mmssl.data import build_streams
    from mmssl.model import build_model

    if not isinstance(config, RunConfig):
        config = load_config(config, list(overrides))
    _require(objective in config.objectives, f"config has no objective '{objective}'", f"it has {sorted(config.objectives)}")
    model = build_model(config)
    streams = build_streams(config, model)
    batch = next(streams[objective])
    name = f"objective '{objective}'"
    model.train()
    out = model(objective, batch)
    _require(isinstance(out, ObjectiveOutput), f"{name}: forward must return an ObjectiveOutput", type(out).__name__)
    _require(out.loss.ndim == 0 and bool(torch.isfinite(out.loss)), f"{name}: loss must be a finite scalar", str(out.loss))
    _require(out.loss.requires_grad, f"{name}: loss must carry a gradient")
    _require("loss" in out.metrics and all(_is_metric(v) for v in out.metrics.values()),
             f"{name}: metrics must be floats or detached 0-d tensors and include 'loss'",
             str({k: type(v).__name__ if not torch.is_tensor(v) else f"tensor{list(v.shape)}" for k, v in out.metrics.items()}))
    model.zero_grad()
    out.loss.backward()
    own = [p for p in model.objectives[objective].parameters() if p.requires_grad]
    _require(not own or any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in own),
             f"{name}: the loss must reach the objective's own parameters (heads)")
    for key in model.objectives[objective].modalities:
        grads = [p.grad for p in model.encoders[key].parameters() if p.requires_grad]
        _require(any(g is not None and bool(g.abs().sum() > 0) for g in grads), f"{name}: the loss must reach encoder '{key}'")
    model.eval()
    with torch.no_grad():
        first, second = model(objective, batch).loss, model(objective, batch).loss
    _require(torch.equal(first, second), f"{name}: forward in eval mode must be deterministic")
    spec = config.objectives[objective]
    if spec.data.num_workers == 0:
        workers = dataclasses.replace(config, objectives={
            **config.objectives, objective: dataclasses.replace(spec, data=dataclasses.replace(spec.data, num_workers=1)),
        })
        other = next(build_streams(workers, model)[objective])
        _require(_same(_fingerprint(_tensors(batch)), _fingerprint(_tensors(other))),
                 f"{name}: a batch (prepare_sample included) must not depend on the number of loader workers")
    return out


def _tensors(value: Any) -> Any:
    """The tensors of a batch (a PyG Batch as its dict), for comparison."""
    if hasattr(value, "to_dict") and hasattr(value, "num_graphs"):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _tensors(v) for k, v in value.items()}
    return value
