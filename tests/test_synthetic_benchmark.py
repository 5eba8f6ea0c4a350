"""The synthetic benchmark generator: determinism, the real datasets' layouts, corruption severities, shape as the
label, texture as a tempting but unreliable cue, and generation that is atomic and cached; and the demo's stylized
pass, scored once against the shape and the texture labels."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from robustcnn.benchmarks import get_benchmark
from robustcnn.benchmarks.imagenet_c import CORRUPTIONS, SEVERITIES
from robustcnn.data.label_space import LabelSpace
from robustcnn.synthetic import benchmark as synthetic
from robustcnn.synthetic.benchmark import (CLASS_NAMES, CLASS_TEXTURES, TEXTURE_CLASSES, TEXTURE_LABELLED,
                                           SyntheticBenchmarkError, SyntheticConfig, corruption_stream,
                                           ensure_benchmark, render_sample, sample_spec, stylized_spec)
from robustcnn.synthetic.corruptions import corrupt
from robustcnn.synthetic.shapes import render_outline

TINY = SyntheticConfig(seed=3, train_per_class=2, val_per_class=2, shift_per_class=1, corruption_per_class=1)
LABELS = LabelSpace(CLASS_NAMES, 'synthetic classes')


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every image under ``root`` by relative path (the manifest's timing is allowed to differ)."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob('*.png'))}


@pytest.fixture(scope='module')
def tiny_root(tmp_path_factory) -> Path:
    return ensure_benchmark(TINY, tmp_path_factory.mktemp('synthetic') / 'bench', workers=2)


def test_same_seed_same_bytes_whatever_the_worker_count(tiny_root: Path, tmp_path: Path) -> None:
    again = ensure_benchmark(TINY, tmp_path / 'again', workers=1)
    first, second = tree_hashes(tiny_root), tree_hashes(again)
    assert len(first) == 10 * (2 + 2 + 3 * 1 + 1) + 75 * 10
    assert first == second
    other_seed = SyntheticConfig(seed=4, train_per_class=2, val_per_class=2, shift_per_class=1,
                                 corruption_per_class=1)
    for split in ('train', 'val'):
        image = np.asarray(Image.open(tiny_root / split / 'star' / 'star_00001.png'))
        np.testing.assert_array_equal(image, render_sample(sample_spec(TINY, split, 8, 1), 64).image)
        assert not np.array_equal(image, render_sample(sample_spec(other_seed, split, 8, 1), 64).image)


def test_layouts_are_the_real_datasets(tiny_root: Path) -> None:
    """The folders are read by the very benchmark code that reads ImageNet, Stylized-ImageNet, ImageNet-C..."""
    for split in ('train', 'val', 'stylized', 'sketch', 'rendition'):
        assert sorted(entry.name for entry in (tiny_root / split).iterdir()) == sorted(CLASS_NAMES)
    assert {entry.name for entry in (tiny_root / TEXTURE_LABELLED).iterdir()} <= set(CLASS_NAMES)
    imagenet = get_benchmark('imagenet').prepare(tiny_root, LABELS)  # finds val/ inside, like ImageNet
    assert imagenet.root == tiny_root / 'val' and len(imagenet.samples) == 20
    assert {label for _, label in imagenet.samples} == set(range(10))
    for name, folder in (('stylized-imagenet', 'stylized'), ('imagenet-sketch', 'sketch'), ('folder', 'rendition')):
        prepared = get_benchmark(name).prepare(tiny_root / folder, LABELS)
        assert len(prepared.samples) == 10
        for path, label in prepared.samples:  # the label is the shape, and the folder says so
            assert Path(path).parent.name == CLASS_NAMES[label] and Path(path).name.startswith(CLASS_NAMES[label])
    corruption = get_benchmark('imagenet-c').prepare(tiny_root / 'corruption', LABELS)
    assert corruption.notes['missing_groups'] == []
    assert corruption.group_names == [f'{name}/{severity}' for name in CORRUPTIONS for severity in SEVERITIES]
    assert set(corruption.group_sizes) == {10}
    manifest = json.loads((tiny_root / 'manifest.json').read_text())
    assert manifest['config'] == TINY.as_dict() and manifest['class_names'] == list(CLASS_NAMES)
    assert manifest['images'] == len(tree_hashes(tiny_root))
    with Image.open(tiny_root / 'train' / 'star' / 'star_00000.png') as image:
        assert image.size == (64, 64) and image.mode == 'RGB'


def test_corrupted_images_are_the_val_images(tiny_root: Path) -> None:
    clean = np.asarray(Image.open(tiny_root / 'val' / 'ring' / 'ring_00000.png'), dtype=np.float64)
    mild = np.asarray(Image.open(tiny_root / 'corruption' / 'brightness' / '1' / 'ring' / 'ring_00000.png'),
                      dtype=np.float64)
    assert 0 < np.abs(mild - clean).mean() < 40


@pytest.mark.parametrize('corruption', CORRUPTIONS)
def test_severity_moves_further_from_the_clean_image(corruption: str) -> None:
    """Mean absolute difference from the clean image grows strictly with the severity (over a few images)."""
    config = SyntheticConfig()
    distances = np.zeros(len(SEVERITIES))
    for class_index in range(0, 10, 2):
        clean = render_sample(sample_spec(config, 'val', class_index, 0), config.image_size).image
        for position, severity in enumerate(SEVERITIES):
            corrupted = corrupt(clean, corruption, severity, corruption_stream(config, corruption, class_index, 0))
            assert corrupted.shape == clean.shape and corrupted.dtype == np.uint8
            distances[position] += np.abs(corrupted.astype(np.float64) - clean).mean()
    assert np.all(np.diff(distances) > 0), f'{corruption}: distances by severity {distances.round(2)}'
    assert distances[0] > 0


def test_shape_is_the_label_in_every_rendering() -> None:
    """Shifted renderings keep the val image's mask; the sketch's ink lies on that mask's outline."""
    config = SyntheticConfig()
    for class_index in range(10):
        spec = sample_spec(config, 'val', class_index, 1)
        clean = render_sample(spec, 64)
        styled_spec = stylized_spec(config, spec, class_index, 1)
        for rendered in (render_sample(styled_spec, 64), render_sample(spec, 64, 'sketch'),
                         render_sample(spec, 64, 'rendition')):
            np.testing.assert_array_equal(rendered.mask, clean.mask)
        assert styled_spec.placement == spec.placement
        assert styled_spec.foreground_texture != CLASS_TEXTURES[CLASS_NAMES[class_index]]
        sketch = render_sample(spec, 64, 'sketch').image.astype(np.float64).mean(axis=2)
        ink = sketch < 180
        band = render_outline(spec.placement, 64, width=4.0) > 0
        assert ink.sum() > 20
        assert (ink & band).sum() >= 0.95 * ink.sum()
        inside = clean.mask > 0.99
        assert not np.array_equal(render_sample(styled_spec, 64).image[inside], clean.image[inside])


def test_texture_is_tempting_but_unreliable() -> None:
    config = SyntheticConfig()
    typical = [sample_spec(config, 'train', class_index, index).foreground_texture ==
               CLASS_TEXTURES[CLASS_NAMES[class_index]] for class_index in range(10) for index in range(200)]
    assert 0.76 < np.mean(typical) < 0.84
    never = SyntheticConfig(texture_correlation=0.0)
    assert not any(sample_spec(never, 'train', class_index, index).foreground_texture ==
                   CLASS_TEXTURES[CLASS_NAMES[class_index]] for class_index in range(10) for index in range(50))


def test_texture_labelled_copy_names_the_texture_class(tiny_root: Path) -> None:
    for class_index, class_name in enumerate(CLASS_NAMES):
        spec = stylized_spec(TINY, sample_spec(TINY, 'val', class_index, 0), class_index, 0)
        texture_class = TEXTURE_CLASSES[spec.foreground_texture]
        copy = tiny_root / TEXTURE_LABELLED / texture_class / f'{class_name}_00000.png'
        assert copy.read_bytes() == (tiny_root / 'stylized' / class_name / f'{class_name}_00000.png').read_bytes()
        assert texture_class != class_name


def test_cached_folder_is_reused_and_foreign_folders_refused(tiny_root: Path, tmp_path: Path) -> None:
    before = (tiny_root / 'manifest.json').stat().st_mtime_ns
    assert ensure_benchmark(TINY, tiny_root) == tiny_root
    assert (tiny_root / 'manifest.json').stat().st_mtime_ns == before
    with pytest.raises(SyntheticBenchmarkError, match='another version/configuration'):
        ensure_benchmark(SyntheticConfig(seed=9, train_per_class=2, val_per_class=2, shift_per_class=1,
                                         corruption_per_class=1), tiny_root)
    incomplete = tmp_path / 'incomplete'
    (incomplete / 'train').mkdir(parents=True)
    with pytest.raises(SyntheticBenchmarkError, match='not a complete'):
        ensure_benchmark(TINY, incomplete)


def test_demo_on_a_foreign_benchmark_folder_is_a_one_line_error(tiny_root: Path, capsys) -> None:
    from robustcnn.cli import run_cli
    from robustcnn.synthetic.demo import main

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ['--data-dir', str(tiny_root), '--seed', '7', '--output', str(tiny_root.parent / 'out')],
                prog='demo.py')
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and 'Traceback' not in err
    assert err.splitlines()[-1].startswith('demo.py: error:') and 'another version/configuration' in err


def test_interrupted_generation_leaves_nothing_that_looks_complete_and_a_rerun_continues_it(
        tiny_root: Path, tmp_path: Path, monkeypatch) -> None:
    calls = []
    real_task = synthetic._run_task

    def failing_task(config, root, task):
        calls.append(task)
        if len(calls) == 5:
            raise KeyboardInterrupt('simulated interruption')
        return real_task(config, root, task)

    monkeypatch.setattr(synthetic, '_run_task', failing_task)
    target = tmp_path / 'bench'
    with pytest.raises(KeyboardInterrupt):
        ensure_benchmark(TINY, target, workers=1)
    assert not target.exists()
    partials = list(tmp_path.iterdir())  # only the hidden partial folder, with the 4 finished parts recorded
    assert len(partials) == 1 and partials[0].name.startswith('.bench.partial-')
    assert len(list((partials[0] / '.done').iterdir())) == 4

    calls.clear()
    monkeypatch.setattr(synthetic, '_run_task', lambda config, root, task: calls.append(task) or real_task(
        config, root, task))
    root = ensure_benchmark(TINY, target, workers=1)
    all_tasks = list(synthetic._tasks(TINY))
    assert len(calls) == len(all_tasks) - 4 and not set(calls) & set(all_tasks[:4])  # the rest, nothing twice
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ['bench']
    assert not (root / '.done').exists() and not (root / '.generation.json').exists()
    assert tree_hashes(root) == tree_hashes(tiny_root)  # the same bytes as a generation in one go
    assert json.loads((root / 'manifest.json').read_text())['images'] == len(tree_hashes(root))


def test_partial_folder_of_a_killed_generation_is_cleaned_up(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(synthetic, '_run_task', lambda config, root, task: 0)  # only the bookkeeping is tested
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    leftover = tmp_path / f'.bench.partial-{int(dead.stdout)}-123'
    (leftover / 'train' / 'star').mkdir(parents=True)
    root = ensure_benchmark(TINY, tmp_path / 'bench', workers=1)
    assert not leftover.exists()
    assert (root / 'manifest.json').is_file()
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ['bench']


def test_default_folder_name_and_cache_root(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv('ROBUSTCNN_CACHE', str(tmp_path))
    assert synthetic.default_benchmark_dir(SyntheticConfig(seed=2)) == tmp_path / 'synthetic-v1-seed2'
    name = TINY.folder_name()
    assert name.startswith('synthetic-v1-seed3-') and name != SyntheticConfig(seed=3).folder_name()
    with pytest.raises(ValueError, match='cannot exceed'):
        SyntheticConfig(val_per_class=2, shift_per_class=3)


def test_the_console_entry_point_runs_the_demo(tiny_root: Path) -> None:
    """`robustcnn demo ...` is scripts/demo.py for installed copies without the scripts folder."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, '-m', 'robustcnn', 'demo', '--help'], capture_output=True, text=True)
    assert done.returncode == 0 and '--texture-correlation' in done.stdout
    refused = subprocess.run([sys.executable, '-m', 'robustcnn', 'demo', '--data-dir', str(tiny_root), '--seed', '7',
                              '--output', str(tiny_root.parent / 'out')], capture_output=True, text=True)
    assert refused.returncode == 2 and 'another version/configuration' in refused.stderr


def test_the_synthetic_corruptions_are_imagenet_c_s_in_its_order() -> None:
    from robustcnn.synthetic import corruptions
    assert corruptions.CORRUPTIONS == CORRUPTIONS  # the ImageNet-C code reads the synthetic tree by these names


def test_generation_reports_progress(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(synthetic, 'PROGRESS_SECONDS', 0.0)  # a line per finished part
    with caplog.at_level('INFO', logger='robustcnn.synthetic.benchmark'):
        root = ensure_benchmark(TINY, tmp_path / 'bench', workers=1)
    lines = [record.getMessage() for record in caplog.records if ' images (' in record.getMessage()]
    total = json.loads((root / 'manifest.json').read_text())['images']
    parts = len(list(synthetic._tasks(TINY)))
    assert len(lines) == parts and lines[-1].startswith(f'synthetic benchmark: {total} of {total} images '
                                                        f'({parts}/{parts} parts)')


# ---------------------------------------------------------------------------------------------------- the demo's
# stylized pass: one model pass, scored against the shape labels and the texture labels

class _OnePassContext:
    """What SyntheticStylized.score uses of EvaluationContext; predict hands back the test's logits."""

    def __init__(self, logits: torch.Tensor, scored: list[bool]) -> None:
        self.logits, self.scored, self.passes = logits, scored, 0

    def preprocessing(self, benchmark):
        return f'{benchmark.name} preprocessing ({benchmark.default_resize_mode})'

    def preprocessing_record(self, preprocessing):
        return {'record': preprocessing}

    def predict(self, prepared, preprocessing, description, reduce=None):
        self.passes += 1
        return SimpleNamespace(outputs=self.logits.clone(), scored=torch.tensor(self.scored),
                               skipped_files=self.scored.count(False), elapsed_seconds=0.5)


def _generated_labels(paths: list[str]) -> tuple[list[int], list[int]]:
    """Shape and texture class of each stylized file, from the generator's specs (not from the folders)."""
    shapes, textures = [], []
    for path in paths:
        class_name, index = Path(path).stem.rsplit('_', 1)
        class_index = CLASS_NAMES.index(class_name)
        spec = stylized_spec(TINY, sample_spec(TINY, 'val', class_index, int(index)), class_index, int(index))
        shapes.append(class_index)
        textures.append(CLASS_NAMES.index(TEXTURE_CLASSES[spec.foreground_texture]))
    return shapes, textures


def _expected_numbers(logits: torch.Tensor, targets: list[int], kept: list[int]) -> dict[str, float]:
    """Top-1, top-5 and mean cross entropy counted here with numpy over the kept rows."""
    values = logits.double().numpy()
    top1 = top5 = loss = 0.0
    for row in kept:
        order = sorted(range(values.shape[1]), key=lambda k: (-values[row, k], k))
        top1 += order[0] == targets[row]
        top5 += targets[row] in order[:5]
        loss += np.log(np.exp(values[row]).sum()) - values[row, targets[row]]
    return {'top1': 100 * top1 / len(kept), 'top5': 100 * top5 / len(kept), 'loss': loss / len(kept)}


def test_the_demo_scores_its_stylized_images_once_against_shape_and_texture(tiny_root: Path) -> None:
    from robustcnn.synthetic.stylized import TEXTURE_LABELS_FIELD, SyntheticStylized

    benchmark = SyntheticStylized()
    prepared = benchmark.prepare(tiny_root / 'stylized', LABELS)
    shapes, textures = _generated_labels([path for path, _ in prepared.samples])
    assert [target for _, target in prepared.samples] == shapes and prepared.notes['texture_targets'] == textures
    assert len(shapes) == 10 and all(shape != texture for shape, texture in zip(shapes, textures))
    # decided: the shape for images 0-3, the texture for 4-8, neither for 9; logits -|k - decided| (no ties in
    # top-5); image 2 failed to decode
    neither = next(k for k in range(10) if k not in (shapes[9], textures[9]))
    decided = shapes[:4] + textures[4:9] + [neither]
    logits = -torch.abs(torch.arange(10.0).unsqueeze(0) - torch.tensor(decided, dtype=torch.float32).unsqueeze(1))
    scored = [row != 2 for row in range(10)]
    context = _OnePassContext(logits, scored)
    entry = benchmark.score(context, prepared)
    by_texture = entry.pop(TEXTURE_LABELS_FIELD)
    assert context.passes == 1
    kept = [row for row in range(10) if scored[row]]
    assert sum(decided[row] == textures[row] for row in kept) == 5  # texture decisions, counted here
    for numbers, targets, top1 in ((entry, shapes, 300 / 9), (by_texture, textures, 500 / 9)):
        expected = _expected_numbers(logits, targets, kept)
        assert expected['top1'] == pytest.approx(top1)
        assert {name: numbers[name] for name in expected} == pytest.approx(expected)
        assert (numbers['num_samples'], numbers['skipped_files']) == (9, 1)
        assert numbers['preprocessing'] == {'record': 'stylized-imagenet preprocessing (none)'}
    # Stylized-ImageNet's entry, field for field (ClassFolderBenchmark.score's), whatever else the pass gave
    assert list(entry) == ['top1', 'top5', 'loss', 'num_samples', 'skipped_files', 'preprocessing',
                           'elapsed_seconds']
    assert by_texture['same_pass_as'] == 'stylized-imagenet'


def test_the_stylized_images_must_pair_with_their_texture_labelled_copies(tiny_root: Path, tmp_path: Path) -> None:
    import shutil

    from robustcnn.benchmarks.base import DatasetLayoutError
    from robustcnn.synthetic.stylized import SyntheticStylized

    for folder in ('stylized', TEXTURE_LABELLED):
        shutil.copytree(tiny_root / folder, tmp_path / folder)
    copy = next((tmp_path / TEXTURE_LABELLED).rglob('star_00000.png'))
    copy.unlink()
    with pytest.raises(DatasetLayoutError, match=r'do not pair up one to one by file name \(e\.g\. star_00000\.png'):
        SyntheticStylized().prepare(tmp_path / 'stylized', LABELS)
    shutil.rmtree(tmp_path / TEXTURE_LABELLED)
    with pytest.raises(DatasetLayoutError, match='no texture-labelled copy'):
        SyntheticStylized().prepare(tmp_path / 'stylized', LABELS)


def test_the_demo_evaluation_keeps_stylized_imagenets_entry_and_adds_the_texture_one(tiny_root: Path, tmp_path: Path,
                                                                                     monkeypatch) -> None:
    """The demo's evaluation on the generated benchmark, with the colour model of dataset_trees (it decides the
    class nearest to the code in an image's mean colour: here the last class of the checkpoint's list for every
    image, so that class is the texture most stylized images wear): the stylized entry is what validate.py's
    Stylized-ImageNet gives on the same folder, and the decisions are counted here from the pixels."""
    from collections import Counter

    from dataset_trees import nearest, register_color_model, save_color_checkpoint
    from robustcnn.benchmarks.runner import ValidationRequest, run_validation
    from robustcnn.engine.runtime import init_runtime
    from robustcnn.synthetic import demo
    from robustcnn.synthetic.demo import TEXTURE_KEY, DemoOptions, _evaluate

    # the corruption tree (750 images) has nothing to do with the stylized pass: left out to keep the test short
    monkeypatch.setattr(demo, 'DATASETS', tuple(row for row in demo.DATASETS if row[0] != 'imagenet-c'))

    files = sorted(str(path) for path in (tiny_root / 'stylized').rglob('*.png'))
    shapes, textures = (
        [CLASS_NAMES[index] for index in labels] for labels in _generated_labels(files))
    common = Counter(textures).most_common(1)[0][0]
    class_names = [name for name in CLASS_NAMES if name != common] + [common]
    model = register_color_model()
    checkpoint = save_color_checkpoint(tmp_path / 'color.pth', num_classes=10, metadata={
        'model': model, 'class_names': class_names, 'num_classes': 10})
    payload = _evaluate(DemoOptions(workers=0, threads=torch.get_num_threads()), tiny_root, checkpoint)  # as is
    assert list(payload['results']) == ['imagenet', 'stylized-imagenet', 'imagenet-sketch', 'rendition', TEXTURE_KEY]
    stylized, by_texture = payload['results']['stylized-imagenet'], payload['results'][TEXTURE_KEY]
    reference = run_validation(ValidationRequest(data_dir=str(tiny_root / 'stylized'), dataset='stylized-imagenet',
                                                 checkpoint=str(checkpoint), workers=0, log_freq=0),
                               init_runtime('cpu'))['results']['stylized-imagenet']
    assert list(stylized) == list(reference) and stylized['preprocessing'] == reference['preprocessing']
    numbers = ('top1', 'top5', 'loss', 'num_samples', 'skipped_files')
    assert {name: stylized[name] for name in numbers} == pytest.approx({name: reference[name] for name in numbers})
    decided = []
    for path in files:
        red, green = np.asarray(Image.open(path).convert('RGB'), dtype=np.float64).mean(axis=(0, 1))[:2]
        decided.append(class_names[nearest(range(10), int(round(red) + 256 * round(round(green) / 64)))])
    shape_decisions = sum(decision == shape for decision, shape in zip(decided, shapes))
    texture_decisions = sum(decision == texture for decision, texture in zip(decided, textures))
    assert texture_decisions >= 2 and texture_decisions != shape_decisions  # the two labels are told apart
    assert stylized['top1'] == pytest.approx(100 * shape_decisions / len(files))
    assert by_texture['top1'] == pytest.approx(100 * texture_decisions / len(files))
    assert by_texture['preprocessing'] == stylized['preprocessing'] and by_texture['num_samples'] == len(files)
