"""ImageNet-V2 (Recht et al. 2019): 10,000 new test images; folders are the class INDEX ``0``..``999``.

Folder ``17`` is ImageNet-1k class 17 (its wnid in classifier order), not the 17th folder in sorted order
(sorted strings would put ``100`` before ``11``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from ..data.label_space import LabelSpace, imagenet_wnids
from .base import ClassFolderBenchmark, DatasetLayoutError

__all__ = ['ImageNetV2']


class ImageNetV2(ClassFolderBenchmark):
    name = 'imagenet-v2'
    title = 'ImageNet-V2'
    description = 'a re-collected ImageNet test set (matched-frequency); top-1 accuracy, higher is better'
    suite_folder_names = ('imagenet-v2', 'imagenetv2', 'imagenetv2-matched-frequency-format-val',
                          'imagenetv2-matched-frequency')

    def detect(self, root: Path, strong: bool) -> str | None:
        folders = [entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith('.')]
        return 'integer class folders' if not strong and folders and all(name.isdigit() for name in folders) else None

    def folder_to_class(self, folder_names: Sequence[str], label_space: LabelSpace) -> Mapping[str, str]:
        wnids = imagenet_wnids()
        bad = [name for name in folder_names if not name.isdigit() or int(name) >= len(wnids)]
        if bad:
            raise DatasetLayoutError(
                f'ImageNet-V2 folders must be class indices 0..999, found {", ".join(bad[:5])}'
            )
        return {name: wnids[int(name)] for name in folder_names}
