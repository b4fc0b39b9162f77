#!/usr/bin/env python
"""Fine-tune a pretrained encoder on labelled data (same as the `mmssl-finetune` console script).

    python tools/finetune.py runs/default image --output-dir runs/ft_image --mode linear --per-class 10
    python tools/finetune.py runs/default audio --output-dir runs/ft_audio --mode staged --from-scratch
    python tools/finetune.py runs/default image --output-dir runs/st_image --per-class 5 --unlabeled world --rounds 3 --threshold 0.8
"""

import sys

from mmssl.cli.finetune import main

if __name__ == "__main__":
    sys.exit(main())
