"""Pretrain from a YAML config.

    mmssl-pretrain configs/default.yaml --output-dir runs/default
    mmssl-pretrain configs/tiny.yaml --output-dir runs/tiny train.steps=50 objectives.image_text.weight=0.5
    mmssl-pretrain configs/default.yaml --output-dir runs/default --resume      # latest checkpoint in runs/default
    torchrun --nproc_per_node=2 tools/pretrain.py configs/default.yaml --output-dir runs/ddp   # data parallel
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

import torch

from mmssl.train import distributed
from mmssl.cli.errors import reports_errors
from mmssl.config import load_config
from mmssl.train.trainer import LOSS_PLOT, Pretrainer

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
    in_group = distributed.init_from_env()  # under torchrun: join its process group
    try:
        trainer = Pretrainer(config, output)
        last = trainer.fit()
    finally:
        if in_group:
            torch.distributed.destroy_process_group()
    if not distributed.is_main_process_of_env():
        return 0
    # fit wrote train_summary.json (trainer.summary) and losses.png; this prints them
    print(f"trained {trainer.step} steps in {trainer.summary['seconds']:.0f} s; final loss {last.get('loss', float('nan')):.4f}")
    summary = trainer.summary  # run means (docs/training.md#throughput-and-mfu)
    if summary.get("mfu") is not None:
        print(f"  {summary['samples_per_s']:.1f} samples/s, {summary['tflops']:.3g} TFLOP/s, mfu {summary['mfu']:.3f} "
              f"(peak {summary['peak_tflops']:.3g} TFLOP/s a device: {summary['peak_tflops_source']})")
    for name in trainer.model.objectives:  # means over the last logging interval
        values = {k.split("/", 1)[1]: v for k, v in last.items() if k.startswith(f"{name}/")}
        if values:
            print(f"  {name}: " + "  ".join(f"{k} {v:.4g}" for k, v in values.items()))
    print(f"checkpoints: {output / 'checkpoints'}; loss curves: {output / LOSS_PLOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
