"""Throughput and MFU (mmssl/train/flops.py): counting leaves training bit for bit as it
was, the counts are the hand counts, and every run logs and summarises them."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import mmssl
from mmssl.train import flops
from mmssl.train.flops import StepFlops, Throughput, resolve_peak, table_peak_tflops
from mmssl.train.run_log import read_metrics
from mmssl.train.trainer import Pretrainer

from tests.conftest import CONFIGS

QUICK = ["train.steps=3", "train.threads=1", "train.progress=false", "train.checkpoint_every=0", "train.log_every=1"]


def _weights_after(config: str, tmp_path, name: str, *overrides: str) -> tuple[dict[str, torch.Tensor], list[dict]]:
    trainer = Pretrainer(mmssl.load_config(CONFIGS / config, [*QUICK, *overrides]), tmp_path / name)
    trainer.fit()
    return trainer.model.state_dict(), read_metrics(tmp_path / name / "metrics.jsonl")


@pytest.mark.parametrize("config", ["tiny.yaml", "tiny_joint.yaml"])
def test_counting_leaves_the_weights_bit_identical(config, tmp_path):
    """Every step of tiny_joint is a new key (its graphs change size), so all 3 run under
    the counter; tiny's first does."""
    counted, lines = _weights_after(config, tmp_path, "counted", "train.count_flops=true")
    plain, plain_lines = _weights_after(config, tmp_path, "plain", "train.count_flops=false")
    assert all("tflops" in r and r["tflops"] > 0 for r in lines)
    assert not any("tflops" in r or "mfu" in r for r in plain_lines)
    assert counted.keys() == plain.keys()
    differ = [k for k in counted if not torch.equal(counted[k], plain[k])]
    assert not differ, differ


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))


def _mlp_step(model: nn.Module, x: torch.Tensor) -> None:
    model(x).square().sum().backward()


def test_a_step_count_is_the_hand_count():
    """Linear layers: forward 2*B*in*out a layer; backward the weight gradient (the same)
    and the input gradient (the same again) but for the first layer, whose input needs
    none. With the input's gradient too it is 3x the forward."""
    batch = 8
    forward = 2 * batch * (32 * 64 + 64 * 16)
    hand = forward + 2 * batch * 32 * 64 + 2 * (2 * batch * 64 * 16)
    counts, model = StepFlops(), _mlp()
    x = torch.randn(batch, 32)
    with counts.count(["mlp"], {"mlp": {"x": x}}):
        _mlp_step(model, x)
    assert counts.take() == pytest.approx(hand, rel=0.05)
    with counts.count(["mlp"], {"mlp": {"x": x}}, flags=["input_grad"]):
        _mlp_step(model, x.clone().requires_grad_())
    assert counts.take() == pytest.approx(3 * forward, rel=0.05)


class _NoGradient(torch.autograd.Function):
    """Identity forward; no gradient back (as a rank's share of a gathered batch can be)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return None


def test_attention_whose_output_gets_no_gradient_counts_its_forward_only():
    """The CPU attention's backward is called with no output gradient when none reaches
    it (seen under 2 processes with gradient diagnostics): it computes nothing, and the
    count is the forward's 2 matmuls of 2*B*H*S*S*D."""
    q = torch.randn(2, 2, 8, 4, requires_grad=True)

    def step():
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        torch.autograd.grad(_NoGradient.apply(out).sum() + q.sum(), [q])

    assert flops.count_flops(step) == 2 * (2 * 2 * 2 * 8 * 8 * 4)


def test_a_count_is_reused_for_its_key_and_bounded_for_new_shapes(monkeypatch):
    counts, model = StepFlops(keys_per_set=2), _mlp()
    entered = []
    real = flops.flop_counter
    monkeypatch.setattr(flops, "flop_counter", lambda: entered.append(1) or real())
    per_sample = None
    for batch in (4, 4, 8, 4, 12, 16):  # shapes 4 and 8 are counted; 12 and 16 get their mean
        x = torch.randn(batch, 32)
        with counts.count(["mlp"], {"mlp": x}):
            _mlp_step(model, x)
        got = counts.take()
        if batch == 4:
            per_sample = got / 4
        expected = per_sample * (batch if batch in (4, 8) else 6)
        assert got == pytest.approx(expected), batch
    assert len(entered) == counts.counted == 2 and counts.estimated == 2


def test_the_trainer_counts_forward_and_backward_of_every_micro_step(tiny_config, tmp_path):
    """Its step count is the counter's around a whole step of a twin on the same batches
    (the optimizer adds no counted FLOPs), accumulation micro-steps included."""
    config = tiny_config(*QUICK, "train.accum_steps=2", "train.peak_tflops=2.0")
    trainer = Pretrainer(config, tmp_path / "a")
    twin = Pretrainer(config, tmp_path / "b")
    metrics = trainer.train_step()
    whole = flops.count_flops(twin.train_step)
    assert trainer.throughput.flops.counted == 1  # both micro-steps have one key
    assert metrics["tflops"] * metrics["step_s"] * 1e12 == pytest.approx(whole)
    assert metrics["mfu"] == pytest.approx(metrics["tflops"] / 2.0)


def test_metrics_lines_and_summary_carry_throughput_and_mfu(tiny_config, tmp_path):
    trainer = Pretrainer(tiny_config(*QUICK, "train.peak_tflops=0.5"), tmp_path)
    trainer.fit()
    lines = read_metrics(tmp_path / "metrics.jsonl")
    assert len(lines) == 3
    for line in lines:
        assert line["samples_per_s"] > 0 and line["tflops"] > 0
        assert line["mfu"] == pytest.approx(line["tflops"] / 0.5)
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    seconds = sum(r["step_s"] for r in lines)
    for key in ("samples_per_s", "tflops", "mfu"):  # work over time: the step means weighted by seconds
        assert summary[key] == pytest.approx(sum(r[key] * r["step_s"] for r in lines) / seconds)
    assert summary["peak_tflops"] == 0.5 and summary["peak_tflops_source"] == "train.peak_tflops"
    assert summary["flop_count"].startswith("counted once per key: 1 keys")


def test_objectives_run_apart_get_their_own_tflops(tmp_path):
    drop = [f"objectives.{n}=null" for n in ("audio_text", "graph_text", "masked_audio", "graph_contrastive")]
    config = mmssl.load_config(CONFIGS / "tiny_joint.yaml", [*QUICK, "train.steps=4", "train.schedule=round_robin", *drop])
    trainer = Pretrainer(config, tmp_path)
    trainer.fit()
    lines = read_metrics(tmp_path / "metrics.jsonl")
    assert [sorted(k for k in r if k.endswith("/tflops")) for r in lines] == [["image_text/tflops"], ["mlm/tflops"]] * 2
    assert all(r[f"{n}/tflops"] == r["tflops"] for r in lines for n in ("image_text", "mlm") if f"{n}/tflops" in r)
    summary = trainer.summary
    for name in ("image_text", "mlm"):
        ran = [r for r in lines if f"{name}/tflops" in r]
        assert summary[f"{name}/tflops"] == pytest.approx(sum(r["tflops"] * r["step_s"] for r in ran) / sum(r["step_s"] for r in ran))


def test_counting_off_and_compiled_encoders_report_no_flops(tiny_config, tmp_path):
    trainer = Pretrainer(tiny_config(*QUICK, "train.count_flops=false"), tmp_path)
    trainer.fit()
    assert "mfu" not in trainer.history[-1] and trainer.summary["samples_per_s"] > 0
    assert trainer.summary["tflops"] is None and trainer.summary["mfu"] is None
    assert "train.count_flops=false" in trainer.summary["flop_count"]
    compiled = Throughput(True, ["image"], torch.device("cpu"), "fp32", None, per_objective=False)
    assert not compiled.enabled and "train.compile" in compiled.reason
    assert compiled.step_metrics(["image_text"], 1.0) == {}


def test_peak_table_by_device_name_and_precision():
    assert table_peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == (989.0, "H100 SXM")
    assert table_peak_tflops("NVIDIA H100 PCIe", "tf32") == (378.0, "H100 PCIe")
    assert table_peak_tflops("NVIDIA H200", "bf16") == (989.0, "H200 SXM")
    assert table_peak_tflops("NVIDIA A100-SXM4-80GB", "tf32") == (156.0, "A100")
    assert table_peak_tflops("NVIDIA L4", "bf16") == (121.0, "L4")
    assert table_peak_tflops("NVIDIA L40S", "bf16") == (362.0, "L40S")
    assert table_peak_tflops("Tesla V100-SXM2-32GB", "tf32") == (15.7, "V100 SXM2")  # no TF32: its fp32
    assert table_peak_tflops("Tesla V100-SXM2-32GB", "bf16") is None
    assert table_peak_tflops("NVIDIA GeForce GTX 1080", "fp32") is None


def test_the_cpu_peak_is_measured_once_and_draws_no_random_numbers(monkeypatch):
    assert resolve_peak(3.5, torch.device("cpu"), "fp32") == flops.Peak(3.5, "train.peak_tflops")
    monkeypatch.setattr(flops, "_MEASURED", {})
    state = torch.get_rng_state()
    first = resolve_peak(None, torch.device("cpu"), "fp32")
    assert torch.equal(torch.get_rng_state(), state)
    assert first.tflops > 0 and first.source.startswith("measured: float32 1024x1024 matmul")
    monkeypatch.setattr(flops, "matmul_flops_per_s", lambda *a, **k: pytest.fail("measured twice"))
    assert resolve_peak(None, torch.device("cpu"), "fp32") == first


def test_peak_tflops_must_be_positive(tiny_config):
    with pytest.raises(mmssl.ConfigError, match="train.peak_tflops"):
        tiny_config("train.peak_tflops=0")
