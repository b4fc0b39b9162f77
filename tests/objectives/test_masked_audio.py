import numpy as np
import pytest
import torch

import mmssl
from mmssl.train.run_log import read_metrics
from mmssl.data import build_streams
from mmssl.train.trainer import Pretrainer
from modalities.audio import AudioConfig, AudioModality
from objectives.base import EXTRAS_KEY, DistContext
from objectives.helpers.patch_masking import masked_patch_loss, normalise_patches, patch_mask
from objectives.masked_modeling import MaskedAudioConfig, MaskedAudioObjective


@pytest.mark.parametrize("kind", ["random", "time", "frequency"])
def test_patch_mask_kinds(kind):
    grid = (4, 10)
    mask = patch_mask(grid, 0.5, kind, np.random.default_rng(0)).view(grid)
    assert torch.equal(mask, patch_mask(grid, 0.5, kind, np.random.default_rng(0)).view(grid))
    if kind == "random":
        assert mask.sum() == 20
    elif kind == "time":
        assert mask.all(0).sum() == 5 and (mask.any(0) == mask.all(0)).all()  # whole time columns
    else:
        assert mask.all(1).sum() == 2 and (mask.any(1) == mask.all(1)).all()  # whole frequency bands


def test_loss_counts_masked_patches_only():
    g = torch.Generator().manual_seed(0)
    prediction, target = torch.randn(2, 6, 5, generator=g), torch.randn(2, 6, 5, generator=g)
    mask = torch.tensor([[1, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0]], dtype=torch.bool)
    loss = masked_patch_loss(prediction, target, mask)
    changed = prediction.clone()
    changed[~mask] = 100.0  # change every unmasked prediction
    assert torch.equal(masked_patch_loss(changed, target, mask), loss)
    changed = prediction.clone()
    changed[0, 0] += 1.0  # change one masked prediction
    assert masked_patch_loss(changed, target, mask) != loss
    direct = ((prediction - target) ** 2).mean(-1)[mask].mean()
    assert torch.allclose(loss, direct)


def test_normalised_targets_make_trivial_baseline_one():
    patches = normalise_patches(torch.randn(3, 7, 20) * 5 + 2)
    assert torch.allclose(patches.mean(-1), torch.zeros(3, 7), atol=1e-5)
    trivial = masked_patch_loss(torch.zeros_like(patches), patches, torch.ones(3, 7, dtype=torch.bool))
    assert abs(trivial.item() - 1.0) < 1e-3


class _Host:
    def __init__(self, encoders):
        self.encoders = encoders


def test_objective_ignores_padding_and_needs_patch_hooks():
    torch.manual_seed(0)
    audio = AudioModality.build(AudioConfig(sample_rate=8000, clip_seconds=0.5, n_mels=32, n_fft=256, hop_length=80, width=32, depth=1, heads=2))
    audio.encoder.key = "audio"
    objective = MaskedAudioObjective(MaskedAudioConfig(modalities=("audio",)), {"audio": audio.encoder}, DistContext())
    rng = np.random.default_rng(0)
    short = audio.processor.transform((np.random.default_rng(1).normal(size=1200).astype(np.float32), 8000), rng)  # 0.15 s of 0.5 s
    full = audio.processor.transform((np.random.default_rng(2).normal(size=8000).astype(np.float32), 8000), rng)
    batch = {"audio": audio.processor.collate([short, full])}
    batch[EXTRAS_KEY] = {"patch_mask": torch.ones(2, audio.encoder.num_patches, dtype=torch.bool)}  # everything masked
    out = objective(_Host({"audio": audio.encoder}), batch)
    padding = audio.encoder.patch_padding_mask(batch["audio"])
    assert padding[0].any() and not padding[1].any()
    assert out.metrics["masked_patches"] == (~padding).sum().item()
    out.loss.backward()
    assert audio.encoder.mask_token.grad is not None and audio.encoder.mask_token.grad.abs().sum() > 0

    wave = AudioModality.build(AudioConfig(encoder="wav2vec2", clip_seconds=0.5, width=32, heads=2, wav2vec2_layers=1))
    with pytest.raises(ValueError, match=r"no PatchEncoder.*lacks \[.grid., .patch_dim., .patchify., .patch_targets., .patch_padding_mask.\].*spectrogram_transformer"):
        MaskedAudioObjective(MaskedAudioConfig(modalities=("audio",)), {"audio": wave.encoder}, DistContext())


@pytest.mark.parametrize("local_view", [True, False])
def test_masked_pass_runs_the_local_view_only_when_asked(local_view):
    torch.manual_seed(0)
    audio = AudioModality.build(AudioConfig(
        sample_rate=8000, clip_seconds=0.5, n_mels=32, n_fft=256, hop_length=80, width=32, depth=1, heads=2,
        local_patch_freq=8, local_patch_time=10,
    ))
    audio.encoder.key = "audio"
    objective = MaskedAudioObjective(MaskedAudioConfig(modalities=("audio",), local_view=local_view), {"audio": audio.encoder}, DistContext())
    waves = [np.random.default_rng(i).normal(size=4000).astype(np.float32) for i in range(2)]
    batch = {"audio": audio.processor.collate([audio.processor.transform((w, 8000)) for w in waves])}
    mask = torch.zeros(2, audio.encoder.num_patches, dtype=torch.bool)
    mask[:, ::2] = True
    batch[EXTRAS_KEY] = {"patch_mask": mask}
    host = _Host({"audio": audio.encoder})
    with torch.no_grad():
        before = objective(host, batch).loss
        audio.encoder.local_embed.weight.mul_(3.0)
        after = objective(host, batch).loss
    assert torch.equal(before, after) != local_view  # only a pass with the local view feels its weights
    with torch.no_grad():  # other calls keep the local view
        assert not torch.allclose(audio.encoder(batch["audio"], local_view=False).pooled, audio.encoder(batch["audio"]).pooled, atol=1e-4)


def test_masks_come_from_the_data_pipeline_deterministically():
    config = mmssl.load_config(mmssl_configs() / "tiny_audio.yaml")
    model = mmssl.build_model(config)
    a = next(build_streams(config, model)["masked_audio"])
    b = next(build_streams(config, model)["masked_audio"])
    assert a[EXTRAS_KEY]["patch_mask"].shape == (16, model.encoders["audio"].num_patches)
    assert torch.equal(a[EXTRAS_KEY]["patch_mask"], b[EXTRAS_KEY]["patch_mask"])
    assert not torch.equal(a[EXTRAS_KEY]["patch_mask"][0], a[EXTRAS_KEY]["patch_mask"][1])


def mmssl_configs():
    from pathlib import Path

    return Path(__file__).resolve().parents[2] / "configs"


def test_audio_tower_trains_in_tiny_config(tmp_path):
    config = mmssl.load_config(
        mmssl_configs() / "tiny_audio.yaml", ["train.steps=40", "train.checkpoint_every=0", "train.lr=0.003"]
    )
    Pretrainer(config, tmp_path).fit()
    records = read_metrics(tmp_path / "metrics.jsonl")

    def mean(key, part):
        return float(np.mean([r[key] for r in part]))

    for key in ("audio_text/loss", "masked_audio/loss"):
        assert mean(key, records[-8:]) < mean(key, records[:8]), key
    assert mean("masked_audio/loss", records[-8:]) < mean("masked_audio/trivial_loss", records[-8:])


def test_masked_audio_is_the_masked_patch_objective_under_its_own_name_and_defaults():
    """One algorithm: ``masked_patches`` with masked_audio's settings builds the same
    head and gives the same loss; each name keeps its own keys and defaults."""
    from dataclasses import fields

    from objectives.masked_modeling import MaskedImageConfig, MaskedPatchConfig, MaskedPatchObjective

    audio = AudioModality.build(AudioConfig(sample_rate=8000, clip_seconds=0.5, n_mels=32, n_fft=256, hop_length=80, width=32, depth=1, heads=2))
    audio.encoder.key = "audio"
    built = []
    for objective_type, config in ((MaskedAudioObjective, MaskedAudioConfig(modalities=("audio",))),
                                   (MaskedPatchObjective, MaskedPatchConfig(modalities=("audio",), mask_ratio=0.5, head="mlp"))):
        torch.manual_seed(0)
        built.append(objective_type(config, {"audio": audio.encoder}, DistContext()))
    alias, generic = built
    assert isinstance(alias, MaskedPatchObjective) and alias.options == generic.options
    waves = [np.random.default_rng(i).normal(size=4000).astype(np.float32) for i in range(2)]
    batch = {"audio": audio.processor.collate([audio.processor.transform((w, 8000)) for w in waves])}
    batch[EXTRAS_KEY] = {"patch_mask": torch.stack([alias.prepare_sample({}, np.random.default_rng(i))["patch_mask"] for i in range(2)])}
    with torch.no_grad():
        assert torch.equal(alias(_Host({"audio": audio.encoder}), batch).loss, generic(_Host({"audio": audio.encoder}), batch).loss)
    assert {f.name for f in fields(MaskedAudioConfig)} == {"modalities", "mask_ratio", "mask_kind", "norm_targets", "head", "local_view"}
    assert "local_view" not in {f.name for f in fields(MaskedImageConfig)} and MaskedImageConfig().mask_ratio == 0.6
