import json

import numpy as np
import pytest
import torch

import mmssl
from mmssl.train.run_log import read_metrics
from mmssl.data import DataError, build_streams
from mmssl.train.trainer import Pretrainer
from modalities.text import TextConfig, TextEncoder, TextModality
from objectives.base import EXTRAS_KEY, DistContext
from objectives.mlm import IGNORE, MLMConfig, MLMObjective, mask_tokens


def _text(**kw):
    torch.manual_seed(0)
    return TextModality.build(TextConfig(width=32, layers=1, heads=2, context_length=24, attention="bidirectional", **kw))


def test_mask_statistics_on_a_fixed_seed():
    text = _text()
    objective = MLMObjective(MLMConfig(), {"text": text.encoder}, DistContext())
    words = "the quick brown fox jumps over a lazy dog near some red green blue square circle"
    rng = np.random.default_rng(0)
    selected = maskable = to_mask = to_random = kept = 0
    for i in range(1500):
        sentence = " ".join(rng.choice(words.split(), size=int(rng.integers(3, 20))))
        ids = text.processor.transform(sentence)
        extras = objective.prepare_sample({"text": ids}, np.random.default_rng([7, i]))
        corrupted, labels = extras["mlm_ids"], extras["mlm_labels"]
        chosen = labels != IGNORE
        special = ~text.processor.maskable_positions(ids)
        assert not chosen[special].any(), "SOT, EOT and padding are never selected"
        assert torch.equal(corrupted[special], ids[special]), "special tokens are never changed"
        assert torch.equal(corrupted[~chosen], ids[~chosen]), "unselected tokens are never changed"
        assert torch.equal(labels[chosen], ids[chosen])
        selected += int(chosen.sum())
        maskable += int((~special).sum())
        to_mask += int((corrupted[chosen] == text.encoder.mask_token_id).sum())
        changed = chosen & (corrupted != ids) & (corrupted != text.encoder.mask_token_id)
        to_random += int(changed.sum())
        kept += int((chosen & (corrupted == ids)).sum())
        assert (corrupted[changed] < text.encoder.num_regular_tokens).all()
    assert abs(selected / maskable - 0.15) < 0.01
    # a random replacement can draw the original token (1 in ~49k): counts as kept
    assert abs(to_mask / selected - 0.8) < 0.03
    assert abs(to_random / selected - 0.1) < 0.02
    assert abs(kept / selected - 0.1) < 0.02
    # deterministic for a seed
    ids = text.processor.transform("a red square on a blue circle")
    a = objective.prepare_sample({"text": ids}, np.random.default_rng(3))
    b = objective.prepare_sample({"text": ids}, np.random.default_rng(3))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mask_tokens_rounds_the_count_at_random():
    ids = torch.arange(12)
    maskable = torch.ones(12, dtype=torch.bool)
    counts = [
        int((mask_tokens(ids, maskable, np.random.default_rng(s), 0.15, 0.8, 0.1, 99, 50)[1] != IGNORE).sum())
        for s in range(2000)
    ]
    assert set(counts) == {1, 2}  # 0.15 * 12 = 1.8
    assert abs(np.mean(counts) - 1.8) < 0.05


class _Host:
    def __init__(self, encoders):
        self.encoders = encoders


def _batch(text, objective, sentences, seed=0):
    ids = [text.processor.transform(s) for s in sentences]
    extras = [objective.prepare_sample({"text": x}, np.random.default_rng([seed, i])) for i, x in enumerate(ids)]
    return {
        "text": text.processor.collate(ids),
        EXTRAS_KEY: {k: torch.stack([e[k] for e in extras]) for k in extras[0]},
    }


def test_loss_counts_selected_positions_only():
    text = _text()
    objective = MLMObjective(MLMConfig(mask_prob=0.3), {"text": text.encoder}, DistContext())
    batch = _batch(text, objective, ["a red square on the left of a green circle"] * 4 + ["big blue star"] * 4)
    selected = batch[EXTRAS_KEY]["mlm_labels"] != IGNORE
    assert 0 < selected.sum() < selected.numel()
    loss = objective(_Host({"text": text.encoder}), batch).loss

    forward = text.encoder.forward

    def perturbed(inputs):
        out = forward(inputs)
        noise = torch.randn_like(out.tokens) * 100
        out.tokens = torch.where(selected.unsqueeze(-1), out.tokens, out.tokens + noise)
        return out

    text.encoder.forward = perturbed
    assert torch.equal(objective(_Host({"text": text.encoder}), batch).loss, loss)

    def perturb_selected(inputs):
        out = forward(inputs)
        out.tokens = torch.where(selected.unsqueeze(-1), out.tokens + 1.0, out.tokens)
        return out

    text.encoder.forward = perturb_selected
    assert objective(_Host({"text": text.encoder}), batch).loss != loss


def test_tied_head_shares_the_token_embedding():
    text = _text()
    tied = MLMObjective(MLMConfig(), {"text": text.encoder}, DistContext())
    assert tied.decoder is None and not any(p is text.encoder.token_embedding.weight for p in tied.parameters())
    untied = MLMObjective(MLMConfig(tie_weights=False), {"text": text.encoder}, DistContext())
    assert untied.decoder.weight.shape == text.encoder.token_embedding.weight.shape


def test_mlm_runs_a_causal_encoder_bidirectionally():
    bidirectional = _text()
    causal = TextModality.build(TextConfig(width=32, layers=1, heads=2, context_length=24, attention="causal"))
    causal.encoder.load_state_dict(bidirectional.encoder.state_dict())
    torch.manual_seed(1)
    objective = MLMObjective(MLMConfig(), {"text": bidirectional.encoder}, DistContext())
    batch = _batch(bidirectional, objective, ["a red square on the left of a green circle"] * 4 + ["big blue star"] * 4)
    expected = objective(_Host({"text": bidirectional.encoder}), batch).loss
    on_causal = MLMObjective(MLMConfig(), {"text": causal.encoder}, DistContext())
    on_causal.load_state_dict(objective.state_dict())
    got = on_causal(_Host({"text": causal.encoder}), batch).loss  # same head, same weights, causal config
    assert torch.allclose(got, expected, atol=1e-5)
    plain = causal.encoder(batch["text"]).tokens  # the encoder's ordinary calls stay causal
    assert not torch.allclose(plain, bidirectional.encoder(batch["text"]).tokens, atol=1e-3)

    class NoAttentionArgument(TextEncoder):
        def forward(self, batch):
            return super().forward(batch)

    legacy = NoAttentionArgument(TextConfig(width=32, layers=1, heads=2, attention="causal"))
    with pytest.raises(ValueError, match="takes no 'attention' argument"):
        MLMObjective(MLMConfig(), {"text": legacy}, DistContext())


MLM_OVERRIDES = (
    "modalities.text.attention=bidirectional",
    "objectives.image_text.weight=0.0",
    "objectives.mlm={type: mlm, modalities: [text], data: {batch_size: 64}}",
    "train.lr=0.003",
    "train.checkpoint_every=0",
)


def test_mlm_learns_the_world_captions(tiny_config, tmp_path):
    # Attribute words of the captions are unpredictable from context (every colour goes
    # with every shape); template words are not, which is what lifts accuracy over the
    # most-frequent-token baseline.
    config = tiny_config(*MLM_OVERRIDES, "train.steps=250", "train.lr=0.01", "train.warmup_steps=5", "train.log_every=5")
    Pretrainer(config, tmp_path).fit()
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "mlm/accuracy" in r]
    assert records[-1]["mlm/loss"] < 0.4 * records[0]["mlm/loss"]
    late = records[-10:]
    accuracy = np.mean([r["mlm/accuracy"] for r in late])
    baseline = np.mean([r["mlm/baseline_accuracy"] for r in late])
    assert accuracy > baseline + 0.05, (accuracy, baseline)


def test_text_corpus_source_reads_txt_and_jsonl_and_names_bad_lines(tiny_config, tmp_path):
    txt = tmp_path / "corpus.txt"
    txt.write_text("a red square\n\n  a blue circle  \n")
    config = tiny_config(*MLM_OVERRIDES, f"objectives.mlm.data={{source: text, path: {txt}, batch_size: 2}}")
    model = mmssl.build_model(config)
    stream = build_streams(config, model)["mlm"]
    assert len(stream.source) == 2 and stream.source.get(1, None) == {"text": "a blue circle"}

    jsonl = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"text": "a red square"}), "{broken", json.dumps({"body": "x"}), json.dumps({"text": "a green star"})]
    jsonl.write_text("\n".join(lines) + "\n")
    config = tiny_config(*MLM_OVERRIDES, f"objectives.mlm.data={{source: text, path: {jsonl}, batch_size: 4}}")
    stream = build_streams(config, mmssl.build_model(config))["mlm"]
    batch = next(stream)
    assert batch["text"]["ids"].shape[0] == 2 and stream.skipped == 2
    assert any("line 2" in r or "JSON" in r for r in stream.skip_reasons)
    assert any("no 'text' field" in r for r in stream.skip_reasons)

    config = tiny_config(
        *MLM_OVERRIDES, f"objectives.mlm.data={{source: text, path: {jsonl}, batch_size: 4, on_error: fail}}"
    )
    stream = build_streams(config, mmssl.build_model(config))["mlm"]
    with pytest.raises(DataError, match=r"corpus.jsonl line [23]"):
        next(stream)
