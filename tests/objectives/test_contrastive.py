import math

import pytest
import torch
import torch.nn.functional as F

from modalities.image import ImageConfig, ImageModality
from modalities.text import TextConfig, TextModality
from objectives.base import DistContext
from objectives.contrastive import (
    ContrastiveConfig,
    ContrastiveObjective,
    MultiPositiveClipLoss,
    MultiPositiveSigLipLoss,
)
from objectives.base import match_matrix


def _features(n=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_clip_loss_equals_direct_computation():
    a, b = _features()
    scale = torch.tensor(10.0)
    logits = scale * a @ b.T
    n = a.shape[0]
    direct = -(torch.log_softmax(logits, 1).diagonal().mean() + torch.log_softmax(logits.T, 1).diagonal().mean()) / 2
    assert torch.allclose(MultiPositiveClipLoss()(a, b, scale), direct, atol=1e-6)
    # With codes that make every pair distinct, the soft-target path is the same loss.
    codes = torch.arange(n).unsqueeze(1)
    assert torch.allclose(MultiPositiveClipLoss()(a, b, scale, codes, codes), direct, atol=1e-6)


def test_same_concept_pairs_are_positives():
    a, b = _features()
    scale = torch.tensor(5.0)
    codes_a = torch.tensor([[0, 0], [0, 0], [1, 2], [1, 2], [2, 1], [0, 1]])
    codes_b = torch.tensor([[0, 0], [0, -1], [1, 2], [-1, 2], [2, 1], [0, 1]])
    positives = match_matrix(codes_a, codes_b).float()
    logits = scale * a @ b.T
    direct_ab = -(positives / positives.sum(1, keepdim=True) * torch.log_softmax(logits, 1)).sum(1).mean()
    pt = positives.T
    direct_ba = -(pt / pt.sum(1, keepdim=True) * torch.log_softmax(logits.T, 1)).sum(1).mean()
    loss = MultiPositiveClipLoss()(a, b, scale, codes_a, codes_b)
    assert torch.allclose(loss, (direct_ab + direct_ba) / 2, atol=1e-6)
    # caption "only colour 0" (-1 on shape) matches both colour-0 items
    assert positives[0, 1] == 1 and positives[1, 0] == 1 and positives[0, 2] == 0


def test_match_matrix_wildcards():
    items = torch.tensor([[0, 1], [0, 2], [1, 1]])
    captions = torch.tensor([[0, -1], [-1, 1], [1, 1]])
    assert match_matrix(captions, items).tolist() == [[True, True, False], [True, False, True], [False, False, True]]


def test_siglip_loss_equals_direct_computation():
    a, b = _features()
    scale, bias = torch.tensor(10.0), torch.tensor(-5.0)
    logits = scale * a @ b.T + bias
    labels = 2 * torch.eye(a.shape[0]) - 1
    direct = -F.logsigmoid(labels * logits).sum() / a.shape[0]
    assert torch.allclose(MultiPositiveSigLipLoss()(a, b, scale, bias), direct, atol=1e-5)
    codes = torch.tensor([[0], [0], [1], [2], [3], [4]])
    labels = match_matrix(codes, codes).float() * 2 - 1
    direct = -F.logsigmoid(labels * logits).sum() / a.shape[0]
    assert torch.allclose(MultiPositiveSigLipLoss()(a, b, scale, bias, codes, codes), direct, atol=1e-5)


class _Host:
    def __init__(self, encoders):
        self.encoders = encoders


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_objective_pairs_any_two_named_modalities(loss):
    torch.manual_seed(0)
    photo = ImageModality.build(ImageConfig(backbone="test_resnet", image_size=32), "photo")
    caption = TextModality.build(TextConfig(width=32, layers=1, heads=2, context_length=16), "caption")
    encoders = {"photo": photo.encoder, "caption": caption.encoder}
    objective = ContrastiveObjective(ContrastiveConfig(modalities=("photo", "caption"), embed_dim=16, loss=loss), encoders, DistContext())
    batch = {
        "photo": {"pixels": torch.randn(4, 3, 32, 32)},
        "caption": caption.processor.tokenize(["a", "b c", "d e f", "g"]),
    }
    out = objective(_Host(encoders), batch)
    assert out.loss.ndim == 0 and math.isfinite(out.loss.item())
    assert {"loss", "logit_scale", "photo_to_caption_acc", "caption_to_photo_acc"} <= set(out.metrics)
    out.loss.backward()
    assert objective.heads["photo"].weight.grad is not None and objective.logit_scale.grad is not None


def test_objective_rejects_same_modality_twice():
    encoders = {"text": TextModality.build(TextConfig(width=32, layers=1, heads=2), "text").encoder}
    with pytest.raises(ValueError, match="two different modalities"):
        ContrastiveObjective(ContrastiveConfig(modalities=("text", "text")), encoders, DistContext())
