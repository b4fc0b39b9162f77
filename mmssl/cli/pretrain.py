"""Pretrain from a YAML config.

    mmssl-pretrain configs/default.yaml --output-dir runs/default
    mmssl-pretrain configs/tiny.yaml --output-dir runs/tiny train.steps=50 objectives.image_text.weight=0.5
    mmssl-pretrain configs/default.yaml --output-dir runs/default --resume      # latest checkpoint in runs/default
    torchrun --nproc_per_node=2 tools/pretrain.py configs/default.yaml --output-dir runs/ddp   # data parallel
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from mmssl.train import distributed
from mmssl.common.atomic import write_text_atomic
from mmssl.cli.errors import reports_errors
from mmssl.config import load_config
from mmssl.common.plots import plot_losses
from mmssl.train.run_log import read_metrics
from mmssl.train.trainer import Pretrainer

PROG = "mmssl-pretrain"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="YAML run config (configs/*.yaml)")
    parser.add_argument("--output-dir", required=True, help="run directory: checkpoints, metrics, plots")
    parser.add_argument(
        "--resume", nargs="?", const="auto", default=None,
        help="resume from the latest checkpoint in --output-dir, or from the checkpoint given",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides, key.sub=value")
    return parser.parse_intermixed_args(argv)


@reports_errors(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"train.resume={args.resume}")
    config = load_config(args.config, overrides)
    output = Path(args.output_dir)
    start = time.perf_counter()
    in_group = distributed.init_from_env()  # under torchrun: join its process group
    try:
        trainer = Pretrainer(config, output)
        last = trainer.fit()
    finally:
        if in_group:
            torch.distributed.destroy_process_group()
    seconds = time.perf_counter() - start
    if not distributed.is_main_process_of_env():
        return 0
    metrics_file = output / "metrics.jsonl"
    if metrics_file.is_file():
        plot_losses(read_metrics(metrics_file), output / "losses.png")
    summary = {"steps": trainer.step, "seconds": round(seconds, 1), **{k: v for k, v in last.items() if "/" in k or k == "loss"}}
    summary["nonfinite_steps"] = trainer.nonfinite_steps
    summary["world_size"] = trainer.dist.world_size
    summary["per_rank_batch"] = {name: s.local_batch_size for name, s in trainer.streams.items()}
    write_text_atomic(output / "train_summary.json", json.dumps(summary, indent=2))
    print(f"trained {trainer.step} steps in {seconds:.0f} s; final loss {last.get('loss', float('nan')):.4f}")
    for name in trainer.model.objectives:  # means over the last logging interval
        values = {k.split("/", 1)[1]: v for k, v in last.items() if k.startswith(f"{name}/")}
        if values:
            print(f"  {name}: " + "  ".join(f"{k} {v:.4g}" for k, v in values.items()))
    print(f"checkpoints: {output / 'checkpoints'}; loss curves: {output / 'losses.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
