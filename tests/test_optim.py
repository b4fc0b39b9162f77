"""The lr schedule (warmup, cosine to min_lr_ratio) and per-module lr scales."""

import pytest
import torch

from mmssl.train.checkpoint import CheckpointError
from mmssl.config import ConfigError, TrainConfig
from mmssl.model import build_model
from mmssl.train.optim import build_optimizer, build_scheduler, lr_factor
from mmssl.train.trainer import Pretrainer


def test_lr_factor_ramps_then_decays_to_min_ratio():
    train = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, train) == pytest.approx(1 / 11)
    assert lr_factor(5, train) == pytest.approx(1 / 11 + (10 / 11) * 0.5)
    assert lr_factor(10, train) == pytest.approx(1.0)
    assert lr_factor(55, train) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(100, train) == pytest.approx(0.1)
    factors = [lr_factor(s, train) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))


def _owner_groups(model, optimizer, owner):
    ids = {id(p) for n, p in model.named_parameters() if n.startswith(f"encoders.{owner}.")}
    mine = [g for g in optimizer.param_groups if ids & {id(p) for p in g["params"]}]
    others = [g for g in optimizer.param_groups if not ids & {id(p) for p in g["params"]} and g["params"]]
    return mine, others


def test_lr_scale_groups_keep_their_share_along_the_schedule(tiny_config):
    config = tiny_config("train.lr_scale={text: 0.25}", "train.min_lr_ratio=0.2", "train.steps=20", "train.warmup_steps=4")
    model = build_model(config)
    optimizer = build_optimizer(model, config.train)
    scheduler = build_scheduler(optimizer, config.train)
    text_groups, other_groups = _owner_groups(model, optimizer, "text")
    assert text_groups and other_groups
    assert all(id(p) not in {id(q) for g in other_groups for q in g["params"]} for g in text_groups for p in g["params"])
    for step in range(config.train.steps + 1):
        factor = lr_factor(step, config.train)
        for g in text_groups:
            assert g["lr"] == pytest.approx(config.train.lr * 0.25 * factor)
        for g in other_groups:
            assert g["lr"] == pytest.approx(config.train.lr * factor)
        optimizer.step()
        scheduler.step()
    assert text_groups[0]["lr"] == pytest.approx(config.train.lr * 0.25 * 0.2)


def test_lr_scale_slows_only_that_encoder(tiny_config):
    torch.manual_seed(0)
    config = tiny_config("train.lr_scale={text: 0.1}", "train.weight_decay=0")
    model = build_model(config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, config.train)
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()  # Adam's first step moves every entry with a gradient by about lr
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()}
    text = [v for n, v in moved.items() if n.startswith("encoders.text.")]
    rest = [v for n, v in moved.items() if not n.startswith("encoders.text.")]
    assert max(text) == pytest.approx(0.1 * config.train.lr, rel=1e-3)
    assert max(rest) == pytest.approx(config.train.lr, rel=1e-3)


def test_lr_scale_names_unknown_owner_and_bad_scale(tiny_config):
    with pytest.raises(ConfigError, match=r"train\.lr_scale\.txt.*Did you mean 'text'"):
        tiny_config("train.lr_scale={txt: 0.5}")
    with pytest.raises(ConfigError, match=r"train\.lr_scale\.text': must be > 0"):
        tiny_config("train.lr_scale={text: 0}")
    assert tiny_config("train.lr_scale={image_text: 2}").train.lr_scale == {"image_text": 2.0}


def test_resume_with_other_lr_or_lr_scale_is_refused_by_name(tiny_config, tmp_path):
    Pretrainer(tiny_config("train.steps=2"), tmp_path).fit()
    again = Pretrainer(tiny_config("train.steps=4", "train.lr_scale={text: 0.5}"), tmp_path)
    with pytest.raises(CheckpointError, match=r"step_0+2.*start at lr.*train\.lr_scale"):
        again.maybe_resume()
    same_groups = Pretrainer(tiny_config("train.steps=4", "train.lr=0.001"), tmp_path)
    with pytest.raises(CheckpointError, match=r"step_0+2.*\[0\.002, 0\.002\].*\[0\.001, 0\.001\]"):
        same_groups.maybe_resume()


def test_fused_adamw_by_default_and_the_multi_tensor_kernel_on_request(tiny_config):
    """The fused kernel takes the same steps as the multi-tensor one up to rounding."""
    steps = {}
    for fused in (True, False):
        config = tiny_config(f"train.fused_optimizer={str(fused).lower()}")
        torch.manual_seed(0)
        model = build_model(config)
        optimizer = build_optimizer(model, config.train)
        assert all(group["fused"] is (True if fused else None) for group in optimizer.param_groups)
        for p in model.parameters():
            p.grad = torch.full_like(p, 0.01)
        optimizer.step()
        steps[fused] = [p.detach().clone() for p in model.parameters()]
    for a, b in zip(steps[True], steps[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
