"""Parameters of one value (logit scales and biases, audio mask values) have shape [1],
since FSDP2 shards no 0-d parameter: no model holds a 0-d parameter, they compute what
0-d ones did bit for bit, and files saved with 0-d ones (checkpoints, optimizer states,
open_clip's weights) still load."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import mmssl
from mmssl.common.weights import fit_optimizer_state_shapes, fit_scalar_shapes, fits_as_scalar
from mmssl.interop.open_clip_format import open_clip_scalar_shape, write_open_clip
from mmssl.train.checkpoint import STATE, WEIGHTS, CheckpointError, Pretrained, list_checkpoints, load_safetensors
from modalities.audio import AudioConfig, AudioModality
from modalities.image import ImageConfig, ImageModality
from modalities.text import TextConfig, TextModality
from objectives.base import DistContext
from objectives.contrastive import ContrastiveConfig, ContrastiveObjective

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SCALARS = ("logit_scale", "logit_bias", "mask_value", "local_mask_value")  # the parameters that were 0-d
# tiny_joint with the audio encoder's local view, so its local_mask_value is trained and saved too
JOINT = ["train.steps=2", "train.threads=1", "train.progress=false",
         "modalities.audio.local_patch_freq=8", "modalities.audio.local_patch_time=5"]


def scalar_names(names) -> list[str]:
    return [n for n in names if n.rsplit(".", 1)[-1] in SCALARS]


# --- (a) no 0-d parameter ------------------------------------------------------------------

@pytest.mark.parametrize("config, overrides", [
    ("tiny_joint.yaml", []),
    ("tiny_joint.yaml", JOINT[3:]),
    ("tiny_joint.yaml", ["modalities.audio.encoder=timm", "modalities.audio.backbone=test_convnext"]),
    ("tiny_joint.yaml", ["objectives.image_text.loss=siglip"]),
    ("tiny_ssl.yaml", []),
    ("tiny_clip.yaml", []),
])
def test_no_parameter_is_zero_dimensional(config, overrides):
    model = mmssl.build_model(mmssl.load_config(CONFIGS / config, overrides))
    parameters = dict(model.named_parameters())
    assert [n for n, p in parameters.items() if p.ndim == 0] == []
    assert scalar_names(parameters) and all(parameters[n].shape == (1,) for n in scalar_names(parameters))


# --- the [1] parameters compute what 0-d ones did ------------------------------------------

def as_zero_dimensional(module: nn.Module, name: str) -> None:
    """Replace the [1] parameter ``name`` of ``module`` by a 0-d one of the same value (as before)."""
    setattr(module, name, nn.Parameter(getattr(module, name).detach().clone().reshape(())))


def losses_and_gradients(module: nn.Module, run, precision: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = run()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def assert_bit_identical(before, after) -> None:
    (loss_a, grads_a), (loss_b, grads_b) = before, after
    assert loss_a.shape == loss_b.shape == () and torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.equal(grads_a[name].reshape(-1), grads_b[name].reshape(-1)), name


class _Host:
    def __init__(self, encoders):
        self.encoders = encoders


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_contrastive_losses_and_gradients_are_those_of_zero_dimensional_parameters(loss, precision):
    torch.manual_seed(0)
    image = ImageModality.build(ImageConfig(backbone="test_resnet", image_size=32), "image")
    text = TextModality.build(TextConfig(width=32, layers=1, heads=2, context_length=16), "text")
    encoders = nn.ModuleDict({"image": image.encoder, "text": text.encoder})
    objective = ContrastiveObjective(ContrastiveConfig(modalities=("image", "text"), embed_dim=16, loss=loss), encoders, DistContext())
    batch = {"image": {"pixels": torch.randn(4, 3, 32, 32)}, "text": text.processor.tokenize(["a", "b c", "d e f", "g"])}
    both = nn.ModuleDict({"encoders": encoders, "objective": objective})

    def run() -> torch.Tensor:
        out = objective(_Host(encoders), batch)
        assert out.metrics["logit_scale"].dim() == 0  # a 0-d tensor, read by the trainer with the step's others
        return out.loss

    now = losses_and_gradients(both, run, precision)
    assert tuple(objective.logit_scale.grad.shape) == (1,)
    for name in scalar_names(n for n, _ in objective.named_parameters()):
        as_zero_dimensional(objective, name)
    assert_bit_identical(losses_and_gradients(both, run, precision), now)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("options, name", [
    ({"encoder": "timm", "backbone": "test_convnext"}, "mask_value"),
    ({"local_patch_freq": 8, "local_patch_time": 5}, "local_mask_value"),
])
def test_audio_mask_values_compute_what_zero_dimensional_ones_did(options, name, precision):
    torch.manual_seed(0)
    audio = AudioModality.build(AudioConfig(sample_rate=16000, clip_seconds=0.5, n_mels=32, patch_freq=16, patch_time=10,
                                            width=32, depth=1, heads=2, **options), "audio")  # as tests/modalities/test_audio.py
    encoder = audio.encoder.eval()
    with torch.no_grad():
        getattr(encoder, name).fill_(0.25)
    rng = torch.Generator().manual_seed(1)
    waves = [torch.randn(8000, generator=rng).numpy() * 0.1, torch.randn(3000, generator=rng).numpy() * 0.1]
    batch = audio.processor.collate([audio.processor.transform(w) for w in waves])
    mask = torch.rand(2, encoder.num_patches, generator=rng) < 0.5

    def run() -> torch.Tensor:
        out = encoder(batch, patch_mask=mask)
        return (out.pooled.float() ** 2).mean()

    now = losses_and_gradients(encoder, run, precision)
    assert now[1][name].shape == (1,) and now[1][name].abs().sum() > 0
    as_zero_dimensional(encoder, name)
    assert_bit_identical(losses_and_gradients(encoder, run, precision), now)


# --- (c) the fit helpers -------------------------------------------------------------------

def test_fits_as_scalar_takes_one_value_between_zero_and_one_dimension_only():
    assert fits_as_scalar((), (1,)) and fits_as_scalar((1,), ())
    assert not fits_as_scalar((1,), (1,)) and not fits_as_scalar((), ())
    assert not fits_as_scalar((1, 1), (1,)) and not fits_as_scalar((2,), ()) and not fits_as_scalar((), (1, 1))


def test_fit_scalar_shapes_reshapes_one_value_and_nothing_else():
    state = {"old": torch.tensor(2.5), "new": torch.tensor([1.5]), "kept": torch.tensor([3.0]), "real": torch.zeros(2),
             "matrix": torch.zeros(1, 1), "unknown": torch.tensor(4.0)}
    shapes = {"old": (1,), "new": (), "kept": (1,), "real": (), "matrix": (1,)}
    fitted = fit_scalar_shapes(state, shapes)
    assert {n: tuple(t.shape) for n, t in fitted.items()} == {
        "old": (1,), "new": (), "kept": (1,), "real": (2,), "matrix": (1, 1), "unknown": ()}
    assert fitted["old"].tolist() == [2.5] and fitted["new"].item() == 1.5
    assert tuple(state["old"].shape) == ()  # the input is not changed


def test_fit_optimizer_state_shapes_lets_zero_dimensional_moments_load_and_step():
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.tensor([2.0]))
            self.weight = nn.Parameter(torch.ones(3, 2))
            self.eps = nn.Parameter(torch.tensor([0.5]))  # [1] before and after: its moments stay

    def step(model: Tiny, optimizer: torch.optim.Optimizer) -> None:
        loss = (model.weight.sum() * model.scale.exp()).squeeze() + model.eps.sum() ** 2
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for foreach in (False, True):
        torch.manual_seed(0)
        model = Tiny()
        optimizer = torch.optim.AdamW([{"params": [model.weight]}, {"params": [model.scale, model.eps], "weight_decay": 0.0}],
                                      lr=0.1, foreach=foreach)
        step(model, optimizer)
        saved = copy.deepcopy(optimizer.state_dict())  # its tensors are the optimizer's own
        old = {**saved, "state": {i: {k: v.reshape(()) if k != "step" and i == 1 else v for k, v in s.items()}
                                  for i, s in saved["state"].items()}}
        assert old["state"][1]["exp_avg"].shape == () and old["state"][2]["exp_avg"].shape == (1,)

        params = [g["params"] for g in optimizer.param_groups]
        fitted = fit_optimizer_state_shapes(old, params)
        assert old["state"][1]["exp_avg"].shape == ()  # the input is not changed
        assert {k: tuple(v.shape) for k, v in fitted["state"][1].items()} == {"step": (), "exp_avg": (1,), "exp_avg_sq": (1,)}
        assert all(fitted["state"][i][k] is old["state"][i][k] for i in (0, 2) for k in old["state"][i])
        assert fitted["state"][1]["step"] is old["state"][1]["step"]

        again = Tiny()
        again.load_state_dict(model.state_dict())
        resumed = torch.optim.AdamW([{"params": [again.weight]}, {"params": [again.scale, again.eps], "weight_decay": 0.0}],
                                    lr=0.1, foreach=foreach)
        resumed.load_state_dict(fitted)
        step(again, resumed)
        step(model, optimizer)
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
        assert resumed.state[again.scale]["exp_avg"].shape == (1,)
        # and back: moments saved [1] for a parameter held 0-d
        back = fit_optimizer_state_shapes(optimizer.state_dict(), [[torch.ones(3, 2)], [torch.tensor(2.0), torch.ones(1)]])
        assert back["state"][1]["exp_avg"].shape == () and back["state"][2]["exp_avg"].shape == (1,)


def test_load_safetensors_fits_zero_dimensional_values_and_still_names_real_mismatches(tmp_path):
    class Tiny(nn.Module):
        def __init__(self, scale_shape: tuple[int, ...] = (1,), width: int = 2) -> None:
            super().__init__()
            self.logit_scale = nn.Parameter(torch.full(scale_shape, 3.0))
            self.weight = nn.Parameter(torch.ones(width))

    save_file({"logit_scale": torch.tensor(5.0), "weight": torch.full((2,), 7.0)}, tmp_path / "old.safetensors")
    model = Tiny()
    load_safetensors(model, tmp_path / "old.safetensors", "does not fit")
    assert model.logit_scale.shape == (1,) and model.logit_scale.tolist() == [5.0] and model.weight.tolist() == [7.0, 7.0]
    older = Tiny(scale_shape=())  # a [1] file into a 0-d parameter is harmless too
    save_file({"logit_scale": torch.tensor([6.0]), "weight": torch.zeros(2)}, tmp_path / "new.safetensors")
    load_safetensors(older, tmp_path / "new.safetensors", "does not fit")
    assert older.logit_scale.shape == () and older.logit_scale.item() == 6.0
    save_file({"logit_scale": torch.tensor([1.0, 2.0]), "weight": torch.zeros(3)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match=r"does not fit: tensors differ: 2 of another shape; logit_scale: checkpoint \[2\], "
                                              r"model \[1\]; weight: checkpoint \[3\], model \[2\]"):
        load_safetensors(Tiny(), tmp_path / "other.safetensors", "does not fit")


def test_open_clip_export_writes_open_clips_own_scalar_shape(tmp_path):
    import open_clip

    config = mmssl.load_config(CONFIGS / "tiny_clip.yaml", [])
    model = mmssl.build_model(config)
    with torch.no_grad():
        model.objectives["image_text"].logit_scale.fill_(2.0)
    write_open_clip(Pretrained(model=model, config=config, checkpoint=tmp_path), tmp_path)
    saved = load_file(tmp_path / "open_clip_model.safetensors")["logit_scale"]
    theirs = open_clip.create_model(f"local-dir:{tmp_path}").logit_scale
    assert tuple(saved.shape) == open_clip_scalar_shape() == tuple(theirs.shape) == ()  # open_clip 3.3: 0-d
    assert saved.item() == theirs.item() == 2.0


# --- (b) checkpoints saved with 0-d parameters ---------------------------------------------

def make_zero_dimensional(checkpoint: Path) -> list[str]:
    """Rewrite a checkpoint as mmssl saved it before: the one-value parameters 0-d in
    ``model.safetensors``, and their optimizer moments 0-d in ``trainer_state.pt``."""
    weights = load_file(checkpoint / WEIGHTS)
    names = scalar_names(weights)
    save_file({n: t.reshape(()) if n in names else t for n, t in weights.items()}, checkpoint / WEIGHTS)
    state = torch.load(checkpoint / STATE, map_location="cpu", weights_only=True)
    optimizer = state["optimizer"]
    positions = {name: index for group, saved in zip(state["optimizer_param_names"], optimizer["param_groups"])
                 for name, index in zip(group, saved["params"])}
    for name in names:
        entries = optimizer["state"].get(positions[name], {})  # none for a parameter no step has updated
        for key in ("exp_avg", "exp_avg_sq") if entries else ():
            assert entries[key].shape == (1,)
            entries[key] = entries[key].reshape(())
    torch.save(state, checkpoint / STATE)
    return names


@pytest.fixture(scope="module", params=["fused", "unfused"])
def runs(request, tmp_path_factory) -> tuple[list[str], Path, Path, list[str]]:
    """(the overrides, a tiny_joint run of 2 steps, a copy whose checkpoint was rewritten
    with 0-d parameters, their names). A fused AdamW steps 0-d moments of a [1]
    parameter (they stay 0-d); the unfused one refuses to."""
    overrides = [*JOINT, f"train.fused_optimizer={request.param == 'fused'}"]
    root = tmp_path_factory.mktemp(f"scalars_{request.param}")
    torch.set_num_threads(1)
    mmssl.Pretrainer(mmssl.load_config(CONFIGS / "tiny_joint.yaml", overrides), root / "new").fit()
    shutil.copytree(root / "new", root / "old")
    names = make_zero_dimensional(list_checkpoints(root / "old")[-1])
    return overrides, root / "new", root / "old", names


def test_old_scalar_checkpoint_loads(runs):
    _, new, old, names = runs
    assert {n.rsplit(".", 1)[-1] for n in names} == {"logit_scale", "local_mask_value"} and len(names) == 4
    assert all(load_file(list_checkpoints(old)[-1] / WEIGHTS)[n].shape == () for n in names)
    ours, theirs = mmssl.load_checkpoint(new).model.state_dict(), mmssl.load_checkpoint(old).model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[n], theirs[n]) for n in ours)
    assert all(theirs[n].shape == (1,) for n in names)


def test_old_scalar_checkpoint_resumes(runs, tmp_path):
    """Needs the trainer to pass the saved optimizer state through
    ``mmssl.common.weights.fit_optimizer_state_shapes`` before ``load_state_dict``."""
    overrides, new, old, _ = runs
    finals = []
    for run in (new, old):
        copy_of_run = Path(shutil.copytree(run, tmp_path / run.name))
        trainer = mmssl.Pretrainer(mmssl.load_config(CONFIGS / "tiny_joint.yaml", [*overrides, "train.steps=3", "train.resume=auto"]),
                                   copy_of_run)
        trainer.fit()
        assert trainer.step == 3
        moments = [(tuple(p.shape), tuple(trainer.optimizer.state[p][key].shape))
                   for group in trainer.optimizer.param_groups for p in group["params"] for key in ("exp_avg", "exp_avg_sq")]
        assert [m for m in moments if m[0] != m[1]] == []
        finals.append(trainer.model.state_dict())
    ours, theirs = finals
    assert [n for n in ours if not torch.equal(ours[n], theirs[n])] == []
