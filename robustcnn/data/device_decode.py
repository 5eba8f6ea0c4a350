"""Decoding JPEGs where the model runs: nvJPEG on CUDA through torchvision's batched ``decode_jpeg``.

With ``--decode-on-device`` the loader workers only read files: a complete JPEG whose header says it is plain RGB
or grayscale, of a size PIL would accept, travels as its compressed bytes; anything else (PNG, CMYK JPEGs, files
cut short or whose header does not parse) is decoded and resized on the CPU in the worker exactly as without the
option. The main process then decodes a whole batch on the device in one call, and resizes and crops there with
the *same* transform object the CPU path uses (torchvision/timm transforms accept tensors; bilinear and bicubic
only, checked up front). Pixels therefore differ from the worker path in the resampler (antialiased tensor resize
vs PIL's: a few levels on some pixels) and, on CUDA, in nvJPEG's IDCT rounding (torchvision's own tests allow a
mean difference under 2 levels); on the CPU the decoder is libjpeg-turbo like PIL's, so decoding is exact there.

A JPEG the device cannot decode or resize is retried alone, then decoded by PIL from its path; one PIL cannot
decode is skipped, named and counted like any unreadable file (``ClassFolderDataset``'s rules).

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

from ..cli import UsageError
from .folder import ClassFolderDataset, ImageDecodeError, check_image_size, load_rgb_image, read_image_file
from .loader import EvalBatch, stack_images
from .transforms import EvalPreprocessing

__all__ = ['check_device_preprocessing', 'EncodedJpeg', 'EncodedBatch', 'JpegBytesDataset', 'collate_encoded_batch',
           'decode_batch_on_device', 'DeviceDecodingLoader', 'is_plain_jpeg']

_logger = logging.getLogger(__name__)

# Modes torchvision's decoder turns into RGB identically to PIL's convert('RGB'); CMYK/YCCK JPEGs go to PIL.
_DEVICE_JPEG_MODES = frozenset({'RGB', 'L'})
# Tensor resizing matches PIL's for these (antialiased); nearest differs wildly, lanczos/box/hamming do not exist.
_TENSOR_INTERPOLATIONS = ('bilinear', 'bicubic')


def check_device_preprocessing(preprocessing: EvalPreprocessing) -> None:
    """Refuse, before any work, preprocessing the tensor transforms cannot reproduce."""
    if preprocessing.resize_mode == 'none':
        return
    if preprocessing.interpolation not in _TENSOR_INTERPOLATIONS:
        raise UsageError(f'--decode-on-device resizes with {" or ".join(_TENSOR_INTERPOLATIONS)} interpolation on '
                         f'the device, not {preprocessing.interpolation}; pass --interpolation bicubic or drop '
                         f'--decode-on-device')
    if preprocessing.resize_mode == 'resize_center_crop' and preprocessing.crop_mode not in ('center', 'squash'):
        raise UsageError(f'--decode-on-device supports the center and squash crop modes, not '
                         f'{preprocessing.crop_mode!r}; drop --decode-on-device')


class EncodedJpeg(NamedTuple):
    """A JPEG file's bytes as a 1-D uint8 tensor, still to be decoded."""

    data: torch.Tensor


def is_plain_jpeg(data: bytes) -> bool:
    """True for a complete JPEG whose header parses, is RGB or grayscale, and is within PIL's pixel limit.

    Only the header is read (``Image.open`` is lazy), so this is cheap. "Complete" means the file ends with the
    end-of-image marker: libjpeg-turbo (PIL, and torchvision on the CPU) rejects a file cut short, nvJPEG may not,
    so cut files go to the CPU path to be judged the same way with or without the option. Everything else returns
    False and goes through the CPU path, which raises the proper ``ImageDecodeError`` for bad files.
    """
    if not data.rstrip(b'\x00').endswith(b'\xff\xd9'):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                check_image_size(image.size, 'image')  # over the pixel budget: the CPU path names and skips it
                return image.format == 'JPEG' and image.mode in _DEVICE_JPEG_MODES
    except Exception:  # any header problem: let the CPU path produce its named error
        return False


class JpegBytesDataset(ClassFolderDataset):
    """``ClassFolderDataset`` whose plain JPEGs come out as :class:`EncodedJpeg`; other files are decoded as usual."""

    def _load(self, index: int, data: bytes | None = None) -> Any:
        path = self.samples[index][0]
        if data is None:
            data = read_image_file(path)  # not open(): a FIFO named .jpg would block the worker forever
        if is_plain_jpeg(data):
            return EncodedJpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        return super()._load(index, data)  # decoded from the bytes already read


class EncodedBatch(NamedTuple):
    """A collated batch before device decoding.

    Few tensors on purpose: every tensor a worker hands over costs a shared-memory file descriptor, and one per
    JPEG ran out of descriptors at ``ulimit -n 1024`` with large batches. So the JPEGs travel as one byte tensor
    cut by ``jpeg_sizes``, and the images the worker decoded as one stacked tensor.
    """

    jpeg_bytes: torch.Tensor  # uint8, the encoded files one after another
    jpeg_sizes: torch.Tensor  # long, bytes per file
    is_jpeg: torch.Tensor  # bool per kept sample: in jpeg_bytes (in order) or in worker_images (in order)
    worker_images: torch.Tensor  # uint8 (n, C, H, W), decoded and resized by the worker
    targets: torch.Tensor
    indices: torch.Tensor
    num_failed: int
    failed_indices: torch.Tensor


def collate_encoded_batch(batch: Sequence[tuple[Any, int, int, int]]) -> EncodedBatch:
    kept = [sample for sample in batch if sample[0] is not None]
    jpegs = [sample[0].data for sample in kept if isinstance(sample[0], EncodedJpeg)]
    decoded = [torch.as_tensor(sample[0]) for sample in kept if not isinstance(sample[0], EncodedJpeg)]
    return EncodedBatch(
        jpeg_bytes=torch.cat(jpegs) if jpegs else torch.empty(0, dtype=torch.uint8),
        jpeg_sizes=torch.tensor([data.numel() for data in jpegs], dtype=torch.long),
        is_jpeg=torch.tensor([isinstance(sample[0], EncodedJpeg) for sample in kept], dtype=torch.bool),
        worker_images=stack_images(decoded) if decoded else torch.empty(0, dtype=torch.uint8),
        targets=torch.tensor([sample[1] for sample in kept], dtype=torch.long),
        indices=torch.tensor([sample[2] for sample in kept], dtype=torch.long),
        num_failed=sum(sample[3] for sample in batch),
        failed_indices=torch.tensor([sample[2] for sample in batch if sample[0] is None], dtype=torch.long),
    )


def _decode_jpegs(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decode on ``device`` in one call; if the batch call fails, each file alone (None where that fails too)."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError as error:  # torchvision deprecated its decoders in 0.29 in favour of TorchCodec
        raise UsageError(f'--decode-on-device needs torchvision.io.decode_jpeg, which this torchvision lacks '
                         f'({error}); drop --decode-on-device') from None
    if not datas:
        return []
    if device.type == 'cuda':
        # torchvision allocates the outputs on the current stream but writes them on nvJPEG's own stream without
        # waiting for it: memory the previous batch's queued kernels still use could be overwritten.
        torch.cuda.current_stream(device).synchronize()
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=DeprecationWarning, module='torchvision')
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


def _decode_on_cpu(path: str, transform: Callable[[Any], torch.Tensor], device: torch.device) -> torch.Tensor | None:
    """The worker path for one file, in the main process: PIL decode, transform, copy; None (logged) if unreadable."""
    try:
        return torch.as_tensor(transform(load_rgb_image(path))).to(device, non_blocking=True)
    except ImageDecodeError as error:
        _logger.warning('skipping unreadable image %s', error)
        return None


def decode_batch_on_device(
        batch: EncodedBatch,
        transform: Callable[[Any], torch.Tensor],
        device: torch.device,
        paths: Sequence[str],
) -> EvalBatch:
    """An :class:`EncodedBatch` -> the loader's usual ``EvalBatch`` with uint8 images already on ``device``.

    ``transform`` is the evaluation transform (resize/crop to uint8); ``paths[index]`` names the file of each
    dataset index for the PIL fallback and for warnings.
    """
    device = torch.device(device)
    jpeg_positions = batch.is_jpeg.nonzero().flatten().tolist()
    datas = list(torch.split(batch.jpeg_bytes, batch.jpeg_sizes.tolist())) if jpeg_positions else []
    decoded = _decode_jpegs(datas, device)
    images: list[torch.Tensor | None] = [None] * len(batch.is_jpeg)
    worker_images = batch.worker_images.to(device, non_blocking=True)
    for position, image in zip(batch.is_jpeg.logical_not().nonzero().flatten().tolist(), worker_images):
        images[position] = image
    for number, position in enumerate(jpeg_positions):
        image, decoded[number] = decoded[number], None  # free each full-size decode once it is resized
        if image is not None:
            try:
                images[position] = transform(image)
                continue
            except RuntimeError as error:  # e.g. CUDA's antialiased resize refuses extreme ratios; or out of memory
                _logger.debug('device resize failed (%s); resizing on the CPU', error)
        # the device refused the file (or its resize); PIL may still read it, and names the problem if not
        images[position] = _decode_on_cpu(paths[int(batch.indices[position])], transform, device)
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
