"""``python -m mmssl list``: the registered modalities, objectives and data sources, with\nwhere each comes from."""

from __future__ import annotations

import argparse
import fnmatch
import sys
from typing import Sequence

from mmssl.registry import MODALITIES, OBJECTIVES, SOURCES


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmssl")
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="registered modalities, objectives and data sources")
    listing.add_argument("pattern", nargs="?", default="*", help="fnmatch filter on names")
    args = parser.parse_args(argv)
    if args.command == "list":
        for title, registry in (("modalities", MODALITIES), ("objectives", OBJECTIVES), ("sources", SOURCES)):
            print(f"{title}:")
            for entry in registry.entries():
                if entry.name in registry.list(args.pattern):
                    print(f"  {entry.name:<20} {entry.source}")
            for name, why in registry.problems().items():
                if fnmatch.fnmatch(name, args.pattern):
                    print(f"  {name:<20} BROKEN: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
