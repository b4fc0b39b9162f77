"""The pieces of benchmarks/ whose mistakes would not show in a table: the attention
FLOP formula for torch's CPU kernels, and reading open_clip_train's step log."""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from clip_vs_open_clip import OPEN_CLIP_STEP  # noqa: E402
from common import count_flops  # noqa: E402


def test_cpu_attention_counts_its_matmuls():
    """torch counts the CPU flash-attention kernels as 0 FLOPs; with the registered
    formula, forward is QK^T and AV (2 x 2BHLSE), backward 5 matmuls of the same size."""
    b, h, length, e = 2, 4, 16, 32
    q = torch.randn(b, h, length, e, requires_grad=True)
    unit = 2 * b * h * length * length * e
    assert count_flops(lambda: F.scaled_dot_product_attention(q, q, q)) == 2 * unit
    assert count_flops(lambda: F.scaled_dot_product_attention(q, q, q).sum().backward()) == 7 * unit


def test_open_clip_step_line_is_read():
    line = (
        "2026-12-01,21:01:01 | INFO | Train Epoch: 0 [ 64/384 (17%)] Data (t): 0.039 Batch (t): 0.512, "
        "124.935/s, 124.935/s/gpu LR: 0.000100 Logit Scale: 14.286 Contrastive_loss: 4.1589 (4.1589)"
    )
    assert OPEN_CLIP_STEP.findall(line) == [("0.039", "0.512")]
