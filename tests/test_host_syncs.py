"""Host syncs (mmssl/train/device.py), counted on the CPU where a GPU would wait: the
counter sees each kind, and a training step reads its logged values and its skip
decision to the host once, with no scalar read in the trainer or the objectives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import mmssl
from mmssl.train.device import count_host_syncs, read_to_host
from mmssl.train.trainer import Pretrainer

from tests.conftest import CONFIGS, REPO

QUICK = ["train.threads=1", "train.progress=false", "train.checkpoint_every=0"]


def source(sync: Any) -> str:
    """The file of a sync's site, relative to the repository ('' outside it)."""
    path = Path(sync.site.rsplit(":", 1)[0]).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else ""


class Prefetched:
    """A stream whose next batch is built beforehand: building a batch is the data
    pipeline's CPU work (in loader workers on a GPU run), no wait on the device."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.batch = next(stream)

    def __next__(self) -> Any:
        return self.batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def test_the_counter_sees_each_kind_and_leaves_values_alone():
    x = torch.tensor([1.5, -2.0, 3.0])
    with count_host_syncs() as syncs:
        assert x.sum().item() == 2.5 and float(x[0]) == 1.5 and bool(x[2] > 0)
        assert x[x > 0].tolist() == [1.5, 3.0]  # boolean-mask indexing: the output size is read back
        local, summed = read_to_host({"a": x[0], "b": [x, 7.0]}, {"n": torch.tensor(4, dtype=torch.long)})
    assert local == {"a": 1.5, "b": [[1.5, -2.0, 3.0], 7.0]} and summed == {"n": 4.0}
    assert [s.kind for s in syncs.syncs] == ["scalar", "scalar", "scalar", "data_shape", "to_host"]
    assert all(source(s) == "tests/test_host_syncs.py" and not s.in_torch for s in syncs.syncs)
    # bfloat16 and float32 values come back exactly as .item() gives them
    values = [torch.tensor(0.1, dtype=torch.bfloat16), torch.tensor(1 / 3, dtype=torch.float32)]
    assert read_to_host(values)[0] == [v.item() for v in values]


def test_a_joint_step_reads_the_host_once(tmp_path):
    """tiny_joint's six objectives, one step after the first: the trainer and the
    objectives make no scalar read; the step's one transfer is ``read_to_host``'s. Before
    the metrics stayed on the device this step made 46 scalar reads (35 of them the
    trainer's, the weighting's and the objectives' metric conversions); what remains are
    the encoders': PyG's ``to_dense_batch`` sizes its output from the largest graph
    (3), the audio transformer asks whether any patch is padding (2)."""
    trainer = Pretrainer(mmssl.load_config(CONFIGS / "tiny_joint.yaml", [*QUICK, "train.steps=2"]), tmp_path)
    first = trainer.train_step()
    trainer.streams = {name: Prefetched(stream) for name, stream in trainer.streams.items()}
    with count_host_syncs() as syncs:
        metrics = trainer.train_step()
    assert metrics.keys() == first.keys() and all(isinstance(v, float) for k, v in metrics.items() if k != "skipped")
    ours = [s for s in syncs.syncs if source(s).startswith(("mmssl/", "objectives/")) and not s.in_torch]
    assert [(s.kind, s.op) for s in ours if s.kind != "data_shape"] == [("to_host", "read_to_host")]
    # the masked tokens MLM predicts are picked by a boolean mask (their number varies)
    assert {source(s) for s in ours if s.kind == "data_shape"} == {"objectives/mlm.py"}
    assert syncs.count("scalar") <= 5, [s.site for s in syncs.syncs if s.kind == "scalar"]


@pytest.mark.parametrize("objective", ["image_text", "masked_audio", "graph_contrastive"])
def test_objective_forwards_read_nothing_back(tmp_path, objective):
    trainer = Pretrainer(mmssl.load_config(CONFIGS / "tiny_joint.yaml", QUICK), tmp_path)
    batch = next(trainer.streams[objective])
    with count_host_syncs() as syncs:
        out = trainer.model(objective, batch)
    assert [s for s in syncs.syncs if source(s).startswith("objectives/")] == []
    assert all(torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad for v in out.metrics.values())
