"""The sensor modality's options, read by its encoder, processor and renderer alike."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SensorConfig:
    channels: int = 3
    rate: int = 50  # samples a second
    length: int = 256  # samples a window (5.1 s at 50 Hz)
    patch: int = 16  # samples a patch
    width: int = 64
    depth: int = 2
    heads: int = 4
    scale_jitter: float = 0.2  # training: amplitude scaled by up to +-20%
    noise: float = 0.02  # training: added Gaussian noise (in g)
