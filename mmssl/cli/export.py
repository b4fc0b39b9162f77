"""Export a run's encoders (docs/interop.md).

    mmssl-export runs/default --format state_dict --output-dir exports/default
    mmssl-export runs/default --format state_dict --output-dir exports/audio --modalities audio
    mmssl-export runs/clip --format open_clip --output-dir exports/clip      # open_clip's local-dir layout
    mmssl-export runs/default --format timm --output-dir exports/resnet      # timm.create_model("local-dir:...")
    mmssl-export runs/default --ema --output-dir exports/default_ema         # the moving average of the weights (train.ema)

state_dict: each encoder goes to DIR/<modality>/ (model.safetensors, mmssl_encoder.json);
open_clip: an image-text pair as DIR/open_clip_config.json + open_clip_model.safetensors,
which open_clip.create_model_and_transforms("local-dir:DIR") loads; timm: a timm image
tower as DIR/config.json + model.safetensors, which timm.create_model("local-dir:DIR",
pretrained=True) loads. Every export writes a model card DIR/README.md;
`modalities.<key>.pretrained: DIR` loads any of them back.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from mmssl.cli.errors import CommandError, reports_errors
from mmssl.interop.export import FORMATS, export
from mmssl.train.checkpoint import load_checkpoint

PROG = "mmssl-export"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run directory (its latest checkpoint) or a checkpoint directory")
    parser.add_argument("--format", choices=FORMATS, default="state_dict")
    parser.add_argument("--output-dir", "--output", dest="output", required=True, help="a new (or empty) directory")
    parser.add_argument("--modalities", nargs="+", default=None, help="the encoders to export (default: all)")
    parser.add_argument("--ema", action="store_true",
                        help="export the moving average of the weights (train.ema) the checkpoint holds, not its weights")
    return parser.parse_args(argv)


@reports_errors(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    loaded = load_checkpoint(args.run, ema=args.ema)
    try:
        written = export(loaded, args.output, args.format, args.modalities)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    print(f"exported {', '.join(written)} of {loaded.checkpoint} to {args.output} ({args.format})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
