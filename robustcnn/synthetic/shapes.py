"""The classes of the synthetic benchmark: ten shapes, drawn as anti-aliased masks.

Shape is the label and the one cue that every shift keeps, so the masks must stay distinguishable under any
rotation: a square and a diamond would be the same class once rotated, hence no diamond. Masks are drawn at four
times the output size with PIL and box-filtered down, which gives smooth edges without any randomness (the same
parameters always give the same bytes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ['SHAPE_NAMES', 'ShapePlacement', 'render_mask', 'render_outline']

SHAPE_NAMES: tuple[str, ...] = (
    'arrow', 'circle', 'crescent', 'cross', 'heart', 'hexagon', 'ring', 'square', 'star', 'triangle',
)
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapePlacement:
    """Where and how big a shape is drawn: centre and radius in pixels, rotation in degrees."""

    shape: str
    center_x: float
    center_y: float
    radius: float
    rotation: float


def _regular_polygon(sides: int, phase: float = -math.pi / 2) -> np.ndarray:
    angles = phase + 2 * math.pi * np.arange(sides) / sides
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = -math.pi / 2 + math.pi * np.arange(2 * points) / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _heart() -> np.ndarray:
    """The classic parametric heart, scaled into the unit disc with its point downwards."""
    angles = np.linspace(0, 2 * math.pi, 96, endpoint=False)
    x = 16 * np.sin(angles) ** 3
    y = -(13 * np.cos(angles) - 5 * np.cos(2 * angles) - 2 * np.cos(3 * angles) - np.cos(4 * angles))
    points = np.stack([x, y], axis=1)
    points -= (points.min(axis=0) + points.max(axis=0)) / 2
    return points / np.linalg.norm(points, axis=1).max()


# Unit-radius outlines of the polygonal classes (y grows downwards, as in images).
_POLYGONS: dict[str, np.ndarray] = {
    'triangle': _regular_polygon(3),
    'square': _regular_polygon(4, phase=-math.pi / 4),
    'hexagon': _regular_polygon(6),
    'star': _star(),
    'cross': np.array([(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1),
                       (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)], dtype=np.float64),
    'arrow': np.array([(0, -1), (0.75, -0.2), (0.28, -0.2), (0.28, 1), (-0.28, 1), (-0.28, -0.2), (-0.75, -0.2)],
                      dtype=np.float64),
    'heart': _heart(),
}


def _transform(points: np.ndarray, placement: ShapePlacement, scale: float) -> list[tuple[float, float]]:
    angle = math.radians(placement.rotation)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    moved = points @ rotation.T * placement.radius + np.array([placement.center_x, placement.center_y])
    return [(float(x) * scale, float(y) * scale) for x, y in moved]


def _disc(draw: ImageDraw.ImageDraw, center: tuple[float, float], radius: float, fill: int) -> None:
    x, y = center
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)


def _draw_high_resolution(placement: ShapePlacement, size: int) -> Image.Image:
    """The shape as a binary 'L' image at ``_SUPERSAMPLE`` times the output size."""
    scale = _SUPERSAMPLE
    canvas = Image.new('L', (size * scale, size * scale), 0)
    draw = ImageDraw.Draw(canvas)
    center = (placement.center_x * scale, placement.center_y * scale)
    radius = placement.radius * scale
    if placement.shape in _POLYGONS:
        draw.polygon(_transform(_POLYGONS[placement.shape], placement, scale), fill=255)
    elif placement.shape == 'circle':
        _disc(draw, center, radius, 255)
    elif placement.shape == 'ring':
        _disc(draw, center, radius, 255)
        _disc(draw, center, radius * 0.55, 0)
    elif placement.shape == 'crescent':
        angle = math.radians(placement.rotation)
        _disc(draw, center, radius, 255)
        offset = (center[0] + 0.45 * radius * math.cos(angle), center[1] + 0.45 * radius * math.sin(angle))
        _disc(draw, offset, radius * 0.85, 0)
    else:
        raise ValueError(f'unknown shape {placement.shape!r}; expected one of {", ".join(SHAPE_NAMES)}')
    return canvas


def _downsample(canvas: Image.Image, size: int) -> np.ndarray:
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0


def render_mask(placement: ShapePlacement, size: int) -> np.ndarray:
    """Coverage of each pixel by the shape, float32 in [0, 1], shape ``(size, size)``."""
    return _downsample(_draw_high_resolution(placement, size), size)


def render_outline(placement: ShapePlacement, size: int, width: float = 1.5) -> np.ndarray:
    """Coverage of a line of about ``width`` pixels along the shape's boundary (for sketches and cartoons)."""
    canvas = _draw_high_resolution(placement, size)
    filter_size = 2 * max(1, round(width * _SUPERSAMPLE / 2)) + 1
    grown = canvas.filter(ImageFilter.MaxFilter(filter_size))
    shrunk = canvas.filter(ImageFilter.MinFilter(filter_size))
    line = np.asarray(grown, dtype=np.int16) - np.asarray(shrunk, dtype=np.int16)
    return _downsample(Image.fromarray(line.clip(0, 255).astype(np.uint8), mode='L'), size)
