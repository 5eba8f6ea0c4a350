"""Bounds on sizes that come from users or from files (flags, checkpoint metadata, class maps).

One place for them, because each is checked in several: a value outside is a one-line error naming where it came
from, not a multi-gigabyte allocation later. No imports: the command-line parsers use these before torch loads.
"""
from __future__ import annotations

__all__ = ['CROP_PCT_RANGE', 'MAX_IMAGE_SIDE', 'MAX_NUM_CLASSES', 'MAX_MODEL_ARGUMENT']

# Center-crop fraction: the resize before the crop is size / crop_pct, so 1e-4 asked for a 2-million-pixel side.
# timm's configs use 0.875..1.0; the original release evaluated up to 1.0; 2 leaves room for any deliberate study.
CROP_PCT_RANGE = (0.05, 2.0)
# Input height/width in pixels (timm's largest pretrained configs are ~1000 px).
MAX_IMAGE_SIDE = 4096
# Classifier outputs (ImageNet-22k has 21,843; a metadata 'num_classes' of 1e9 built a 2 TB classifier).
MAX_NUM_CLASSES = 100_000
# Any integer model constructor argument stored in a checkpoint (channels, depths, kernel and patch sizes).
MAX_MODEL_ARGUMENT = 8192
