"""Fingerprints of the weights a config trains to, for refactors that must not change
behaviour (the redesign of issue 35 checked each step this way).

    python -m tests.fingerprint before.json configs/tiny_joint.yaml configs/tiny_ssl.yaml
    ... change the code ...
    python -m tests.fingerprint after.json configs/tiny_joint.yaml configs/tiny_ssl.yaml --compare before.json

Each config trains as configured (its seed, its steps) on one torch thread; every tensor
of the final state dict is hashed (sha256 of its bytes), so "same" means bit for bit and
a differing tensor is named. Not a test: the bytes depend on the machine's kernels, so
compare fingerprints made on one machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

import mmssl


def fingerprint(config_path: str) -> dict[str, str]:
    """sha256 (16 hex digits) of every tensor of the weights ``config_path`` trains to."""
    torch.set_num_threads(1)
    config = mmssl.load_config(config_path, ["train.progress=false"])
    with tempfile.TemporaryDirectory() as run:
        trainer = mmssl.Pretrainer(config, output_dir=run)
        trainer.fit()
        state = trainer.model.state_dict()
    return {k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16] for k, v in state.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="JSON file of the fingerprints, by config then tensor")
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--compare", type=Path, help="earlier fingerprints: name every tensor that differs")
    args = parser.parse_args()
    prints = {path: fingerprint(path) for path in args.configs}
    args.output.write_text(json.dumps(prints, indent=1, sort_keys=True))
    if args.compare is None:
        return 0
    before = json.loads(args.compare.read_text())
    same = True
    for path, tensors in prints.items():
        old = before.get(path, {})
        differ = sorted(k for k in tensors.keys() | old.keys() if tensors.get(k) != old.get(k))
        same &= not differ
        print(f"{path}: {len(tensors)} tensors, " + ("bit-identical" if not differ else f"{len(differ)} differ: {differ[:8]}"))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
