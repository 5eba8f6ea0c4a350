"""Ten procedural textures, one "typical" texture per class.

Textures are the tempting cue of the benchmark: in the training and clean validation images a shape is filled
with its class's typical texture most of the time (``texture_correlation``, 0.8 by default), so a texture detector
alone scores about 80% on clean validation, and nothing on the stylized shift, where every shape wears another
class's texture. Only the shape is right every time. Colours are drawn independently of the class, so colour is
never a cue.

Every texture is a pure function of its parameters and a NumPy generator, values in [0, 1] mixed between two
colours; the pattern scale is chosen so that each family stays recognizable inside a 64 px image.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

__all__ = ['TEXTURE_NAMES', 'texture_pattern', 'colorize', 'smooth_noise']

TEXTURE_NAMES: tuple[str, ...] = (
    'stripes', 'checkerboard', 'dots', 'grid', 'waves', 'blobs', 'rings', 'zigzag', 'crosshatch', 'speckle',
)


def _coordinates(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated by a random angle and shifted by a random phase."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    angle = rng.uniform(0, math.pi)
    offset_u, offset_v = rng.uniform(0, 64, size=2)
    u = x * math.cos(angle) + y * math.sin(angle) + offset_u
    v = -x * math.sin(angle) + y * math.cos(angle) + offset_v
    return u, v


def _soft_step(value: np.ndarray, sharpness: float = 4.0) -> np.ndarray:
    """A smoothed threshold at 0 (anti-aliased edges instead of jagged ones)."""
    return np.clip(0.5 + sharpness * value, 0.0, 1.0)


def smooth_noise(size: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Gaussian noise low-passed in the Fourier domain (features about ``scale`` px), normalized to [0, 1]."""
    noise = rng.standard_normal((size, size))
    frequencies = np.fft.fftfreq(size)
    radius_squared = frequencies[:, None] ** 2 + frequencies[None, :] ** 2
    filtered = np.real(np.fft.ifft2(np.fft.fft2(noise) * np.exp(-radius_squared * (math.pi * scale) ** 2 / 2)))
    low, high = filtered.min(), filtered.max()
    return (filtered - low) / (high - low + 1e-12)


def _stripes(size: int, rng: np.random.Generator) -> np.ndarray:
    u, _ = _coordinates(size, rng)
    period = rng.uniform(5, 8)
    return _soft_step(np.sin(2 * math.pi * u / period))


def _checkerboard(size: int, rng: np.random.Generator) -> np.ndarray:
    u, v = _coordinates(size, rng)
    period = rng.uniform(6, 9)
    return _soft_step(np.sin(math.pi * u / period * 2) * np.sin(math.pi * v / period * 2), 6.0)


def _dots(size: int, rng: np.random.Generator) -> np.ndarray:
    u, v = _coordinates(size, rng)
    period = rng.uniform(6, 8)
    radius = period * rng.uniform(0.22, 0.3)
    distance = np.hypot((u % period) - period / 2, (v % period) - period / 2)
    return _soft_step(radius - distance, 1.0)


def _grid(size: int, rng: np.random.Generator) -> np.ndarray:
    u, v = _coordinates(size, rng)
    period = rng.uniform(6, 9)
    distance = np.minimum(np.abs((u % period) - period / 2), np.abs((v % period) - period / 2))
    return _soft_step(0.8 - distance, 1.0)


def _waves(size: int, rng: np.random.Generator) -> np.ndarray:
    u, v = _coordinates(size, rng)
    period, amplitude, wavelength = rng.uniform(6, 9), rng.uniform(2, 3.5), rng.uniform(12, 20)
    return _soft_step(np.sin(2 * math.pi * (u + amplitude * np.sin(2 * math.pi * v / wavelength)) / period), 2.0)


def _blobs(size: int, rng: np.random.Generator) -> np.ndarray:
    return _soft_step(smooth_noise(size, rng, rng.uniform(1.8, 2.6)) - 0.5, 8.0)


def _rings(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    center_x, center_y = rng.uniform(-size / 2, 1.5 * size, size=2)
    period = rng.uniform(5, 8)
    return _soft_step(np.sin(2 * math.pi * np.hypot(x - center_x, y - center_y) / period))


def _zigzag(size: int, rng: np.random.Generator) -> np.ndarray:
    u, v = _coordinates(size, rng)
    period, zig = rng.uniform(6, 9), rng.uniform(6, 10)
    triangle = np.abs((v % zig) - zig / 2)
    return _soft_step(np.sin(2 * math.pi * (u + triangle) / period))


def _crosshatch(size: int, rng: np.random.Generator) -> np.ndarray:
    u, v = _coordinates(size, rng)
    period = rng.uniform(5, 7)
    first = np.abs(((u + v) / math.sqrt(2)) % period - period / 2)
    second = np.abs(((u - v) / math.sqrt(2)) % period - period / 2)
    return _soft_step(0.7 - np.minimum(first, second), 1.0)


def _speckle(size: int, rng: np.random.Generator) -> np.ndarray:
    density = rng.uniform(0.3, 0.45)
    return (rng.random((size, size)) < density).astype(np.float64)


_PATTERNS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    'stripes': _stripes, 'checkerboard': _checkerboard, 'dots': _dots, 'grid': _grid, 'waves': _waves,
    'blobs': _blobs, 'rings': _rings, 'zigzag': _zigzag, 'crosshatch': _crosshatch, 'speckle': _speckle,
}


def texture_pattern(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One random instance of texture family ``name``: float array ``(size, size)`` in [0, 1]."""
    try:
        pattern = _PATTERNS[name]
    except KeyError:
        raise ValueError(f'unknown texture {name!r}; expected one of {", ".join(TEXTURE_NAMES)}') from None
    return pattern(size, rng)


def colorize(pattern: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Mix two RGB colours (0..255) by a [0, 1] pattern: float array ``(size, size, 3)``."""
    return first[None, None, :] * (1.0 - pattern[..., None]) + second[None, None, :] * pattern[..., None]
