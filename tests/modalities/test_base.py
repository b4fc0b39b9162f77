"""The modality contract: three parts built together, world roles, objective capabilities."""

import pytest
import torch

from modalities.audio import AudioConfig, AudioModality
from modalities.base import (
    Encoder,
    MaskableTokenEncoder,
    PatchEncoder,
    Processor,
    ViewAugmenter,
    capability_members,
    modality_roles,
    require_capability,
)
from modalities.graph import GraphConfig, GraphModality
from modalities.image import ImageConfig, ImageModality
from modalities.text import TextConfig, TextModality


def _text(**kw):
    return TextModality.build(TextConfig(width=32, layers=1, heads=2, context_length=24, **kw), "text")


def _audio(**kw):
    return AudioModality.build(AudioConfig(sample_rate=8000, clip_seconds=0.5, n_mels=32, n_fft=256, hop_length=80,
                                           width=32, depth=1, heads=2, **kw), "audio")


def test_a_modality_builds_three_parts_under_its_key():
    image = ImageModality.build(ImageConfig(backbone="test_resnet", image_size=32), "photo")
    assert isinstance(image.encoder, Encoder) and isinstance(image.processor, Processor)
    assert image.encoder.key == image.processor.key == image.renderer.key == "photo"
    assert not any(True for _ in vars(image.processor).values() if isinstance(_, torch.nn.Parameter))
    assert isinstance(image.processor, ViewAugmenter) and not isinstance(image.encoder, ViewAugmenter)
    assert _text().renderer is None  # text renders nothing: captions come from the other spaces


def test_roles_split_renderers_captioners_and_items():
    parts = {
        "image": ImageModality.build(ImageConfig(backbone="test_resnet", image_size=32), "image"),
        "text": _text(),
        "graph": GraphModality.build(GraphConfig(width=16, depth=1), "graph"),
    }
    roles = modality_roles({k: p.processor for k, p in parts.items()}, {k: p.renderer for k, p in parts.items()})
    assert roles.renderers == ("image", "graph")
    assert roles.captioners == ("text",)
    assert roles.items == ("image", "graph")


def test_capability_members_are_the_protocols_declared_members():
    assert capability_members(PatchEncoder) == [
        "embed_dim", "grid", "patch_dim", "patchify", "patch_targets", "patch_padding_mask"
    ]
    assert set(capability_members(MaskableTokenEncoder)) == {
        "embed_dim", "vocab_size", "mask_token_id", "num_regular_tokens", "token_embedding", "bidirectional",
        "maskable_positions",
    }


def test_builtins_meet_the_capabilities_they_declare():
    audio, text = _audio().encoder, _text().encoder
    assert isinstance(audio, PatchEncoder) and isinstance(text, MaskableTokenEncoder)
    assert not isinstance(text, PatchEncoder)
    require_capability(audio, PatchEncoder, "masked audio modeling", forward_kwargs=("patch_mask",))
    require_capability(text, MaskableTokenEncoder, "masked language modeling", forward_kwargs=("attention",))


def test_missing_members_are_named():
    wave = _audio(encoder="wav2vec2", wav2vec2_layers=1).encoder
    wave.key = "sound"
    with pytest.raises(ValueError, match=r"modality 'sound' is no PatchEncoder .*masked audio modeling.*"
                                         r"\['grid', 'patch_dim', 'patchify', 'patch_targets', 'patch_padding_mask'\]; use x"):
        require_capability(wave, PatchEncoder, "masked audio modeling", hint="use x")


def test_missing_forward_argument_is_named():
    class Plain(Encoder):
        embed_dim = 4
        grid = (1, 1)
        patch_dim = 1

        def patchify(self, values):
            return values

        def patch_targets(self, batch):
            return batch

        def patch_padding_mask(self, batch):
            return torch.zeros(1, 1, dtype=torch.bool)

        def forward(self, batch):
            raise NotImplementedError

    plain = Plain(None)
    plain.key = "plain"
    require_capability(plain, PatchEncoder, "masked modeling")  # members alone are there
    with pytest.raises(ValueError, match=r"calls modality 'plain' with \['patch_mask'\], but its forward takes no 'patch_mask' argument"):
        require_capability(plain, PatchEncoder, "masked modeling", forward_kwargs=("patch_mask",))


def test_a_modality_of_several_architectures_picks_each_encoder_class_by_config():
    from dataclasses import replace

    from modalities.audio import SpectrogramTransformer, TimmAudioEncoder, Wav2Vec2Encoder
    from modalities.graph import GATv2Encoder, GINEEncoder, GINEncoder, GPSEncoder
    from modalities.image import OpenClipImageEncoder, TimmImageEncoder

    audio = AudioConfig(sample_rate=8000, clip_seconds=0.5, n_mels=32, n_fft=256, hop_length=80, width=32, depth=1, heads=2)
    for name, cls in (("spectrogram_transformer", SpectrogramTransformer), ("timm", TimmAudioEncoder),
                      ("wav2vec2", Wav2Vec2Encoder)):
        assert AudioModality.encoder_class(replace(audio, encoder=name)) is cls
    assert type(_audio(encoder="wav2vec2", wav2vec2_layers=1).encoder) is Wav2Vec2Encoder
    for name, cls in (("gin", GINEncoder), ("gine", GINEEncoder), ("gat", GATv2Encoder), ("gps", GPSEncoder)):
        assert GraphModality.encoder_class(GraphConfig(encoder=name)) is cls
    assert ImageModality.encoder_class(ImageConfig(tower="open_clip")) is OpenClipImageEncoder
    assert ImageModality.encoder_class(ImageConfig(tower="timm")) is TimmImageEncoder
    with pytest.raises(ValueError, match=r"encoder 'transformer' is none of this modality's encoders \['gat', 'gin', 'gine', 'gps'\]"):
        GraphModality.build(replace(GraphConfig(), encoder="transformer"))
