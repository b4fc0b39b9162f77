"""Seeded generators: the one source of per-sample and per-step randomness.

Every random choice about a sample (which item, crop, mask, rendered variation) and
about a step (which objective runs) comes from a generator seeded by a tuple of
keys such as (seed, stream, epoch, index). Any process, rank or resumed run that
asks for the same keys gets the same draws.
"""

from __future__ import annotations

import zlib

import numpy as np


def stable_hash(text: str) -> int:
    """A process-independent 32-bit hash (Python's hash() is salted per process)."""
    return zlib.crc32(text.encode("utf-8"))


def sample_rng(*keys: int | str) -> np.random.Generator:
    """A generator seeded by a tuple of ints/strings."""
    return np.random.default_rng([k if isinstance(k, int) else stable_hash(k) for k in keys])
