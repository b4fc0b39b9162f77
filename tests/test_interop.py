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
    with pytest.raises(PretrainedError, match="'hf-hub:laion/CLIP' names a download .*this machine does not download"):
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


# --------------------------------------------------------------------------------------
# open_clip
# --------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
TINY_CLIP = REPO / "configs" / "tiny_clip.yaml"
# the architecture of configs/tiny_clip.yaml, as open_clip's model_cfg
CLIP_CFG = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
PREPROCESS = {"size": 32, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "interpolation": "bicubic", "resize_mode": "shortest"}
TEXTS = ["a red circle", "three blue squares on a grey field", "a photo of a dog"]


@pytest.fixture(scope="module")
def open_clip_dir(tmp_path_factory) -> Path:
    """A "downloaded" open_clip model: seeded random weights (moved off their init so every
    tensor matters) saved in open_clip's local-dir layout."""
    import open_clip
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("open_clip")
    torch.manual_seed(0)
    model = open_clip.CLIP(**CLIP_CFG)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": CLIP_CFG, "preprocess_cfg": PREPROCESS}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    return folder


def images() -> list:
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    shapes = ((40, 50), (32, 32), (64, 48), (33, 70))
    return [Image.fromarray(torch.randint(0, 255, (h, w, 3), generator=rng, dtype=torch.uint8).numpy()) for h, w in shapes]


def open_clip_embeddings(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(text, image) embeddings of open_clip's own model, tokenizer and preprocessing."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    with torch.no_grad():
        return (model.eval().encode_text(tokenizer(TEXTS), normalize=True),
                model.encode_image(torch.stack([preprocess(i) for i in images()]), normalize=True))


def mmssl_embeddings(model) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    return model.encode("text", TEXTS, objective="image_text"), model.encode("image", images(), objective="image_text")


def clip_config(pretrained: Path | str, *overrides: str) -> mmssl.RunConfig:
    """A config that names no architecture: the open_clip folder decides it."""
    raw = {"modalities": {"image": {"pretrained": str(pretrained)}, "text": {"pretrained": str(pretrained)}},
           "objectives": {"image_text": {"type": "contrastive", "modalities": ["image", "text"], "embed_dim": 32,
                                         "data": {"batch_size": 8}}},
           "train": {"steps": 2, "progress": False, "warmup_steps": 0}}
    return mmssl.config_from_dict(mmssl.config.apply_overrides(raw, overrides))


def test_an_open_clip_folder_gives_open_clips_embeddings_and_predictions(open_clip_dir):
    config = clip_config(open_clip_dir)
    image, text = config.modalities["image"].options, config.modalities["text"].options
    assert (image.tower, image.interpolation, image.mean, image.vision_cfg["width"]) == ("open_clip", "bicubic", (0.5, 0.4, 0.3), 64)
    assert (text.context_length, text.width, text.layers, text.heads) == (32, 64, 2, 2)
    model = mmssl.build_model(config)
    theirs, ours = open_clip_embeddings(open_clip_dir), mmssl_embeddings(model)
    for a, b in zip(theirs, ours):
        assert (a - b).abs().max() < 1e-5
    assert torch.equal((theirs[1] @ theirs[0].T).argmax(1), (ours[1] @ ours[0].T).argmax(1))  # zero-shot predictions
    state = load_open_clip_state(open_clip_dir)
    assert state["logit_scale"].shape == () and torch.equal(model.objectives["image_text"].logit_scale, state["logit_scale"].reshape(1))
    # the <mask> and <pad> rows mmssl adds keep the model's own initialisation
    rows = model.encoders["text"].tower.token_embedding.weight
    assert rows.shape[0] == 49410 and torch.equal(rows[:49408], state["token_embedding.weight"])


def test_an_open_clip_trainer_checkpoint_loads_with_the_configs_architecture(open_clip_dir, tmp_path):
    state = load_open_clip_state(open_clip_dir)
    torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "epoch_3.pt")
    config = mmssl.load_config(TINY_CLIP, [f"modalities.image.pretrained={tmp_path / 'epoch_3.pt'}",
                                           f"modalities.text.pretrained={tmp_path / 'epoch_3.pt'}",
                                           "modalities.image.mean=[0.5, 0.4, 0.3]", "modalities.image.std=[0.2, 0.25, 0.3]"])
    theirs, ours = open_clip_embeddings(open_clip_dir), mmssl_embeddings(mmssl.build_model(config))
    assert max(float((a - b).abs().max()) for a, b in zip(theirs, ours)) < 1e-5


def test_a_trained_clip_exports_to_open_clip_and_loads_back_locked(tmp_path):
    """The commands of docs/interop.md: train tiny_clip, export it as open_clip's folder
    (open_clip loads it strictly and embeds as mmssl does), then train again from it with
    the image tower locked: the tower stays as the export gave it."""
    run = tmp_path / "run"
    Pretrainer(mmssl.load_config(TINY_CLIP, ["train.steps=2", "train.progress=false"]), run).fit()
    export = tmp_path / "export"
    assert export_main([str(run), "--format", "open_clip", "--output-dir", str(export)]) == 0
    assert {p.name for p in export.iterdir()} == {"open_clip_config.json", "open_clip_model.safetensors", "README.md"}
    theirs, ours = open_clip_embeddings(export), mmssl_embeddings(mmssl.load_pretrained(run))
    assert max(float((a - b).abs().max()) for a, b in zip(theirs, ours)) < 1e-5
    again = Pretrainer(mmssl.load_config(TINY_CLIP, [f"modalities.image.pretrained={export}", f"modalities.text.pretrained={export}",
                                                     "modalities.image.freeze=true", "train.steps=2", "train.progress=false"]),
                       tmp_path / "again")
    image_before, text_before = snapshot(again.model.encoders["image"]), snapshot(again.model.encoders["text"])
    again.fit()
    assert same(image_before, snapshot(again.model.encoders["image"])) == []
    assert same(text_before, snapshot(again.model.encoders["text"]))


@pytest.mark.parametrize("override, named", [
    ("modalities.text.attention=bidirectional", "'modalities.text.attention' is 'bidirectional'"),
    ("modalities.text.pool=mean", "'modalities.text.pool' is 'mean'"),
    ("objectives.image_text.head=mlp", "'objectives.image_text.head' is 'mlp'"),
    ("modalities.image.tower=timm", "'modalities.image.tower' is 'timm'"),
])
def test_export_refuses_what_open_clip_cannot_express(override, named, tmp_path, capsys):
    overrides = [override, "train.steps=1", "train.progress=false"]
    if override.endswith("tower=timm"):
        overrides += ["modalities.image.backbone=test_resnet", "modalities.image.backbone_args={}"]
    Pretrainer(mmssl.load_config(TINY_CLIP, overrides), tmp_path / "run").fit()
    assert export_main([str(tmp_path / "run"), "--format", "open_clip", "--output-dir", str(tmp_path / "e")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert named in line and not (tmp_path / "e").exists()


def test_an_open_clip_folder_mmssl_cannot_map_is_one_line(open_clip_dir, tmp_path):
    folder = tmp_path / "quirky"
    folder.mkdir()
    (folder / "open_clip_model.safetensors").symlink_to(open_clip_dir / "open_clip_model.safetensors")
    quirky = {**CLIP_CFG, "text_cfg": {**CLIP_CFG["text_cfg"], "ls_init_value": 1e-4}}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": quirky, "preprocess_cfg": PREPROCESS}))
    with pytest.raises(mmssl.ConfigError, match=r"'modalities.text.pretrained': .*ls_init_value=0.0001.* does not map"):
        clip_config(folder)


def load_open_clip_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "open_clip_model.safetensors"))


def test_bind_trains_audio_and_graphs_into_a_locked_clip(tmp_path):
    """configs/bind.yaml on an export of configs/clip.yaml (untrained here): image and
    text come from the export, locked with their heads; audio and graphs train into the
    hub; after two steps the CLIP is as exported."""
    clip = mmssl.load_config(REPO / "configs" / "clip.yaml", ["train.steps=1", "train.progress=false"])
    Pretrainer(clip, tmp_path / "clip").fit()
    assert export_main([str(tmp_path / "clip"), "--format", "open_clip", "--output-dir", str(tmp_path / "export")]) == 0
    bind = mmssl.load_config(REPO / "configs" / "bind.yaml", [
        f"modalities.image.pretrained={tmp_path / 'export'}", f"modalities.text.pretrained={tmp_path / 'export'}",
        "train.steps=2", "train.progress=false", "objectives.audio_text.data.num_workers=0",
        "objectives.audio_text.data.batch_size=8", "objectives.graph_text.data.batch_size=8",
        "objectives.masked_audio.data.batch_size=4", "objectives.graph_contrastive.data.batch_size=4"])
    assert bind.modalities["image"].options.tower == "open_clip" and bind.modalities["text"].options.attention == "causal"
    trainer = Pretrainer(bind, tmp_path / "bind")
    model = trainer.model
    locked = clip_snapshot(model)
    audio = snapshot(model.encoders["audio"])
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimised for m in ("image", "text") for p in model.encoders[m].parameters())
    trainer.fit()
    assert same(locked, clip_snapshot(model)) == []
    assert same(audio, snapshot(model.encoders["audio"]))  # the new modalities train


def clip_snapshot(model) -> dict[str, torch.Tensor]:
    """The locked CLIP of a bind model: both towers and the hub's image and text heads."""
    parts = {"image": model.encoders["image"], "text": model.encoders["text"],
             "image_head": model.objectives["image_text"].heads["image"], "text_head": model.objectives["image_text"].heads["text"]}
    return {f"{name}.{k}": v for name, module in parts.items() for k, v in snapshot(module).items()}


def test_a_resumed_run_does_not_read_its_pretrained_file_again(trained, tiny_config, tmp_path):
    """The checkpoint holds the weights: a run whose pretrained folder is gone resumes."""
    export = tmp_path / "export"
    export.mkdir()
    (export / "image").symlink_to(trained / "export" / "image")
    overrides = [f"modalities.image.pretrained={export}", "train.steps=4", "train.checkpoint_every=2", "train.progress=false"]
    whole = Pretrainer(tiny_config(*overrides), tmp_path / "whole")
    whole.fit()

    def stop_at_3(trainer, metrics):
        if trainer.step == 3:
            raise Stop

    with pytest.raises(Stop):
        Pretrainer(tiny_config(*overrides), tmp_path / "stopped", callbacks=[stop_at_3]).fit()
    (export / "image").unlink()
    resumed = Pretrainer(tiny_config(*overrides), tmp_path / "stopped")
    resumed.fit()
    assert same(snapshot(whole.model), snapshot(resumed.model)) == []
