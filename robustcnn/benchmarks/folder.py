"""Any class-folder tree (``--dataset folder``): classes from --class-map or the checkpoint, else sorted folders."""
from __future__ import annotations

import os

from ..data.folder import list_class_folders
from ..data.label_space import LabelSpace
from .base import ClassFolderBenchmark

__all__ = ['ClassFolder']


class ClassFolder(ClassFolderBenchmark):
    name = 'folder'
    title = 'class-folder dataset'
    description = 'any <class>/<images> tree; top-1 accuracy, higher is better'

    def default_label_space(self, data_dir: str | os.PathLike) -> LabelSpace | None:
        """timm's meaning without a class map: the classes are the folders in sorted order."""
        folders = list_class_folders(self.image_root(data_dir))
        return LabelSpace(tuple(folders), f'sorted folder names of {data_dir}') if folders else None
