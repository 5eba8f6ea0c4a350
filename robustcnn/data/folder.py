"""Reading class-folder image trees: labels come from folder *names* through a given label space.

Both training and every evaluation set read images through :class:`ClassFolderDataset`, so bad files are
handled one way everywhere: a file that cannot be decoded is named in a warning, then either skipped (evaluation)
or replaced by the next readable sample (training), and counted in every batch (``num_failed``; the batch type
and its collate are in :mod:`robustcnn.data.loader`). The same goes for what would hang or exhaust a run: a FIFO,
device or socket named like an image, and an image whose pixels (or those of the largest resize done here) exceed
:data:`PIXEL_BUDGET`. Folder links inside a class folder are not followed, so a link loop, or a link to the parent
or to another class, cannot duplicate or mislabel images.
"""
from __future__ import annotations

import io
import logging
import math
import os
import stat
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..cli import UsageError
from .label_space import LabelSpaceError

__all__ = [
    'IMAGE_EXTENSIONS', 'PIXEL_BUDGET', 'ImageDecodeError', 'load_rgb_image', 'read_image_file', 'check_image_size',
    'list_class_folders', 'scan_class_folders', 'ClassFolderDataset',
]

_logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({'.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff', '.gif', '.ppm', '.pgm'})


# Pixels one image may have when decoded, and after the largest resize any preprocessing here does (short side to
# at most _LARGEST_SHORT_SIDE): a 15 KB PNG of 5,000,000 x 1 pixels is under PIL's own limit, but resizing its short
# side to 256 asked for ~19 GB. Over budget, it is skipped like an undecodable file.
PIXEL_BUDGET = 2 ** 27
_LARGEST_SHORT_SIDE = 1024


class ImageDecodeError(OSError):
    """An image file exists but cannot be turned into an RGB picture."""


def check_image_size(size: tuple[int, int], path: str | os.PathLike) -> None:
    """Raise ImageDecodeError if an image of ``size`` (from its header, before decoding) is over the pixel budget."""
    width, height = size
    resized = math.ceil(max(width, height) * _LARGEST_SHORT_SIDE / max(1, min(width, height))) * _LARGEST_SHORT_SIDE
    if width * height > PIXEL_BUDGET or resized > PIXEL_BUDGET:
        raise ImageDecodeError(f'{path}: {width}x{height} pixels exceed the pixel budget of {PIXEL_BUDGET} (decoded, '
                               f'or resized to {_LARGEST_SHORT_SIDE} px on the short side)')


def _check_regular_file(path: str | os.PathLike) -> None:
    """Opening a FIFO named like an image blocks forever; a device reads without end."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        raise ImageDecodeError(f'{path}: {error.strerror or error}') from None
    if not stat.S_ISREG(mode):
        raise ImageDecodeError(f'{path}: not a regular file (a FIFO, device or socket named like an image)')


def read_image_file(path: str | os.PathLike) -> bytes:
    """The bytes of an image file, or ImageDecodeError for a missing or non-regular file."""
    _check_regular_file(path)
    try:
        with open(path, 'rb') as file:
            return file.read()
    except OSError as error:
        raise ImageDecodeError(f'{path}: {error}') from None


def load_rgb_image(path: str | os.PathLike, data: bytes | None = None) -> Image.Image:
    """Open any common image as 8-bit RGB (grayscale, palette, CMYK, RGBA, 16-bit), or raise ImageDecodeError.

    Everything is PIL's ``convert('RGB')``, the reference loaders' conversion, except 16-bit grayscale, which PIL
    clips (any value over 255 becomes white) and which is scaled to 8 bits here instead. ``data``: the file's bytes
    when the caller already read them (``path`` then only names the file in errors).
    """
    if data is None and isinstance(path, (str, os.PathLike)):
        _check_regular_file(path)
    try:
        with warnings.catch_warnings():
            # An image over PIL's pixel limit warns first and raises past twice the limit; both count as hostile.
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            with Image.open(path if data is None else io.BytesIO(data)) as image:
                check_image_size(image.size, path)  # from the header, before any pixel is decoded
                image.load()
                if image.mode in ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I'):
                    # 16-bit (or 32-bit int) grayscale: scale to 8 bits instead of clipping to white.
                    array = np.asarray(image, dtype=np.float64)
                    top = 65535.0 if image.mode.startswith('I;16') else max(float(array.max()), 1.0)
                    array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
                    return Image.fromarray(array, mode='L').convert('RGB')
                # Transparency is dropped (the colour under it is kept), exactly as timm's, torchvision's and the
                # reference evaluation scripts' convert('RGB') do: ImageNet-Sketch/-R numbers must match theirs.
                warnings.filterwarnings('ignore', 'Palette images with Transparency', UserWarning)
                return image.convert('RGB')
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError(f'{path}: image too large to decode safely ({error})') from None
    except ImageDecodeError:
        raise
    except Exception as error:  # noqa: BLE001
        # Whatever a damaged file makes the decoder raise is the file's fault: besides OSError/ValueError, damaged
        # TIFF tags raise TypeError and OverflowError from inside Pillow. Named and skipped, never a dead run.
        raise ImageDecodeError(f'{path}: {type(error).__name__}: {error}') from None


def list_class_folders(root: str | os.PathLike) -> list[str]:
    """Sorted names of the sub-folders of ``root`` (hidden folders ignored).

    A class folder may be a link (trees assembled from another dataset's folders), but not one to ``root`` itself,
    to a folder above it or to a folder inside it: that would read the whole tree, or another class, as this class.
    """
    root = Path(root)
    names = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith('.'))
    resolved_root = root.resolve()
    for name in names:
        if not (root / name).is_symlink():
            continue
        target = (root / name).resolve()
        if target == resolved_root or target in resolved_root.parents or resolved_root in target.parents:
            raise UsageError(f'class folder {root / name} links to {target}, which is the dataset folder, above it or '
                             f'inside it (its images would be read twice or as another class); remove the link')
    return names


def scan_class_folders(
        root: str | os.PathLike,
        class_to_index: Mapping[str, int],
        folder_names: Sequence[str] | None = None,
) -> list[tuple[str, int]]:
    """List ``(path, label)`` for every image under ``root/<class folder>/`` (recursively), sorted by path.

    ``class_to_index`` is the model's label space; folders present are looked up in it, so a tree holding only
    some classes is labelled correctly. A folder that maps to nothing is an error naming it.
    """
    root = Path(root)
    folder_names = list_class_folders(root) if folder_names is None else list(folder_names)
    unknown = [name for name in folder_names if name not in class_to_index]
    if unknown:
        raise LabelSpaceError(
            f'class folder(s) {", ".join(unknown[:5])}{" ..." if len(unknown) > 5 else ""} under {root} are not in '
            f'the label space ({len(class_to_index)} classes); pass --class-map with the model\'s class list'
        )
    samples = []
    linked_folders = []
    for name in folder_names:
        label = class_to_index[name]
        # Folder links inside a class folder are not followed (cycles, links to the parent or to another class);
        # files (and links to files) are kept, and a non-regular one is skipped and counted when it is loaded.
        for directory, subfolders, files in os.walk(root / name, followlinks=False):
            linked_folders += [os.path.join(directory, sub) for sub in subfolders
                               if os.path.islink(os.path.join(directory, sub))]
            for file_name in files:
                if os.path.splitext(file_name)[1].lower() in IMAGE_EXTENSIONS:
                    samples.append((os.path.join(directory, file_name), label))
    if linked_folders:
        _logger.warning('not following %d folder link(s) inside class folders of %s (e.g. %s): a link loop or a link '
                        'to another class would duplicate or mislabel images', len(linked_folders), root,
                        linked_folders[0])
    samples.sort(key=lambda sample: sample[0])
    return samples


class ClassFolderDataset(Dataset):
    """Images with integer labels; ``samples`` is a list of ``(path, label)``.

    ``on_decode_error='skip'`` drops an unreadable sample from its batch (evaluation: each file counts at most
    once); ``'replace'`` substitutes the next readable sample so batch sizes stay fixed (training).
    """

    def __init__(
            self,
            samples: Sequence[tuple[str, int]],
            transform: Callable[[Image.Image], Any] | None = None,
            on_decode_error: str = 'skip',
    ) -> None:
        if on_decode_error not in ('skip', 'replace'):
            raise ValueError(f"on_decode_error must be 'skip' or 'replace', not {on_decode_error!r}")
        self.samples = list(samples)
        self.transform = transform
        self.on_decode_error = on_decode_error

    @classmethod
    def from_folder(
            cls,
            root: str | os.PathLike,
            class_to_index: Mapping[str, int] | None = None,
            transform: Callable[[Image.Image], Any] | None = None,
            on_decode_error: str = 'skip',
    ) -> 'ClassFolderDataset':
        """Read ``root/<class>/...``; without ``class_to_index`` the classes are the sorted folder names."""
        if class_to_index is None:
            class_to_index = {name: index for index, name in enumerate(list_class_folders(root))}
        dataset = cls(scan_class_folders(root, class_to_index), transform, on_decode_error)
        dataset.class_to_index = dict(class_to_index)
        return dataset

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int, data: bytes | None = None) -> Any:
        image = load_rgb_image(self.samples[index][0], data)
        return self.transform(image) if self.transform is not None else image

    def __getitem__(self, index: int) -> tuple[Any, int, int, int]:
        """Return ``(image, label, index, num_failed)``; ``image`` is None for a skipped sample."""
        num_failed = 0
        for attempt in range(len(self.samples)):
            current = (index + attempt) % len(self.samples)
            try:
                return self._load(current), self.samples[current][1], current, num_failed
            except ImageDecodeError as error:
                num_failed += 1
                _logger.warning('skipping unreadable image %s', error)
                if self.on_decode_error == 'skip':
                    return None, self.samples[index][1], index, num_failed
        raise RuntimeError('no image in the dataset can be decoded')
