"""Masked image modeling (objectives/masked_modeling.py) on the image modality's ViT and CNN
towers (modalities/image.encoder.py), on configs/tiny_masked_image.yaml."""

import numpy as np
import pytest
import torch

import mmssl
from mmssl.train.checkpoint import list_checkpoints
from mmssl.data import build_streams
from mmssl.train.run_log import read_metrics
from mmssl.testing import check_objective
from mmssl.train.trainer import Pretrainer
from modalities.image import ImageConfig, ImageModality
from modalities.text import TextConfig, TextModality
from objectives.base import EXTRAS_KEY, DistContext
from objectives.masked_modeling import MaskedImageConfig, MaskedImageObjective
from objectives.helpers.patch_masking import patch_mask
from tests.conftest import CONFIGS
from tests.test_trainer import _assert_same_weights

TINY = CONFIGS / "tiny_masked_image.yaml"
TOWERS = {
    "timm-vit": {"backbone": "test_vit", "backbone_args": {"img_size": 32, "patch_size": 8, "depth": 1}},
    "open_clip-vit": {"tower": "open_clip", "backbone": "ViT-S-32",
                      "backbone_args": {"patch_size": 8, "layers": 1, "width": 64, "head_width": 32}},
    "timm-cnn": {"backbone": "test_resnet", "backbone_args": {"output_stride": 8}},
}


def _image(kw):
    torch.manual_seed(0)
    image = ImageModality.build(ImageConfig(image_size=32, **kw))
    image.encoder.key = "image"
    image.encoder.enable_patch_masking()  # as the masked_image objective does when it is built
    return image


def test_mask_parameters_exist_only_where_masking_is_enabled():
    """An image modality no masked-patch objective uses keeps the state dict it had before
    masked image modeling existed (older checkpoints load); asking it to hide patches
    without its mask is an error, not a silent no-op."""
    torch.manual_seed(0)
    image = ImageModality.build(ImageConfig(image_size=32, **TOWERS["timm-cnn"]))
    image.encoder.key = "image"
    assert not any("mask" in name for name, _ in image.encoder.named_parameters())
    with pytest.raises(ValueError, match="call enable_patch_masking"):
        image.encoder({"pixels": torch.zeros(1, 3, 32, 32)}, patch_mask=torch.zeros(1, 16, dtype=torch.bool))
    image.encoder.enable_patch_masking()
    assert [name for name, _ in image.encoder.named_parameters() if "mask" in name] == ["mask_value"]


def _config(*overrides):
    return mmssl.load_config(TINY, ["train.threads=1", *overrides])


class _Host:
    def __init__(self, encoders):
        self.encoders = encoders


@pytest.mark.parametrize("kind", ["random", "block"])
def test_masks_hide_an_exact_share_deterministically(kind):
    grid = (8, 8)
    masks = [patch_mask(grid, 0.6, kind, np.random.default_rng(seed)).view(grid) for seed in range(20)]
    assert all(m.sum() == 38 for m in masks)  # round(0.6 * 64) in every sample: what MAE needs
    assert torch.equal(masks[0], patch_mask(grid, 0.6, kind, np.random.default_rng(0)).view(grid))
    # hidden cells with a hidden right or lower neighbour: blocks hold together, random cells less
    joined = np.mean([((m[:, 1:] & m[:, :-1]).sum() + (m[1:] & m[:-1]).sum()).item() for m in masks])
    assert joined > 50 if kind == "block" else joined < 45


@pytest.mark.parametrize("tower", TOWERS, ids=list(TOWERS))
def test_hidden_patches_are_hidden(tower):
    """Tokens are one per patch; an all-False mask changes nothing; hidden patches'
    pixels cannot reach the output (ViTs: mask token at the patch embedding; CNN: blanked
    input); the MAE option encodes the visible patches alone."""
    image = _image(TOWERS[tower])
    image.encoder.eval()
    n = image.encoder.grid[0] * image.encoder.grid[1]
    assert image.encoder.patch_dim == 3 * 8 * 8 and n == 16
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    hidden = torch.zeros(2, n, dtype=torch.bool)
    hidden[0, [0, 5, 6]] = hidden[1, [3, 9, 15]] = True
    changed = _unpatchify(torch.where(hidden.unsqueeze(-1), 5.0, image.encoder.patchify(pixels)), image)  # hidden pixels only
    assert torch.equal(image.encoder.patchify(changed)[~hidden], image.encoder.patchify(pixels)[~hidden])
    with torch.no_grad():
        plain = image.encoder({"pixels": pixels})
        assert plain.tokens.shape == (2, n, image.encoder.embed_dim)
        none = image.encoder({"pixels": pixels}, patch_mask=torch.zeros_like(hidden))
        assert torch.equal(none.tokens, plain.tokens) and torch.equal(none.pooled, plain.pooled)
        masked = image.encoder({"pixels": pixels}, patch_mask=hidden)
        again = image.encoder({"pixels": changed}, patch_mask=hidden)
        assert not torch.allclose(masked.tokens, plain.tokens)
        assert torch.allclose(again.tokens, masked.tokens, atol=1e-6) and torch.allclose(again.pooled, masked.pooled, atol=1e-6)
        if tower == "timm-cnn":
            with pytest.raises(ValueError, match="cannot leave them out"):
                image.encoder({"pixels": pixels}, patch_mask=hidden, visible_only=True)
            return
        visible = image.encoder({"pixels": pixels}, patch_mask=hidden, visible_only=True)
        assert visible.tokens.shape == (2, n - 3, image.encoder.embed_dim)
        assert torch.allclose(image.encoder({"pixels": changed}, patch_mask=hidden, visible_only=True).tokens, visible.tokens, atol=1e-6)
        with pytest.raises(ValueError, match=r"same number of hidden patches.*\[3, 2\]"):
            uneven = hidden.clone()
            uneven[1, 3] = False
            image.encoder({"pixels": pixels}, patch_mask=uneven, visible_only=True)


def _unpatchify(patches, image):
    from einops import rearrange

    (h, w), (p, q) = image.encoder.grid, image.encoder.patch_size
    return rearrange(patches, "b (h w) (p q c) -> b c (h p) (w q)", h=h, w=w, p=p, q=q)


@pytest.mark.parametrize("tower, mae", [("timm-vit", False), ("timm-vit", True), ("timm-cnn", False)], ids=["simmim", "mae", "cnn"])
def test_loss_reads_hidden_patches_only(tower, mae):
    """The gradient of the loss reaches the target pixels of hidden patches and no other."""
    image = _image(TOWERS[tower])
    objective = MaskedImageObjective(MaskedImageConfig(modalities=("image",), mae=mae), {"image": image.encoder}, DistContext())
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    hidden = torch.stack([patch_mask(image.encoder.grid, 0.5, "random", np.random.default_rng(i)) for i in range(3)])
    target_pixels = pixels.clone().requires_grad_()
    image.encoder.patch_targets = lambda batch: image.encoder.patchify(target_pixels)  # the targets, apart from the encoder's input
    out = objective(_Host({"image": image.encoder}), {"image": {"pixels": pixels}, EXTRAS_KEY: {"patch_mask": hidden}})
    out.loss.backward()
    grad = image.encoder.patchify(target_pixels.grad).abs().sum(-1)
    assert (grad[~hidden] == 0).all() and (grad[hidden] > 0).all()
    assert out.metrics["masked_patches"] == hidden.sum().item() == 24
    assert out.metrics["trivial_loss"] == pytest.approx(1.0, abs=1e-3)  # normalised targets: the zero predictor's loss
    # SimMIM learns the encoder's mask token (a CNN: its mask value); MAE's encoder never
    # sees one, its decoder's is learned
    learned = objective.decoder.mask_token if mae else image.encoder.mask_value if tower == "timm-cnn" else image.encoder.mask_token
    assert learned.grad is not None and learned.grad.abs().sum() > 0
    if mae:
        assert image.encoder.mask_token.grad is None


def test_towers_without_the_capability_fail_at_build_time():
    text = TextModality.build(TextConfig(context_length=8, width=16, layers=1, heads=2))
    text.encoder.key = "text"
    with pytest.raises(ValueError, match=r"modality 'text' is no PatchEncoder .*lacks \[.*'grid'.*timm or open_clip ViT"):
        MaskedImageObjective(MaskedImageConfig(modalities=("text",)), {"text": text.encoder}, DistContext())
    cnn = _image(TOWERS["timm-cnn"])
    with pytest.raises(ValueError, match=r"no VisiblePatchEncoder.*lacks \['encodes_visible_only'\].*mae: false for CNN"):
        MaskedImageObjective(MaskedImageConfig(modalities=("image",), mae=True), {"image": cnn.encoder}, DistContext())
    for ratio in (0.0, 1.0):
        with pytest.raises(ValueError, match=rf"mask_ratio must be in \(0, 1\), got {ratio}"):
            MaskedImageObjective(MaskedImageConfig(modalities=("image",), mask_ratio=ratio), {"image": cnn.encoder}, DistContext())
    with pytest.raises(ValueError, match=r"built for \(224, 224\) images but image_size is 32.*img_size: 32"):
        _image({"backbone": "test_vit", "backbone_args": {"img_size": 224}})


def test_objective_contract():
    """The contract suite on block masks: gradients reach head and encoder, eval is
    deterministic, batches and masks do not depend on loader workers."""
    check_objective(_config("objectives.masked_image.mask_kind=block"), "masked_image")


def test_masks_come_from_the_pipeline_deterministically():
    config = _config()
    model = mmssl.build_model(config)
    first, again = build_streams(config, model), build_streams(config, model)
    for name, cells in (("masked_image", 64), ("masked_image_mae", 64), ("masked_image_cnn", 16)):
        a, b = next(first[name])[EXTRAS_KEY]["patch_mask"], next(again[name])[EXTRAS_KEY]["patch_mask"]
        ratio = config.objectives[name].options.mask_ratio
        assert a.shape == (16, cells) and torch.equal(a, b) and not torch.equal(a[0], a[1])
        assert (a.sum(1) == round(ratio * cells)).all()


def _mean(records, key):
    return float(np.mean([r[key] for r in records]))


@pytest.mark.slow
def test_masked_loss_falls_well_below_the_trivial_baseline(tmp_path):
    """30 steps on the embedded world's shapes: the tiny ViT's (SimMIM and MAE) and the
    CNN's masked losses end well below the trivial predictor's (1 on normalised targets)."""
    Pretrainer(_config("train.steps=30", "train.checkpoint_every=0"), tmp_path).fit()
    records = read_metrics(tmp_path / "metrics.jsonl")
    for name, bound in (("masked_image", 0.7), ("masked_image_mae", 0.75), ("masked_image_cnn", 0.85)):
        first, last = _mean(records[:3], f"{name}/loss"), _mean(records[-5:], f"{name}/loss")
        trivial = _mean(records[-5:], f"{name}/trivial_loss")
        assert last < bound * trivial and last < first - 0.2, (name, first, last, trivial)


class _Crash(Exception):
    pass


@pytest.mark.slow
def test_crashed_run_resumes_bit_exact(tmp_path):
    """All three variants in one joint run: a run that dies after step 6 resumes from its
    step-4 checkpoint to the weights and logged losses of an uninterrupted run (in one
    process; tests/test_joint.py kills a process)."""
    overrides = ["train.steps=8", "train.checkpoint_every=4", "train.log_every=2"]
    full = Pretrainer(_config(*overrides), tmp_path / "full")
    full.fit()

    def crash(trainer, metrics):
        if trainer.step == 6:
            raise _Crash

    run = tmp_path / "crashed"
    with pytest.raises(_Crash):
        Pretrainer(_config(*overrides), run, callbacks=[crash]).fit()
    assert [p.name for p in list_checkpoints(run)] == ["step_00000004"]
    resumed = Pretrainer(_config(*overrides), run)
    resumed.fit()
    _assert_same_weights(full.model, resumed.model)
    keys = ["masked_image/loss", "masked_image_mae/loss", "masked_image_cnn/loss"]
    full_records, resumed_records = read_metrics(tmp_path / "full" / "metrics.jsonl"), read_metrics(run / "metrics.jsonl")
    assert [[r[k] for k in keys] for r in resumed_records] == [[r[k] for k in keys] for r in full_records]
