"""The device path as far as a CPU can check it: what ``precision: auto`` resolves to,
that batches bound for CUDA are asked for in pinned memory, channels-last encoders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mmssl
import mmssl.data.stream
import mmssl.train.trainer
from mmssl.train.checkpoint import load_checkpoint
from mmssl.train.device import pins_memory, resolve_precision, uses_channels_last

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
RUN = ["train.threads=1", "train.progress=false"]


def test_precision_auto_is_bf16_on_a_gpu_with_bf16_and_fp32_elsewhere(monkeypatch):
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda", 0)) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", torch.device("cuda", 0)) == "fp32"
    assert all(resolve_precision(p, torch.device("cuda", 0)) == p for p in ("fp32", "bf16", "fp16", "fp64"))
    assert mmssl.load_config(TINY, []).train.precision == "auto"


def test_channels_last_is_on_for_cuda_by_default_and_on_request():
    assert uses_channels_last("auto", torch.device("cuda", 0)) and not uses_channels_last("auto", torch.device("cpu"))
    assert uses_channels_last(True, torch.device("cpu")) and not uses_channels_last(False, torch.device("cuda", 0))


def test_batches_bound_for_cuda_are_built_in_pinned_memory(monkeypatch, tmp_path):
    """The trainer asks every stream's DataLoader to pin when its device is CUDA (here a
    fake device check: this machine has no GPU to pin for, so the loader is built
    unpinned after the request is recorded)."""
    assert pins_memory(torch.device("cuda", 0)) and not pins_memory(torch.device("cpu"))
    asked = []
    real = mmssl.data.stream.DataLoader

    def recording(*args, **kwargs):
        asked.append(kwargs.get("pin_memory"))
        return real(*args, **{**kwargs, "pin_memory": False})

    monkeypatch.setattr(mmssl.data.stream, "DataLoader", recording)
    monkeypatch.setattr(mmssl.train.trainer, "pins_memory", lambda device: True)
    mmssl.Pretrainer(mmssl.load_config(TINY, [*RUN, "train.steps=1"]), tmp_path / "pinned").fit()
    assert asked == [True]
    monkeypatch.setattr(mmssl.train.trainer, "pins_memory", lambda device: False)
    mmssl.Pretrainer(mmssl.load_config(TINY, [*RUN, "train.steps=1"]), tmp_path / "plain").fit()
    assert asked == [True, False]


def test_built_batches_pin_their_tensors_and_graphs():
    """``BuiltBatch.pin_memory`` (what the DataLoader's pin thread calls) pins every tensor
    of nested containers; checked with a stand-in for ``Tensor.pin_memory``, which needs
    a GPU driver."""
    from mmssl.data.stream import BuiltBatch

    class Pinnable:
        def __init__(self) -> None:
            self.pinned = False

        def pin_memory(self) -> "Pinnable":
            self.pinned = True
            return self

    graph = Pinnable()
    built = BuiltBatch(data={"graph": graph, "extras": [Pinnable(), (Pinnable(),)], "n": 3}, size=3)
    pinned = built.pin_memory()
    assert graph.pinned and pinned.data["extras"][0].pinned and pinned.data["extras"][1][0].pinned
    assert pinned.data["n"] == 3 and pinned.size == 3
    assert BuiltBatch(data=None, size=0).pin_memory().data is None


@pytest.mark.slow
def test_channels_last_trains_as_the_default_layout(tmp_path):
    """train.channels_last=true on the CPU: the convolutional image encoder's weights in
    channels-last memory, the run's losses and weights those of the default layout up to
    the kernels' rounding, and its checkpoint loads."""
    runs = {}
    for name, value in (("default", "false"), ("channels_last", "true")):
        config = mmssl.load_config(TINY, [*RUN, "train.steps=3", f"train.channels_last={value}"])
        trainer = mmssl.Pretrainer(config, tmp_path / name)
        runs[name] = trainer.fit()
        runs[name + "_model"] = trainer.model
    conv = next(m for m in runs["channels_last_model"].encoders["image"].modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert runs["channels_last"]["image_text/loss"] == pytest.approx(runs["default"]["image_text/loss"], rel=1e-4)
    loaded = load_checkpoint(tmp_path / "channels_last").model.state_dict()
    trained = runs["channels_last_model"].state_dict()
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)
