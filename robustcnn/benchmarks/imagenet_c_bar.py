"""ImageNet-C-bar (Mintun et al., NeurIPS 2021; facebookresearch/augmentation-corruption): 10 corruptions chosen to
be perceptually dissimilar from ImageNet-C's, x 5 severities of the 50,000 validation images.

Layout: ImageNet-C's, ``<root>/<corruption>/<severity>/<wnid>/<image>.JPEG`` (224x224 already, fed as they are).
The preprocessed download names the severity folders ``1``..``5``; the repository's ``make_imagenet_c_bar.py``
names them by the corruption's parameter (``{:.2f}``, e.g. ``blue_noise_sample/0.80``), the five values per
corruption of its ``imagenet_c_bar.csv`` in severity order; both are read, and results use ``1``..``5``.

Metric: ``mean_corruption_error``, the plain mean of the 50 top-1 errors (the ``overall-avg`` of the repository's
``test_c_bar.py``). The paper and its code define no AlexNet-normalized error for ImageNet-C-bar, so there is none.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from .imagenet_c import ImageNetC

__all__ = ['ImageNetCBar', 'C_BAR_CORRUPTIONS', 'C_BAR_PARAMETERS']

# ``imagenet_c_bar.csv`` of facebookresearch/augmentation-corruption: each corruption's parameter at severity 1..5.
C_BAR_PARAMETERS: Mapping[str, tuple[float, float, float, float, float]] = {
    'blue_noise_sample': (0.8, 1.6, 2.4, 4.0, 5.6),
    'brownish_noise': (1.0, 2.0, 3.0, 4.0, 5.0),
    'caustic_refraction': (2.35, 3.2, 4.9, 6.6, 9.15),
    'checkerboard_cutout': (2.0, 3.0, 4.0, 5.0, 6.0),
    'cocentric_sine_waves': (3.0, 5.0, 8.0, 9.0, 10.0),
    'inverse_sparkles': (1.0, 2.0, 4.0, 9.0, 10.0),
    'perlin_noise': (4.6, 5.2, 5.8, 7.6, 8.8),
    'plasma_noise': (4.75, 7.0, 8.5, 9.25, 10.0),
    'single_frequency_greyscale': (1.0, 1.5, 2.0, 4.5, 5.0),
    'sparkles': (1.0, 2.0, 3.0, 5.0, 6.0),
}
C_BAR_CORRUPTIONS: tuple[str, ...] = tuple(C_BAR_PARAMETERS)


class ImageNetCBar(ImageNetC):
    name = 'imagenet-c-bar'
    title = 'ImageNet-C-bar'
    description = ('10 corruptions dissimilar to ImageNet-C x 5 severities of the validation images; mean top-1 '
                   'error, lower is better')
    suite_folder_names = ('imagenet-c-bar', 'imagenet_c_bar', 'imagenetcbar', 'ImageNet-C-Bar')
    corruptions = C_BAR_CORRUPTIONS
    extra_corruptions = ()
    corruption_categories = {}
    alexnet_normalized = False

    def severity_folder(self, corruption_folder: Path, corruption: str, severity: int) -> Path | None:
        """``<corruption>/<severity>`` (the download) or ``<corruption>/<parameter:.2f>`` (the generator)."""
        for name in (str(severity), f'{C_BAR_PARAMETERS[corruption][severity - 1]:.2f}'):
            if (corruption_folder / name).is_dir():
                return corruption_folder / name
        return None
