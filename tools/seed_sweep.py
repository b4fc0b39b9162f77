#!/usr/bin/env python
"""Pretrain a config under several model seeds and tabulate zero-shot figures (same as
the `mmssl-seed-sweep` console script).

    python tools/seed_sweep.py configs/audio.yaml --seeds 0 1 2 --output-dir runs/sweep_audio
"""

import sys

from mmssl.cli.seed_sweep import main

if __name__ == "__main__":
    sys.exit(main())
