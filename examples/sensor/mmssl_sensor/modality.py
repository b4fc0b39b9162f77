"""A 3-axis motion sensor (an accelerometer, as ImageBind's IMU) as an mmssl modality.

Raw item: a float array [time, channels] (a window of a recording, a ``.npy`` file, or
a ``.csv`` file with one column per channel). Sample: a dict with ``signal``
[channels, length], cropped or zero-padded to ``length`` samples, and ``valid`` [length]
(False on padding). Encoder: the window cut into patches of ``patch`` samples over all
channels, a linear patch embedding, a timm transformer, and the mean over the patches
that hold data; it hides patches under a ``patch_mask`` (masked or forecast modeling).

The embedded world: four motions along or about one of three axes (12 classes), gentle
or strong, played in one to four bursts (the world's count, shared with the image
dots, the audio notes and the graph triangles).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from einops import rearrange
from timm.models.vision_transformer import Block
from torch import nn

from modalities.base import COUNT, ConceptSpace, InvalidSample, Modality, ModalityOutput


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


SENSOR_SPACE = ConceptSpace(
    class_attributes={
        "motion": ("shaking", "swaying", "bouncing", "spinning"),
        "axis": ("x", "y", "z"),
    },
    nuisance_attributes={"intensity": ("gentle", "strong")},
    shared_attributes=COUNT,
    caption_templates=(
        "{motion} along the {axis} axis",
        "a {intensity} {motion} motion along {axis}",
        "a sensor {motion} along the {axis} axis",
        "{axis} axis {motion}",
        "{motion} along the {axis} axis in {count}",
        "a {intensity} {motion} along {axis}, {count}",
    ),
    single_attribute_templates={
        "motion": ("a {motion} motion", "something {motion}", "a {intensity} {motion} motion in {count}"),
        "axis": ("a motion along the {axis} axis", "movement on {axis}", "{count} along the {axis} axis"),
    },
    synonyms={
        "shaking": ("shaking", "vibrating"),
        "swaying": ("swaying", "rocking"),
        "bouncing": ("bouncing", "hopping"),
        "spinning": ("spinning", "rotating"),
        "one": ("one burst",),
        "two": ("two bursts",),
        "three": ("three bursts",),
        "four": ("four bursts",),
    },
    prompt_templates=("{} motion.", "a sensor recording of {} motion.", "a {} movement."),
)

# Hz of each motion's oscillation, and the amplitude (g) of each intensity.
_FREQUENCY = {"shaking": (7.0, 10.0), "swaying": (1.2, 1.6), "bouncing": (2.0, 3.0), "spinning": (1.5, 2.0)}
_AMPLITUDE = {"gentle": (0.35, 0.55), "strong": (0.9, 1.2)}


def bursts_envelope(length: int, bursts: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """[length] an envelope of ``bursts`` equal bursts parted by 0.25-0.35 s of rest,
    over 75-95% of the window from a random onset, with 0.05 s ramps."""
    active = int(length * rng.uniform(0.75, 0.95))
    gap = int(rng.uniform(0.25, 0.35) * rate) if bursts > 1 else 0
    burst = (active - (bursts - 1) * gap) // bursts
    ramp = min(int(0.05 * rate), burst // 2)
    shape = np.ones(burst, dtype=np.float32)
    shape[:ramp], shape[burst - ramp :] = np.linspace(0, 1, ramp), np.linspace(1, 0, ramp)
    onset = int(rng.integers(0, length - active + 1))
    envelope = np.zeros(length, dtype=np.float32)
    for i in range(bursts):
        start = onset + i * (burst + gap)
        envelope[start : start + burst] = shape
    return envelope


def render_motion(concept: Mapping[str, str], rng: np.random.Generator, rate: int = 50, length: int = 256) -> np.ndarray:
    """A window [length, 3] of the concept's motion: an oscillation on its axis (for
    spinning, in quadrature on the two others: rotation about the axis), some leakage
    into the other axes, played in its count of bursts, with sensor noise."""
    t = np.arange(length) / rate
    freq = rng.uniform(*_FREQUENCY[concept["motion"]])
    amplitude = rng.uniform(*_AMPLITUDE[concept.get("intensity", "strong")])
    phase = 2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi)
    axis = ("x", "y", "z").index(concept["axis"])
    signal = np.zeros((length, 3), dtype=np.float32)
    motion = concept["motion"]
    if motion == "spinning":
        others = [a for a in range(3) if a != axis]
        signal[:, others[0]], signal[:, others[1]] = np.sin(phase), np.cos(phase)
    else:
        wave = np.abs(np.sin(phase)) * 2 - 4 / np.pi if motion == "bouncing" else np.sin(phase)
        signal[:, axis] = wave
        for other in (a for a in range(3) if a != axis):
            signal[:, other] = rng.uniform(0.05, 0.2) * wave
    bursts = COUNT["count"].index(concept["count"]) + 1 if "count" in concept else 1
    signal *= (amplitude * bursts_envelope(length, bursts, rate, rng))[:, None]
    return signal + rng.normal(0, 0.03, signal.shape).astype(np.float32)


class SensorModality(Modality):
    """Motion sensor windows through a patch transformer."""

    Config = SensorConfig
    file_extensions = (".npy", ".csv")
    independent_samples = True

    def __init__(self, config: SensorConfig) -> None:
        super().__init__(config)
        if config.length % config.patch:
            raise ValueError(f"sensor length {config.length} is not a multiple of patch {config.patch}")
        self.embed_dim = config.width
        self.grid = (1, config.length // config.patch)  # one row of patches over time
        self.patch_dim = config.channels * config.patch
        self.patch_embed = nn.Linear(self.patch_dim, config.width)
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid[1], config.width) * 0.02)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.blocks = nn.Sequential(*[Block(config.width, config.heads) for _ in range(config.depth)])
        self.norm = nn.LayerNorm(config.width)

    # --- data -------------------------------------------------------------------
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

    # --- model ------------------------------------------------------------------
    def patchify(self, signal: torch.Tensor) -> torch.Tensor:
        """[B, C, L] -> [B, N, C * patch], patches in time order."""
        return rearrange(signal, "b c (n p) -> b n (c p)", p=self.config.patch)

    def patch_targets(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """What masked modeling predicts: the signal's patches, [B, N, C * patch]."""
        return self.patchify(batch["signal"])

    def patch_padding_mask(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """[B, N] True for patches that lie wholly in padding."""
        return ~rearrange(batch["valid"], "b (n p) -> b n p", p=self.config.patch).any(-1)

    def forward(self, batch: Mapping[str, torch.Tensor], patch_mask: torch.Tensor | None = None) -> ModalityOutput:
        x = self.patch_embed(self.patchify(batch["signal"]))
        if patch_mask is not None:
            x = torch.where(patch_mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        tokens = self.norm(self.blocks(x + self.pos_embed))
        padding = self.patch_padding_mask(batch)
        keep = (~padding).unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * keep).sum(1) / keep.sum(1).clamp(min=1)
        return ModalityOutput(pooled=pooled, tokens=tokens, padding_mask=padding)

    # --- embedded world -------------------------------------------------------------
    def concept_space(self) -> ConceptSpace:
        return SENSOR_SPACE

    def render(self, concept: Mapping[str, str], rng: np.random.Generator) -> np.ndarray:
        return render_motion(concept, rng, self.config.rate, self.config.length)
