"""dino: DINO's self-distillation over multi-crop views (the loss, the centre, the teacher
moved by EMA alone, local views of each modality, resumption, ranks), KoLeo."""

import math
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
from safetensors import safe_open

import mmssl
from mmssl.common.ema import cosine_momentum
from mmssl.train.checkpoint import resolve_checkpoint
from mmssl.train.run_log import read_metrics
from mmssl.train.trainer import Pretrainer
from modalities.audio import AudioConfig, AudioModality
from modalities.base import LocalViewAugmenter
from modalities.graph import GraphConfig, GraphModality
from modalities.image import ImageConfig, ImageModality
from objectives.base import EXTRAS_KEY, DistContext
from objectives.dino import DinoConfig, DinoObjective, dino_loss, koleo_terms, teacher_temperature
from tests.test_distributed_ops import WORLD, in_two_processes
from tests.test_nonfinite import nan_loss_at
from tests.test_trainer import _assert_same_weights, resume_after_kill

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "configs" / "tiny_dino_image.yaml"
AUDIO = REPO / "configs" / "tiny_dino_audio.yaml"
SMALL_HEAD = ["objectives.dino.prototypes=16", "objectives.dino.hidden_dim=16", "objectives.dino.bottleneck_dim=8"]
SMALL = [*SMALL_HEAD, "objectives.dino.data.batch_size=8", "objectives.dino.local_crops=2", "world.eval_samples_per_class=2",
         "train.warmup_steps=2", "train.log_every=1"]
TINY_AUDIO = ["modalities.audio.clip_seconds=0.5", "modalities.audio.width=16", "modalities.audio.depth=1"]
TINY_IMAGE = ["modalities.image.backbone=test_resnet", "modalities.image.backbone_args={}", "modalities.image.image_size=32"]
SMALL_CONFIG = dict(prototypes=16, hidden_dim=16, bottleneck_dim=8)


def test_dino_loss_is_the_cross_entropy_over_pairs_of_different_views():
    """Two global views and one local of two items, three prototypes, written out."""
    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.2, 0.1],    # global view 0 of items 0, 1
                            [0.0, 2.0, 0.0], [-0.3, 0.4, 0.9],    # global view 1
                            [0.7, -0.2, 0.3], [0.0, 0.0, 1.5]],   # the local view
                           dtype=torch.float64)
    teacher = torch.tensor([[0.2, 0.1, 0.0], [0.0, 0.3, 0.6], [0.5, 0.5, -0.5], [0.1, -0.1, 0.2]], dtype=torch.float64)
    center = torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64)
    t_temp, s_temp = 0.04, 0.1

    def softmax(row, temp):
        e = [math.exp(v / temp) for v in row]
        return [v / sum(e) for v in e]

    expected = []
    for item in range(2):
        terms = []
        for i in range(2):  # the teacher's global views
            p = softmax([t - c for t, c in zip(teacher[2 * i + item].tolist(), center.tolist())], t_temp)
            for j in range(3):  # the student's views, the same view left out
                if j == i:
                    continue
                q = softmax(student[2 * j + item].tolist(), s_temp)
                terms.append(-sum(a * math.log(b) for a, b in zip(p, q)))
        assert len(terms) == 4
        expected.append(sum(terms) / len(terms))
    per_item, probs = dino_loss(student, teacher, center, s_temp, t_temp, global_crops=2)
    torch.testing.assert_close(per_item, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    assert probs.shape == (2, 2, 3)
    # without the centre, or with same-view pairs, the value differs
    assert not torch.allclose(dino_loss(student, teacher, torch.zeros(3, dtype=torch.float64), s_temp, t_temp, 2)[0], per_item)


def test_koleo_is_minus_the_log_distance_to_the_nearest_other_item():
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 2.0], [-1.0, -1.0]], dtype=torch.float64)
    unit = x / x.norm(dim=1, keepdim=True)
    expected = [-math.log(min(float((unit[i] - unit[j]).norm()) for j in range(4) if j != i) + 1e-8) for i in range(4)]
    torch.testing.assert_close(koleo_terms(x), torch.tensor(expected, dtype=torch.float64))


def test_teacher_temperature_warms_up_linearly():
    config = DinoConfig(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_steps=10)
    assert [round(teacher_temperature(config, s), 6) for s in (0, 5, 10, 20)] == [0.04, 0.055, 0.07, 0.07]


def _views(parts, key, raws, **options):
    objective = DinoObjective(DinoConfig(modalities=(key,), local_crops=2, **SMALL_CONFIG, **options), {key: parts.encoder},
                              DistContext(), processors={key: parts.processor})
    samples = [parts.processor.transform(raw, np.random.default_rng(i)) for i, raw in enumerate(raws)]
    views = [objective.prep.prepare_sample({key: s}, np.random.default_rng(i)) for i, s in enumerate(samples)]
    assert list(views[0]) == ["global_0", "global_1", "local_0", "local_1"]
    batch = {EXTRAS_KEY: objective.prep.collate_extras({k: [v[k] for v in views] for k in views[0]})}
    return objective, samples, batch


class _Host(torch.nn.Module):
    def __init__(self, encoders):
        super().__init__()
        self.encoders = torch.nn.ModuleDict(encoders)


def test_local_views_are_smaller_and_encode():
    """Images: 16 px local crops of 32 px images; sounds: whole patch columns of half the
    clip; graphs: about half the nodes. Each is a function of its generator, leaves the
    sample unchanged and goes through the encoder (the loss backpropagates)."""
    torch.manual_seed(0)
    image = ImageModality.build(ImageConfig(backbone="test_resnet"), "image")
    audio = AudioModality.build(AudioConfig(sample_rate=8000, clip_seconds=0.5, n_mels=32, n_fft=256, hop_length=80, width=16,
                                            depth=1, heads=2), "audio")
    graph = GraphModality.build(GraphConfig(width=16, depth=1), "graph")
    cases = [  # the size of a batch's views: pixels a side, frames, nodes of all graphs
        (image, "image", [np.full((40, 40, 3), 30 * i, np.uint8) for i in range(3)], lambda b: b["pixels"].shape[-1]),
        (audio, "audio", [np.sin(np.arange(4000) * 0.01 * (i + 1)).astype(np.float32) for i in range(3)],
         lambda b: b["mel"].shape[-1]),
        (graph, "graph", [nx.cycle_graph(20 + i) for i in range(3)], lambda b: b.num_nodes),
    ]
    for parts, key, raws, size in cases:
        assert isinstance(parts.processor, LocalViewAugmenter)
        objective, samples, batch = _views(parts, key, raws)
        sizes = size(batch[EXTRAS_KEY]["global_views"]), size(batch[EXTRAS_KEY]["local_views"])
        if key == "graph":  # 6 views of 20 to 22 nodes; GraphCL's pool drops up to 30 % of a global view's
            assert sizes[0] >= 0.7 * 6 * 21 and sizes[1] <= 0.5 * 6 * 22, sizes
        else:
            assert sizes == ((32, 16) if key == "image" else (50, 20)), (key, sizes)
        first = parts.processor.local_augment(samples[0], np.random.default_rng(3))
        again = parts.processor.local_augment(samples[0], np.random.default_rng(3))
        if key == "graph":
            assert torch.equal(first.edge_index, again.edge_index) and samples[0].num_nodes == 20
        else:
            values = (lambda s: s) if key == "image" else (lambda s: s["mel"])
            assert torch.equal(values(first), values(again))
        out = objective(_Host({key: parts.encoder}), batch)
        out.loss.backward()
        assert out.loss.isfinite() and any(p.grad is not None for p in parts.encoder.parameters()), key
        assert {"teacher_entropy", "teacher_batch_entropy", "agreement", "center_norm", "teacher_temp", "momentum"} <= set(out.metrics)


@pytest.mark.parametrize("options", [dict(encoder="timm", backbone="test_resnet"), dict(encoder="wav2vec2"),
                                     dict(local_patch_freq=8, local_patch_time=10)], ids=["timm", "wav2vec2", "local_patches"])
def test_every_audio_encoder_takes_windows_of_the_clip(options):
    torch.manual_seed(0)
    audio = AudioModality.build(AudioConfig(sample_rate=8000, clip_seconds=0.5, n_mels=32, n_fft=256, hop_length=80, width=16,
                                            depth=1, heads=2, **options), "audio")
    objective, _, batch = _views(audio, "audio", [np.sin(np.arange(4000) * 0.01 * (i + 1)).astype(np.float32) for i in range(2)])
    local = batch[EXTRAS_KEY]["local_views"]
    assert local[audio.processor.value_key].shape[-1] == (2000 if options.get("encoder") == "wav2vec2" else 20)
    assert audio.encoder(local).pooled.shape == (4, audio.encoder.embed_dim)
    assert objective(_Host({"audio": audio.encoder}), batch).loss.isfinite()


def test_an_encoder_that_cannot_take_local_views_is_named_with_the_fix():
    torch.manual_seed(0)
    vit = dict(backbone="vit_tiny_patch16_224", backbone_args={"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32,
                                                               "num_heads": 2}, image_size=32)
    image = ImageModality.build(ImageConfig(**vit), "image")
    objective, _, batch = _views(image, "image", [np.zeros((32, 32, 3), np.uint8)] * 2)
    with pytest.raises(ValueError, match=r"cannot encode its local views .*local_size equal to image_size.*local_crops: 0"):
        objective(_Host({"image": image.encoder}), batch)
    # a timm ViT of dynamic size takes them
    vit["backbone_args"] = {**vit["backbone_args"], "dynamic_img_size": True}
    image = ImageModality.build(ImageConfig(**vit), "image")
    objective, _, batch = _views(image, "image", [np.zeros((32, 32, 3), np.uint8)] * 2)
    assert objective(_Host({"image": image.encoder}), batch).loss.isfinite()
    with pytest.raises(ValueError, match=r"global_crops \+ local_crops >= 2"):
        DinoObjective(DinoConfig(global_crops=1, local_crops=0), {"image": image.encoder}, DistContext(),
                      processors={"image": image.processor})


def test_teacher_moves_by_moving_average_only(tmp_path):
    config = mmssl.load_config(AUDIO, [*SMALL, *TINY_AUDIO, "objectives.dino.momentum=0.9", "train.steps=4"])
    trainer = Pretrainer(config, tmp_path)
    objective = trainer.model.objectives["dino"]
    teacher = [*objective.teacher_encoder.parameters(), *objective.teacher_head.parameters()]
    student = [*trainer.model.encoders["audio"].parameters(), *objective.head.parameters()]
    assert all(not p.requires_grad for p in teacher)
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in teacher}
    # the prototypes' norm is frozen at 1 (norm_last_layer), in the student too
    magnitude = objective.head.last_layer.parametrizations.weight.original0
    assert id(magnitude) not in optimised and torch.equal(magnitude, torch.ones_like(magnitude))
    assert all(torch.equal(t, s) for t, s in zip(teacher, student))  # the teacher starts as a copy
    before = [t.detach().clone() for t in teacher]
    trainer.train_step()
    assert all(p.grad is None for p in teacher)
    momentum = cosine_momentum(0.9, 1, 4)
    for old, new, s in zip(before, teacher, student):
        torch.testing.assert_close(new, torch.lerp(old, s.detach(), 1 - momentum), rtol=0, atol=1e-6)
    assert any(not torch.equal(old, new) for old, new in zip(before, teacher))
    assert objective.momentum.item() == pytest.approx(momentum) and int(objective.optimizer_steps) == 1
    assert objective.center.norm() > 0
    # a step skipped as non-finite leaves the teacher, the centre and the step count as they were
    nan_loss_at(trainer, {1}, objective="dino")
    kept = [t.detach().clone() for t in (*teacher, objective.center)]
    assert trainer.train_step()["skipped"]
    assert all(torch.equal(old, new) for old, new in zip(kept, (*teacher, objective.center)))
    assert int(objective.optimizer_steps) == 1


def test_dino_resumes_bit_for_bit_with_teacher_and_centre_in_the_checkpoint(tmp_path):
    overrides = [*SMALL, *TINY_IMAGE, "train.steps=5", "train.checkpoint_every=2", "objectives.dino.koleo_weight=0.1",
                 "objectives.dino.warmup_teacher_temp=0.02", "objectives.dino.warmup_teacher_temp_steps=4"]
    full = Pretrainer(mmssl.load_config(IMAGE, overrides), tmp_path / "full")
    full.fit()
    with safe_open(resolve_checkpoint(tmp_path / "full") / "model.safetensors", "pt") as f:
        saved = set(f.keys())
    teacher = {f"objectives.dino.{k}" for k in full.model.objectives["dino"].state_dict() if "teacher" in k}
    assert any(k.startswith("objectives.dino.teacher_encoder.") for k in teacher)
    assert any(k.startswith("objectives.dino.teacher_head.last_layer.") for k in teacher)
    assert teacher | {"objectives.dino.center", "objectives.dino.optimizer_steps"} <= saved

    run = tmp_path / "killed"
    resumed = resume_after_kill(IMAGE, run, overrides, kill_at=3, left=["step_00000002"])
    _assert_same_weights(full.model, resumed.model)
    keys = ("step", "loss", "dino/teacher_temp", "dino/center_norm", "dino/koleo")
    full_log = [tuple(r[k] for k in keys) for r in read_metrics(tmp_path / "full" / "metrics.jsonl")]
    assert [tuple(r[k] for k in keys) for r in read_metrics(run / "metrics.jsonl")] == full_log
    assert [r[2] for r in full_log] == pytest.approx([0.02, 0.025, 0.03, 0.035, 0.04])


def test_the_student_learns_the_teacher(tmp_path):
    """The loss less its floor, the teacher's entropy (what is left is the mean
    KL(teacher || student) over the pairs), falls over a short run. The loss itself need
    not fall this early: while the centre warms up from 0 (a time constant of 10 steps at
    center_momentum 0.9) it flattens the teacher, whose entropy rises; over the 300 steps
    of tiny_dino_audio.yaml it falls from 4.8 to 1.7."""
    overrides = [*SMALL, *TINY_AUDIO, "objectives.dino.data.batch_size=16", "train.steps=30", "train.lr=0.003"]
    Pretrainer(mmssl.load_config(AUDIO, overrides), tmp_path).fit()
    records = read_metrics(tmp_path / "metrics.jsonl")
    kl = [r["dino/loss"] - r["dino/teacher_entropy"] for r in records]
    first, last = np.mean(kl[:5]), np.mean(kl[-5:])
    assert last < first - 0.5, f"DINO's loss less the teacher's entropy went {first:.3f} -> {last:.3f}"
    assert records[-1]["dino/teacher_batch_entropy"] > 0.5  # not every item on one prototype


def _objective(rank: int, world_size: int):
    torch.manual_seed(0)
    audio = AudioModality.build(AudioConfig(sample_rate=8000, clip_seconds=0.5, n_mels=32, n_fft=256, hop_length=80, width=16,
                                            depth=1, heads=2), "audio")
    objective = DinoObjective(DinoConfig(modalities=("audio",), local_crops=1, koleo_weight=0.5, **SMALL_CONFIG),
                              {"audio": audio.encoder}, DistContext(rank, world_size), processors={"audio": audio.processor})
    model = _Host({"audio": audio.encoder}).double()
    objective.double()
    raws = [np.sin(np.arange(4000) * 0.004 * (i + 1)).astype(np.float32) for i in range(8)]
    samples = [audio.processor.transform(raw, np.random.default_rng(i)) for i, raw in enumerate(raws)]
    views = [objective.prep.prepare_sample({"audio": s}, np.random.default_rng(i)) for i, s in enumerate(samples)]
    return model, objective, views


def _step(model, objective, views):
    batch = {EXTRAS_KEY: objective.prep.collate_extras({k: [v[k] for v in views] for k in views[0]})}
    batch[EXTRAS_KEY] = {k: {n: t.double() if t.is_floating_point() else t for n, t in v.items()} for k, v in batch[EXTRAS_KEY].items()}
    outs = [objective(model, batch) for _ in range(2)]  # two forwards: the second uses the first's centre
    (outs[0].loss + outs[1].loss).backward()
    grads = torch.cat([p.grad.flatten() for p in model.encoders["audio"].parameters() if p.grad is not None])
    return torch.stack([o.loss.detach() for o in outs]), grads, objective.center.clone()


def _two_ranks(rank: int) -> None:
    from mmssl.train import distributed

    losses, grads, center = _step(*_objective(0, 1))
    model, objective, views = _objective(rank, WORLD)
    part = len(views) // WORLD
    my_losses, my_grads, my_center = _step(model, objective, views[rank * part : (rank + 1) * part])
    # the mean over ranks of the losses (and of the gradients, as DDP takes it) is one process's
    torch.testing.assert_close(distributed.all_reduce_sum(my_losses) / WORLD, losses, rtol=1e-12, atol=0)
    torch.testing.assert_close(distributed.all_reduce_sum(my_grads) / WORLD, grads, rtol=1e-9, atol=1e-14)
    # the centre is the mean over the global batch: one process's, on every rank
    torch.testing.assert_close(my_center, center, rtol=1e-12, atol=0)
    other = my_center.clone()
    torch.distributed.broadcast(other, 0)
    assert torch.equal(other, my_center)


@pytest.mark.slow
def test_two_ranks_give_the_one_process_loss_gradient_and_centre():
    """fp64, audio (LayerNorm: a sample's output is its own), KoLeo on (neighbours found in
    the global batch): 2 gloo processes against the concatenated batch in one."""
    in_two_processes(_two_ranks)


@pytest.mark.slow
def test_dino_trains_on_two_fsdp_processes_as_on_one(tmp_path):
    """tiny_dino_audio in fp64 with KoLeo and a temperature warmup: the same losses and
    weights (teacher and centre included) on 2 FSDP processes (the teacher's blocks
    sharded as every encoder's, its weight-normalised head in the root) as on 1. DDP's
    part, the loss, gradient and centre of 2 ranks, is the test above; DDP runs teachers
    like it (BYOL's target) in tests/test_distributed.py's self-supervised family."""
    from tests.test_distributed import assert_same_run, assert_same_tensors, pretrain

    overrides = (*SMALL, *TINY_AUDIO, "train.precision=fp64", "train.steps=4", "objectives.dino.koleo_weight=0.1",
                 "objectives.dino.warmup_teacher_temp=0.02", "objectives.dino.warmup_teacher_temp_steps=3",
                 "train.sync_batchnorm=true")  # the head's BatchNorm over the global batch, as on one process
    pretrain(tmp_path / "one", *overrides, config=str(AUDIO))
    pretrain(tmp_path / "fsdp", *overrides, "train.parallel=fsdp", nproc=2, config=str(AUDIO))
    assert_same_run(tmp_path / "one", tmp_path / "fsdp", loss_tol=1e-10, weight_tol=1e-10)
    assert_same_tensors(tmp_path / "one", tmp_path / "fsdp", tol=1e-8)
