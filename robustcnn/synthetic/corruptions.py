"""The 15 ImageNet-C corruptions (Hendrycks & Dietterich, ICLR 2019), re-made for 64 px images with NumPy and PIL.

Names and categories are ImageNet-C's, so the synthetic tree is read by the same ImageNet-C code. Parameters follow
the original ones, with spatial sizes (blur radii, displacements) scaled to 64 px. Where the original needs data we
cannot ship (frost's photographs) or code we do not depend on (Wand's motion blur, scikit-image), the effect is
rebuilt from NumPy: frost is a procedural ice pattern, snow a field of motion-blurred flakes, fog a fractal haze.

Two properties the tests rely on:
- determinism: every function is pure given its generator, with no threads or platform-dependent kernels;
- monotone severity: the random field of a corruption is drawn once per image (the generator does not depend on the
  severity) and only its strength grows with the severity, so severity 5 is further from the clean image than 1.
"""
from __future__ import annotations

import io
import math
from typing import Callable

import numpy as np
from PIL import Image

from .textures import smooth_noise

__all__ = ['CORRUPTIONS', 'corrupt']

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def _convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """2-D convolution of every channel with ``kernel`` (odd size), reflecting at the borders."""
    kernel = kernel / kernel.sum()
    half_height, half_width = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = np.pad(image, ((half_height, half_height), (half_width, half_width), (0, 0)), mode='reflect')
    height, width = image.shape[:2]
    result = np.zeros_like(image)
    for row, column in zip(*np.nonzero(kernel)):
        result += kernel[row, column] * padded[row:row + height, column:column + width]
    return result


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, math.ceil(3 * sigma))
    axis = np.arange(-radius, radius + 1)
    values = np.exp(-axis ** 2 / (2 * sigma ** 2))
    return np.outer(values, values)


def _disk_kernel(radius: float) -> np.ndarray:
    size = math.ceil(radius)
    axis = np.arange(-size, size + 1)
    distance = np.hypot(axis[:, None], axis[None, :])
    return np.clip(radius + 0.5 - distance, 0.0, 1.0)


def _motion_kernel(length: float, angle: float) -> np.ndarray:
    """A line of ``length`` pixels at ``angle``, sampled finely so short lines stay smooth."""
    size = 2 * math.ceil(length / 2) + 1
    kernel = np.zeros((size, size))
    center = size // 2
    for step in np.linspace(-length / 2, length / 2, 64):
        x, y = center + step * math.cos(angle), center + step * math.sin(angle)
        column, row = int(round(x)), int(round(y))
        if 0 <= row < size and 0 <= column < size:
            kernel[row, column] += 1.0
    return kernel


def _bilinear_sample(image: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``image`` read at fractional positions, clamped at the borders."""
    height, width = image.shape[:2]
    rows = np.clip(rows, 0, height - 1)
    columns = np.clip(columns, 0, width - 1)
    top, left = np.floor(rows).astype(int), np.floor(columns).astype(int)
    bottom, right = np.minimum(top + 1, height - 1), np.minimum(left + 1, width - 1)
    weight_y, weight_x = (rows - top)[..., None], (columns - left)[..., None]
    upper = image[top, left] * (1 - weight_x) + image[top, right] * weight_x
    lower = image[bottom, left] * (1 - weight_x) + image[bottom, right] * weight_x
    return upper * (1 - weight_y) + lower * weight_y


def _fractal_noise(size: int, rng: np.random.Generator, decay: float) -> np.ndarray:
    """Sum of octaves of smooth noise, coarse to fine, each weaker by ``decay`` (the plasma fractal's look)."""
    total = np.zeros((size, size))
    amplitude = 1.0
    for scale in (16.0, 8.0, 4.0, 2.0, 1.0):
        total += amplitude * smooth_noise(size, rng, scale)
        amplitude /= decay
    return (total - total.min()) / (total.max() - total.min() + 1e-12)


# ---------------------------------------------------------------------------------------------------- noise

def gaussian_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    scale = (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    return image + rng.standard_normal(image.shape) * scale


def shot_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Poisson photon noise; the same uniform draws feed the inverse CDF at every severity (monotone)."""
    photons = (60, 25, 12, 5, 3)[severity - 1]
    # a normal approximation to Poisson(image * photons) / photons, driven by one fixed normal field
    return image + rng.standard_normal(image.shape) * np.sqrt(np.maximum(image, 1e-3) / photons)


def impulse_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    amount = (0.03, 0.06, 0.09, 0.17, 0.27)[severity - 1]
    draws = rng.random(image.shape)
    salt = rng.random(image.shape) < 0.5
    result = image.copy()
    hit = draws < amount
    result[hit] = salt[hit].astype(image.dtype)
    return result


# ---------------------------------------------------------------------------------------------------- blur

def defocus_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    radius = (0.9, 1.3, 1.8, 2.3, 3.0)[severity - 1]
    blurred = _convolve(image, _disk_kernel(radius))
    return _convolve(blurred, _gaussian_kernel(0.5))


def glass_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blur, then let every pixel take the value of a random neighbour (frosted glass), then blur again."""
    sigma, max_delta, iterations = ((0.35, 1, 1), (0.45, 1, 2), (0.5, 2, 2), (0.6, 2, 3), (0.75, 3, 3))[severity - 1]
    height, width = image.shape[:2]
    result = _convolve(image, _gaussian_kernel(sigma))
    rows, columns = np.mgrid[0:height, 0:width]
    offsets = rng.uniform(-1, 1, size=(3, 2, height, width))
    for iteration in range(iterations):
        delta = np.rint(offsets[iteration % 3] * max_delta).astype(int)
        result = result[np.clip(rows + delta[0], 0, height - 1), np.clip(columns + delta[1], 0, width - 1)]
    return _convolve(result, _gaussian_kernel(sigma))


def motion_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    length = (2.5, 4.0, 5.5, 7.0, 9.0)[severity - 1]
    return _convolve(image, _motion_kernel(length, rng.uniform(-math.pi / 4, math.pi / 4)))


def zoom_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """The mean of the image zoomed in by growing factors around its centre."""
    top = (1.11, 1.16, 1.21, 1.26, 1.31)[severity - 1]
    size = image.shape[0]
    source = Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
    total = image.copy()
    factors = np.linspace(1.0, top, 6)[1:]
    for factor in factors:
        zoomed_size = int(round(size * factor))
        zoomed = source.resize((zoomed_size, zoomed_size), Image.Resampling.BILINEAR)
        start = (zoomed_size - size) // 2
        total += np.asarray(zoomed, dtype=np.float32)[start:start + size, start:start + size] / 255.0
    return total / (len(factors) + 1)


# ---------------------------------------------------------------------------------------------------- weather

def snow(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Motion-blurred flakes over a greyed, brightened image (ImageNet-C's recipe without Wand)."""
    density, flake_strength, grey = ((0.04, 0.6, 0.2), (0.07, 0.7, 0.3), (0.10, 0.8, 0.4), (0.14, 0.9, 0.5),
                                     (0.18, 1.0, 0.6))[severity - 1]
    size = image.shape[0]
    draws = rng.random((size, size))
    flakes = (draws < density).astype(np.float64)[..., None]
    flakes = _convolve(flakes, _motion_kernel(4.0, rng.uniform(0.8, 1.4)))
    flakes = np.clip(flakes * 3.0, 0, 1)
    luminance = image.mean(axis=2, keepdims=True)
    hazy = (1 - grey) * image + grey * np.maximum(image, luminance * 1.5 + 0.5)
    return hazy + flake_strength * flakes * (1 - hazy)


def frost(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A procedural ice layer (bright crystalline streaks, bluish) blended in, as ImageNet-C blends frost photos."""
    image_weight, frost_weight = ((0.85, 0.35), (0.75, 0.5), (0.65, 0.6), (0.6, 0.7), (0.55, 0.8))[severity - 1]
    size = image.shape[0]
    base = _fractal_noise(size, rng, 1.6)
    streaks = np.abs(np.sin(2 * math.pi * _fractal_noise(size, rng, 1.3) * 3.0))
    ice = np.clip(0.6 * base + 0.6 * (1 - streaks) ** 4, 0, 1)
    tinted = ice[..., None] * np.array([0.85, 0.93, 1.0])
    return image_weight * image + frost_weight * tinted


def fog(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """ImageNet-C's fog: add a fractal haze, then rescale so the brightest value is kept.

    ImageNet-C also roughens the haze with the severity; here the haze of an image is fixed and only its strength
    grows, so every pixel moves monotonically towards the haze (distance ``s / (top + s)`` of the way).
    """
    strength = (0.8, 1.2, 1.7, 2.3, 3.0)[severity - 1]
    top = image.max()
    haze = _fractal_noise(image.shape[0], rng, 1.6)[..., None]
    return (image + strength * haze) * top / (top + strength)


def brightness(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """HSV value channel raised by a constant (hue and saturation kept), as ImageNet-C does."""
    shift = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    value = image.max(axis=2, keepdims=True)
    raised = np.minimum(value + shift, 1.0)
    scaled = image * (raised / np.maximum(value, 1e-6))
    return np.where(value > 1e-6, scaled, raised)


# ---------------------------------------------------------------------------------------------------- digital

def contrast(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    factor = (0.4, 0.3, 0.2, 0.1, 0.05)[severity - 1]
    mean = image.mean(axis=(0, 1), keepdims=True)
    return (image - mean) * factor + mean


def elastic_transform(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random displacement fields (a few pixels at 64 px), bilinear resampling."""
    magnitude = (0.8, 1.3, 1.8, 2.4, 3.0)[severity - 1]
    size = image.shape[0]
    fields = [smooth_noise(size, rng, 4.0) * 2 - 1 for _ in range(2)]
    rows, columns = np.mgrid[0:size, 0:size].astype(np.float64)
    return _bilinear_sample(image, rows + magnitude * fields[0], columns + magnitude * fields[1])


def pixelate(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    fraction = (0.6, 0.5, 0.4, 0.3, 0.25)[severity - 1]
    size = image.shape[0]
    source = Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
    small = max(2, int(size * fraction))
    blocky = source.resize((small, small), Image.Resampling.BOX).resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(blocky, dtype=np.float32) / 255.0


def jpeg_compression(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    quality = (25, 18, 15, 10, 7)[severity - 1]
    buffer = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(buffer, format='JPEG', quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert('RGB'), dtype=np.float32) / 255.0


_CORRUPTIONS: dict[str, Corruption] = {
    'gaussian_noise': gaussian_noise, 'shot_noise': shot_noise, 'impulse_noise': impulse_noise,
    'defocus_blur': defocus_blur, 'glass_blur': glass_blur, 'motion_blur': motion_blur, 'zoom_blur': zoom_blur,
    'snow': snow, 'frost': frost, 'fog': fog, 'brightness': brightness,
    'contrast': contrast, 'elastic_transform': elastic_transform, 'pixelate': pixelate,
    'jpeg_compression': jpeg_compression,
}
# ImageNet-C's names in its order (robustcnn.benchmarks.imagenet_c.CORRUPTIONS; a test checks they agree). Not
# imported from there: that module loads torch, and the demo's --help must not.
CORRUPTIONS: tuple[str, ...] = tuple(_CORRUPTIONS)


def corrupt(image: np.ndarray, corruption: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """``image`` (uint8 HxWx3) under ``corruption`` at ``severity`` 1..5: uint8 HxWx3.

    Pass a generator seeded the same way for every severity of one image, so only the strength changes.
    """
    if corruption not in _CORRUPTIONS:
        raise ValueError(f'unknown corruption {corruption!r}; expected one of {", ".join(_CORRUPTIONS)}')
    if severity not in (1, 2, 3, 4, 5):
        raise ValueError(f'severity must be 1..5, got {severity}')
    pixels = image.astype(np.float64) / 255.0
    result = _CORRUPTIONS[corruption](pixels, severity, rng)
    return (np.clip(result, 0.0, 1.0) * 255.0).round().astype(np.uint8)
