#!/usr/bin/env python
"""Convert a CSV, a folder or a graph JSONL file to WebDataset shards (same as the
`mmssl-make-shards` console script).

    python tools/make_shards.py /data/pairs.csv --output /data/shards --shard-size 1000
"""

import sys

from mmssl.cli.make_shards import main

if __name__ == "__main__":
    sys.exit(main())
