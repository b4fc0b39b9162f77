"""timm interop (docs/interop.md, "timm"): a timm checkpoint or local-dir folder as an
image tower's ``pretrained`` weights, and ``mmssl-export --format timm``, whose folder
``timm.create_model("local-dir:DIR", pretrained=True)`` loads; features compared with
timm's own model on the same input."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import mmssl
from mmssl.cli.export import main as export_main
from mmssl.interop.export import export
from mmssl.interop.pretrained import PretrainedError
from mmssl.train.checkpoint import Pretrained
from mmssl.train.trainer import Pretrainer

timm = pytest.importorskip("timm")

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
TINY_CLIP = REPO / "configs" / "tiny_clip.yaml"
TINY_MASKED = REPO / "configs" / "tiny_masked_image.yaml"
# the preprocessing of the "downloaded" timm models (timm's data_config of save_for_hf)
DATA_CONFIG = {"input_size": (3, 32, 32), "interpolation": "bicubic", "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3),
               "crop_pct": 1.0}
TOLERANCE = 1e-5


def timm_model(name: str, **kwargs) -> torch.nn.Module:
    """A timm model with seeded random weights moved off their init, and BatchNorm
    statistics of their own, so every tensor matters; eval mode."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        for n, b in model.named_buffers():
            if n.endswith("running_mean"):
                b.copy_(torch.randn_like(b) * 0.1)
            elif n.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)
    return model.eval()


def images() -> list:
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    shapes = ((40, 50), (32, 32), (64, 48), (33, 70))
    return [Image.fromarray(torch.randint(0, 255, (h, w, 3), generator=rng, dtype=torch.uint8).numpy()) for h, w in shapes]


def features(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """timm's pooled features (before any classifier)."""
    with torch.no_grad():
        return model.eval().forward_head(model.forward_features(pixels), pre_logits=True)


def mmssl_features(model: mmssl.MultimodalModel, key: str = "image") -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels, pooled features) of mmssl's processor and encoder on ``images()``."""
    model.eval()
    pixels = torch.stack([model.processors[key].transform(i) for i in images()])
    with torch.no_grad():
        return pixels, model.encoders[key]({"pixels": pixels}).pooled


def timm_pixels(folder: Path) -> torch.Tensor:
    """``images()`` through timm's own eval transform of the folder's pretrained_cfg."""
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    transform = create_transform(**resolve_data_config({}, model=model))
    return torch.stack([transform(i) for i in images()])


def config_without_architecture(pretrained: Path, *overrides: str) -> mmssl.RunConfig:
    """configs/tiny.yaml with an image section that names only ``pretrained``: the timm
    folder decides the rest."""
    raw = yaml.safe_load(TINY.read_text())
    raw["modalities"]["image"] = {"pretrained": str(pretrained)}
    return mmssl.config_from_dict(mmssl.config.apply_overrides(raw, overrides))


@pytest.fixture(scope="module")
def timm_dirs(tmp_path_factory) -> dict[str, Path]:
    """"Downloaded" timm models with a 10-class classifier: a CNN and a ViT (32 pixels)
    in timm's local-dir layout (timm's own ``save_for_hf``), and the CNN's trainer
    checkpoint (``model_best.pth.tar``: its arguments, ``module.`` prefixes)."""
    from timm.models import save_for_hf

    root = tmp_path_factory.mktemp("timm")
    for name, kwargs in (("test_resnet", {}), ("test_vit", {"img_size": 32})):
        save_for_hf(timm_model(name, num_classes=10, **kwargs), str(root / name), safe_serialization=True,
                    data_config=DATA_CONFIG)
    state = timm_model("test_resnet", num_classes=10).state_dict()
    torch.save({"epoch": 3, "arch": "test_resnet", "args": argparse.Namespace(model="test_resnet", lr=0.1),
                "state_dict": {f"module.{k}": v for k, v in state.items()}}, root / "model_best.pth.tar")
    return {"test_resnet": root / "test_resnet", "test_vit": root / "test_vit", "checkpoint": root / "model_best.pth.tar"}


# --------------------------------------------------------------------------------------
# timm -> mmssl
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, backbone_args", [("test_resnet", {"global_pool": "avg"}),
                                                  ("test_vit", {"img_size": [32, 32], "global_pool": "token"})])
def test_a_timm_folder_decides_the_tower_and_gives_timms_features(timm_dirs, name, backbone_args):
    folder = timm_dirs[name]
    options = config_without_architecture(folder).modalities["image"].options
    assert (options.tower, options.backbone, options.backbone_args, options.image_size) == ("timm", name, backbone_args, 32)
    assert (options.mean, options.std, options.interpolation) == ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "bicubic")
    # the config's own values win
    assert config_without_architecture(folder, "modalities.image.interpolation=bilinear").modalities["image"].options.interpolation == "bilinear"
    model = mmssl.build_model(config_without_architecture(folder))
    pixels, ours = mmssl_features(model)
    theirs = features(timm_model(name, num_classes=10, **({"img_size": 32} if name == "test_vit" else {})), pixels)
    assert float((ours - theirs).abs().max()) < TOLERANCE
    # mmssl's preprocessing is timm's for the folder's pretrained_cfg (crop_pct 1.0)
    assert float((pixels - timm_pixels(folder)).abs().max()) < 1e-5


def test_a_timm_checkpoint_file_loads_into_the_configs_tower_without_its_classifier(timm_dirs, tmp_path):
    from safetensors.torch import save_file

    model = timm_model("test_resnet", num_classes=10)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "resnet.safetensors")
    assert "fc.weight" in model.state_dict()
    for file in (timm_dirs["checkpoint"], tmp_path / "resnet.safetensors"):
        config = mmssl.load_config(TINY, [f"modalities.image.pretrained={file}"])
        assert config.modalities["image"].options.backbone_args == {}  # a file decides no option
        pixels, ours = mmssl_features(mmssl.build_model(config))
        assert float((ours - features(model, pixels)).abs().max()) < TOLERANCE


def test_a_run_from_a_timm_folder_keeps_its_options_when_the_folder_is_gone(timm_dirs, tmp_path):
    folder = tmp_path / "vit"
    shutil.copytree(timm_dirs["test_vit"], folder)
    Pretrainer(config_without_architecture(folder, "train.steps=1", "train.progress=false"), tmp_path / "run").fit()
    shutil.rmtree(folder)
    options = mmssl.load_checkpoint(tmp_path / "run").config.modalities["image"].options
    assert (options.backbone, options.backbone_args["img_size"], options.interpolation) == ("test_vit", [32, 32], "bicubic")


def test_timm_files_that_do_not_fit_name_the_tensors_or_the_backbone(timm_dirs, tmp_path):
    torch.save(timm_model("resnet10t", num_classes=10).state_dict(), tmp_path / "resnet10t.pth")
    with pytest.raises(PretrainedError, match=r"'modalities.image.pretrained': the timm checkpoint .*resnet10t.pth does not "
                                              r"fit the 'image' encoder \(image\): tensors differ: \d+ of another shape.*"
                                              r"backbone\.conv1\.0\.weight: file \[\d+, 3, 3, 3\], model \[\d+, 3, 3, 3\]"):
        mmssl.build_model(mmssl.load_config(TINY, [f"modalities.image.pretrained={tmp_path / 'resnet10t.pth'}"]))
    # tiny.yaml names test_resnet: the ViT folder's architecture (and its model_args, which go with it) is not taken
    with pytest.raises(PretrainedError, match=r"holds timm's 'test_vit', but 'backbone' is 'test_resnet': leave backbone"):
        mmssl.build_model(mmssl.load_config(TINY, [f"modalities.image.pretrained={timm_dirs['test_vit']}"]))
    with pytest.raises(PretrainedError, match=r"holds timm's 'test_vit', but 'backbone' is 'test_resnet': leave backbone"):
        mmssl.build_model(mmssl.load_config(TINY, [f"modalities.image.pretrained={timm_dirs['test_vit']}",
                                                   "modalities.image.backbone_args={}"]))
    lenient = mmssl.build_model(mmssl.load_config(TINY, [f"modalities.image.pretrained={tmp_path / 'resnet10t.pth'}",
                                                         "modalities.image.pretrained_strict=false"]))
    assert lenient.encoders["image"].backbone.fc.__class__.__name__ == "Identity"


# --------------------------------------------------------------------------------------
# mmssl -> timm
# --------------------------------------------------------------------------------------

def test_a_trained_run_exports_to_timm_and_loads_back(tmp_path):
    """The commands of docs/interop.md: train tiny, export its image tower as timm's
    folder (timm loads it strictly and gives mmssl's features), then start a run from it."""
    run = tmp_path / "run"
    Pretrainer(mmssl.load_config(TINY, ["train.steps=2", "train.progress=false"]), run).fit()
    out = tmp_path / "export"
    assert export_main([str(run), "--format", "timm", "--output-dir", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    config = json.loads((out / "config.json").read_text())
    assert (config["architecture"], config["num_classes"], "model_args" in config) == ("test_resnet", 0, False)
    assert {k: config["pretrained_cfg"][k] for k in ("input_size", "crop_pct", "crop_mode", "interpolation")} == {
        "input_size": [3, 32, 32], "crop_pct": 1.0, "crop_mode": "center", "interpolation": "bilinear"}
    loaded = mmssl.load_pretrained(run)
    pixels, ours = mmssl_features(loaded)
    theirs = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert theirs.num_classes == 0
    assert float((features(theirs, pixels) - ours).abs().max()) < TOLERANCE
    assert float((timm_pixels(out) - pixels).abs().max()) < 1e-5
    # a new classifier on top, as for any timm model
    assert timm.create_model(f"local-dir:{out}", pretrained=True, num_classes=5)(pixels).shape == (4, 5)
    card = (out / "README.md").read_text()
    assert "| image | image |" in card and "timm.create_model" in card and "(timm)" in card
    again = mmssl.build_model(mmssl.load_config(TINY, [f"modalities.image.pretrained={out}"]))
    mine, source = again.encoders["image"].state_dict(), loaded.encoders["image"].state_dict()
    assert [k for k in source if not torch.equal(source[k], mine[k])] == []


def test_backbone_args_travel_and_the_mask_parameter_stays_in_mmssl(tmp_path):
    """A CNN built with backbone_args (output_stride 8) under masked image modeling: the
    export's model_args rebuild it in timm; loaded back, its mask value keeps the
    model's own initialisation."""
    config = mmssl.load_config(TINY_MASKED)
    model = mmssl.build_model(config)
    with torch.no_grad():
        model.encoders["image_cnn"].mask_value.add_(1.0)
    export(Pretrained(model, config, tmp_path), tmp_path / "export", "timm", ["image_cnn"])
    written = json.loads((tmp_path / "export" / "config.json").read_text())
    assert written["model_args"] == {"output_stride": 8}
    pixels, ours = mmssl_features(model, "image_cnn")
    theirs = timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True)
    assert float((features(theirs, pixels) - ours).abs().max()) < TOLERANCE
    again = mmssl.build_model(mmssl.load_config(TINY_MASKED, [f"modalities.image_cnn.pretrained={tmp_path / 'export'}"]))
    assert torch.equal(again.encoders["image_cnn"].mask_value, torch.zeros(3))


def test_export_refuses_an_open_clip_tower_and_a_modality_that_is_no_image(tmp_path, capsys):
    Pretrainer(mmssl.load_config(TINY_CLIP, ["train.steps=1", "train.progress=false"]), tmp_path / "run").fit()
    assert export_main([str(tmp_path / "run"), "--format", "timm", "--output-dir", str(tmp_path / "e")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "'modalities.image.tower' is 'open_clip': a timm export needs tower: timm" in line
    assert export_main([str(tmp_path / "run"), "--format", "timm", "--output-dir", str(tmp_path / "e"),
                        "--modalities", "text"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "a timm export writes one image modality" in line and not (tmp_path / "e").exists()
