import torch

from modalities.base import InvalidSample
from modalities.text import TextConfig, TextModality

import pytest


def _text(attention="causal", **kw):
    torch.manual_seed(0)
    parts = TextModality.build(TextConfig(width=32, layers=1, heads=2, context_length=12, attention=attention, **kw), "text")
    parts.encoder.eval()
    return parts


def test_tokenize_pads_and_marks_padding():
    text = _text()
    batch = text.processor.tokenize(["a red circle", "a"])
    assert batch["ids"].shape == (2, 12)
    out = text.encoder(batch)
    assert out.pooled.shape == (2, 32) and out.tokens.shape == (2, 12, 32)
    # SOT a red circle EOT -> 5 real tokens; SOT a EOT -> 3
    assert (~out.padding_mask).sum(1).tolist() == [5, 3]


def test_causal_vs_bidirectional_attention():
    ids = _text().processor.tokenize(["a red circle on the left"])["ids"]
    changed = ids.clone()
    changed[0, 5] = 1000  # a later token
    for attention, earlier_changes in (("causal", False), ("bidirectional", True)):
        text = _text(attention)
        with torch.no_grad():
            before, after = text.encoder({"ids": ids}).tokens, text.encoder({"ids": changed}).tokens
        assert (not torch.allclose(before[0, 1], after[0, 1])) is earlier_changes


@pytest.mark.parametrize("pool", ["eos", "mean"])
def test_per_call_attention_matches_a_tower_built_for_it(pool):
    causal, bidirectional = _text("causal", pool=pool), _text("bidirectional", pool=pool)
    bidirectional.encoder.load_state_dict(causal.encoder.state_dict())
    batch = causal.processor.tokenize(["a red circle on the left", "a star"])
    real = ~(batch["ids"] == causal.encoder.pad_id)
    with torch.no_grad():
        for model, other, kind in ((causal.encoder, bidirectional.encoder, "bidirectional"), (bidirectional.encoder, causal.encoder, "causal")):
            want, got = other(batch), model(batch, attention=kind)
            # padding positions differ (a causal tower lets them attend to padding); nothing reads them
            assert torch.allclose(got.tokens[real], want.tokens[real], atol=1e-5)
            assert torch.allclose(got.pooled, want.pooled, atol=1e-5)
            assert torch.equal(model(batch, attention=model.config.attention).tokens, model(batch).tokens)
    with pytest.raises(ValueError, match="attention must be"):
        causal.encoder(batch, attention="sideways")


def test_non_string_is_invalid_sample():
    with pytest.raises(InvalidSample, match="must be a string"):
        _text().processor.transform(3)


def test_extra_state_round_trip_and_mismatch():
    a, b = _text(), TextModality.build(TextConfig(width=32, layers=1, heads=2, context_length=16), "text")
    a.processor.check_extra_state(a.processor.extra_state_dict())
    with pytest.raises(ValueError, match="context_length"):
        a.processor.check_extra_state(b.processor.extra_state_dict())
