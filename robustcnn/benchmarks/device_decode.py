"""Decoding JPEGs where the model runs: nvJPEG on CUDA through torchvision's batched ``decode_jpeg``.

With ``--decode-on-device`` the loader workers only read files: a JPEG whose header says it is plain RGB or
grayscale, of a size PIL would accept, travels as its compressed bytes; anything else (PNG, CMYK JPEGs, files
whose header does not parse) is decoded and resized on the CPU in the worker exactly as without the option. The
main process then decodes a whole batch on the device in one call, and resizes and crops there with the *same*
transform object the CPU path uses (torchvision/timm transforms accept tensors), so the two paths differ only in
the resampler: antialiased tensor resize vs PIL's, a few levels on a few pixels (decoding itself is exact on the
CPU, where both are libjpeg-turbo).

A JPEG the device cannot decode is retried alone, then decoded by PIL from its path; one PIL cannot decode is
skipped, named and counted like any unreadable file (``ClassFolderDataset``'s rules).

Why our own code: torchvision gives the batched decoder, but nothing routes a folder dataset's files between a
worker-side CPU path and a device-side batch decode with per-file fallback and failure accounting.
"""
from __future__ import annotations

import io
import logging
import warnings
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
from PIL import Image

from ..data.folder import ClassFolderDataset, ImageDecodeError, load_rgb_image
from .loader import EvalBatch, stack_images

__all__ = ['EncodedJpeg', 'EncodedBatch', 'JpegBytesDataset', 'collate_encoded_batch', 'decode_batch_on_device',
           'DeviceDecodingLoader', 'is_plain_jpeg']

_logger = logging.getLogger(__name__)

# Modes torchvision's decoder turns into RGB identically to PIL's convert('RGB'); CMYK/YCCK JPEGs go to PIL.
_DEVICE_JPEG_MODES = frozenset({'RGB', 'L'})


class EncodedJpeg(NamedTuple):
    """A JPEG file's bytes as a 1-D uint8 tensor, still to be decoded."""

    data: torch.Tensor


def is_plain_jpeg(data: bytes) -> bool:
    """True for a JPEG whose header parses, is RGB or grayscale, and is within PIL's decompression-bomb limit.

    Only the header is read (``Image.open`` is lazy), so this is cheap. Everything else returns False and goes
    through the CPU path, which raises the proper ``ImageDecodeError`` for bad files.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.format == 'JPEG' and image.mode in _DEVICE_JPEG_MODES
    except Exception:  # any header problem: let the CPU path produce its named error
        return False


class JpegBytesDataset(ClassFolderDataset):
    """``ClassFolderDataset`` whose plain JPEGs come out as :class:`EncodedJpeg`; other files are decoded as usual."""

    def _load(self, index: int) -> Any:
        path = self.samples[index][0]
        try:
            with open(path, 'rb') as file:
                data = file.read()
        except OSError as error:
            raise ImageDecodeError(f'{path}: {error}') from None
        if is_plain_jpeg(data):
            return EncodedJpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        return super()._load(index)


class EncodedBatch(NamedTuple):
    """A collated batch before device decoding: ``items`` mixes uint8 CHW tensors and :class:`EncodedJpeg`."""

    items: list
    targets: torch.Tensor
    indices: torch.Tensor
    num_failed: int
    failed_indices: torch.Tensor


def collate_encoded_batch(batch: Sequence[tuple[Any, int, int, int]]) -> EncodedBatch:
    kept = [sample for sample in batch if sample[0] is not None]
    return EncodedBatch(
        items=[sample[0] for sample in kept],
        targets=torch.tensor([sample[1] for sample in kept], dtype=torch.long),
        indices=torch.tensor([sample[2] for sample in kept], dtype=torch.long),
        num_failed=sum(sample[3] for sample in batch),
        failed_indices=torch.tensor([sample[2] for sample in batch if sample[0] is None], dtype=torch.long),
    )


def _decode_jpegs(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decode on ``device`` in one call; if the batch call fails, each file alone (None where that fails too)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not datas:
        return []
    try:
        return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        decoded: list[torch.Tensor | None] = []
        for data in datas:
            try:
                decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                decoded.append(None)
        return decoded


def decode_batch_on_device(
        batch: EncodedBatch,
        transform: Callable[[Any], torch.Tensor],
        device: torch.device,
        paths: Sequence[str],
) -> Any:
    """An :class:`EncodedBatch` -> the loader's usual ``EvalBatch`` with uint8 images already on ``device``.

    ``transform`` is the evaluation transform (resize/crop to uint8); ``paths[index]`` names the file of each
    dataset index for the PIL fallback and for warnings.
    """
    encoded_positions = [position for position, item in enumerate(batch.items) if isinstance(item, EncodedJpeg)]
    decoded = _decode_jpegs([batch.items[position].data for position in encoded_positions], device)
    images: list[torch.Tensor | None] = [
        item.to(device, non_blocking=True) if isinstance(item, torch.Tensor) else None for item in batch.items]
    for position, image in zip(encoded_positions, decoded):
        if image is None:
            path = paths[int(batch.indices[position])]
            try:  # the device refused it; PIL may still read it (and names the problem if not)
                image = torch.as_tensor(transform(load_rgb_image(path))).to(device, non_blocking=True)
            except ImageDecodeError as error:
                _logger.warning('skipping unreadable image %s', error)
                continue
            images[position] = image
        else:
            images[position] = transform(image)
    kept = [position for position, image in enumerate(images) if image is not None]
    lost = [position for position, image in enumerate(images) if image is None]
    failed_indices = torch.cat([batch.failed_indices, batch.indices[lost]]) if lost else batch.failed_indices
    if not kept:
        return EvalBatch(torch.empty(0, dtype=torch.uint8, device=device), torch.empty(0, dtype=torch.long),
                         torch.empty(0, dtype=torch.long), batch.num_failed + len(lost), failed_indices)
    stacked = stack_images([images[position] for position in kept])
    return EvalBatch(stacked, batch.targets[kept], batch.indices[kept], batch.num_failed + len(lost), failed_indices)


class DeviceDecodingLoader:
    """Wraps a DataLoader of :class:`EncodedBatch` and yields device-decoded ``EvalBatch``es.

    Exposes ``sampler``, ``batch_size``, ``drop_last`` and ``len()`` like the loader it wraps, which is what the
    evaluation loop reads to plan its cross-process synchronisation.
    """

    def __init__(self, loader: Any, transform: Callable[[Any], torch.Tensor], device: torch.device,
                 dataset: ClassFolderDataset) -> None:
        self.loader = loader
        self.transform = transform
        self.device = torch.device(device)
        self.paths = [path for path, _ in dataset.samples]
        self.sampler = getattr(loader, 'sampler', None)
        self.batch_size = getattr(loader, 'batch_size', None)
        self.drop_last = getattr(loader, 'drop_last', False)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            yield decode_batch_on_device(batch, self.transform, self.device, self.paths)
