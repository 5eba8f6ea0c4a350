"""ImageNet-3DCC (Kar et al., CVPR 2022; EPFL-VILAB/3DCommonCorruptions): 12 corruptions that use the scene's
(estimated) depth, x 5 severities of the 50,000 validation images.

Layout: one ``<corruption>.tar.gz`` per corruption from datasets.epfl.ch/3dcc/imagenet_3dcc, unpacked side by side
as ``<root>/<corruption>/<severity 1..5>/<wnid>/<image>`` (ImageNet-C's layout; RobustBench's
``load_imagenet3dcc`` reads ``<corruption>/<severity>`` the same way and feeds the images as they are).

Metric: ``mean_corruption_error``, the plain mean of the 60 top-1 errors; there are no AlexNet baselines for 3DCC,
so no normalized error.
"""
from __future__ import annotations

from .imagenet_c import ImageNetC

__all__ = ['ImageNet3DCC', 'THREE_DCC_CORRUPTIONS']

# The 12 ImageNet-3DCC corruptions (RobustBench's list; the download's tar names).
THREE_DCC_CORRUPTIONS: tuple[str, ...] = (
    'near_focus', 'far_focus', 'bit_error', 'color_quant', 'flash', 'fog_3d', 'h265_abr', 'h265_crf', 'iso_noise',
    'low_light', 'xy_motion_blur', 'z_motion_blur',
)


class ImageNet3DCC(ImageNetC):
    name = 'imagenet-3dcc'
    title = 'ImageNet-3DCC'
    description = ('12 geometry-aware corruptions x 5 severities of the validation images; mean top-1 error, lower '
                   'is better')
    suite_folder_names = ('imagenet-3dcc', 'imagenet_3dcc', 'imagenet3dcc', 'ImageNet-3DCC')
    corruptions = THREE_DCC_CORRUPTIONS
    extra_corruptions = ()
    corruption_categories = {}
    alexnet_normalized = False
