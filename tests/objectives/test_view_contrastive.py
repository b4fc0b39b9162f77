"""view_contrastive: SimCLR and BYOL on two augmented views of images, sounds and graphs
(GraphCL is its graph_contrastive name), the shared NT-Xent, the modalities'
augmentations and BYOL's moving-average target."""

import re
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
from safetensors import safe_open

import mmssl
import objectives.helpers.nt_xent
import objectives.view_contrastive
from mmssl.train.checkpoint import resolve_checkpoint
from mmssl.config import ConfigError
from mmssl.train.run_log import read_metrics
from mmssl.train.trainer import Pretrainer
from modalities.audio import AudioConfig, AudioModality, AudioViews
from modalities.base import ModalityParts, ViewAugmenter
from modalities.graph import GraphConfig, GraphModality, GraphViews
from modalities.text import TextConfig, TextModality
from modalities.image import ImageConfig, ImageModality, ImageViews
from objectives.base import EXTRAS_KEY, DistContext
from objectives.view_contrastive import (
    GraphContrastiveConfig,
    GraphContrastiveObjective,
    ViewContrastiveConfig,
    ViewContrastiveObjective,
    byol_momentum,
)
from tests.test_nonfinite import nan_loss_at
from tests.test_trainer import _assert_same_weights, resume_after_kill

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "configs" / "tiny_view_image.yaml"
AUDIO = REPO / "configs" / "tiny_view_audio.yaml"
SMALL = ["objectives.views.data.batch_size=16", "objectives.views.embed_dim=16", "world.eval_samples_per_class=2",
         "train.warmup_steps=2", "train.log_every=1"]
TINY_IMAGE = ["modalities.image.backbone=test_resnet", "modalities.image.backbone_args={}", "modalities.image.image_size=32"]


def test_one_nt_xent_in_the_codebase():
    assert issubclass(GraphContrastiveObjective, ViewContrastiveObjective)  # GraphCL is SimCLR on graph views
    assert objectives.view_contrastive.nt_xent is objectives.helpers.nt_xent.nt_xent
    definitions = [p.name for p in (REPO / "objectives").rglob("*.py") if re.search(r"^def nt_xent\(", p.read_text(), re.M)]
    assert definitions == ["nt_xent.py"]


def _image_sample(modality: ModalityParts) -> torch.Tensor:
    concept = {"colour": "red", "shape": "star", "size": "small", "position": "left", "count": "two"}
    return modality.processor.transform(modality.renderer.render(concept, np.random.default_rng(0)), np.random.default_rng(1))


def _audio_sample(modality: ModalityParts) -> dict:
    concept = {"contour": "rising", "timbre": "square", "register": "middle", "count": "two"}
    return modality.processor.transform(modality.renderer.render(concept, np.random.default_rng(0)), np.random.default_rng(1))


def _audio(**options) -> ModalityParts:
    base = dict(sample_rate=8000, clip_seconds=0.5, n_mels=32, n_fft=256, hop_length=80, width=32, depth=1, heads=2)
    return AudioModality.build(AudioConfig(**{**base, **options}), "audio")


@pytest.mark.parametrize("kind", ["image", "audio", "wav2vec2"])
def test_views_follow_the_generator_and_leave_the_sample_unchanged(kind):
    if kind == "image":
        parts = ImageModality.build(ImageConfig(backbone="test_resnet"), "image")
        sample = _image_sample(parts)
        values = lambda s: s  # noqa: E731
    else:
        parts = _audio(encoder="wav2vec2") if kind == "wav2vec2" else _audio()
        sample = _audio_sample(parts)
        values = lambda s: s["wave" if kind == "wav2vec2" else "mel"]  # noqa: E731
    modality = parts.processor
    assert isinstance(modality, ViewAugmenter)
    before = values(sample).clone()
    torch.manual_seed(123)
    first = modality.augment(sample, np.random.default_rng(5))
    global_state = torch.get_rng_state()
    again = modality.augment(sample, np.random.default_rng(5))
    other = modality.augment(sample, np.random.default_rng(6))
    assert torch.equal(torch.get_rng_state(), global_state)  # torch's generator is restored
    assert torch.equal(values(sample), before)
    assert torch.equal(values(first), values(again))
    assert values(first).shape == before.shape
    assert not torch.equal(values(first), values(other))
    if kind != "image":
        count = "valid_samples" if kind == "wav2vec2" else "valid_frames"
        assert first[count] == again[count] and 1 <= first[count] <= before.shape[-1]


def test_image_channel_shift_moves_each_channel_by_one_offset_within_its_bound():
    """With only the channel shift on, a view is the image plus one offset per RGB
    channel, at most ``channel_shift`` of the pixel range (away from the clamp)."""
    still = dict(crop_scale=(1.0, 1.0), flip=0.0, blur=0.0, brightness=0.0, contrast=0.0)
    parts = ImageModality.build(ImageConfig(backbone="test_resnet", views=ImageViews(**still, channel_shift=0.08)), "image")
    sample = _image_sample(parts)
    modality = parts.processor
    std = torch.tensor(modality.config.std).view(3, 1, 1)
    pixels = sample * std + torch.tensor(modality.config.mean).view(3, 1, 1)
    inside = ((pixels > 0.1) & (pixels < 0.9)).all(0)  # no clamping there
    offsets = [((modality.augment(sample, np.random.default_rng(seed)) - sample) * std)[:, inside] for seed in range(8)]
    for offset in offsets:
        per_channel = offset.mean(1)
        assert torch.allclose(offset, per_channel[:, None].expand_as(offset), atol=1e-5)  # one offset a channel
        assert per_channel.abs().max() <= 0.08 + 1e-6
    spread = torch.stack([o.mean(1) for o in offsets])
    assert spread.abs().max() > 0.04 and len({round(float(v), 4) for v in spread[:, 0]}) == 8
    with pytest.raises(ValueError, match=r"views.channel_shift must be in \[0, 1\].*got -0.1"):
        ImageModality.build(ImageConfig(backbone="test_resnet", views=ImageViews(channel_shift=-0.1)), "image")


def test_audio_gain_is_exact_on_the_log_mel():
    """6 dB on the waveform and 6 dB on its log-mel agree (no shift, no masks)."""
    modality = _audio(views=AudioViews(shift=0.0, gain_db=6.0, freq_mask=0, time_mask=0)).processor
    wave = torch.sin(torch.arange(4000) * 0.3) * 0.3
    rng = np.random.default_rng(0)
    mirror = np.random.default_rng(0)  # the draws augment makes: the shift (none), then the gain
    mirror.integers(0, 1)
    gain = float(mirror.uniform(-6.0, 6.0))
    view = modality.augment(modality.transform(wave.numpy()), rng)
    expected = modality.transform((wave * 10 ** (gain / 20)).numpy())
    assert torch.allclose(view["mel"], expected["mel"], atol=1e-3)


def test_a_modality_without_augmentations_is_refused_at_build():
    text = TextModality.build(TextConfig(width=16, layers=1, heads=2), "text")
    with pytest.raises(ValueError, match=r"modality 'text' is no ViewAugmenter .* view-contrastive learning needs: it lacks \['augment'\]"):
        ViewContrastiveObjective(ViewContrastiveConfig(modalities=("text",)), {"text": text.encoder}, DistContext(),
                                 processors={"text": text.processor})
    with pytest.raises(ConfigError, match="method"):
        mmssl.load_config(IMAGE, ["objectives.views.method=moco"])


class _Host(torch.nn.Module):
    def __init__(self, encoders):
        super().__init__()
        self.encoders = torch.nn.ModuleDict(encoders)


def _graph_batch(objective, graph, items=6):
    samples = [graph.processor.transform(nx.cycle_graph(5 + i)) for i in range(items)]
    views = [objective.prepare_sample({"graph": s}, np.random.default_rng(i)) for i, s in enumerate(samples)]
    return {EXTRAS_KEY: objective.collate_extras({k: [v[k] for v in views] for k in ("view_a", "view_b")})}


def test_one_objective_serves_graph_views_together_or_apart_as_graphcl():
    """view_contrastive on the graph modality (its views: ``modalities.graph.views``), and
    graph_contrastive, which is the same objective with GraphCL's keys and views apart."""
    torch.manual_seed(0)
    graph = GraphModality.build(GraphConfig(width=16, depth=1, views=GraphViews(augmentations={"node_drop": 0.3}, per_view=1)),
                                "graph")
    assert isinstance(graph.processor, ViewAugmenter)
    simclr = ViewContrastiveObjective(ViewContrastiveConfig(modalities=("graph",), embed_dim=8), {"graph": graph.encoder},
                                      DistContext(), processors={"graph": graph.processor})
    batch = _graph_batch(simclr, graph)
    assert set(batch[EXTRAS_KEY]) == {"views"} and batch[EXTRAS_KEY]["views"].num_graphs == 12
    out = simclr(_Host({"graph": graph.encoder}), batch)
    assert out.loss.isfinite() and 0 <= out.metrics["view_acc"] <= 1
    out.loss.backward()
    assert graph.encoder.input.weight.grad.abs().sum() > 0

    graphcl = GraphContrastiveObjective(GraphContrastiveConfig(embed_dim=8, augmentations={"edge_perturb": 0.4}),
                                        {"graph": graph.encoder}, DistContext(), processors={"graph": graph.processor})
    assert graphcl.options.encode_views == "apart" and graphcl.options.method == "simclr"
    batch = _graph_batch(graphcl, graph)
    assert set(batch[EXTRAS_KEY]) == {"view_a", "view_b"}
    # its own pool, not the modality's: edges perturbed, every node kept
    assert batch[EXTRAS_KEY]["view_a"].num_nodes == sum(5 + i for i in range(6))
    assert graphcl(_Host({"graph": graph.encoder}), batch).loss.isfinite()
    plain = GraphContrastiveObjective(GraphContrastiveConfig(embed_dim=8), {"graph": graph.encoder}, DistContext(),
                                      processors={"graph": graph.processor})
    assert plain.prep.augment == graph.processor.augment  # no keys of its own: the modality's views
    with pytest.raises(ValueError, match=r"augmentations_per_view must be in \[1, 1\], got 2"):
        GraphContrastiveObjective(GraphContrastiveConfig(augmentations={"subgraph": 0.3}, augmentations_per_view=2),
                                  {"graph": graph.encoder}, DistContext(), processors={"graph": graph.processor})
    with pytest.raises(ValueError, match=r"views.per_view must be in \[1, 1\], got 3"):
        GraphModality.build(GraphConfig(views=GraphViews(augmentations={"subgraph": 0.3}, per_view=3)))


def test_simclr_loss_falls(tmp_path):
    trainer = Pretrainer(mmssl.load_config(IMAGE, [*SMALL, *TINY_IMAGE, "train.steps=16", "train.lr=0.003"]), tmp_path)
    trainer.fit()
    losses = [r["views/loss"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < first - 0.3, f"NT-Xent went {first:.3f} -> {last:.3f}"
    assert read_metrics(tmp_path / "metrics.jsonl")[-1]["views/view_acc"] > 1 / 31


def test_byol_target_moves_by_moving_average_only(tmp_path):
    config = mmssl.load_config(AUDIO, [*SMALL, "objectives.views.method=byol", "objectives.views.momentum=0.9", "train.steps=4"])
    trainer = Pretrainer(config, tmp_path)
    objective = trainer.model.objectives["views"]
    target = [*objective.target_encoder.parameters(), *objective.target_head.parameters()]
    online = [*trainer.model.encoders["audio"].parameters(), *objective.head.parameters()]
    assert all(not p.requires_grad for p in target)
    # BYOL's projector and predictor normalise their hidden layer, as the paper's
    assert all(isinstance(h[1], torch.nn.BatchNorm1d) for h in (objective.head, objective.predictor, objective.target_head))
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in target}
    assert all(torch.equal(t, o) for t, o in zip(target, online))  # the target starts as a copy
    before = [t.detach().clone() for t in target]
    trainer.train_step()
    assert all(p.grad is None for p in target)
    momentum = byol_momentum(0.9, 1, 4)
    assert 0.9 < momentum < 1.0
    for old, new, o in zip(before, target, online):
        torch.testing.assert_close(new, momentum * old + (1 - momentum) * o.detach(), rtol=0, atol=1e-6)
    assert any(not torch.equal(old, new) for old, new in zip(before, target))
    assert objective.momentum.item() == pytest.approx(momentum)
    # a step skipped as non-finite leaves the target (and its momentum) as it was
    nan_loss_at(trainer, {1}, objective="views")
    kept = [t.detach().clone() for t in target]
    assert trainer.train_step()["skipped"]
    assert all(torch.equal(old, new) for old, new in zip(kept, target))
    assert objective.momentum.item() == pytest.approx(momentum)


def test_byol_resumes_bit_for_bit_with_its_target_in_the_checkpoint(tmp_path):
    overrides = [*SMALL, *TINY_IMAGE, "objectives.views.method=byol", "train.steps=5", "train.checkpoint_every=2"]
    full = Pretrainer(mmssl.load_config(IMAGE, overrides), tmp_path / "full")
    full.fit()
    with safe_open(resolve_checkpoint(tmp_path / "full") / "model.safetensors", "pt") as f:
        saved = set(f.keys())
    target = {f"objectives.views.{k}" for k in full.model.objectives["views"].state_dict() if k.startswith("target_")}
    assert target and target <= saved

    run = tmp_path / "killed"
    resumed = resume_after_kill(IMAGE, run, overrides, kill_at=3, left=["step_00000002"])
    _assert_same_weights(full.model, resumed.model)
    full_log = [(r["step"], r["loss"], r["views/momentum"]) for r in read_metrics(tmp_path / "full" / "metrics.jsonl")]
    assert [(r["step"], r["loss"], r["views/momentum"]) for r in read_metrics(run / "metrics.jsonl")] == full_log
