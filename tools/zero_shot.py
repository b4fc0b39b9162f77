#!/usr/bin/env python
"""Zero-shot classification of a checkpoint (same as the `mmssl-zero-shot` console script).

    python tools/zero_shot.py --checkpoint runs/default --modality image
    python tools/zero_shot.py --checkpoint runs/default --modality image --data folder:DIR --output out.json
"""

import sys

from mmssl.cli.zero_shot import main

if __name__ == "__main__":
    sys.exit(main())
