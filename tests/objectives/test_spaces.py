"""Named shared spaces: contrastive objectives in one space share one head per modality."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mmssl
from mmssl.train.checkpoint import load_checkpoint

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
HUB = [f"objectives.{o}.space=hub" for o in ("image_text", "audio_text", "graph_text")]


def _joint(*overrides: str) -> mmssl.RunConfig:
    return mmssl.load_config(CONFIGS / "tiny_joint.yaml", ["train.progress=false", "train.checkpoint_every=0", *overrides])


def test_objectives_in_one_space_share_their_text_head_and_keep_other_initial_weights():
    own, hub = mmssl.build_model(_joint()), mmssl.build_model(_joint(*HUB))
    heads = [hub.objectives[o].heads["text"] for o in ("image_text", "audio_text", "graph_text")]
    assert heads[0] is heads[1] is heads[2]
    assert hub.spaces == {"hub": ["image_text", "audio_text", "graph_text"]}
    shared = {id(p) for p in heads[0].parameters()}
    # the two other text heads are gone; every remaining parameter starts as without the space
    assert sum(p.numel() for p in own.parameters()) - sum(p.numel() for p in hub.parameters()) == 2 * heads[0].weight.numel()
    hub_params = dict(hub.named_parameters())
    for name, p in own.named_parameters():
        if name in hub_params:
            assert torch.equal(p, hub_params[name]), name
    assert len(shared) == 1


def test_a_shared_space_trains_saves_and_loads_as_one_head(tmp_path):
    trainer = mmssl.Pretrainer(_joint(*HUB, "train.steps=3"), tmp_path)
    first = trainer.model.objectives["image_text"].heads["text"].weight.detach().clone()
    trainer.fit()
    head = trainer.model.objectives["audio_text"].heads["text"].weight
    assert not torch.equal(first, head)  # both objectives' gradients reached the one head
    model = load_checkpoint(tmp_path).model
    assert model.objectives["image_text"].heads["text"] is model.objectives["graph_text"].heads["text"]
    assert torch.equal(model.objectives["graph_text"].heads["text"].weight, head.detach())
    # one space: text embeds the same whichever objective is asked, and image and audio land in it
    text = model.encode("text", ["a red circle", "a rising sine tone"], space="hub")
    assert torch.allclose(text, model.encode("text", ["a red circle", "a rising sine tone"], objective="audio_text"))
    assert model.shared_space("audio", space="hub") == "audio_text"
    with pytest.raises(KeyError, match=r"no space 'nope'; the model has \['hub'\]"):
        model.encode("text", ["x"], space="nope")


def test_objectives_whose_heads_differ_cannot_share_a_space():
    with pytest.raises(mmssl.ConfigError, match=r"'objectives.audio_text.embed_dim': 16, but 'image_text' in the same space 'hub' has 32"):
        _joint(*HUB, "objectives.audio_text.embed_dim=16")
    with pytest.raises(mmssl.ConfigError, match=r"'objectives.graph_text.head': 'mlp', but 'image_text'"):
        _joint(*HUB, "objectives.graph_text.head=mlp")
