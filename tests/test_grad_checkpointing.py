"""train.grad_checkpointing and train.compile on configs/tiny_joint.yaml (every
objective, all four encoders): checkpointing changes no loss, gradient or BatchNorm
statistic and really recomputes every encoder; compiling keeps checkpoints as they are."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.utils.checkpoint
from safetensors.torch import load_file

import mmssl
from mmssl.train.checkpoint import resolve_checkpoint
from mmssl.model import check_compile, enable_grad_checkpointing
from mmssl.train.run_log import read_metrics
from mmssl.train.trainer import Pretrainer
from modalities.base import Encoder
from tests.conftest import CONFIGS

OBJECTIVES = ("image_text", "audio_text", "graph_text", "mlm", "masked_audio", "graph_contrastive")
RED_CIRCLE = {"colour": "red", "shape": "circle", "size": "large", "position": "middle"}
SMALL = ["train.steps=1", "train.checkpoint_every=0", *(f"objectives.{o}.data.batch_size=4" for o in OBJECTIVES)]


def _joint(*overrides: str) -> mmssl.RunConfig:
    return mmssl.load_config(CONFIGS / "tiny_joint.yaml", [*SMALL, *overrides])


def _first_blocks(model: mmssl.MultimodalModel) -> dict[str, torch.nn.Module]:
    """The first module each encoder runs under checkpoint: its forward starts every recompute."""
    encoders = model.encoders
    return {
        "text": encoders["text"].tower.transformer.resblocks[0],
        "image": encoders["image"].backbone.layer1[0],
        "audio": encoders["audio"].blocks[0],
        "graph": encoders["graph"].convs[0],
    }


def _one_step(tmp_path, monkeypatch, *overrides: str) -> dict:
    """Losses, gradients, weights and buffers after one training step, how often each
    encoder's first block ran, and the use_reentrant of every torch.utils.checkpoint call."""
    trainer = Pretrainer(_joint(*overrides), tmp_path)
    calls = {key: 0 for key in _first_blocks(trainer.model)}
    for key, block in _first_blocks(trainer.model).items():
        block.register_forward_pre_hook(lambda *_, key=key: calls.__setitem__(key, calls[key] + 1))
    reentrant = []
    impl = torch.utils.checkpoint._checkpoint_impl  # every caller's way in, however it imported checkpoint

    def spy(function, args, kwargs, **options):
        reentrant.append(options["use_reentrant"])
        return impl(function, args, kwargs, **options)

    monkeypatch.setattr(torch.utils.checkpoint, "_checkpoint_impl", spy)
    monkeypatch.setattr(trainer.optimizer, "zero_grad", lambda set_to_none=True: None)  # keep this step's gradients
    metrics = trainer.train_step()
    monkeypatch.undo()
    model = trainer.model
    return {
        "checkpointed": trainer.checkpointed,
        "metrics": {k: v for k, v in metrics.items() if k.endswith("/loss") or k.startswith(("grad/", "grad_cos/"))},
        "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "calls": calls,
        "reentrant": reentrant,
    }


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        # GPS with dropout (a recomputed layer must draw its first run's dropout masks),
        # shared encoder calls, and the diagnostics' torch.autograd.grad (recomputes again)
        ("modalities.graph.encoder=gps", "modalities.graph.dropout=0.2", "train.share_encoder_calls=true",
         "train.grad_diagnostics_every=1"),
    ],
    ids=["gin", "gps_shared_calls_diagnostics"],
)
def test_checkpointing_changes_no_loss_or_gradient_and_recomputes_every_encoder(tmp_path, monkeypatch, overrides):
    plain = _one_step(tmp_path / "plain", monkeypatch, *overrides)
    checkpointed = _one_step(tmp_path / "checkpointed", monkeypatch, *overrides, "train.grad_checkpointing=true")

    assert plain["checkpointed"] == [] and plain["reentrant"] == []
    assert sorted(checkpointed["checkpointed"]) == ["audio", "graph", "image", "text"]
    # every encoder's first block ran once more per call: its recompute in the backward pass
    # (the diagnostics' extra backward passes recompute the text encoder again)
    assert all(n > 0 for n in plain["calls"].values()), plain["calls"]
    if not overrides:
        assert checkpointed["calls"] == {k: 2 * n for k, n in plain["calls"].items()}
    assert all(checkpointed["calls"][k] >= 2 * n for k, n in plain["calls"].items()), (plain["calls"], checkpointed["calls"])
    assert checkpointed["reentrant"] and not any(checkpointed["reentrant"])

    assert {f"{o}/loss" for o in OBJECTIVES} <= plain["metrics"].keys()
    assert plain["metrics"].keys() == checkpointed["metrics"].keys()
    assert any(k.startswith("grad_cos/") for k in plain["metrics"]) == bool(overrides)
    for key, value in plain["metrics"].items():  # losses, and gradient norms and cosines where diagnosed
        assert abs(value - checkpointed["metrics"][key]) <= 1e-5 * abs(value) + 1e-6, (key, value, checkpointed["metrics"][key])
    assert plain["grads"].keys() == checkpointed["grads"].keys()
    for name, grad in plain["grads"].items():
        assert torch.allclose(grad, checkpointed["grads"][name], rtol=1e-5, atol=1e-6), name
    # weights after the step, and BatchNorm running statistics (updated once, not again in the recompute)
    assert [k for k in plain["state"] if "running_mean" in k], "tiny_joint's image tower has BatchNorm"
    for key, value in plain["state"].items():
        assert torch.allclose(value.double(), checkpointed["state"][key].double(), rtol=1e-5, atol=1e-6), key


def test_evaluation_does_not_checkpoint(tmp_path, monkeypatch):
    plain = Pretrainer(_joint(), tmp_path / "plain").model
    checkpointed = Pretrainer(_joint("train.grad_checkpointing=[text, image]"), tmp_path / "checkpointed").model
    assert checkpointed.encoders["text"].grad_checkpointing and not checkpointed.encoders["audio"].grad_checkpointing
    calls = []
    impl = torch.utils.checkpoint._checkpoint_impl
    monkeypatch.setattr(torch.utils.checkpoint, "_checkpoint_impl", lambda *a, **k: calls.append(1) or impl(*a, **k))
    captions = ["a red circle", "two notes of a rising sine tone"]
    assert torch.equal(plain.encode("text", captions), checkpointed.encode("text", captions))  # eval mode
    image, processor, renderer = checkpointed.encoders["image"], checkpointed.processors["image"], checkpointed.renderers["image"]
    pixels = processor.collate([processor.transform(renderer.render(c, np.random.default_rng(0))) for c in (RED_CIRCLE, RED_CIRCLE)])
    checkpointed.eval()
    with torch.enable_grad():
        image(pixels).pooled.sum().backward()
    assert calls == []
    checkpointed.train()
    checkpointed.encoders["text"](checkpointed.processors["text"].tokenize(captions))
    image(pixels)
    assert len(calls) == 1 + 4  # training mode: one text block, four ResNet stages' blocks


def test_config_names_unknown_and_unsupported_modalities(monkeypatch):
    with pytest.raises(mmssl.ConfigError, match=r"'train\.grad_checkpointing\[1\]': 'txt' is not a configured modality.*'text'"):
        _joint("train.grad_checkpointing=[image, txt]")
    with pytest.raises(mmssl.ConfigError, match=r"'train\.compile\[0\]': 'imag' is not a configured modality"):
        _joint("train.compile=[imag]")
    with pytest.raises(mmssl.ConfigError, match=r"'train\.grad_checkpointing'"):
        _joint("train.grad_checkpointing=text")  # a list or true/false
    config = _joint("train.grad_checkpointing=[text]", "train.compile=true")
    assert config.train.grad_checkpointing == ["text"] and config.train.compile is True
    assert mmssl.config_from_dict(config.to_dict()) == config  # what a checkpoint saves

    # a modality whose encoder does not implement it (a plugin's): refused when the config loads
    text_cls = mmssl.registry.MODALITIES.get("text").Encoder
    monkeypatch.setattr(text_cls, "set_grad_checkpointing", Encoder.set_grad_checkpointing)
    with pytest.raises(mmssl.ConfigError, match=r"'train\.grad_checkpointing\[0\]': modality 'text' \(type text\) has no activation"):
        _joint("train.grad_checkpointing=[text]")


def test_options_that_rule_checkpointing_out_fail_when_the_model_is_built():
    # torchaudio's wav2vec2 has no switch: listed, it is an error naming key and modality;
    # under `true` the encoder is left out
    raw = _joint().to_dict()
    raw["modalities"]["audio"] = {"type": "audio", "encoder": "wav2vec2", "sample_rate": 8000, "clip_seconds": 0.5, "width": 32, "heads": 2}
    del raw["objectives"]["masked_audio"]  # needs patches
    raw["train"]["grad_checkpointing"] = ["text", "audio"]
    config = mmssl.config_from_dict(raw)
    with pytest.raises(mmssl.ConfigError, match=r"'train\.grad_checkpointing\[1\]': modality 'audio': the wav2vec2"):
        enable_grad_checkpointing(mmssl.build_model(config), config.train.grad_checkpointing)
    assert enable_grad_checkpointing(mmssl.build_model(config), True) == ["image", "graph", "text"]


@pytest.mark.slow
def test_compiled_encoder_trains_and_checkpoints_unchanged(tmp_path):
    try:
        check_compile(torch.device("cpu"))
    except RuntimeError as exc:
        pytest.skip(str(exc))
    plain = Pretrainer(_joint("train.steps=2"), tmp_path / "plain")
    plain.fit()
    compiled = Pretrainer(_joint("train.steps=2", "train.compile=[text]"), tmp_path / "compiled")
    assert compiled.compiled == ["text"]
    compiled.fit()
    saved = load_file(resolve_checkpoint(tmp_path / "compiled") / "model.safetensors")
    assert saved.keys() == load_file(resolve_checkpoint(tmp_path / "plain") / "model.safetensors").keys()
    assert not any("_orig_mod" in k for k in saved)
    for a, b in zip(read_metrics(tmp_path / "plain" / "metrics.jsonl"), read_metrics(tmp_path / "compiled" / "metrics.jsonl")):
        assert abs(a["mlm/loss"] - b["mlm/loss"]) <= 1e-4 * abs(a["mlm/loss"])  # the same model, compiled
    # the compiled run loads back (eval) and resumes (train) from its checkpoint
    loaded = mmssl.load_pretrained(tmp_path / "compiled")
    assert torch.equal(loaded.encoders["text"].tower.token_embedding.weight, saved["encoders.text.tower.token_embedding.weight"])
    resumed = Pretrainer(_joint("train.steps=3", "train.compile=[text]"), tmp_path / "compiled")
    resumed.fit()
    assert resumed.step == 3
