"""Pretrained encoder weights from local files, locked towers (LiT), and mmssl-export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mmssl
from mmssl.cli.export import main as export_main
from mmssl.interop.pretrained import PretrainedError
from mmssl.train.trainer import Pretrainer


class Stop(Exception):
    pass


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors differ (empty: bit-identical)."""
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run (image + text) and its state_dict export."""
    root = tmp_path_factory.mktemp("interop")
    config = mmssl.load_config(Path(__file__).parents[1] / "configs" / "tiny.yaml", ["train.steps=3", "train.progress=false"])
    Pretrainer(config, root / "run").fit()
    assert export_main([str(root / "run"), "--format", "state_dict", "--output-dir", str(root / "export")]) == 0
    return root


def test_a_locked_tower_ends_bit_identical_and_is_not_optimised(tiny_config, tmp_path):
    trainer = Pretrainer(tiny_config("modalities.image.freeze=true", "train.steps=4", "train.progress=false"), tmp_path)
    image_before, heads_before = snapshot(trainer.model.encoders["image"]), snapshot(trainer.model.objectives["image_text"].heads)
    text_before = snapshot(trainer.model.encoders["text"])
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimised for p in trainer.model.encoders["image"].parameters())
    assert all(id(p) in optimised for p in trainer.model.encoders["text"].parameters())
    trainer.fit()
    image = trainer.model.encoders["image"]
    assert same(image_before, snapshot(image)) == []  # weights and BatchNorm statistics
    assert not image.training and all(p.grad is None for p in image.parameters())
    assert same(text_before, snapshot(trainer.model.encoders["text"]))  # the other tower trains
    assert same(heads_before, snapshot(trainer.model.objectives["image_text"].heads))  # so does the image head (freeze: true)


def test_freeze_all_locks_the_heads_too_and_resume_is_exact(tiny_config, tmp_path):
    overrides = ["modalities.image.freeze=all", "train.steps=4", "train.checkpoint_every=2", "train.progress=false"]
    whole = Pretrainer(tiny_config(*overrides), tmp_path / "whole")
    head = whole.model.objectives["image_text"].heads["image"]
    head_before = snapshot(head)
    whole.fit()
    assert same(head_before, snapshot(head)) == [] and not head.training

    def stop_at_3(trainer, metrics):
        if trainer.step == 3:
            raise Stop

    with pytest.raises(Stop):
        Pretrainer(tiny_config(*overrides), tmp_path / "stopped", callbacks=[stop_at_3]).fit()
    resumed = Pretrainer(tiny_config(*overrides), tmp_path / "stopped")
    resumed.fit()
    assert same(snapshot(whole.model), snapshot(resumed.model)) == []


def test_pretrained_loads_an_export_or_a_checkpoint_and_a_loaded_checkpoint_never_reads_it_again(trained, tiny_config, tmp_path):
    source = mmssl.load_checkpoint(trained / "run").model
    for where in (trained / "export", trained / "export" / "image", mmssl.load_checkpoint(trained / "run").checkpoint):
        model = mmssl.build_model(tiny_config(f"modalities.image.pretrained={where}"))
        assert same(snapshot(source.encoders["image"]), snapshot(model.encoders["image"])) == []
        assert same(snapshot(source.encoders["text"]), snapshot(model.encoders["text"]))  # not asked: its own init
    meta = json.loads((trained / "export" / "image" / "mmssl_encoder.json").read_text())
    assert meta["type"] == "image" and meta["options"]["backbone"] == "test_resnet" and meta["step"] == 3
    card = (trained / "export" / "README.md").read_text()
    assert "| image | image |" in card and "| image_text | contrastive | image, text | 1 | world |" in card
    # a run that started from the export: its checkpoint loads without the file
    copy = tmp_path / "export"
    copy.mkdir()
    (copy / "image").symlink_to(trained / "export" / "image")
    Pretrainer(tiny_config(f"modalities.image.pretrained={copy}", "train.steps=1", "train.progress=false"), tmp_path / "run").fit()
    (copy / "image").unlink()
    assert mmssl.load_checkpoint(tmp_path / "run").config.modalities["image"].pretrained == str(copy)


def test_state_dict_files_with_trainer_prefixes_load(trained, tiny_config, tmp_path):
    state = {f"module.{k}": v for k, v in mmssl.load_checkpoint(trained / "run").model.encoders["text"].state_dict().items()}
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "epoch_3.pt")
    model = mmssl.build_model(tiny_config(f"modalities.text.pretrained={tmp_path / 'epoch_3.pt'}"))
    assert same({k[len("module."):]: v for k, v in state.items()}, snapshot(model.encoders["text"])) == []


def test_files_that_do_not_fit_name_the_tensors_or_load_what_fits(trained, tiny_config, tmp_path):
    with pytest.raises(PretrainedError, match=r"'modalities.text.pretrained': .*does not fit the 'text' encoder \(text\): "
                                              r"tensors differ: \d+ of another shape.*The export has width: 32 where this config has 64"):
        mmssl.build_model(tiny_config(f"modalities.text.pretrained={trained / 'export'}", "modalities.text.width=64"))
    with pytest.raises(PretrainedError, match="holds a 'image' encoder; modality 'text' is of type 'text'"):
        mmssl.build_model(tiny_config(f"modalities.text.pretrained={trained / 'export' / 'image'}"))
    with pytest.raises(PretrainedError, match="'hf-hub:laion/CLIP' is a hub or web name, and this machine does not download"):
        mmssl.build_model(tiny_config("modalities.text.pretrained=hf-hub:laion/CLIP"))
    with pytest.raises(PretrainedError, match="does not exist"):
        mmssl.build_model(tiny_config(f"modalities.text.pretrained={tmp_path / 'nothing.pt'}"))
    wider = mmssl.build_model(tiny_config(f"modalities.text.pretrained={trained / 'export'}", "modalities.text.layers=2",
                                          "modalities.text.pretrained_strict=false"))
    source = mmssl.load_checkpoint(trained / "run").model.encoders["text"].state_dict()
    mine = wider.encoders["text"].state_dict()
    assert torch.equal(mine["tower.transformer.resblocks.0.attn.in_proj_weight"], source["tower.transformer.resblocks.0.attn.in_proj_weight"])
    assert "tower.transformer.resblocks.1.attn.in_proj_weight" not in source  # the second layer keeps its own init


def test_export_refuses_a_used_directory_and_an_unknown_modality(trained, capsys, tmp_path):
    assert export_main([str(trained / "run"), "--output-dir", str(trained / "export")]) == 2
    assert "exists and is not an empty directory" in capsys.readouterr().err
    assert export_main([str(trained / "run"), "--output-dir", str(tmp_path / "e"), "--modalities", "audio"]) == 2
    assert "has no modality ['audio']" in capsys.readouterr().err and not (tmp_path / "e").exists()
