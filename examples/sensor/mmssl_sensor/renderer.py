"""The sensor modality's renderer for the embedded world: four motions along or about
one of three axes (12 classes), gentle or strong, played in one to four bursts (the
world's count, shared with the image dots, the audio notes and the graph triangles)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from mmssl_sensor.config import SensorConfig
from modalities.base import COUNT, ConceptSpace, Renderer

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


class SensorRenderer(Renderer):
    """Renders concepts of ``SENSOR_SPACE`` as [length, channels] arrays."""

    def __init__(self, config: SensorConfig) -> None:
        super().__init__(config)

    def concept_space(self) -> ConceptSpace:
        return SENSOR_SPACE

    def render(self, concept: Mapping[str, str], rng: np.random.Generator) -> np.ndarray:
        return render_motion(concept, rng, self.config.rate, self.config.length)
