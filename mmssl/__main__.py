"""``python -m mmssl list``: the registered modalities, objectives, data sources (those
that also give evaluation sets marked) and evaluation tasks, with where each comes from; ``python -m mmssl new-plugin NAME``: a plugin package skeleton."""

from __future__ import annotations

import argparse
import fnmatch
import sys
from typing import Sequence

from mmssl.cli.errors import reports_errors
from mmssl.data.eval_sets import eval_kinds
from mmssl.registry import EVAL_TASKS, MODALITIES, OBJECTIVES, SOURCES
from mmssl.scaffold import write_plugin

PROG = "python -m mmssl"


@reports_errors(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG)
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="registered modalities, objectives, data sources and evaluation tasks")
    listing.add_argument("pattern", nargs="?", default="*", help="fnmatch filter on names")
    new = sub.add_parser("new-plugin", help="write a plugin package skeleton (a modality, an objective, a config, tests)")
    new.add_argument("name", help="the modality's name, a lower-case identifier (e.g. lidar)")
    new.add_argument("--output", default=".", help="folder to write mmssl-NAME/ into (default: here)")
    args = parser.parse_args(argv)
    if args.command == "new-plugin":
        root = write_plugin(args.name, args.output)
        print(f"wrote {root}: pip install -e {root} && pytest {root / 'tests'}")
        return 0
    if args.command == "list":
        registries = (("modalities", MODALITIES), ("objectives", OBJECTIVES), ("sources", SOURCES),
                      ("evaluation tasks", EVAL_TASKS))
        evaluates = set(eval_kinds())  # source kinds that also read labelled sets for --data KIND:PATH
        for title, registry in registries:
            print(f"{title}:")
            for entry in registry.entries():
                if entry.name in registry.list(args.pattern):
                    mark = "  [--data]" if registry is SOURCES and entry.name in evaluates else ""
                    print(f"  {entry.name:<20} {entry.source}{mark}")
            for name, why in registry.problems().items():
                if fnmatch.fnmatch(name, args.pattern):
                    print(f"  {name:<20} BROKEN: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
