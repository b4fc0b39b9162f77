"""``data.source: recording``: windows cut from long sensor recordings.

Sensor corpora come as long recordings, not as one file a sample: this source reads
every ``.npy`` recording [time, channels] of ``path`` (a file, or a directory taken in
name order) and serves its windows of ``window`` samples every ``stride`` samples, as
raw items of an objective of one modality (forecasting). A recording shorter than one
window, or one that is not [time, channels], fails at start naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mmssl.config import ConfigError
from mmssl.data.stream import BuildContext, DataError, Source, SourceKind
from modalities.base import InvalidSample, Processor


class RecordingSource:
    """Windows of recordings by index: index i is window i of all recordings in order."""

    def __init__(self, paths: Sequence[Path], modality: Processor, window: int, stride: int) -> None:
        self.key = modality.key
        self.window, self.stride = window, stride
        self.recordings: list[tuple[Path, np.ndarray]] = []
        self.starts: list[tuple[int, int]] = []  # (recording, first sample) of each window
        for path in paths:
            try:
                signal = modality.load(str(path))  # checks shape and values, names the file
            except InvalidSample as exc:
                raise DataError(f"recording {path}: {exc.reason}") from None
            if signal.shape[0] < window:
                raise DataError(f"recording {path}: {signal.shape[0]} samples, fewer than one window of {window}")
            r = len(self.recordings)
            self.recordings.append((path, signal))
            self.starts += [(r, s) for s in range(0, signal.shape[0] - window + 1, stride)]

    def __len__(self) -> int:
        return len(self.starts)

    def get(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        r, start = self.starts[index]
        return {self.key: self.recordings[r][1][start : start + self.window]}

    def where(self, index: int) -> str:
        r, start = self.starts[index]
        return f"{self.recordings[r][0]} samples {start}-{start + self.window}"


@dataclass(frozen=True)
class RecordingOptions:
    path: str | None = None  # a .npy recording, or a directory of them
    window: int = 256  # samples a window
    stride: int = 128  # samples between window starts


class RecordingKind(SourceKind):
    """Windows of long ``.npy`` recordings for an objective of one modality."""

    Config = RecordingOptions

    @classmethod
    def check(cls, options: RecordingOptions, key: str, modalities: Sequence[str]) -> None:
        cls.require_path(options.path, key, " (a .npy recording or a directory of them)")
        cls.require_one_modality(key, modalities)
        for option in ("window", "stride"):
            if getattr(options, option) < 1:
                raise ConfigError(f"'{key}.{option}': must be >= 1, got {getattr(options, option)}")

    @classmethod
    def build(cls, options: RecordingOptions, objective: str, modalities: Mapping[str, Processor], context: BuildContext) -> Source:
        path = Path(options.path)
        paths = sorted(path.glob("*.npy")) if path.is_dir() else [path]
        if not paths or not all(p.is_file() for p in paths):
            raise DataError(f"objective '{objective}': no .npy recording at {path}")
        (modality,) = modalities.values()
        return RecordingSource(paths, modality, options.window, options.stride)
