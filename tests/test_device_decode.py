"""--decode-on-device: JPEG bytes from the workers, batched torchvision decode on the device, per-file fallbacks.

On this CPU-only machine the "device" is the CPU, where torchvision's decoder is libjpeg-turbo like PIL's, so
decoded pixels must equal the worker path's exactly; the CUDA (nvJPEG) call is the same code with another device.
"""
from __future__ import annotations

import io
import json
import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataset_trees import class_color, register_color_model, save_color_checkpoint
from robustcnn.data.device_decode import (DeviceDecodingLoader, EncodedJpeg, JpegBytesDataset,
                                                check_device_preprocessing, collate_encoded_batch,
                                                decode_batch_on_device, is_plain_jpeg)
from robustcnn.benchmarks.imagenet_c import CORRUPTIONS
from robustcnn.data.loader import collate_eval_batch
from robustcnn.benchmarks.runner import ValidationRequest, run_validation
from robustcnn.cli import UsageError
from robustcnn.data.folder import ClassFolderDataset
from robustcnn.data.label_space import imagenet_wnids
from robustcnn.data.transforms import EvalPreprocessing, build_eval_transform
from robustcnn.engine.runtime import init_runtime

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import validate  # noqa: E402
MODEL = register_color_model()


def jpeg_bytes(pixels: np.ndarray, mode: str = 'RGB') -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format='JPEG', quality=90)
    return buffer.getvalue()


def truncated_jpeg(seed: int = 0) -> bytes:
    """A JPEG whose header parses but whose scan data stops early (no end-of-image marker)."""
    data = jpeg_bytes(noise(32, 32, seed))
    return data[:len(data) * 3 // 4]


def corrupt_jpeg(seed: int = 0) -> bytes:
    """A complete-looking JPEG (header parses, ends with EOI) whose Huffman table is garbage: only decoding fails."""
    data = bytearray(jpeg_bytes(noise(32, 32, seed)))
    table = data.find(b'\xff\xc4')
    data[table + 5:table + 25] = b'\xff' * 20
    return bytes(data)


def noise(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_mixed_folder(folder: Path, height: int = 32, width: int = 32) -> dict[str, Path]:
    """One file per route: plain RGB and grayscale JPEGs (device), CMYK JPEG and PNG (worker), broken files."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        'rgb': folder / 'a_rgb.JPEG', 'gray': folder / 'b_gray.JPEG', 'cmyk': folder / 'c_cmyk.JPEG',
        'png': folder / 'd_png.JPEG', 'truncated': folder / 'e_truncated.JPEG', 'text': folder / 'f_text.jpg',
        'rgb2': folder / 'g_rgb.jpg', 'corrupt': folder / 'h_corrupt.JPEG',
    }
    files['rgb'].write_bytes(jpeg_bytes(noise(height, width, 0)))
    files['gray'].write_bytes(jpeg_bytes(noise(height, width, 1), 'L'))
    files['cmyk'].write_bytes(jpeg_bytes(noise(height, width, 2), 'CMYK'))
    Image.fromarray(noise(height, width, 3)).save(files['png'], format='PNG')  # ImageNet has PNGs named .JPEG
    files['truncated'].write_bytes(truncated_jpeg(4))
    files['text'].write_text('not an image')
    files['rgb2'].write_bytes(jpeg_bytes(noise(height, width, 5)))
    files['corrupt'].write_bytes(corrupt_jpeg(6))
    return files


def preprocessing(resize_mode: str, size: int = 32, interpolation: str = 'bicubic') -> EvalPreprocessing:
    return EvalPreprocessing(input_size=(3, size, size), resize_mode=resize_mode, crop_pct=0.875, crop_mode='center',
                             interpolation=interpolation, mean=(0.5,) * 3, std=(0.25,) * 3)


def test_header_check_sends_only_complete_plain_jpegs_to_the_device(tmp_path: Path) -> None:
    files = write_mixed_folder(tmp_path)
    for name in ('rgb', 'gray', 'corrupt'):  # a bad Huffman table is only found by decoding
        assert is_plain_jpeg(files[name].read_bytes()), name
    for name in ('cmyk', 'png', 'text', 'truncated'):  # cut short: judged by libjpeg-turbo in the worker
        assert not is_plain_jpeg(files[name].read_bytes()), name
    dataset = JpegBytesDataset([(str(path), 0) for path in sorted(files.values())],
                               build_eval_transform(preprocessing('none')))
    kinds = {Path(dataset.samples[index][0]).name: dataset[index][0] for index in range(len(dataset))}
    assert isinstance(kinds['a_rgb.JPEG'], EncodedJpeg) and isinstance(kinds['b_gray.JPEG'], EncodedJpeg)
    assert kinds['a_rgb.JPEG'].data.tolist() == list(files['rgb'].read_bytes())
    assert isinstance(kinds['c_cmyk.JPEG'], torch.Tensor) and kinds['c_cmyk.JPEG'].dtype == torch.uint8
    assert isinstance(kinds['d_png.JPEG'], torch.Tensor)
    assert kinds['e_truncated.JPEG'] is None and kinds['f_text.jpg'] is None  # skipped by the worker, as without


@pytest.mark.parametrize('resize_mode,height,width', [('none', 32, 32), ('resize_center_crop', 40, 56)])
def test_device_decode_matches_the_worker_path(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                               resize_mode: str, height: int, width: int) -> None:
    files = write_mixed_folder(tmp_path, height, width)
    samples = [(str(path), label) for label, path in enumerate(sorted(files.values()))]
    transform = build_eval_transform(preprocessing(resize_mode))
    cpu = collate_eval_batch([ClassFolderDataset(samples, transform)[index] for index in range(len(samples))])
    encoded_dataset = JpegBytesDataset(samples, transform)
    encoded = collate_encoded_batch([encoded_dataset[index] for index in range(len(samples))])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        batch = decode_batch_on_device(encoded, transform, torch.device('cpu'), [path for path, _ in samples])

    failed = sorted(index for index, (path, _) in enumerate(samples)
                    if Path(path).stem in ('e_truncated', 'f_text', 'h_corrupt'))
    assert 'h_corrupt.JPEG' in caplog.text  # the device and PIL both refused it, in this call; it is named
    assert batch.num_failed == cpu.num_failed == 3
    assert sorted(batch.failed_indices.tolist()) == sorted(cpu.failed_indices.tolist()) == failed
    assert batch.indices.tolist() == cpu.indices.tolist() and batch.targets.tolist() == cpu.targets.tolist()
    assert batch.images.shape == cpu.images.shape == (5, 3, 32, 32) and batch.images.dtype == torch.uint8
    difference = (batch.images.int() - cpu.images.int()).abs()
    if resize_mode == 'none':
        assert difference.max() == 0  # libjpeg-turbo on both sides: the same pixels
    else:
        # only the resampler differs (antialiased tensor bicubic vs PIL's), on the device-decoded JPEGs only
        routes = [Path(samples[index][0]).name for index in batch.indices.tolist()]
        for position, name in enumerate(routes):
            if name in ('c_cmyk.JPEG', 'd_png.JPEG'):
                assert difference[position].max() == 0, name
            else:
                assert 0 < difference[position].float().mean() < 1.5 and difference[position].max() <= 24, name


def test_a_batch_the_device_rejects_is_retried_file_by_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One corrupt JPEG fails torchvision's batched call; the others must still be decoded on the device."""
    import robustcnn.data.device_decode as device_decode

    files = write_mixed_folder(tmp_path)
    samples = [(str(files[name]), 0) for name in ('rgb', 'corrupt', 'rgb2')]
    read_by_pil = []
    real_load = device_decode.load_rgb_image
    monkeypatch.setattr(device_decode, 'load_rgb_image', lambda path: read_by_pil.append(Path(path).name)
                        or real_load(path))
    transform = build_eval_transform(preprocessing('none'))
    dataset = JpegBytesDataset(samples, transform)
    loader = DeviceDecodingLoader(torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=collate_encoded_batch),
                                  transform, torch.device('cpu'), dataset)
    assert len(loader) == 1 and loader.batch_size == 3
    (batch,) = list(loader)
    assert read_by_pil == ['h_corrupt.JPEG']  # the good files were decoded by the device, one at a time
    assert batch.indices.tolist() == [0, 2] and batch.failed_indices.tolist() == [1] and batch.num_failed == 1
    expected = [torch.from_numpy(np.array(Image.open(files[name]).convert('RGB'))).permute(2, 0, 1)
                for name in ('rgb', 'rgb2')]
    assert torch.equal(batch.images, torch.stack(expected))


FEW_DESCRIPTORS = """
import resource, sys, torch
sys.path.insert(0, {tests!r})
from robustcnn.data.device_decode import DeviceDecodingLoader, JpegBytesDataset, collate_encoded_batch
from robustcnn.data.transforms import build_eval_transform
from test_device_decode import preprocessing
resource.setrlimit(resource.RLIMIT_NOFILE, (160, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
files = sorted(str(path) for path in __import__('pathlib').Path({root!r}).iterdir())
transform = build_eval_transform(preprocessing('none'))
dataset = JpegBytesDataset([(path, 0) for path in files], transform)
inner = torch.utils.data.DataLoader(dataset, batch_size=64, num_workers=1, prefetch_factor=4,
                                    collate_fn=collate_encoded_batch)
print(sum(batch.images.shape[0] for batch in DeviceDecodingLoader(inner, transform, torch.device('cpu'), dataset)))
"""


def test_worker_batches_use_a_few_descriptors_not_one_per_file(tmp_path: Path) -> None:
    """4 prefetched batches of 64 JPEGs under a 160-descriptor limit: one shared tensor per file would need 256."""
    import subprocess
    for number in range(320):
        (tmp_path / f'{number:03d}.JPEG').write_bytes(jpeg_bytes(noise(8, 8, number)))
    script = FEW_DESCRIPTORS.format(tests=str(Path(__file__).parent), root=str(tmp_path))
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == '320'


def test_interpolations_the_device_cannot_reproduce_are_refused() -> None:
    check_device_preprocessing(preprocessing('resize_center_crop', interpolation='bilinear'))
    check_device_preprocessing(preprocessing('none', interpolation='lanczos'))  # nothing is resized
    for interpolation in ('nearest', 'lanczos', 'box', 'hamming'):
        with pytest.raises(UsageError, match=f'not {interpolation}; pass --interpolation bicubic'):
            check_device_preprocessing(preprocessing('resize', interpolation=interpolation))


# ---------------------------------------------------------------------------------------------------- end to end

def jpeg_safe_codes(count: int) -> list[int]:
    """Class codes whose solid colour survives JPEG exactly enough for the colour model to read it back."""
    from dataset_trees import ColorCodeClassifier, TEST_MEAN, TEST_STD
    model = ColorCodeClassifier()
    codes = []
    for code in range(1, 1000):
        pixels = np.asarray(Image.open(io.BytesIO(jpeg_bytes(np.full((32, 32, 3), class_color(code), np.uint8)))))
        images = (torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 255 - torch.tensor(TEST_MEAN).view(
            1, 3, 1, 1)) / torch.tensor(TEST_STD).view(1, 3, 1, 1)
        if int(model(images).argmax()) == code:
            codes.append(code)
        if len(codes) == count:
            return codes
    raise AssertionError('not enough JPEG-safe colour codes')


def write_coded_jpegs(folder: Path, codes: list[int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for number, code in enumerate(codes):
        (folder / f'img_{number:03d}.JPEG').write_bytes(jpeg_bytes(np.full((32, 32, 3), class_color(code), np.uint8)))


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_color_checkpoint(tmp_path_factory.mktemp('ckpt') / 'color.pth')


def test_validate_with_decode_on_device_gives_the_exact_numbers(tmp_path: Path, checkpoint: Path) -> None:
    """validate.py with a loader worker (bytes cross a process boundary), known answers, a broken file counted."""
    first, second, third = jpeg_safe_codes(3)
    wnids = imagenet_wnids()
    root = tmp_path / 'val'
    write_coded_jpegs(root / wnids[first], [first, first, second])  # 2 of 3 right
    write_coded_jpegs(root / wnids[third], [third, third])  # 2 of 2 right
    (root / wnids[third] / 'zz_corrupt.JPEG').write_bytes(corrupt_jpeg())
    entries = {}
    for flag in ([], ['--decode-on-device']):
        results = tmp_path / f'results{len(flag)}.json'
        argv = [str(root), '--dataset', 'imagenet', '--model', MODEL, '--checkpoint', str(checkpoint), '-b', '4',
                '--workers', '1', '--log-freq', '0', '--results-file', str(results)] + flag
        assert validate.main(argv) == 0
        entries[bool(flag)] = json.loads(results.read_text())['results']['imagenet']
    device = entries[True]
    assert device['preprocessing']['decode_on_device'] is True and entries[False]['preprocessing'][
        'decode_on_device'] is False
    assert device['top1'] == pytest.approx(80.0) and device['num_samples'] == 5 and device['skipped_files'] == 1
    assert {key: device[key] for key in ('top1', 'top5', 'loss', 'num_samples', 'skipped_files')} == {
        key: entries[False][key] for key in ('top1', 'top5', 'loss', 'num_samples', 'skipped_files')}


def test_imagenet_c_failed_jpeg_is_charged_to_its_folder(tmp_path: Path, checkpoint: Path) -> None:
    code, wrong = jpeg_safe_codes(2)
    wnid = imagenet_wnids()[code]
    root = tmp_path / 'ImageNet-C'
    for corruption in CORRUPTIONS:
        for severity in range(1, 6):
            write_coded_jpegs(root / corruption / str(severity) / wnid,
                              [code, wrong] if (corruption, severity) == ('fog', 2) else [code, code])
    (root / 'snow' / '3' / wnid / 'zz_corrupt.JPEG').write_bytes(corrupt_jpeg())
    request = ValidationRequest(data_dir=str(root), dataset='imagenet-c', model=MODEL, checkpoint=str(checkpoint),
                                workers=0, batch_size=4, log_freq=0, decode_on_device=True)
    entry = run_validation(request, init_runtime('cpu'))['results']['imagenet-c']
    assert entry['num_samples'] == 150 and entry['skipped_files'] == 1
    assert entry['errors']['fog']['2'] == 50.0 and entry['errors']['snow']['3'] == 0.0
    assert entry['mean_corruption_error'] == pytest.approx(50.0 / 75)


def test_decode_on_device_is_refused_on_xla_before_any_work(tmp_path: Path) -> None:
    request = ValidationRequest(data_dir=str(tmp_path / 'missing'), decode_on_device=True)
    with pytest.raises(UsageError, match='--decode-on-device works with CUDA .* not xla; drop it'):
        run_validation(request, types.SimpleNamespace(kind='xla'))


def test_validate_refuses_nearest_resizing_on_the_device_before_scoring(tmp_path: Path, checkpoint: Path) -> None:
    write_coded_jpegs(tmp_path / 'val' / imagenet_wnids()[1], [1])
    request = ValidationRequest(data_dir=str(tmp_path / 'val'), dataset='imagenet', model=MODEL,
                                checkpoint=str(checkpoint), workers=0, decode_on_device=True,
                                interpolation='nearest', results_file=str(tmp_path / 'r.json'))
    with pytest.raises(UsageError, match='not nearest; pass --interpolation bicubic or drop --decode-on-device'):
        run_validation(request, init_runtime('cpu'))
    assert not (tmp_path / 'r.json').exists()
