"""benchmarks/fsdp_memory.py on its tiny model: under fsdp, 2 gloo ranks each hold half of
DDP's parameter, gradient and optimizer bytes (the issue's acceptance: within 10 % of 1/N)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KINDS = ("params", "grads", "optimizer")


@pytest.mark.slow
def test_fsdp_halves_the_bytes_of_two_ranks(tmp_path: Path) -> None:
    """``--quick --procs 2`` (2 torchrun runs, about 20 s on 2 cores): at 2 processes
    fsdp's largest rank holds 1/2 of DDP's bytes of each kind within 10 %, and the
    printed table marks that row ok."""
    out = tmp_path / "fsdp_memory.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "fsdp_memory.py"), "--quick", "--procs", "2", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert sorted(rows) == ["2"]
    ddp, fsdp = rows["2"]["ddp"], rows["2"]["fsdp"]
    assert fsdp["sharded"] and not ddp["sharded"]
    assert len(fsdp["ranks"]) == len(ddp["ranks"]) == 2
    for kind in KINDS:
        assert ddp[kind] > 0
        assert fsdp[kind] / ddp[kind] == pytest.approx(1 / 2, rel=0.10), kind
    row = next(line for line in done.stdout.splitlines() if line.startswith("| 2 | fsdp |"))
    assert row.rstrip(" |").endswith("ok"), row
