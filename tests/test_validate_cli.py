"""validate.py end to end on tiny trees in each real layout, with a model whose answers are known exactly."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dataset_trees as trees
from dataset_trees import (ColorCodeClassifier, build_imagenet_c_tree, build_wnid_tree,
                           register_color_model, save_color_checkpoint, write_broken_files)
from robustcnn.benchmarks.imagenet_c import CORRUPTIONS, aggregate_corruption_errors
from robustcnn.benchmarks.runner import ValidationRequest, run_validation
from robustcnn.data.label_space import imagenet_r_indices, imagenet_wnids
from robustcnn.engine.runtime import init_runtime

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # validate.py is a script at the repository root, not part of the package
import validate  # noqa: E402
MODEL = register_color_model()


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_color_checkpoint(tmp_path_factory.mktemp('ckpt') / 'color.pth')


def run_main(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        from robustcnn.cli import run_cli
        run_cli(validate.main, argv, prog='validate.py')
    return exit_info.value.code


def common(checkpoint: Path, results: Path | None = None) -> list[str]:
    argv = ['--model', MODEL, '--checkpoint', str(checkpoint), '--workers', '0', '-b', '3', '--log-freq', '1']
    return argv + (['--results-file', str(results)] if results else [])


def color_logits_loss(pairs: list[tuple[int, int]], num_classes: int = 1000, subset: list[int] | None = None) -> float:
    """Mean cross entropy of the colour model for (true class, coded class) pairs, computed independently."""
    classes = torch.arange(num_classes, dtype=torch.float64)
    losses = []
    for true, code in pairs:
        logits = -(classes - code).abs()
        target = true
        if subset is not None:
            logits, target = logits[subset], subset.index(true)
        losses.append(torch.nn.functional.cross_entropy(logits.unsqueeze(0), torch.tensor([target])).item())
    return sum(losses) / len(losses)


def test_imagenet_exact_numbers_and_results_file(tmp_path: Path, checkpoint: Path) -> None:
    contents = {0: [0, 0, 3], 17: [17, 18, 600], 999: [999]}  # right: 0, 0, 17, 999; top-5 adds 3? no: 0 vs 3 ok
    build_wnid_tree(tmp_path / 'ImageNet' / 'val', contents)
    results = tmp_path / 'results.json'
    assert run_main([str(tmp_path / 'ImageNet')] + common(checkpoint, results)) == 0
    entry = json.loads(results.read_text())['results']['imagenet']
    assert entry['num_samples'] == 7 and entry['skipped_files'] == 0
    assert entry['top1'] == pytest.approx(100 * 4 / 7, abs=1e-4)
    # top-5 of code c is {c-2..c+2}: class 0 coded 3 -> yes (|0-3| = 3 > 2? no): {1..5} misses 0; 17 coded 18 -> yes
    assert entry['top5'] == pytest.approx(100 * 5 / 7, abs=1e-4)
    pairs = [(true, code) for true, codes in contents.items() for code in codes]
    assert entry['loss'] == pytest.approx(color_logits_loss(pairs), abs=1e-4)
    assert entry['preprocessing']['resize_mode'] == 'resize_center_crop'


def test_imagenet_r_scores_the_200_class_subset(tmp_path: Path, checkpoint: Path) -> None:
    r_indices = list(imagenet_r_indices())
    members = set(r_indices)
    # a class whose next two indices are outside R: an image coded one index off is wrong in 1000-way terms but
    # right once the logits are restricted to R's 200 classes
    true = next(index for index in r_indices if index + 1 not in members and index + 2 not in members)
    contents = {true: [true, true + 1], r_indices[0]: [r_indices[0]]}
    build_wnid_tree(tmp_path / 'imagenet-r', contents)
    r_results, full_results = tmp_path / 'r.json', tmp_path / 'full.json'
    assert run_main([str(tmp_path / 'imagenet-r'), '--evaluate_imagenet_r'] + common(checkpoint, r_results)) == 0
    assert run_main([str(tmp_path / 'imagenet-r'), '--dataset', 'imagenet'] + common(checkpoint, full_results)) == 0
    restricted = json.loads(r_results.read_text())['results']['imagenet-r']
    full = json.loads(full_results.read_text())['results']['imagenet']
    assert restricted['top1'] == pytest.approx(100.0) and full['top1'] == pytest.approx(100 * 2 / 3, abs=1e-4)
    pairs = [(t, code) for t, codes in contents.items() for code in codes]
    assert restricted['loss'] == pytest.approx(color_logits_loss(pairs, subset=r_indices), abs=1e-4)
    assert restricted['label_subset_size'] == 200


def test_imagenet_v2_and_sketch_layouts(tmp_path: Path, checkpoint: Path) -> None:
    build_wnid_tree(tmp_path / 'v2', {2: [2], 11: [11, 11], 100: [100, 7]}, folder_names='index')
    build_wnid_tree(tmp_path / 'ImageNet-Sketch' / 'sketch', {5: [5, 6], 6: [6]})
    results = tmp_path / 'r.json'
    assert run_main([str(tmp_path / 'v2'), '--dataset', 'imagenet-v2'] + common(checkpoint, results)) == 0
    assert json.loads(results.read_text())['results']['imagenet-v2']['top1'] == pytest.approx(80.0)
    amp = ['--amp', '--amp-dtype', 'bfloat16', '--channels-last']
    assert run_main([str(tmp_path / 'ImageNet-Sketch')] + common(checkpoint, results) + amp) == 0
    assert json.loads(results.read_text())['results']['imagenet-sketch']['top1'] == pytest.approx(100 * 2 / 3,
                                                                                                   abs=1e-4)


def test_undecodable_files_are_skipped_named_and_counted(tmp_path: Path, checkpoint: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    root = build_wnid_tree(tmp_path / 'data', {1: [1, 1], 2: [2]})
    broken = write_broken_files(root / imagenet_wnids()[1])
    results = tmp_path / 'r.json'
    assert run_main([str(root), '--dataset', 'stylized-imagenet'] + common(checkpoint, results)) == 0
    entry = json.loads(results.read_text())['results']['stylized-imagenet']
    assert entry['num_samples'] == 3 and entry['skipped_files'] == 3 and entry['top1'] == pytest.approx(100.0)
    assert entry['preprocessing']['resize_mode'] == 'none'  # Stylized-ImageNet goes in as it is
    stderr = capsys.readouterr().err
    assert all(path.name in stderr for path in broken)


def test_missing_dataset_fails_in_one_line_before_the_model_loads(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    code = run_main([str(tmp_path / 'nowhere'), '--dataset', 'imagenet-r', '--model', 'no_such_model',
                     '--checkpoint', str(tmp_path / 'no.pth')])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and 'ImageNet-R folder not found' in err


def test_a_folder_outside_the_label_space_is_named_with_the_label_space_size(tmp_path: Path, checkpoint: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    build_wnid_tree(tmp_path / 'val', {1: [1], 2: [2]})
    trees.write_class_folder(tmp_path / 'val' / 'not_a_wnid', [3])
    assert run_main([str(tmp_path / 'val'), '--dataset', 'imagenet'] + common(checkpoint)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert 'class folder(s) not_a_wnid under' in err and '(1000 classes, ImageNet-1k wnids' in err


def test_checkpoint_for_another_architecture_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    build_wnid_tree(tmp_path / 'data', {1: [1]})
    other = tmp_path / 'other.pth'
    torch.save({'model': {'conv.weight': torch.zeros(1)}}, other)
    code = run_main([str(tmp_path / 'data'), '--model', MODEL, '--checkpoint', str(other), '--workers', '0'])
    err = capsys.readouterr().err.strip()
    assert code == 2 and 'Traceback' not in err
    assert err.splitlines()[-1].startswith('validate.py: error: checkpoint') and 'does not fit model' in err


@pytest.mark.parametrize('wrap', [None, 'model', 'state_dict_ema'])
def test_released_checkpoint_forms(tmp_path: Path, wrap: str | None) -> None:
    build_wnid_tree(tmp_path / 'data', {4: [4]})
    state_dict = {f'module.{key}': value for key, value in ColorCodeClassifier().state_dict().items()}
    checkpoint = tmp_path / 'c.pth'
    torch.save(state_dict if wrap is None else {wrap: state_dict}, checkpoint)
    results = tmp_path / 'r.csv'
    argv = [str(tmp_path / 'data')] + common(checkpoint, results) + (['--use-ema'] if wrap == 'state_dict_ema' else [])
    assert run_main(argv) == 0
    assert 'imagenet' in results.read_text()


def test_checkpoint_class_names_define_the_label_space(tmp_path: Path) -> None:
    """A model trained on its own classes (the demo): labels come from metadata['class_names'], --model too."""
    class_names = ['circle', 'square', 'star', 'triangle', 'wave']
    checkpoint = save_color_checkpoint(tmp_path / 'demo.pth', num_classes=5, metadata={
        'model': MODEL, 'class_names': class_names, 'num_classes': 5})
    data = tmp_path / 'demo'
    trees.write_class_folder(data / 'star', [2, 2, 4])   # class 2: two right, one wrong
    trees.write_class_folder(data / 'wave', [4])          # only 2 of 5 classes present: labels still 2 and 4
    results = tmp_path / 'r.json'
    assert run_main([str(data), '--dataset', 'folder', '--checkpoint', str(checkpoint), '--workers', '0',
                     '--results-file', str(results)]) == 0
    payload = json.loads(results.read_text())
    assert payload['model'] == MODEL and payload['results']['folder']['top1'] == pytest.approx(75.0)


def test_imagenet_c_in_another_label_space_has_no_alexnet_normalized_numbers(tmp_path: Path) -> None:
    """mCE divides by AlexNet's ImageNet-C errors: meaningless for a 5-class model, so it is null, not a number."""
    class_names = ['circle', 'square', 'star', 'triangle', 'wave']
    checkpoint = save_color_checkpoint(tmp_path / 'demo.pth', num_classes=5, metadata={
        'model': MODEL, 'class_names': class_names, 'num_classes': 5})
    for corruption in CORRUPTIONS:
        for severity in range(1, 6):
            wrong = corruption == 'fog' and severity == 5
            trees.write_class_folder(tmp_path / 'c' / corruption / str(severity) / 'star', [4 if wrong else 2])
    results = tmp_path / 'c.json'
    assert run_main([str(tmp_path / 'c'), '--dataset', 'imagenet-c', '--checkpoint', str(checkpoint),
                     '--workers', '0', '--clean-error', '10', '--results-file', str(results)]) == 0
    entry = json.loads(results.read_text())['results']['imagenet-c']
    assert entry['mean_corruption_error'] == pytest.approx(100 / 75, abs=1e-4) and entry['num_samples'] == 75
    assert entry['mce'] is None and entry['relative_mce'] is None and entry['corruption_errors'] == {}


def imagenet_c_contents(images_per_folder: int = 2) -> dict:
    """gaussian_noise: half of each folder wrong; fog severity 5: all wrong; everything else right."""
    contents = {}
    for corruption in CORRUPTIONS:
        for severity in range(1, 6):
            codes = [7] * images_per_folder
            if corruption == 'gaussian_noise':
                codes[0] = 500
            if corruption == 'fog' and severity == 5:
                codes = [500] * images_per_folder
            contents[(corruption, severity)] = {7: codes}
    return contents


def expected_imagenet_c(clean_error: float | None) -> dict:
    errors = {corruption: {severity: 0.0 for severity in range(1, 6)} for corruption in CORRUPTIONS}
    errors['gaussian_noise'] = {severity: 50.0 for severity in range(1, 6)}
    errors['fog'][5] = 100.0
    return errors, aggregate_corruption_errors(errors, clean_error)


def test_imagenet_c_metrics_resume_and_suite(tmp_path: Path, checkpoint: Path) -> None:
    root = tmp_path / 'suite'
    build_imagenet_c_tree(root / 'ImageNet-C', imagenet_c_contents())
    build_wnid_tree(root / 'imagenet' / 'val', {7: [7, 7, 7, 500]})  # clean error 25%
    results = tmp_path / 'suite.json'
    runtime = init_runtime('cpu')
    request = ValidationRequest(data_dir=str(root), suite=True, model=MODEL, checkpoint=str(checkpoint),
                                workers=0, batch_size=2, log_freq=0, results_file=str(results), group_sync_every=1)
    partial = tmp_path / 'suite.imagenet-c.partial.json'
    # a run killed after 21 batches: 1 clean batch... then 20 ImageNet-C folders of 2 images each
    ColorCodeClassifier.fail_after_batches = 22
    try:
        with pytest.raises(KeyboardInterrupt):
            run_validation(request, runtime)
    finally:
        ColorCodeClassifier.fail_after_batches = None
    saved = json.loads(partial.read_text())['units']
    assert 15 <= len(saved) <= 20 and saved['gaussian_noise/1'] == {'correct': 1, 'scored': 2, 'skipped': 0}
    payload = run_validation(request, runtime)
    entry = payload['results']['imagenet-c']
    assert entry['resumed_folders'] == len(saved) and not partial.exists()
    errors, expected = expected_imagenet_c(clean_error=25.0)
    assert entry['num_samples'] == 150 and entry['skipped_files'] == 0
    assert entry['errors']['gaussian_noise'] == {str(severity): 50.0 for severity in range(1, 6)}
    assert entry['errors']['fog']['5'] == 100.0 and entry['errors']['snow']['3'] == 0.0
    # by hand: (5 x 50 + 100) / 75
    assert entry['mean_corruption_error'] == pytest.approx(350 / 75)
    # by hand: gaussian 2.5 / 4.43214, fog 1.0 / (0.67474+0.76050+0.84378+0.87260+0.94500 = 4.09662), others 0
    assert entry['mce'] == pytest.approx((2.5 / 4.43214 + 1.0 / 4.09662) * 100 / 15)
    assert entry['relative_mce'] == pytest.approx(expected['relative_mce'])
    assert entry['clean_error'] == pytest.approx(25.0)  # measured on the clean set of the same suite run
    saved_payload = json.loads(results.read_text())
    assert saved_payload['results']['imagenet']['top1'] == pytest.approx(75.0)
    assert saved_payload['readme_row'] == f'| {MODEL} | 75.0 | – | 4.7 | – | – |'


def test_imagenet_c_release_command_partial_tree(tmp_path: Path, checkpoint: Path) -> None:
    contents = {key: value for key, value in imagenet_c_contents(1).items() if key[0] != 'snow'}
    build_imagenet_c_tree(tmp_path / 'c', contents, category_level=True)
    results = tmp_path / 'c.md'
    argv = [str(tmp_path / 'c'), '--evaluate_imagenet_c', '--normalize', '--resize_mode', 'none']
    assert run_main(argv + common(checkpoint, results)) == 2  # snow missing, no --allow-partial
    assert run_main(argv + common(checkpoint, results) + ['--allow-partial', '--figure', str(tmp_path / 'c.png')]) == 0
    text = results.read_text()
    assert '(partial)' in text and 'Partial: 5 folder(s) missing (snow/1' in text
    assert (tmp_path / 'c.png').read_bytes()[:4] == b'\x89PNG'


def test_test_md_commands_parse() -> None:
    """Every validate.py command in TEST.md is accepted by the parser and maps to a request."""
    blocks, current, language = [], None, ''
    for line in (REPO / 'TEST.md').read_text().splitlines():
        if line.strip().startswith('```'):
            if current is None:
                current, language = [], line.strip()[3:].strip()
            else:
                if language in ('bash', 'sh'):
                    blocks.append('\n'.join(current))
                current = None
        elif current is not None:
            current.append(line)
    commands = [line for block in blocks for line in block.replace('\\\n', ' ').splitlines()
                if 'validate.py' in line and not line.lstrip().startswith('#')]
    assert len(commands) >= 8
    datasets = set()
    for command in commands:
        words = shlex.split(command)
        argv = words[words.index('validate.py') + 1:]
        request = validate.request_from_args(validate.build_parser().parse_args(argv))
        datasets.add(request.dataset or ('suite' if request.suite else 'inferred'))
    assert {'imagenet-c', 'imagenet-r', 'suite'} <= datasets


LAUNCHER = """
import sys
sys.path.insert(0, {tests!r})
sys.path.insert(0, {repo!r})
import dataset_trees
dataset_trees.register_color_model()
import validate
from robustcnn.cli import run_cli
run_cli(validate.main, sys.argv[1:], prog='validate.py')
"""


@pytest.mark.distributed
@pytest.mark.slow
def test_torchrun_two_processes_count_each_image_once(tmp_path: Path, checkpoint: Path) -> None:
    root = tmp_path / 'suite'
    build_wnid_tree(root / 'imagenet', {7: [7, 7, 500], 8: [8, 1, 8, 8]})  # 7 images: shards of 4 and 3
    write_broken_files(root / 'imagenet' / imagenet_wnids()[8])
    build_imagenet_c_tree(root / 'imagenet-c', imagenet_c_contents(1))
    launcher = tmp_path / 'launch.py'
    launcher.write_text(LAUNCHER.format(tests=str(REPO / 'tests'), repo=str(REPO)))
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    argv = [str(root), '--suite', '--model', MODEL, '--checkpoint', str(checkpoint), '--device', 'cpu',
            '--workers', '0', '-b', '1', '--log-freq', '0', '--save-every', '1']  # ImageNet-C: 38 and 37 steps
    outputs = {}
    for processes in (1, 2):
        results = tmp_path / f'r{processes}.json'
        command = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(processes),
                   '--master_port', str(29500 + processes + os.getpid() % 1000), str(launcher)]
        completed = subprocess.run(command + argv + ['--results-file', str(results)], env=env, cwd=tmp_path,
                                   capture_output=True, text=True, timeout=180)
        assert completed.returncode == 0, completed.stderr[-3000:]
        outputs[processes] = json.loads(results.read_text())['results']
    for processes in (1, 2):
        clean = outputs[processes]['imagenet']
        assert clean['num_samples'] == 7 and clean['skipped_files'] == 3
        assert clean['top1'] == pytest.approx(100 * 5 / 7, abs=1e-4)
        corrupted = outputs[processes]['imagenet-c']
        assert corrupted['num_samples'] == 75
        assert corrupted['mean_corruption_error'] == pytest.approx((5 * 100 + 100) / 75)
    assert outputs[1]['imagenet-c']['errors'] == outputs[2]['imagenet-c']['errors']
    assert not (tmp_path / 'r2.imagenet-c.partial.json').exists()  # written during the run, removed at the end
    assert outputs[1]['imagenet']['loss'] == pytest.approx(outputs[2]['imagenet']['loss'], abs=1e-4)


def release_commands() -> dict[str, list[str]]:
    """The original release's TEST.md commands (as this repository's TEST.md quotes them), by dataset."""
    text = (REPO / 'TEST.md').read_text().replace('\\\n', ' ')
    commands = {}
    for line in text.splitlines():
        if line.startswith('python validate.py /path/to/'):
            words = shlex.split(line)
            commands[words[2].rsplit('/', 1)[1]] = words[2:]
    return commands


@pytest.mark.slow
def test_release_commands_run_with_paths_replaced(tmp_path: Path) -> None:
    """The release's ImageNet-R and ImageNet-C commands, flags as written, on a Robust-ResNet (pico for speed)."""
    import timm

    commands = release_commands()
    assert set(commands) == {'ImageNet', 'Stylized-ImageNet', 'ImageNet-C', 'ImageNet-R', 'ImageNet-Sketch'}
    model = timm.create_model('robust_resnet_dw_pico')
    checkpoint = tmp_path / 'ckpt.pth'
    torch.save({'model': model.state_dict()}, checkpoint)
    r_indices = imagenet_r_indices()
    build_wnid_tree(tmp_path / 'ImageNet-R', {r_indices[0]: [1, 2], r_indices[5]: [3]})
    build_imagenet_c_tree(tmp_path / 'ImageNet-C', imagenet_c_contents(1), size=224)
    numbers = {}
    for name in ('ImageNet-R', 'ImageNet-C'):
        argv = [str(tmp_path / name) if word == f'/path/to/{name}' else word for word in commands[name]]
        argv = [str(checkpoint) if word == '/path/to/ckpt' else word for word in argv]
        argv[argv.index('robust_resnet_dw_small')] = 'robust_resnet_dw_pico'
        for fuse in (True, False):
            results = tmp_path / f'{name}-{fuse}.json'
            extra = ['--results-file', str(results)] + ([] if fuse else ['--no-fuse'])
            assert run_main(argv + extra) == 0
            numbers[name, fuse] = json.loads(results.read_text())['results']
    r_entry = numbers['ImageNet-R', True]['imagenet-r']
    assert r_entry['num_samples'] == 3 and r_entry['label_subset_size'] == 200
    assert r_entry['preprocessing']['input_size'] == [3, 224, 224]
    c_entry = numbers['ImageNet-C', True]['imagenet-c']
    assert c_entry['num_samples'] == 75 and c_entry['preprocessing']['resize_mode'] == 'none'
    # BatchNorm folding must not change the numbers
    assert numbers['ImageNet-R', False]['imagenet-r']['loss'] == pytest.approx(r_entry['loss'], abs=1e-4)
    assert numbers['ImageNet-C', False]['imagenet-c']['errors'] == c_entry['errors']


def test_folder_dataset_sorted_classes_with_a_1000_class_model(tmp_path: Path, checkpoint: Path) -> None:
    """timm's meaning of a plain folder tree: classes are the sorted folder names, indices 0..n-1."""
    data = tmp_path / 'plain'
    trees.write_class_folder(data / 'a_first', [0, 0])
    trees.write_class_folder(data / 'b_second', [1, 5])
    results = tmp_path / 'r.json'
    assert run_main([str(data), '--dataset', 'folder'] + common(checkpoint, results)) == 0
    assert json.loads(results.read_text())['results']['folder']['top1'] == pytest.approx(75.0)


def test_unusual_but_valid_images_are_all_scored(tmp_path: Path, checkpoint: Path) -> None:
    """Grayscale, CMYK, palette, RGBA and 16-bit files are converted to RGB and used, not skipped."""
    from PIL import Image

    folder = tmp_path / 'data' / imagenet_wnids()[3]
    folder.mkdir(parents=True)
    Image.new('L', (32, 32), 3).save(folder / 'gray.JPEG', format='JPEG')
    Image.new('CMYK', (32, 32), (0, 0, 0, 0)).save(folder / 'cmyk.JPEG', format='JPEG')
    Image.new('P', (32, 32), 3).save(folder / 'palette.png')
    Image.new('RGBA', (32, 32), (3, 0, 128, 255)).save(folder / 'rgba.png')
    Image.fromarray(__import__('numpy').full((32, 32), 3 * 257, dtype='uint16')).save(folder / 'sixteen.png')
    results = tmp_path / 'r.json'
    assert run_main([str(tmp_path / 'data')] + common(checkpoint, results)) == 0
    entry = json.loads(results.read_text())['results']['imagenet']
    assert entry['num_samples'] == 5 and entry['skipped_files'] == 0
