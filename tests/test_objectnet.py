"""ObjectNet: the download's mappings read as its own code reads them, the 2-pixel border cut, both poolings."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from dataset_trees import class_color, register_color_model, save_color_checkpoint
from robustcnn.benchmarks import DatasetLayoutError
from robustcnn.benchmarks.objectnet import ObjectNet
from robustcnn.benchmarks.runner import ValidationRequest, infer_dataset, run_validation
from robustcnn.data.label_space import LabelSpace
from robustcnn.engine.runtime import init_runtime

MODEL = register_color_model()

# ObjectNet class -> (folder, classifier indices of its ImageNet classes); 'Broom' has no ImageNet counterpart.
CLASSES = {'Mug': ('mug', [10, 12]), 'Chair': ('chair', [20]), 'Banana': ('banana', [30])}
# (folder, class the picture shows): the colour model's 1000-way top-1 is the code itself
IMAGES = [('mug', 11), ('mug', 12), ('chair', 24), ('chair', 20), ('banana', 26), ('banana', 22), ('broom', 30)]


def _imagenet_id(index: int) -> int:
    """A non-trivial classifier index -> ImageNet 2012 id permutation, so the test sees the id file being used."""
    return (index + 500) % 1000


def _objectnet(root: Path) -> Path:
    base = root / 'objectnet-1.0'
    mappings = base / 'mappings'
    mappings.mkdir(parents=True)
    folders = {name: folder for name, (folder, _) in CLASSES.items()} | {'Broom': 'broom'}
    (mappings / 'folder_to_objectnet_label.json').write_text(json.dumps({v: k for k, v in folders.items()}))
    (mappings / 'objectnet_to_imagenet_1k.json').write_text(json.dumps(
        {name: '; '.join(f'imagenet class {_imagenet_id(index)}' for index in indices)
         for name, (_, indices) in CLASSES.items()}))
    (mappings / 'pytorch_to_imagenet_2012_id.json').write_text(json.dumps(
        {str(index): _imagenet_id(index) for index in range(1000)}))
    (mappings / 'imagenet_to_label_2012_v2').write_text(''.join(f'imagenet class {i}\n' for i in range(1000)))
    for number, (folder, code) in enumerate(IMAGES):
        # a 36 px photo: a 2 px red border around the 32 px picture (the colour model reads the mean colour)
        image = Image.new('RGB', (36, 36), (255, 0, 0))
        image.paste(Image.new('RGB', (32, 32), class_color(code)), (2, 2))
        path = base / 'images' / folder / f'{number:04d}.png'
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    return root


def _expected(pooling: str) -> float:
    """Top-1 over the images of the three overlapping classes, computed from the rule's definition."""
    ordered = sorted(CLASSES.values())  # targets: folders in sorted order (banana, chair, mug)
    correct = total = 0
    for folder, code in IMAGES:
        positions = [position for position, (name, _) in enumerate(ordered) if name == folder]
        if not positions:
            continue
        target = positions[0]
        if pooling == 'max':
            pooled = [max(-abs(index - code) for index in indices) for _, indices in ordered]
            correct += pooled.index(max(pooled)) == target
        else:
            correct += code in ordered[target][1]
        total += 1
    return 100.0 * correct / total


@pytest.mark.parametrize('pooling', ['max', 'template'])
def test_objectnet_border_poolings_and_left_out_classes(tmp_path: Path, pooling: str) -> None:
    root = _objectnet(tmp_path / 'download')
    assert infer_dataset(root)[0] == 'objectnet'
    request = ValidationRequest(data_dir=str(root), dataset='objectnet', model=MODEL,
                                checkpoint=str(save_color_checkpoint(tmp_path / 'color.pth')), workers=0,
                                batch_size=4, log_freq=0, objectnet_pooling=pooling)
    entry = run_validation(request, init_runtime('cpu'))['results']['objectnet']
    assert entry['top1_by_pooling'] == {'max': pytest.approx(_expected('max')),
                                        'template': pytest.approx(_expected('template'))}
    assert (_expected('max'), _expected('template')) == (pytest.approx(500 / 6), pytest.approx(200 / 6))
    assert entry['top1'] == pytest.approx(_expected(pooling)) and entry['pooling'] == pooling
    assert entry['num_samples'] == 6 and entry['num_classes'] == 3  # the broom image is left out
    assert entry['preprocessing']['border'] == 2


def test_objectnet_without_mappings_or_with_a_bad_pooling_is_one_line(tmp_path: Path) -> None:
    (tmp_path / 'objectnet-1.0' / 'images').mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match='no ObjectNet under .*mappings/'):
        ObjectNet().prepare(tmp_path, LabelSpace.imagenet_1k())
    root = _objectnet(tmp_path / 'download')
    with pytest.raises(DatasetLayoutError, match='--objectnet-pooling must be one of max, template'):
        ObjectNet().prepare(root, LabelSpace.imagenet_1k(),
                            ValidationRequest(data_dir=str(root), objectnet_pooling='mean'))


def test_border_is_cut_before_the_resize() -> None:
    """ObjectNet's loaders crop (2, 2, w - 2, h - 2) of the decoded photo; the record says so."""
    import dataclasses

    import torch

    from robustcnn.data.transforms import build_eval_transform, resolve_eval_preprocessing
    preprocessing = resolve_eval_preprocessing(None, 'none', input_size=(3, 32, 32), crop_pct=1.0,
                                               interpolation='bilinear', mean=(0.5,) * 3, std=(0.5,) * 3)
    photo = Image.new('RGB', (40, 30), (255, 0, 0))
    photo.paste(Image.new('RGB', (36, 26), (7, 8, 9)), (2, 2))
    cut = build_eval_transform(dataclasses.replace(preprocessing, border=2))(photo)
    assert cut.shape == (3, 26, 36) and bool((cut == torch.tensor([7, 8, 9]).view(3, 1, 1)).all())
    assert build_eval_transform(preprocessing)(photo).shape == (3, 30, 40)
    assert 'border' not in preprocessing.as_dict() and dataclasses.replace(preprocessing, border=2).as_dict()[
        'border'] == 2
