"""Reading class-folder trees: labels from folder names, and hostile image files handled without crashing."""
import io
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import functional as F

from robustcnn.data.folder import (
    ClassFolderDataset, ImageDecodeError, load_rgb_image, scan_class_folders,
)
from robustcnn.data.loader import collate_eval_batch


def _save(image: Image.Image, path, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


@pytest.fixture
def hostile_tree(tmp_path):
    """One class folder holding every kind of file a real dataset has been seen to contain."""
    root = tmp_path / 'data' / 'n01440764'
    good = {
        'rgb.jpg': lambda p: _save(Image.new('RGB', (20, 10), (200, 10, 10)), p),
        'cmyk.jpg': lambda p: _save(Image.new('CMYK', (20, 10), (0, 255, 255, 0)), p),
        'gray.jpg': lambda p: _save(Image.new('L', (20, 10), 128), p),
        'gray16.png': lambda p: _save(Image.fromarray(np.full((10, 20), 65535, dtype=np.uint16)), p),
        'palette.png': lambda p: _save(Image.new('RGB', (20, 10), (0, 0, 255)).convert('P'), p),
        'rgba.png': lambda p: _save(Image.new('RGBA', (20, 10), (0, 255, 0, 0)), p),
    }
    for name, make in good.items():
        make(root / name)
    full = io.BytesIO()
    Image.new('RGB', (64, 64), (1, 2, 3)).save(full, format='JPEG')
    bad = {
        'empty.jpg': b'',
        'truncated.jpg': full.getvalue()[:len(full.getvalue()) // 2],
        'text.png': b'this is not an image at all',
    }
    # damaged TIFF tags: Pillow raises TypeError (rational strip offsets) and OverflowError (signed colour map)
    tiff = io.BytesIO()
    Image.new('RGB', (37, 23)).save(tiff, format='TIFF')
    offsets = bytearray(tiff.getvalue())
    offsets[offsets.find(bytes.fromhex('11010400')) + 2] = 10
    bad['bad_offsets.tif'] = bytes(offsets)
    tiff = io.BytesIO()
    Image.new('RGB', (37, 23), (5, 100, 200)).convert('P').save(tiff, format='TIFF')
    colour_map = bytearray(tiff.getvalue())
    colour_map[colour_map.find(bytes.fromhex('40010300')) + 2] = 6
    bad['bad_colormap.tif'] = bytes(colour_map)
    for name, content in bad.items():
        (root / name).write_bytes(content)
    _save(Image.new('L', (3000, 3000)), root / 'bomb.png')  # over the (test-lowered) pixel limit below
    (root / 'notes.txt').write_text('ignored: not an image extension')
    return tmp_path / 'data', sorted(good), sorted([*bad, 'bomb.png'])


@pytest.fixture
def small_pixel_limit(monkeypatch):
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 2_000_000)


def test_every_decodable_format_becomes_8bit_rgb(hostile_tree, small_pixel_limit):
    root, good, _ = hostile_tree
    colours = {}
    for name in good:
        image = load_rgb_image(root / 'n01440764' / name)
        assert image.mode == 'RGB' and image.size == (20, 10)
        colours[name] = image.getpixel((5, 5))
    assert colours['rgb.jpg'][0] > 180
    assert colours['gray16.png'] == (255, 255, 255), '16-bit white stays white (scaled, not clipped)'
    assert colours['palette.png'] == (0, 0, 255)
    # alpha dropped, the colour under it kept: what timm/torchvision/the reference eval scripts' convert('RGB') give
    assert colours['rgba.png'] == (0, 255, 0), 'transparency is dropped as the reference loaders drop it'
    assert colours['cmyk.jpg'][0] > 200 and colours['cmyk.jpg'][1] < 60  # CMYK (0,255,255,0) is red
    assert abs(colours['gray.jpg'][0] - 128) <= 2


def test_sixteen_bit_midtones_are_scaled():
    array = np.full((4, 4), 32768, dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format='PNG')
    buffer.seek(0)
    assert load_rgb_image(buffer).getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize('name', ['empty.jpg', 'truncated.jpg', 'text.png', 'bomb.png', 'bad_offsets.tif',
                                  'bad_colormap.tif'])
def test_undecodable_files_raise_decode_error_naming_the_file(hostile_tree, small_pixel_limit, name):
    root, _, _ = hostile_tree
    with pytest.raises(ImageDecodeError, match=name):
        load_rgb_image(root / 'n01440764' / name)


def _loader(dataset, workers=0):
    return DataLoader(dataset, batch_size=4, num_workers=workers, collate_fn=collate_eval_batch)


def test_evaluation_skips_and_counts_bad_files(hostile_tree, small_pixel_limit, caplog):
    root, good, bad = hostile_tree
    dataset = ClassFolderDataset.from_folder(root, {'n01440764': 7},
                                             transform=lambda im: F.to_tensor(im.resize((8, 8))))
    assert len(dataset) == len(good) + len(bad), '.txt is not an image and is not listed'
    with caplog.at_level(logging.WARNING):
        batches = list(_loader(dataset))
    kept = sum(len(batch.targets) for batch in batches)
    failed = sum(batch.num_failed for batch in batches)
    assert kept == len(good) and failed == len(bad)
    assert all(torch.all(batch.targets == 7) for batch in batches)
    for name in bad:
        assert name in caplog.text, f'{name} is named in a warning'
    seen = sorted(dataset.samples[i][0].rsplit('/', 1)[-1] for b in batches for i in b.indices.tolist())
    assert seen == good


def test_training_replaces_bad_files_and_counts_them(hostile_tree, small_pixel_limit):
    root, good, bad = hostile_tree
    dataset = ClassFolderDataset.from_folder(root, transform=lambda im: F.to_tensor(im.resize((8, 8))),
                                             on_decode_error='replace')
    batches = list(_loader(dataset))
    assert sum(len(batch.targets) for batch in batches) == len(dataset), 'batch sizes stay fixed'
    assert sum(batch.num_failed for batch in batches) >= len(bad)
    assert dataset.class_to_index == {'n01440764': 0}


def test_bad_files_in_worker_processes_are_counted(hostile_tree):
    root, good, bad = hostile_tree
    dataset = ClassFolderDataset.from_folder(root, transform=lambda im: F.to_tensor(im.resize((8, 8))))
    batches = list(_loader(dataset, workers=2))
    assert sum(b.num_failed for b in batches) == len(bad) - 1  # the bomb decodes under the default pixel limit
    assert sum(len(b.targets) for b in batches) == len(good) + 1


def test_labels_come_from_folder_names_not_enumeration(tmp_path):
    label_space = {'n01': 0, 'n02': 1, 'n03': 2, 'n04': 3}
    for name in ('n02', 'n04'):  # a partial tree: two of four classes present
        _save(Image.new('RGB', (4, 4)), tmp_path / name / 'a.png')
    samples = scan_class_folders(tmp_path, label_space)
    assert [label for _, label in samples] == [1, 3]
    _save(Image.new('RGB', (4, 4)), tmp_path / 'unknown_class' / 'a.png')
    with pytest.raises(ValueError, match='unknown_class'):
        scan_class_folders(tmp_path, label_space)


def test_unknown_decode_mode_rejected():
    with pytest.raises(ValueError, match="'skip' or 'replace'"):
        ClassFolderDataset([], on_decode_error='retry')


def _colour_tree(root, names=('ant', 'bee')):
    for index, name in enumerate(names):
        _save(Image.new('RGB', (8, 8), (index * 100, 0, 0)), root / name / 'a.png')
        _save(Image.new('RGB', (8, 8), (index * 100, 50, 0)), root / name / 'b.png')
    return {name: index for index, name in enumerate(names)}


def test_folder_links_inside_class_folders_neither_duplicate_mislabel_nor_hang(tmp_path, caplog):
    """class/loop -> . used to repeat its images ~41 times, ant/up -> .. read bee's images as ant, and two self-loops
    in one folder hung the scan: links to folders inside a class folder are not followed (a warning says so)."""
    root = tmp_path / 'data'
    classes = _colour_tree(root)
    (root / 'ant' / 'loop').symlink_to('.')
    (root / 'ant' / 'up').symlink_to('..')
    (root / 'bee' / 'self1').symlink_to('self2')
    (root / 'bee' / 'self2').symlink_to('self1')
    (root / 'bee' / 'nested').mkdir()
    (root / 'bee' / 'nested' / 'again').symlink_to('../..')
    with caplog.at_level(logging.WARNING):
        samples = scan_class_folders(root, classes)
    assert samples == [(str(root / 'ant' / 'a.png'), 0), (str(root / 'ant' / 'b.png'), 0),
                       (str(root / 'bee' / 'a.png'), 1), (str(root / 'bee' / 'b.png'), 1)]
    assert 'not following 3 folder link(s)' in caplog.text


def test_a_class_folder_linking_to_the_tree_itself_is_refused(tmp_path):
    from robustcnn.data.folder import list_class_folders

    root = tmp_path / 'data'
    _colour_tree(root)
    (root / 'everything').symlink_to('.')
    with pytest.raises(ValueError, match=r'class folder .*everything links to .*which is the dataset folder'):
        list_class_folders(root)
    (root / 'everything').unlink()
    (root / 'copy_of_ant').symlink_to(root / 'ant')
    with pytest.raises(ValueError, match='copy_of_ant links to'):
        list_class_folders(root)
    (root / 'copy_of_ant').unlink()
    elsewhere = tmp_path / 'other_dataset' / 'cat'
    _save(Image.new('RGB', (8, 8)), elsewhere / 'c.png')
    (root / 'cat').symlink_to(elsewhere)  # trees assembled from another dataset's folders still work
    assert list_class_folders(root) == ['ant', 'bee', 'cat']


def test_a_fifo_named_like_an_image_is_skipped_and_counted_not_waited_on(tmp_path):
    root = tmp_path / 'data'
    classes = _colour_tree(root, names=('ant',))
    os.mkfifo(root / 'ant' / 'pipe.jpg')
    dataset = ClassFolderDataset(scan_class_folders(root, classes), transform=F.pil_to_tensor)
    assert [os.path.basename(path) for path, _ in dataset.samples] == ['a.png', 'b.png', 'pipe.jpg']
    batch = collate_eval_batch([dataset[index] for index in range(len(dataset))])
    assert batch.num_failed == 1 and batch.images.shape[0] == 2
    with pytest.raises(ImageDecodeError, match='not a regular file'):
        load_rgb_image(root / 'ant' / 'pipe.jpg')


def test_an_image_whose_resize_would_exhaust_memory_is_skipped_before_decoding(tmp_path):
    """A 5,000,000 x 1 PNG is ~5 KB and under PIL's pixel limit; resizing its short side to 256 px asked for ~19 GB."""
    from robustcnn.data.folder import PIXEL_BUDGET

    strip = _save(Image.new('L', (5_000_000, 1)), tmp_path / 'strip.png')
    assert 5_000_000 < Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageDecodeError, match=rf'5000000x1 pixels exceed the pixel budget of {PIXEL_BUDGET}'):
        load_rgb_image(strip)
    wide = _save(Image.new('RGB', (1200, 100)), tmp_path / 'panorama.png')  # 12:1 is still an image
    assert load_rgb_image(wide).size == (1200, 100)
