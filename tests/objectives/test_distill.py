"""distill: a frozen teacher read from a run directory or an open_clip folder, outside
the student's module tree (no gradient, no optimizer entry, no checkpoint key), whose
embeddings the student's follow (cosine per item, or KL of in-batch similarities)."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import DistillClipLoss
from safetensors.torch import load_file, save_file

import mmssl
from mmssl.config import ConfigError
from mmssl.interop.export import export
from mmssl.train.checkpoint import resolve_checkpoint, save_checkpoint
from mmssl.train.device import count_host_syncs
from objectives.distill import DistillObjective, kl_divergence

REPO = Path(__file__).resolve().parents[2]
STUDENT = """
name: student
seed: 1
modalities:
  image: {backbone: test_resnet, image_size: 32}
  text: {context_length: 24, width: 16, layers: 1, heads: 2}
objectives:
  image_text: {type: contrastive, modalities: [image, text], embed_dim: 32, space: hub, data: {batch_size: 16}}
  distill: {modalities: [image, text], teacher: TEACHER, data: {batch_size: 16}}
world: {seed: 0, heldout: 6, eval_samples_per_class: 2}
train: {steps: 6, lr: 0.01, warmup_steps: 1, log_every: 1, checkpoint_every: 3, progress: false}
"""


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A run directory holding the tiny image-text model (configs/tiny.yaml) at step 6."""
    run = tmp_path_factory.mktemp("teacher")
    config = mmssl.load_config(REPO / "configs" / "tiny.yaml")
    save_checkpoint(run, 6, mmssl.build_model(config), {}, config)
    return run


@pytest.fixture(scope="module")
def student(teacher, tmp_path_factory):
    """``student(*overrides)``: the student config distilling from ``teacher``."""
    path = tmp_path_factory.mktemp("student") / "student.yaml"
    path.write_text(STUDENT.replace("TEACHER", str(teacher)))
    return lambda *overrides: mmssl.load_config(path, list(overrides))


def _batch(model: mmssl.MultimodalModel, n: int = 4) -> dict:
    """n images of the world and n captions, collated."""
    renderer, rng = model.renderers["image"], np.random.default_rng(0)
    space = renderer.concept_space()
    attributes = {**space.class_attributes, **space.nuisance_attributes, **space.shared_attributes}
    items = {"image": [renderer.render({a: v[i % len(v)] for a, v in attributes.items()}, rng) for i in range(n)],
             "text": ["a red star", "two blue circles", "a green square", "three small stars"][:n]}
    return {m: model.processors[m].collate([model.processors[m].transform(x, None) for x in xs]) for m, xs in items.items()}


def test_the_teacher_is_frozen_outside_the_module_tree_and_moves_with_the_model(student, teacher):
    model = mmssl.build_model(student())
    objective = model.objectives["distill"]
    frozen = objective.teacher.model
    assert objective.teacher_objectives == {"image": "image_text", "text": "image_text"}
    saved = load_file(resolve_checkpoint(teacher) / "model.safetensors")
    assert all(torch.equal(frozen.state_dict()[k], t) for k, t in saved.items())  # the teacher's own weights
    ours = {id(p) for p in model.parameters()}
    assert not any(id(p) in ours for p in frozen.parameters()) and not any(p.requires_grad for p in frozen.parameters())
    assert [k for k in model.state_dict() if k.startswith("objectives.distill.")] == [
        "objectives.distill.adapters.image.weight", "objectives.distill.adapters.text.weight"]  # 96 -> 32, 16 -> 32
    model.train()
    assert objective.training and not frozen.training and not any(m.training for m in frozen.modules())
    model.double()
    assert all(p.dtype == torch.float64 for p in frozen.parameters())
    assert copy.deepcopy(model).objectives["distill"].teacher.model is frozen  # a model average shares it

    batch = _batch(model)
    batch["image"]["pixels"] = batch["image"]["pixels"].double()
    with count_host_syncs() as syncs:  # the forward reads nothing back (a GPU would wait there)
        out = model("distill", batch)
    assert [s.site for s in syncs.syncs if "objectives/distill.py" in s.site] == []
    out.loss.backward()
    assert all(p.grad is None for p in frozen.parameters())
    assert objective.adapters["image"].weight.grad is not None
    assert model.encoders["text"].tower.token_embedding.weight.grad is not None
    assert set(out.metrics) == {"loss", "image_cos", "text_cos"}


def test_distilled_student_follows_the_teacher_saves_no_teacher_and_resumes_exactly(student, teacher, tmp_path):
    whole = mmssl.Pretrainer(student(), tmp_path / "whole")
    frozen = whole.model.objectives["distill"].teacher.model
    before = {k: t.clone() for k, t in frozen.state_dict().items()}
    whole.fit()
    assert all(torch.equal(before[k], t) for k, t in frozen.state_dict().items())
    assert all(id(p) not in {id(q) for g in whole.optimizer.param_groups for q in g["params"]} for p in frozen.parameters())
    first, last = whole.history[0], whole.history[-1]
    for m in ("image", "text"):  # the student's embeddings move towards the teacher's
        assert last[f"distill/{m}_cos"] > first[f"distill/{m}_cos"] + 0.1, (first, last)
    final = resolve_checkpoint(tmp_path / "whole") / "model.safetensors"
    keys = set(load_file(final))  # the student's weights, and of distill only its maps to the teacher's widths
    assert all(k.startswith(("encoders.", "objectives.image_text.", "objectives.distill.adapters.")) for k in keys)
    assert len([k for k in keys if k.startswith("encoders.")]) == len(whole.model.encoders.state_dict())

    step3 = tmp_path / "whole" / "checkpoints" / "step_00000003"
    resumed = mmssl.Pretrainer(student(f"train.resume={step3}"), tmp_path / "resumed")
    resumed.fit()
    a, b = load_file(final), load_file(resolve_checkpoint(tmp_path / "resumed") / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_kl_matches_open_clip_distillation_up_to_the_teacher_entropy_and_learns_in_the_student_space(student):
    torch.manual_seed(0)
    s_img, s_txt, t_img, t_txt = (F.normalize(torch.randn(6, 8), dim=-1) for _ in range(4))
    contrastive, dist = DistillClipLoss()(s_img, s_txt, torch.tensor(10.0), t_img, t_txt, torch.tensor(20.0))
    teacher_logits = 20.0 * t_img @ t_txt.T
    entropy = sum(-(lg.softmax(1) * lg.log_softmax(1)).sum(1).mean() for lg in (teacher_logits, teacher_logits.T)) / 2
    ours = (kl_divergence(teacher_logits, 10.0 * s_img @ s_txt.T) + kl_divergence(teacher_logits.T, 10.0 * s_txt @ s_img.T)) / 2
    assert ours.item() == pytest.approx((dist - entropy).item(), abs=1e-6)

    config = student("objectives.distill.loss=kl", "objectives.distill.space=hub", "objectives.distill.embed_dim=32")
    model = mmssl.build_model(config)
    objective = model.objectives["distill"]
    assert objective.heads["image"] is model.objectives["image_text"].heads["image"]  # the student's hub heads
    assert not hasattr(objective, "adapters")
    teacher_scale = objective.teacher.model.objectives["image_text"].logit_scale.exp().item()
    assert objective.teacher_logit_scale == pytest.approx(teacher_scale) == pytest.approx(objective.logit_scale.exp().item())
    out = model("distill", _batch(model))
    out.loss.backward()
    assert out.loss.item() > 0 and objective.logit_scale.grad is not None and objective.heads["text"].weight.grad is not None
    assert all(p.grad is None for p in objective.teacher.model.parameters())
    assert set(out.metrics) == {"loss", "logit_scale", "teacher_logit_scale", "image_to_text_agree"}
    with pytest.raises(ConfigError, match="kl compares two modalities"):
        mmssl.build_model(student("objectives.distill.loss=kl", "objectives.distill.modalities=[image]"))
    with pytest.raises(ConfigError, match="space: NAME"):  # pooled widths differ (96, 16): no shared student space
        mmssl.build_model(student("objectives.distill.loss=kl"))


def test_teacher_errors_name_the_path_the_modality_and_the_processing(student, teacher, tmp_path):
    with pytest.raises(ConfigError, match=r"'objectives.distill': 'teacher': .*nowhere does not exist"):
        mmssl.build_model(student(f"objectives.distill.teacher={tmp_path / 'nowhere'}"))
    with pytest.raises(ConfigError, match=f"{tmp_path} holds no model"):
        mmssl.build_model(student(f"objectives.distill.teacher={tmp_path}"))
    graph = ["modalities.graph.encoder=gin", "modalities.graph.width=8", "modalities.graph.depth=1",
             "objectives.distill.modalities=[graph]"]
    with pytest.raises(ConfigError, match=r"has no modality 'graph' to distil; its modalities: \['image', 'text'\]"):
        mmssl.build_model(student(*graph))
    with pytest.raises(ConfigError, match="processes 'image' otherwise.*image_size: 48 vs the teacher's 32"):
        mmssl.build_model(student("modalities.image.image_size=48"))
    with pytest.raises(ConfigError, match="processes 'text' otherwise.*context_length: 16"):
        mmssl.build_model(student("modalities.text.context_length=16"))


def test_teacher_weights_ema_reads_the_moving_average(student, tmp_path):
    """``teacher_weights: ema`` reads a checkpoint's ema.safetensors (train.ema) instead of
    its weights; a checkpoint trained without it is an error naming the file."""
    config = mmssl.load_config(REPO / "configs" / "tiny.yaml")
    checkpoint = save_checkpoint(tmp_path / "run", 6, mmssl.build_model(config), {}, config)
    average = mmssl.build_model(mmssl.load_config(REPO / "configs" / "tiny.yaml", ["seed=5"]))
    save_file({k: t.contiguous() for k, t in average.state_dict().items()}, str(checkpoint / "ema.safetensors"))
    model = mmssl.build_model(student(f"objectives.distill.teacher={tmp_path / 'run'}", "objectives.distill.teacher_weights=ema"))
    frozen = model.objectives["distill"].teacher.model.state_dict()
    assert all(torch.equal(frozen[k], t) for k, t in average.state_dict().items())
    plain = mmssl.build_model(student(f"objectives.distill.teacher={tmp_path / 'run'}"))
    weights = plain.objectives["distill"].teacher.model.state_dict()
    assert any(not torch.equal(weights[k], frozen[k]) for k in frozen)
    (checkpoint / "ema.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"'teacher': .*step_00000006 has no moving average .*ema.safetensors.*train.ema"):
        mmssl.build_model(student(f"objectives.distill.teacher={tmp_path / 'run'}", "objectives.distill.teacher_weights=ema"))


def test_an_open_clip_export_teaches(tmp_path):
    """The open_clip folder mmssl-export writes is a teacher: its towers, projections and
    logit scale, as open_clip reads them."""
    config = mmssl.load_config(REPO / "configs" / "tiny_clip.yaml")
    save_checkpoint(tmp_path / "clip", 30, mmssl.build_model(config), {}, config)
    export(mmssl.load_checkpoint(tmp_path / "clip"), tmp_path / "export", "open_clip")
    student = mmssl.load_config(REPO / "configs" / "tiny_clip.yaml", [
        "seed=1", "modalities.text.width=32", "objectives.distill.type=distill", "objectives.distill.modalities=[image,text]",
        f"objectives.distill.teacher={tmp_path / 'export'}", "objectives.distill.loss=kl", "objectives.distill.embed_dim=32",
        "objectives.distill.space=image_text_space", "objectives.image_text.space=image_text_space"])
    model = mmssl.build_model(student)
    frozen = model.objectives["distill"].teacher.model
    original = mmssl.load_checkpoint(tmp_path / "clip").model
    assert frozen.encode("text", ["a red star"]).sub(original.encode("text", ["a red star"])).abs().max() < 1e-5
    assert isinstance(model.objectives["distill"], DistillObjective)


def test_the_figure_config_distils_a_half_width_main_job_from_one_shared_teacher(tmp_path):
    """configs/distill_default.yaml on a saved main job: one teacher for its three distill
    objectives, in the student's hub (no maps: both hubs are 128 wide); without them (null)
    the same student."""
    main = mmssl.load_config(REPO / "configs" / "default.yaml")
    save_checkpoint(tmp_path, 840, mmssl.build_model(main), {}, main)
    names = ("distill_image", "distill_audio", "distill_graph")
    config = mmssl.load_config(REPO / "configs" / "distill_default.yaml", [f"objectives.{n}.teacher={tmp_path}" for n in names])
    model = mmssl.build_model(config)
    distil = [model.objectives[n] for n in names]
    assert all(d.teacher.model is distil[0].teacher.model for d in distil) and not any(len(d.adapters) for d in distil)
    assert all(d.heads[m] is model.objectives[f"{m}_text"].heads[m] for d, m in zip(distil, ("image", "audio", "graph")))
    widths = {m: e.embed_dim for m, e in model.encoders.items()}
    assert widths == {m: e.embed_dim // 2 for m, e in distil[0].teacher.model.encoders.items()}
    alone = mmssl.load_config(REPO / "configs" / "distill_default.yaml", [f"objectives.{n}=null" for n in names])
    assert list(alone.objectives) == list(main.objectives) and alone.train == main.train
