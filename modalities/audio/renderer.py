"""The audio modality's renderer for the embedded world: tones of a contour, a timbre
and a register, played as the world's count of notes."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from modalities.audio.config import AudioConfig
from modalities.base import COUNT, ConceptSpace, Renderer


class AudioRenderer(Renderer):
    """Renders concepts of ``TONES_SPACE`` as (samples, sample rate)."""

    def __init__(self, config: AudioConfig) -> None:
        super().__init__(config)

    def concept_space(self) -> ConceptSpace:
        return TONES_SPACE

    def render(self, concept: Mapping[str, str], rng: np.random.Generator) -> tuple[np.ndarray, int]:
        return render_tone(concept, rng, self.config.sample_rate, self.config.clip_seconds), self.config.sample_rate


TONES_SPACE = ConceptSpace(
    class_attributes={
        "contour": ("steady", "rising", "falling", "warbling"),
        "timbre": ("sine", "square", "sawtooth", "noise"),
    },
    nuisance_attributes={"register": ("low", "middle", "high")},
    shared_attributes=COUNT,
    caption_templates=(
        "a {contour} {timbre} tone",
        "a {register} {contour} {timbre} tone",
        "the sound of a {contour} {timbre} tone",
        "a {timbre} tone that is {contour}",
        "{contour} {timbre}",
        "a {register} pitched {timbre} sound, {contour}",
        "a {contour} {timbre} tone in {count}",
        "{count} of a {contour} {timbre} tone",
        "a {register} {contour} {timbre} tone in {count}",
    ),
    single_attribute_templates={
        "contour": ("a {contour} sound", "a {register} {contour} tone", "something {contour}", "a {contour} sound in {count}"),
        "timbre": ("a {timbre} tone", "the sound of a {timbre} wave", "a {register} {timbre} sound", "{count} of a {timbre} tone"),
    },
    synonyms={
        "one": ("one note",),
        "two": ("two notes",),
        "three": ("three notes",),
        "four": ("four notes",),
        "sine": ("sine", "pure"),
        "square": ("square", "square wave"),
        "sawtooth": ("sawtooth", "buzzy"),
        "noise": ("noise", "noisy"),
        "rising": ("rising", "upward"),
        "falling": ("falling", "downward"),
        "warbling": ("warbling", "wobbling"),
        "steady": ("steady", "constant"),
        "middle": ("middle", "medium"),
    },
    prompt_templates=("a {} tone.", "the sound of a {} tone.", "a {} sound."),
)

# Registers and contour spans keep the third harmonic under 4 kHz, so square and
# sawtooth tones keep their timbre even at an 8 kHz sample rate.
_REGISTER_HZ = {"low": (100.0, 160.0), "middle": (200.0, 320.0), "high": (400.0, 640.0)}


def _frequency_track(contour: str, f0: float, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    span = rng.uniform(1.4, 1.8)
    progress = t / max(t[-1], 1e-9)
    if contour == "rising":
        return f0 * np.exp(np.log(span) * progress)
    if contour == "falling":
        return f0 * np.exp(np.log(span) * (1 - progress))
    if contour == "warbling":
        return f0 * (1 + rng.uniform(0.08, 0.14) * np.sin(2 * np.pi * rng.uniform(4, 8) * t + rng.uniform(0, 2 * np.pi)))
    return np.full_like(t, f0 * span**0.5)


def _notes_envelope(duration: int, notes: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """An envelope that plays the tone as ``notes`` equal notes parted by 80-120 ms of
    silence (the world's count, as a sound shows it), each with 10 ms fades. A gap
    covers most of a 0.1 s patch of the default audio encoder: with 40-60 ms gaps a
    probe read the count from the main job's audio embeddings at 0.68, with these 0.81.
    Clips too short for four notes with such gaps get narrower gaps."""
    gap = int(rng.uniform(0.08, 0.12) * sample_rate) if notes > 1 else 0
    shortest = int(0.02 * sample_rate)  # a short clip narrows the gaps so each note keeps 20 ms
    if notes > 1:
        gap = min(gap, (duration - notes * shortest) // (notes - 1))
    length = (duration - (notes - 1) * gap) // notes
    fade = min(int(0.01 * sample_rate), length // 2)
    note = np.ones(length, dtype=np.float32)
    note[:fade] = np.linspace(0, 1, fade)
    note[length - fade :] = np.linspace(1, 0, fade)
    envelope = np.zeros(duration, dtype=np.float32)
    for i in range(notes):
        envelope[i * (length + gap) : i * (length + gap) + length] = note
    return envelope


def render_tone(concept: Mapping[str, str], rng: np.random.Generator, sample_rate: int, seconds: float) -> np.ndarray:
    """A tone of the concept's contour, timbre and register, played as its count of
    notes, with random onset, duration, phase, level and background noise. Returns
    float32 [samples]."""
    total = int(round(sample_rate * seconds))
    duration = int(total * rng.uniform(0.6, 0.95))
    onset = int(rng.integers(0, total - duration + 1))
    t = np.arange(duration) / sample_rate
    low, high = _REGISTER_HZ[concept["register"]]
    freq = _frequency_track(concept["contour"], rng.uniform(low, high), t, rng)
    nyquist = sample_rate / 2
    timbre = concept["timbre"]
    cycles = 2 * np.pi * np.cumsum(freq) / sample_rate  # the phase: running integral of the track
    # Trigonometry runs in float32 (several times faster than float64 in numpy); the
    # phase's float32 rounding (under 1e-3 rad at a second of 1 kHz) is inaudible here.
    if timbre == "noise":
        # a band of partials around the track: pitched noise that follows the contour
        draws = rng.random((24, 2), dtype=np.float32)  # per partial: frequency ratio in [0.85, 1.15), phase offset
        ratio, offset = 0.85 + 0.3 * draws[:, :1], 2 * np.pi * draws[:, 1:]
        tone = np.sin(ratio * cycles.astype(np.float32) + offset).sum(0) / np.sqrt(24)
    else:
        top = {"sine": 1, "square": 15, "sawtooth": 15}[timbre]
        step = 2 if timbre == "square" else 1  # square waves have odd harmonics only
        # sin(k * phase) = Im(z**k) with z = exp(i * phase): one complex product per
        # harmonic instead of a sine over the whole clip; the phase is wrapped first so
        # float32 keeps its precision
        phase = cycles + rng.uniform(0, 2 * np.pi)
        phase = (phase - 2 * np.pi * np.floor(phase / (2 * np.pi))).astype(np.float32)
        z = (np.cos(phase) + 1j * np.sin(phase)).astype(np.complex64)
        power = np.ones(duration, dtype=np.complex64)
        tone = np.zeros(duration, dtype=np.float32)
        lowest, highest = freq.min(), freq.max()
        for k in range(1, top + 1):
            if k * lowest >= nyquist:
                break  # band-limited: no aliasing partials, and none above this one either
            power *= z
            if (k - 1) % step:
                continue
            if k * highest < nyquist:
                tone += power.imag / k
            else:
                tone += (k * freq < nyquist) * power.imag / k
    envelope = _notes_envelope(duration, COUNT["count"].index(concept["count"]) + 1 if "count" in concept else 1, sample_rate, rng)
    tone = tone / (np.abs(tone).max() + 1e-9) * envelope * rng.uniform(0.3, 0.9)
    out = rng.normal(0, rng.uniform(0.005, 0.03), total)
    out[onset : onset + duration] += tone
    return out.astype(np.float32)
