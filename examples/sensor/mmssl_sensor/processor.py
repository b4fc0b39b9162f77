"""The sensor modality's processor. Raw item: a float array [time, channels] (a window
of a recording, a ``.npy`` file, or a ``.csv`` file with one column per channel).
Sample: a dict with ``signal`` [channels, length], cropped or zero-padded to ``length``
samples, and ``valid`` [length] (False on padding)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from mmssl_sensor.config import SensorConfig
from modalities.base import InvalidSample, Processor


class SensorProcessor(Processor):
    """Reads, checks, crops and batches motion sensor windows."""

    file_extensions = (".npy", ".csv")

    def __init__(self, config: SensorConfig) -> None:
        super().__init__(config)

    def load(self, path: str) -> np.ndarray:
        suffix = Path(path).suffix.lower()
        try:
            if suffix == ".npy":
                return self._check(np.load(path, allow_pickle=False), path)
            if suffix == ".csv":
                return self._check(np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, dtype=np.float32), path)
        except FileNotFoundError:
            raise InvalidSample("sensor file not found", source=path) from None
        except (ValueError, OSError) as exc:
            raise InvalidSample(f"unreadable sensor file: {exc}", source=path) from None
        raise InvalidSample(f"not a sensor file (.npy or .csv): {suffix or 'no suffix'}", source=path)

    def load_bytes(self, data: bytes, name: str) -> np.ndarray:
        try:
            if name.lower().endswith(".npy"):
                return self._check(np.load(io.BytesIO(data), allow_pickle=False), name)
            return self._check(np.loadtxt(io.StringIO(data.decode("utf-8")), delimiter=",", skiprows=1, ndmin=2), name)
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            raise InvalidSample(f"unreadable sensor data: {exc}", source=name) from None

    def _check(self, array: Any, where: str | None) -> np.ndarray:
        array = np.asarray(array)
        if array.ndim != 2 or array.shape[1] != self.config.channels:
            raise InvalidSample(
                f"sensor data must be [time, {self.config.channels}] (one column per channel), got shape {list(array.shape)}",
                source=where,
            )
        if array.shape[0] == 0:
            raise InvalidSample("sensor data has no samples", source=where)
        if not np.isfinite(array).all():
            raise InvalidSample("sensor data holds NaN or infinite values", source=where)
        return array.astype(np.float32, copy=False)

    def transform(self, raw: Any, rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        """A window: a random crop (training) or the centre (eval) of ``length`` samples,
        zero-padded if shorter; training adds amplitude jitter and noise."""
        if isinstance(raw, (str, Path)):
            raw = self.load(str(raw))
        signal = self._check(raw, None)
        c = self.config
        start = 0
        if signal.shape[0] > c.length:
            spare = signal.shape[0] - c.length
            start = int(rng.integers(spare + 1)) if rng is not None else spare // 2
        window = signal[start : start + c.length]
        if rng is not None:
            window = window * rng.uniform(1 - c.scale_jitter, 1 + c.scale_jitter) + rng.normal(0, c.noise, window.shape)
        out = np.zeros((c.channels, c.length), dtype=np.float32)
        out[:, : window.shape[0]] = window.T  # a new array: the raw item is never modified
        valid = np.zeros(c.length, dtype=bool)
        valid[: window.shape[0]] = True
        return {"signal": torch.from_numpy(out), "valid": torch.from_numpy(valid)}

    def collate(self, samples: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {key: torch.stack([s[key] for s in samples]) for key in ("signal", "valid")}
