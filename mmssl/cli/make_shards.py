"""Convert a CSV of pairs, a folder of files or a graph JSONL file to WebDataset shards.

    mmssl-make-shards /data/pairs.csv --output /data/shards --shard-size 1000      # filepath + title columns
    mmssl-make-shards /data/pairs.csv --output /data/shards --file-column audio --caption-column caption
    mmssl-make-shards /data/unlabeled_audio --output /data/audio_shards
    mmssl-make-shards /data/graphs.jsonl --output /data/graph_shards

Samples keep the input order, files their original bytes. Train from the result with
``data: {source: shards, path: /data/shards}`` (or a brace pattern,
``/data/shards/shard-{000000..000009}.tar``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from mmssl.cli.errors import reports_errors
from mmssl.data.make_shards import (
    csv_samples,
    folder_samples,
    graph_samples,
    write_shards,
)
from mmssl.data.stream import DataError

PROG = "mmssl-make-shards"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input", help="a .csv of pairs, a folder of files, or a .jsonl graph file")
    parser.add_argument("--output-dir", "--output", dest="output", required=True,
                        help="folder for shard-000000.tar ... (--output is its old spelling)")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    parser.add_argument("--file-column", action="append", default=None, help="CSV column of file paths (default: filepath)")
    parser.add_argument("--caption-column", default="title", help="CSV column of captions; '' for none (default: title)")
    parser.add_argument("--separator", default=",", help="CSV separator")
    return parser.parse_args(argv)


@reports_errors(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    source = Path(args.input)
    if source.is_dir():
        samples, kind = folder_samples(source), "folder"
    elif source.suffix.lower() == ".csv":
        samples = csv_samples(source, args.file_column or ["filepath"], args.caption_column or None, args.separator)
        kind = "CSV"
    elif source.suffix.lower() in (".jsonl", ".ndjson"):
        samples, kind = graph_samples(source), "graph file"
    elif not source.exists():
        raise DataError(f"input not found: {source}")
    else:
        raise DataError(f"{source}: expected a .csv, a .jsonl graph file or a folder")
    try:
        shards, skipped = write_shards(samples, args.output, args.shard_size)
    except (OSError, UnicodeDecodeError) as exc:  # an input or the output folder unreadable: all this command does
        raise DataError(f"{args.input} -> {args.output}: {exc}") from exc
    print(f"{kind} {source} -> {len(shards)} shards in {args.output}" + (f"; skipped {skipped} unreadable inputs" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
