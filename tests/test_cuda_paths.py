"""The CUDA paths: bf16/float16 autocast training, channels-last, fusion and torch.compile, nvJPEG decoding, and
the rows of the GPU device check (scripts/device_check.sh).

They run wherever a GPU is visible and are skipped elsewhere (CI has none): `python -m pytest -m cuda` on a GPU
machine is the check to make before trusting the CUDA numbers. `ROBUSTCNN_TEST_DEVICE=cpu` runs the same tests
on the CPU, which checks the tests themselves where no GPU exists (expectations that only hold on CUDA, such as
the bf16 defaults, follow the device).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import robustcnn  # noqa: F401  (registers the models)
from helpers_train import TINY_FLAGS, load_weights, make_image_folders
from robustcnn.config import parse_train_args
from robustcnn.engine.trainer import run_training

DEVICE = os.environ.get('ROBUSTCNN_TEST_DEVICE') or ('cuda' if torch.cuda.is_available() else None)
ON_CUDA = DEVICE == 'cuda'
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    DEVICE is None, reason='needs a CUDA device (ROBUSTCNN_TEST_DEVICE=cpu checks these tests on the CPU)')]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folders(tmp_path_factory.mktemp('colours'), train_per_class=16, val_per_class=6)


@pytest.mark.parametrize('amp_flags,expected_dtype', [([], 'bfloat16'), (['--amp', '--amp-dtype', 'float16'],
                                                                         'float16')])
def test_training_learns_with_the_device_defaults_and_float16_scaling(dataset: Path, tmp_path: Path,
                                                                       amp_flags: list[str],
                                                                       expected_dtype: str) -> None:
    """Defaults on CUDA: bf16 autocast + channels-last; float16 adds the gradient scaler. Either way it learns."""
    run = tmp_path / 'run'
    run_training(parse_train_args([str(dataset), *TINY_FLAGS, '--device', DEVICE, '--epochs', '3', '--output',
                                   str(tmp_path), '--experiment', 'run', *amp_flags]))
    saved = yaml.safe_load((run / 'args.yaml').read_text())
    amp_on = bool(amp_flags) or ON_CUDA
    assert saved['amp'] is amp_on and saved['channels_last'] is ON_CUDA
    if amp_on:
        assert saved['amp_dtype'] == expected_dtype
    rows = (run / 'summary.csv').read_text().splitlines()
    header, last = rows[0].split(','), rows[-1].split(',')
    assert float(last[header.index('eval_top1')]) >= 75.0  # 4 colour classes: chance is 25%
    weights = load_weights(run / 'last.pth.tar')
    assert all(torch.isfinite(value).all() for value in weights.values() if value.is_floating_point())
    assert all(value.device.type == 'cpu' for value in weights.values())  # checkpoints load anywhere


def test_fused_compiled_and_channels_last_inference_match_eager() -> None:
    import timm

    torch.manual_seed(0)
    model = timm.create_model('robust_resnet_dw_pico', num_classes=10).eval()
    for module in model.modules():  # non-trivial BatchNorm statistics, so folding has something to fold
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model = model.to(DEVICE)
    images = torch.randn(4, 3, 64, 64, device=DEVICE)
    with torch.inference_mode():
        reference = model(images)
    fused = timm.create_model('robust_resnet_dw_pico', num_classes=10).eval()
    fused.load_state_dict(model.state_dict())
    fused = fused.to(DEVICE)
    fused.fuse()
    with torch.inference_mode():
        torch.testing.assert_close(fused(images), reference, rtol=1e-4, atol=1e-4)
        channels_last = fused.to(memory_format=torch.channels_last)
        torch.testing.assert_close(channels_last(images.contiguous(memory_format=torch.channels_last)), reference,
                                   rtol=1e-4, atol=1e-4)
    compiled = torch.compile(model, backend='inductor' if ON_CUDA else 'aot_eager', fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), reference, rtol=1e-3, atol=1e-3)
    with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16):
        bf16 = model(images).float()
    assert (bf16.argmax(1) == reference.argmax(1)).float().mean() >= 0.75


def _jpeg(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path, format='JPEG', quality=90)
    return path


def test_device_decoding_matches_pil_up_to_decoder_rounding(tmp_path: Path) -> None:
    from robustcnn.data.device_decode import DeviceDecodingLoader, JpegBytesDataset, collate_encoded_batch
    from robustcnn.data.transforms import EvalPreprocessing, build_eval_transform

    rng = np.random.default_rng(0)
    smooth = [np.clip(np.cumsum(rng.normal(0, 6, (48, 64, 3)), axis=1) + 128, 0, 255).astype(np.uint8)
              for _ in range(5)]  # photo-like gradients rather than noise, where IDCT rounding shows least
    paths = [_jpeg(tmp_path / f'{index}.JPEG', pixels) for index, pixels in enumerate(smooth)]
    corrupt = bytearray(paths[0].read_bytes())
    table = corrupt.find(b'\xff\xc4')
    corrupt[table + 5:table + 25] = b'\xff' * 20
    (tmp_path / '9_corrupt.JPEG').write_bytes(bytes(corrupt))
    samples = [(str(path), 0) for path in sorted(tmp_path.iterdir())]
    preprocessing = EvalPreprocessing(input_size=(3, 48, 64), resize_mode='none', crop_pct=1.0, crop_mode='center',
                                      interpolation='bicubic', mean=(0.5,) * 3, std=(0.5,) * 3)
    transform = build_eval_transform(preprocessing)
    dataset = JpegBytesDataset(samples, transform)
    inner = torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=1, collate_fn=collate_encoded_batch,
                                        pin_memory=ON_CUDA)
    (batch,) = list(DeviceDecodingLoader(inner, transform, torch.device(DEVICE), dataset))
    assert batch.images.device.type == DEVICE and batch.num_failed == 1 and batch.failed_indices.tolist() == [5]
    expected = torch.stack([torch.from_numpy(np.array(Image.open(path).convert('RGB'))).permute(2, 0, 1)
                            for path in paths])
    difference = (batch.images.cpu().int() - expected.int()).abs().float()
    assert difference.mean() < (2.0 if ON_CUDA else 1e-9) and difference.max() <= (40 if ON_CUDA else 0)


def test_validate_on_the_device_counts_like_the_cpu(tmp_path: Path) -> None:
    """validate.py on the device with its defaults (bf16, channels-last, fused) and --decode-on-device."""
    from dataset_trees import build_wnid_tree, register_color_model, save_color_checkpoint

    sys.path.insert(0, str(REPO))
    import validate

    model = register_color_model()
    checkpoint = save_color_checkpoint(tmp_path / 'color.pth')
    build_wnid_tree(tmp_path / 'val', {3: [3, 3, 9], 7: [7, 7]})  # lossless PNGs named .JPEG: workers decode
    entries = {}
    for device in ('cpu', DEVICE):
        for flags in ([], ['--decode-on-device']):
            results = tmp_path / f'{device}{len(flags)}.json'
            assert validate.main([str(tmp_path / 'val'), '--dataset', 'imagenet', '--model', model, '--checkpoint',
                                  str(checkpoint), '--device', device, '--workers', '1', '--log-freq', '0',
                                  '--results-file', str(results), *flags]) == 0
            entries[device, bool(flags)] = json.loads(results.read_text())['results']['imagenet']
    assert {key: (entry['top1'], entry['num_samples']) for key, entry in entries.items()} == {
        key: (80.0, 5) for key in entries}
    if ON_CUDA:
        assert torch.backends.cudnn.benchmark  # Runtime.device_settings: fixed-shape evaluation picks kernels once


def test_speed_rows_of_the_device_check_on_the_device() -> None:
    """Every throughput row the device check takes on a GPU: train and infer, each variant (compiled training too),
    device-generated batches, peak memory on CUDA; one failing row (out of memory) is recorded, not raised."""
    from robustcnn.speed.device_check import plan_for
    from robustcnn.speed.throughput import SpeedSettings, machine_info, measure_model, parse_variant

    plan = plan_for('cuda', quick=False)
    for variant in (*plan.variants, plan.compile_variant):
        for mode in ('train', 'infer'):  # inference rows are fused, and compiled fused
            result = measure_model(SpeedSettings(
                model='robust_resnet_dw_pico', mode=mode, variant=variant, device=DEVICE,
                batch_size=4 if ON_CUDA else 2, img_size=64 if ON_CUDA else 32,
                warmup=2, iterations=1, repeats=2, compile_backend='inductor' if ON_CUDA else 'aot_eager',
                **parse_variant(variant)))
            assert result.error is None and result.images_per_second > 0, (mode, variant, result.error)
            assert (result.peak_memory_mib is not None and result.peak_memory_mib > 0) is ON_CUDA
            assert result.warmup_s is not None and len(result.step_ms_all) == 2
    if ON_CUDA:
        assert torch.backends.cudnn.benchmark  # fixed shapes: cuDNN picks its kernels in the warm-up
        free, _ = torch.cuda.mem_get_info()
        too_big = measure_model(SpeedSettings(model='robust_resnet_dw_pico', mode='train', device=DEVICE,
                                              batch_size=int(free // (3 * 4 * 64 * 64)) * 4, img_size=64))
        assert too_big.error is not None and too_big.error.startswith('out of memory')
        peaks = [measure_model(SpeedSettings(model='robust_resnet_dw_pico', mode='train', device=DEVICE,
                                             batch_size=batch, img_size=64, warmup=1, iterations=1, repeats=1)
                               ).peak_memory_mib for batch in (64, 2)]
        assert peaks[1] < peaks[0]  # each row's own peak: reset after the previous row's memory was freed
        info = machine_info(DEVICE)
        assert info['gpu'] and info['cuda'] and info['gpu_memory_gib'] > 0 and 'driver' in info


def test_imagenet_c_pipeline_of_the_device_check_with_and_without_device_decoding(tmp_path: Path) -> None:
    """The device check's ImageNet-C part: validate.py's path on the device with its device defaults (bf16 and
    channels-last on CUDA), JPEGs decoded by the workers and by the device; every image counted both ways."""
    from robustcnn.speed.pipelines import build_imagenet_c_tree, save_random_checkpoint, time_one_pipeline

    root = build_imagenet_c_tree(tmp_path / 'c', num_classes=1, images_per_class=1, image_size=32)
    checkpoint = save_random_checkpoint('robust_resnet_dw_pico', tmp_path / 'w.pth')
    amp_dtype, channels_last = ('bfloat16', True) if ON_CUDA else (None, False)
    entries = {}
    for decode_on_device in (False, True):
        _, payload = time_one_pipeline(root, 'robust_resnet_dw_pico', checkpoint, 16, 1, DEVICE, decode_on_device,
                                       amp_dtype, channels_last)
        entries[decode_on_device] = payload['results']['imagenet-c']
    assert all(entry['num_samples'] == 75 and entry['skipped_files'] == 0 for entry in entries.values())
    assert entries[True]['preprocessing']['decode_on_device'] is True
    if not ON_CUDA:  # the CPU decoder gives PIL's pixels exactly; nvJPEG rounds differently
        assert entries[True]['errors'] == entries[False]['errors']
