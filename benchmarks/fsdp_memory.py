"""Memory per rank and step time under ``train.parallel: ddp`` and ``fsdp``, at 1, 2 and
4 gloo processes.

    python benchmarks/fsdp_memory.py                                  # benchmarks/configs/fsdp_memory.yaml
    python benchmarks/fsdp_memory.py --procs 1 2 4 --steps 3 --json fsdp_memory.json
    python benchmarks/fsdp_memory.py --quick --procs 1 2              # a tiny model: a smoke test
    python benchmarks/fsdp_memory.py modalities.text.width=768 modalities.text.heads=12

Each (processes, strategy) pair is its own ``torchrun`` run of this script's ``--worker``,
the two strategies in turn at each process count (so a slow spell of the machine hits
both). A worker builds ``mmssl.Pretrainer`` on the config, takes ``--warmup`` then
``--steps`` optimizer steps, and measures on every rank, from the tensors' local shards
(``sharding.local(t)``: a DTensor's shard under fsdp, the whole tensor under ddp):

- parameters: every parameter of ``trainer.joint`` (model and loss weighting);
- gradients: every ``.grad`` of the optimizer's parameters, read in an optimizer step
  pre-hook (the trainer drops gradients after its step);
- optimizer state: every tensor in ``optimizer.state`` (AdamW's two moments and steps);
- peak RSS: the rank's ``ru_maxrss`` (everything the process held at its peak: the model
  as built before sharding, activations, DDP's gradient buckets, gloo's buffers);
- step time: rank 0's ``step_s`` (the ranks meet every step), median of the measured steps.

The table gives the largest rank's figures (ranks' shards differ by a padding row), the
fsdp/ddp step-time ratio at the same number of processes, and the check: fsdp's bytes
over ddp's for parameters, gradients and optimizer state, times N, which is 1 when each
rank holds exactly 1/N ("ok" within 10 %). With one process the worker still starts a
process group of one, so fsdp shards (over one rank) and its cost shows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

from common import REPO, run_measured, write_json

CONFIG = REPO / "benchmarks" / "configs" / "fsdp_memory.yaml"
COMMON_OVERRIDES = (
    "train.threads=1", "train.progress=false", "train.precision=fp32", "train.checkpoint_every=0",
    "train.device=cpu", "train.resume=none",
)
# --quick: the same encoders and objectives at toy widths (4 M parameters, most of them
# the text tower's 49,410-token embedding), seconds a run
QUICK_OVERRIDES = (
    "modalities.image.backbone_args={layers: 2, width: 64, head_width: 32}", "modalities.image.image_size=32",
    "modalities.text.width=64", "modalities.text.layers=2", "modalities.text.heads=2",
    "objectives.image_text.embed_dim=64", "objectives.audio_text.embed_dim=64", "objectives.graph_text.embed_dim=64",
)
KINDS = ("params", "grads", "optimizer")
TOLERANCE = 0.10  # the acceptance: fsdp's bytes a rank within 10 % of ddp's / N


# --- the worker: one torchrun rank --------------------------------------------------------
def local_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of this rank's part of ``tensors`` (a DTensor's local shard, else the tensor)."""
    from mmssl.train import sharding

    total = 0
    for tensor in tensors:
        part = sharding.local(tensor)
        total += part.numel() * part.element_size()
    return total


def optimizer_state_tensors(optimizer: Any) -> list[Any]:
    """Every tensor in ``optimizer.state`` (moments and step counts of every parameter)."""
    import torch

    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def worker(args: argparse.Namespace) -> None:
    """Train ``--warmup + --steps`` steps on this rank, measure, and have rank 0 write
    every rank's figures to ``--out``."""
    import torch
    import torch.distributed as dist

    import mmssl

    if not dist.is_initialized():
        # torchrun's environment; also with one process, so that fsdp shards over a group of one
        dist.init_process_group(backend="gloo")
    steps = args.warmup + args.steps
    config = mmssl.load_config(args.config, [*args.overrides, f"train.steps={steps}"])
    trainer = mmssl.Pretrainer(config, args.output_dir)
    grad_bytes: list[int] = []

    def count_grads(optimizer: torch.optim.Optimizer, *_: Any) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grad_bytes.append(local_bytes(grads))

    trainer.optimizer.register_step_pre_hook(count_grads)
    try:
        step_s = [trainer.train_step()["step_s"] for _ in range(steps)]
    finally:
        for stream in trainer.streams.values():
            stream.close()
    record = {
        "rank": dist.get_rank(),
        "sharded": trainer.sharded,
        "param_count": sum(p.numel() for p in trainer.joint.parameters()),  # a DTensor's numel is the whole's
        "params": local_bytes(trainer.joint.parameters()),
        "grads": max(grad_bytes),
        "optimizer": local_bytes(optimizer_state_tensors(trainer.optimizer)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "step_s": step_s[args.warmup:],
    }
    records: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(records, record)
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps(records))
    dist.destroy_process_group()


# --- the driver -------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for torchrun's rendezvous (as
    ``mmssl.train.distributed.free_port``; the driver itself needs neither torch nor mmssl)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(config: Path, procs: int, parallel: str, warmup: int, steps: int, overrides: Sequence[str]) -> list[dict]:
    """One ``torchrun`` run of the worker; every rank's record."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ranks.json"
        cmd = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
            str(Path(__file__).resolve()), "--worker", "--config", str(config), "--output-dir", str(Path(tmp) / "run"),
            "--out", str(out), "--warmup", str(warmup), "--steps", str(steps),
            *COMMON_OVERRIDES, f"train.parallel={parallel}", *overrides,
        ]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        run_measured(cmd, env=env)
        return json.loads(out.read_text())


def summarise(records: list[dict]) -> dict[str, Any]:
    """The largest rank's bytes and peak RSS, rank 0's median step time."""
    return {
        "param_count": records[0]["param_count"],
        "sharded": records[0]["sharded"],
        **{kind: max(r[kind] for r in records) for kind in KINDS},
        "peak_rss_mb": max(r["peak_rss_mb"] for r in records),
        "step_s": statistics.median(records[0]["step_s"]),
        "ranks": records,
    }


def check(fsdp: dict[str, Any], ddp: dict[str, Any], procs: int) -> dict[str, Any]:
    """fsdp's bytes a rank over ddp's, times ``procs`` (1: exactly 1/N), and whether each
    is within ``TOLERANCE`` of 1."""
    scaled = {kind: fsdp[kind] / ddp[kind] * procs for kind in KINDS}
    return {"ratio_times_n": scaled, "ok": all(abs(v - 1) <= TOLERANCE for v in scaled.values())}


def mb(n: float) -> str:
    return f"{n / 2**20:.1f}"


def print_table(rows: dict[int, dict[str, dict[str, Any]]]) -> None:
    """The markdown table: a row per (processes, strategy), the check on fsdp's rows."""
    print("| procs | parallel | params MB | grads MB | optimizer MB | peak RSS MB | s/step | fsdp/ddp s/step "
          "| check: fsdp/ddp x N (params, grads, optimizer) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for procs, sides in rows.items():
        for parallel, row in sides.items():
            ratio, verdict = "", ""
            if parallel == "fsdp" and "ddp" in sides:
                ratio = f"{row['step_s'] / sides['ddp']['step_s']:.2f}"
                c = row["check"]
                verdict = " / ".join(f"{c['ratio_times_n'][k]:.3f}" for k in KINDS) + (" ok" if c["ok"] else " **off**")
            print(f"| {procs} | {parallel} | {mb(row['params'])} | {mb(row['grads'])} | {mb(row['optimizer'])} "
                  f"| {row['peak_rss_mb']:.0f} | {row['step_s']:.2f} | {ratio} | {verdict} |")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, key.sub=value")
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=3, help="measured steps a run")
    parser.add_argument("--warmup", type=int, default=2, help="steps before them, left out of the step time")
    parser.add_argument("--quick", action="store_true", help="a tiny model, 1 warm-up and 1 measured step: a smoke test")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    overrides = list(args.overrides)
    if args.quick:
        overrides = [*QUICK_OVERRIDES, *overrides]
        args.warmup, args.steps = 1, 1
    rows: dict[int, dict[str, dict[str, Any]]] = {}
    for procs in args.procs:
        rows[procs] = {}
        for parallel in ("ddp", "fsdp"):
            rows[procs][parallel] = summarise(run_config(Path(args.config), procs, parallel, args.warmup, args.steps, overrides))
            row = rows[procs][parallel]
            print(f"{procs} processes, {parallel}: {mb(row['params'] + row['grads'] + row['optimizer'])} MB of "
                  f"parameters, gradients and optimizer state a rank, peak RSS {row['peak_rss_mb']:.0f} MB, "
                  f"{row['step_s']:.2f} s/step", flush=True)
        rows[procs]["fsdp"]["check"] = check(rows[procs]["fsdp"], rows[procs]["ddp"], procs)
    params = next(iter(rows.values()))["ddp"]["param_count"]
    print(f"\n{args.config}, {params / 1e6:.1f} M parameters, fp32, gloo, 1 thread a process; "
          f"median of {args.steps} steps after {args.warmup}; bytes and RSS of the largest rank")
    print_table(rows)
    write_json(args.json, {"config": args.config, "overrides": overrides, "warmup": args.warmup, "steps": args.steps,
                           "tolerance": TOLERANCE, "rows": {str(n): sides for n, sides in rows.items()}})


if __name__ == "__main__":
    main()
