"""The image modality's renderer for the embedded world: a coloured shape on a noisy
background, with the world's count as dots."""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
from PIL import Image, ImageDraw

from modalities.base import COUNT, ConceptSpace, Renderer
from modalities.image.config import ImageConfig


class ImageRenderer(Renderer):
    """Renders concepts of ``SHAPES_SPACE`` (colour x shape, size, position, count)."""

    def __init__(self, config: ImageConfig) -> None:
        super().__init__(config)

    def concept_space(self) -> ConceptSpace:
        return SHAPES_SPACE

    def render(self, concept: Mapping[str, str], rng: np.random.Generator) -> Image.Image:
        return render_shape(concept, rng, self.config.image_size)


SHAPES_SPACE = ConceptSpace(
    class_attributes={
        "colour": ("red", "green", "blue", "yellow", "purple", "orange"),
        "shape": ("circle", "square", "triangle", "cross", "star", "diamond"),
    },
    nuisance_attributes={
        "size": ("small", "large"),
        "position": ("left", "right", "top", "bottom", "middle"),
    },
    shared_attributes=COUNT,
    caption_templates=(
        "a {colour} {shape}",
        "a {size} {colour} {shape}",
        "a {colour} {shape} {position}",
        "a picture of a {colour} {shape}",
        "a {size} {colour} {shape} {position}",
        "there is a {colour} {shape} {position}",
        "a {shape} that is {colour}",
        "a {size} {shape} coloured {colour}",
        "{colour} {shape}",
        "a {colour} {shape} with {count}",
        "{count} and a {colour} {shape}",
        "a {size} {colour} {shape} with {count}",
        "a picture of a {colour} {shape} and {count}",
    ),
    single_attribute_templates={
        "colour": ("a {colour} shape", "something {colour}", "a {size} {colour} thing", "a {colour} shape with {count}"),
        "shape": ("a {shape}", "a picture of a {shape}", "a {size} {shape}", "a {shape} with {count}"),
    },
    synonyms={
        "one": ("one dot",),
        "two": ("two dots",),
        "three": ("three dots",),
        "four": ("four dots",),
        "circle": ("circle", "disc"),
        "square": ("square", "box"),
        "cross": ("cross", "plus sign"),
        "diamond": ("diamond", "rhombus"),
        "large": ("large", "big"),
        "small": ("small", "little"),
        "left": ("on the left",),
        "right": ("on the right",),
        "top": ("at the top", "near the top"),
        "bottom": ("at the bottom", "near the bottom"),
        "middle": ("in the middle", "in the centre"),
    },
    prompt_templates=("a {}.", "a photo of a {}.", "a picture of a {}.", "an image of a {}."),
)

_RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 195),
    "orange": (245, 140, 25),
}
_OFFSETS = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1), "middle": (0, 0)}


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(math.cos(a), math.sin(a)) for a in np.linspace(math.pi / 4, 2 * math.pi + math.pi / 4, 4, endpoint=False)]
        pts = [(x * 0.95, y * 0.95) for x, y in pts]
    elif shape == "diamond":
        pts = [(0, -1.0), (0.65, 0), (0, 1.0), (-0.65, 0)]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in np.linspace(-math.pi / 2, 1.5 * math.pi, 3, endpoint=False)]
    elif shape == "star":
        pts = []
        for i in range(10):
            a = -math.pi / 2 + i * math.pi / 5
            rad = 1.0 if i % 2 == 0 else 0.42
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif shape == "cross":
        t = 0.33
        pts = [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t), (-t, -t)]
    else:
        raise ValueError(f"no polygon for shape '{shape}'")
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in pts]


def _draw_dots(draw: ImageDraw.ImageDraw, n: int, at_bottom: bool, canvas: int, rng: np.random.Generator) -> None:
    """``n`` light dots in a row along the top edge (the bottom one when the shape sits
    at the top), clear of the shape: the world's count, as an image shows it."""
    r, gap = canvas * 0.045, canvas * 0.13
    x = canvas * rng.uniform(0.08, 0.92 - 3 * 0.13 - 0.09)
    y = canvas * (0.92 if at_bottom else 0.08) + rng.normal(0, canvas * 0.005)
    grey = int(rng.integers(200, 256))
    for i in range(n):
        draw.ellipse([x + i * gap - r, y - r, x + i * gap + r, y + r], fill=(grey, grey, grey))


def render_shape(concept: Mapping[str, str], rng: np.random.Generator, size: int) -> Image.Image:
    """One coloured shape on a noisy background, with the concept's count of dots if it
    has one; every choice comes from ``rng``."""
    scale = 4  # draw large, downsample with antialiasing
    canvas = size * scale
    background = rng.integers(10, 90, size=3)
    img = Image.new("RGB", (canvas, canvas), tuple(int(c) for c in background))
    draw = ImageDraw.Draw(img)
    radius = canvas * (rng.uniform(0.15, 0.2) if concept["size"] == "small" else rng.uniform(0.24, 0.31))
    dx, dy = _OFFSETS[concept["position"]]
    shift = canvas * 0.5 - radius - canvas * 0.04
    cx = canvas / 2 + dx * shift * rng.uniform(0.7, 1.0) + rng.normal(0, canvas * 0.02)
    cy = canvas / 2 + dy * shift * rng.uniform(0.7, 1.0) + rng.normal(0, canvas * 0.02)
    colour = np.clip(np.array(_RGB[concept["colour"]]) + rng.integers(-20, 21, size=3), 0, 255)
    fill = tuple(int(c) for c in colour)
    shape = concept["shape"]
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, radius, rng.uniform(-0.25, 0.25)), fill=fill)
    if "count" in concept:
        _draw_dots(draw, COUNT["count"].index(concept["count"]) + 1, concept["position"] == "top", canvas, rng)
    img = img.resize((size, size), Image.Resampling.LANCZOS)
    pixels = np.asarray(img, dtype=np.float32) + rng.normal(0, 8.0, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
