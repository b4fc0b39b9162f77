import json

import numpy as np
import pytest
import torch
from PIL import Image

from modalities.base import InvalidSample
from modalities.image import SHAPES_SPACE, ImageConfig, ImageModality


def _image(**kw):
    torch.manual_seed(0)
    return ImageModality.build(ImageConfig(image_size=32, **{"backbone": "test_resnet", **kw}), "image")


@pytest.mark.parametrize(
    "kw",
    [
        {"tower": "timm", "backbone": "test_resnet"},
        {"tower": "timm", "backbone": "vit_tiny_patch16_224", "backbone_args": {"img_size": 32, "patch_size": 8, "depth": 1}},
        {"tower": "open_clip", "backbone": "ViT-S-32", "backbone_args": {"patch_size": 8, "layers": 1, "width": 64, "head_width": 32}},
    ],
    ids=["timm-cnn", "timm-vit", "open_clip-vit"],
)
def test_backbones_give_pooled_and_tokens(kw):
    image = _image(**kw)
    image.encoder.eval()
    out = image.encoder(image.processor.collate([image.processor.transform(Image.new("RGB", (40, 30), "red"))] * 2))
    assert out.pooled.shape == (2, image.encoder.embed_dim)
    assert out.tokens.ndim == 3 and out.tokens.shape[0] == 2 and out.tokens.shape[2] == image.encoder.embed_dim
    if "vit" in kw["backbone"].lower():  # one token per 8x8 patch of 32x32 pixels, no class token
        assert out.tokens.shape[1] == 16


def test_load_errors_name_the_file(tmp_path):
    image = _image()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(InvalidSample) as err:
        image.processor.load(str(bad))
    assert err.value.source == str(bad)
    truncated = tmp_path / "trunc.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 120).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(InvalidSample, match="trunc.png"):
        image.processor.load(str(truncated))
    with pytest.raises(InvalidSample, match="not found"):
        image.processor.load(str(tmp_path / "missing.png"))


def test_train_transform_is_a_function_of_the_sample_rng():
    image = _image(train_crop_scale=(0.5, 1.0))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8))
    a = image.processor.transform(img, np.random.default_rng(7))
    torch.manual_seed(123)  # the global RNG must not matter
    b = image.processor.transform(img, np.random.default_rng(7))
    c = image.processor.transform(img, np.random.default_rng(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(image.processor.transform(img), image.processor.transform(img))


def test_render_is_deterministic_and_differs_by_concept():
    image = _image()
    concept = {"colour": "red", "shape": "star", "size": "large", "position": "left"}
    a = np.asarray(image.renderer.render(concept, np.random.default_rng(1)))
    b = np.asarray(image.renderer.render(concept, np.random.default_rng(1)))
    assert a.shape == (32, 32, 3) and np.array_equal(a, b)
    red = a[..., 0].astype(int) - a[..., 2].astype(int)
    assert red[:, :16].mean() > red[:, 16:].mean()  # the shape sits on the left
    blue = np.asarray(image.renderer.render({**concept, "colour": "blue"}, np.random.default_rng(1)))
    assert blue[..., 2].mean() > a[..., 2].mean()


def test_concept_space_has_enough_classes():
    sizes = [len(v) for v in SHAPES_SPACE.class_attributes.values()]
    assert np.prod(sizes) >= 24


def test_open_clip_tower_from_a_model_config_file(tmp_path):
    """A custom open_clip architecture as a JSON file in open_clip's format (what
    open_clip's own trainer reads too); a bad file is named in the error."""
    path = tmp_path / "tiny_vit.json"
    path.write_text(json.dumps({"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 48,
                                                                  "head_width": 16, "patch_size": 8}}))
    image = _image(tower="open_clip", backbone=str(path))
    image.encoder.eval()
    assert image.encoder.embed_dim == 48 and len(image.encoder.backbone.transformer.resblocks) == 1
    out = image.encoder(image.processor.collate([image.processor.transform(Image.new("RGB", (32, 32), "red"))]))
    assert out.pooled.shape == (1, 48) and out.tokens.shape == (1, 16, 48)
    with pytest.raises(ValueError, match="missing.json"):
        _image(tower="open_clip", backbone=str(tmp_path / "missing.json"))
    path.write_text(json.dumps({"embed_dim": 32}))
    with pytest.raises(ValueError, match="tiny_vit.json has no 'vision_cfg'"):
        _image(tower="open_clip", backbone=str(path))
