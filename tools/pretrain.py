#!/usr/bin/env python
"""Pretrain from a YAML config (same as the `mmssl-pretrain` console script).

    python tools/pretrain.py configs/default.yaml --output-dir runs/default
    python tools/pretrain.py configs/tiny.yaml --output-dir runs/tiny train.steps=50
    python tools/pretrain.py configs/default.yaml --output-dir runs/default --resume
"""

import sys

from mmssl.cli.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
