"""Hostile arguments to train.py and validate.py: each is one line on stderr naming the problem, exit status 2,
no traceback, and no work done (no run folder, no results file)."""
import sys
from pathlib import Path

import pytest
import timm
import torch

from helpers_train import REPO_ROOT, make_image_folders

sys.path.insert(0, str(REPO_ROOT))  # train.py and validate.py are scripts at the repository root
import train  # noqa: E402
import validate  # noqa: E402
from robustcnn.cli import run_cli  # noqa: E402


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp('hostile')
    data = make_image_folders(root / 'data', train_per_class=2, val_per_class=1)
    (root / 'unknown_key.yaml').write_text('model: robust_resnet_dw_pico\nnot_a_flag: 3\n')
    (root / 'wrong_type.yaml').write_text('epochs: three\n')
    (root / 'not_a_mapping.yaml').write_text('- a\n- list\n')
    other = root / 'other_architecture.pth'
    torch.save(timm.create_model('robust_resnet_inverted_dw_nano').state_dict(), other)
    torch.save({'state_dict': torch.load(other, weights_only=True), 'epoch': 0, 'step': 4, 'optimizer': {},
                'metadata': {'model': 'robust_resnet_inverted_dw_nano'}}, root / 'other_training.pth')
    (root / 'garbage.pth').write_bytes(b'\x00garbage')
    (root / 'figure.png').mkdir()
    (root / 'latin1.yaml').write_bytes('epochs: 1 # r\xe9sum\xe9\n'.encode('latin-1'))
    (root / 'duplicate.yaml').write_text('epochs: 1\nlr: 0.1\nepochs: 2\n')
    torch.save({'state_dict': timm.create_model('robust_resnet_dw_nano', num_classes=4).state_dict(),
                'metadata': {'model': 'robust_resnet_dw_nano', 'class_names': ['apple', 'grass', 'sea', 'sun'],
                             'num_classes': 4}}, root / 'with_classes.pth')
    class_maps = {
        'bad.json': '{"apple": 0,', 'text_index.json': '{"apple": "zero", "grass": 1}',
        'fraction.json': '{"apple": 1.7, "grass": 0}', 'repeated_index.json': '{"apple": 0, "grass": 0}',
        'gap.json': '{"apple": 0, "grass": 2}', 'negative.json': '{"apple": -1, "grass": 0}',
        'repeated_key.json': '{"apple": 0, "apple": 1}', 'repeated_name.txt': 'apple\ngrass\napple\n',
        'empty.txt': '\n', 'string.json': '"apple"', 'negative.txt': 'apple -1\ngrass 0\n',
        'reordered.txt': 'sun\nsea\ngrass\napple\n',
    }
    for name, text in class_maps.items():
        (root / name).write_text(text)
    (root / 'latin1.txt').write_bytes('apple\ncaf\xe9\n'.encode('latin-1'))
    return root, data


TRAIN_CASES = {
    'unknown yaml key': (['--config', '{root}/unknown_key.yaml'], 'not_a_flag'),
    'wrong yaml type': (['--config', '{root}/wrong_type.yaml'], 'epochs'),
    'yaml not a mapping': (['--config', '{root}/not_a_mapping.yaml'], 'not_a_mapping.yaml'),
    'missing config': (['--config', '{root}/nope.yaml'], 'nope.yaml'),
    'zero batch': (['--batch-size', '0'], 'batch-size'),
    'negative epochs': (['--epochs', '-3'], 'epochs'),
    'zero image size': (['--img-size', '0'], 'img-size'),
    'negative lr': (['--lr', '-0.1'], 'lr'),
    'missing data': (['--data-dir', '{root}/missing'], 'missing'),
    'unknown model': (['--model', 'no_such_model'], 'no_such_model'),
    'resume file missing': (['--resume', '{root}/nope.pth'], '--resume file not found'),
    'initial checkpoint missing': (['--initial-checkpoint', '{root}/nope.pth'], '--initial-checkpoint file not found'),
    'resume plain weights': (['--resume', '{root}/other_architecture.pth'], 'not a training checkpoint'),
    'resume other architecture': (['--resume', '{root}/other_training.pth'], 'robust_resnet_inverted_dw_nano'),
    'resume garbage': (['--resume', '{root}/garbage.pth'], 'garbage.pth'),
    # values argparse accepts that used to fail on the first batch or in a loader worker
    'unknown aa policy': (['--aa', 'foo'], "--aa 'foo' is not a timm augmentation policy"),
    'lanczos with randaugment': (['--train-interpolation', 'lanczos'], 'cannot be used with --aa'),
    'unknown interpolation': (['--interpolation', 'foo'], '--interpolation: must be one of'),
    'zero aspect ratio': (['--ratio', '0', '1'], '--ratio takes two positive'),
    'negative color jitter': (['--aa', 'none', '--color-jitter', '-1'], '--color-jitter must be 0 or more'),
    'one channel input': (['--input-size', '1', '32', '32'], 'C must be 3'),
    'seed too large': (['--seed', '99999999999999'], '--seed must be at most'),
    # run folders outside --output, or that cannot be folders
    'experiment escapes output': (['--experiment', '../../escaped'], 'without ".." components'),
    'experiment is the parent': (['--experiment', '..'], 'without ".." components'),
    'experiment is absolute': (['--experiment', '{root}/absolute'], 'is an absolute path'),
    'experiment name too long': (['--experiment', 'x' * 300], 'is 300 bytes long'),
    'experiment is a file': (['--output', '{root}', '--experiment', 'garbage.pth'], 'garbage.pth is a file'),
    'experiment under a file': (['--output', '{root}', '--experiment', 'garbage.pth/run'], 'which is a file'),
    'fresh and resume': (['--fresh', '--resume', 'auto'], '--fresh starts over and --resume continues'),
    # values that used to end in a traceback, at the first batch or inside timm
    'zero patch size': (['--model-kwargs', 'patch_size=0'], 'patch_size must be a positive number, got 0'),
    'negative kernel size': (['--model-kwargs', 'kernel_size=-3'], 'kernel_size must be a positive number'),
    'python tag in model kwargs': (['--model-kwargs', 'x=!!python/object/apply:os.system [echo]'],
                                   'is not a plain value'),
    'zero std': (['--std', '0', '0', '0'], '--std: must be a positive number, got 0'),
    'negative crop pct': (['--crop-pct', '-1'], '--crop-pct: must be between 0.05 and 2.0'),
    'reversed cutmix minmax': (['--cutmix-minmax', '0.9', '0.1'], '--cutmix-minmax takes two box-size fractions'),
    'unknown compile backend': (['--torchcompile', 'nosuchbackend'], 'not a torch.compile backend'),
    'pretrained without weights': (['--pretrained'], '--pretrained: robust_resnet_dw_nano has no released weights'),
    'config not utf-8': (['--config', '{root}/latin1.yaml'], 'is not UTF-8 text'),
    # values that used to be accepted without a word
    'zero crop pct': (['--crop-pct', '0'], '--crop-pct: must be between'),
    'garbage policy sections': (['--aa', 'rand-zz-garbage'], "section 'zz' is not KEY+NUMBER"),
    'duplicate yaml key': (['--config', '{root}/duplicate.yaml'], "key 'epochs' appears twice"),
}

VALIDATE_CASES = {
    'missing dataset folder': (['{root}/missing', '--dataset', 'imagenet'], 'missing'),
    'unknown dataset': (['{data}/val', '--dataset', 'imagenet-z'], 'imagenet-z'),
    'zero batch': (['{data}/val', '--dataset', 'folder', '-b', '0'], 'batch-size'),
    'negative image size': (['{data}/val', '--dataset', 'folder', '--img-size', '-1'], 'img-size'),
    'missing checkpoint': (['{data}/val', '--dataset', 'folder', '--checkpoint', '{root}/nope.pth'], 'nope.pth'),
    'other architecture': (['{data}/val', '--dataset', 'folder', '--checkpoint', '{root}/other_architecture.pth'],
                           'does not fit'),
    'unknown class folders': (['{data}/val', '--dataset', 'imagenet', '--checkpoint',
                               '{root}/other_architecture.pth'], 'apple'),
    'unknown interpolation': (['{data}/val', '--dataset', 'folder', '--interpolation', 'lanczos3'],
                              '--interpolation: must be one of'),
    # output paths that could not be written after the whole evaluation: refused before it
    'results file is a folder': (['{data}/val', '--dataset', 'folder', '--results-file', '{root}'], 'is a folder'),
    'figure is a folder': (['{data}/val', '--dataset', 'folder', '--figure', '{root}/figure.png'], 'is a folder'),
    'results file under a file': (['{data}/val', '--dataset', 'folder', '--results-file', '{root}/garbage.pth/r.json'],
                                  'garbage.pth, which is a file'),
    'partial results under a file': (['{data}/val', '--dataset', 'folder', '--partial-results',
                                      '{root}/garbage.pth/p.json'], 'which is a file'),
    'zero std': (['{data}/val', '--dataset', 'folder', '--std', '0', '0', '0'], '--std: must be a positive number'),
    'tiny crop pct': (['{data}/val', '--dataset', 'folder', '--crop-pct', '1e-4'], '--crop-pct: must be between'),
    # class maps: every malformed kind is one line naming the problem (they were tracebacks or silently misread)
    **{f'class map {name}': (['{data}/val', '--dataset', 'folder', '--class-map', '{root}/' + name], expected)
       for name, expected in {
           'bad.json': 'is not valid JSON', 'text_index.json': "the index of class 'apple' is 'zero'",
           'fraction.json': "the index of class 'apple' is 1.7, not a whole number",
           'repeated_index.json': 'without gaps or repeats', 'gap.json': 'without gaps or repeats',
           'negative.json': 'without gaps or repeats', 'negative.txt': 'without gaps or repeats',
           'repeated_key.json': "class 'apple' appears twice", 'repeated_name.txt': "class 'apple' appears twice",
           'latin1.txt': 'is not UTF-8 text', 'empty.txt': 'lists no classes', 'string.json': 'got a str',
       }.items()},
    'class map contradicts checkpoint': (['{data}/val', '--dataset', 'folder', '--class-map', '{root}/reordered.txt',
                                          '--checkpoint', '{root}/with_classes.pth'],
                                         'differs from the 4 classes the checkpoint was trained with'),
}


def _assert_rejected_in_one_line(main, argv, prog, expected, capsys):
    """Exit status 2, no traceback, exactly one 'PROG: error:' line, and it names ``expected``."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv, prog=prog)
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if 'error' in line.lower() or 'Traceback' in line]
    assert exit_info.value.code == 2, stderr
    assert 'Traceback' not in stderr
    assert len(lines) == 1 and lines[0].startswith(f'{prog}: error:'), stderr
    assert expected in lines[0]


@pytest.mark.parametrize('case', TRAIN_CASES)
def test_train_rejects_hostile_arguments_in_one_line(files, case, capsys, tmp_path, monkeypatch):
    monkeypatch.delenv('ROBUSTCNN_TRACEBACK', raising=False)
    root, data = files
    extra, expected = TRAIN_CASES[case]
    argv = [str(data), '--model', 'robust_resnet_dw_nano', '--workers', '0', '-b', '2', '--output', str(tmp_path / 'out'),
            '--experiment', 'x', '--epochs', '1', '--img-size', '32']
    argv += [item.format(root=root, data=data) for item in extra]
    _assert_rejected_in_one_line(train.main, argv, 'train.py', expected, capsys)
    assert not (tmp_path / 'out' / 'x').exists(), 'a failed start leaves no run folder'
    assert not (tmp_path / 'escaped').exists() and not (Path(root) / 'absolute').exists()


@pytest.mark.parametrize('case', VALIDATE_CASES)
def test_validate_rejects_hostile_arguments_in_one_line(files, case, capsys, tmp_path, monkeypatch):
    monkeypatch.delenv('ROBUSTCNN_TRACEBACK', raising=False)
    root, data = files
    arguments, expected = VALIDATE_CASES[case]
    argv = [item.format(root=root, data=data) for item in arguments]
    argv += ['--model', 'robust_resnet_dw_nano', '--workers', '0']
    if '--results-file' not in argv:
        argv += ['--results-file', str(tmp_path / 'r.json')]
    if '--checkpoint' not in argv:
        argv += ['--checkpoint', str(Path(root) / 'other_architecture.pth')]
    _assert_rejected_in_one_line(validate.main, argv, 'validate.py', expected, capsys)
    assert not (tmp_path / 'r.json').exists()


def test_ctrl_c_that_a_library_rewraps_still_exits_as_interrupted(capsys):
    """A DataLoader whose workers died of the same Ctrl-C raises its own RuntimeError while handling the
    KeyboardInterrupt: that is an interrupt (exit 130), while any other RuntimeError keeps its traceback."""
    def rewrapped(argv):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError('DataLoader worker (pid 123) exited unexpectedly')

    with pytest.raises(SystemExit) as exit_info:
        run_cli(rewrapped, [], prog='train.py')
    assert exit_info.value.code == 130 and capsys.readouterr().err.strip() == 'train.py: interrupted'

    def plain_bug(argv):
        raise RuntimeError('a real bug')

    with pytest.raises(RuntimeError, match='a real bug'):
        run_cli(plain_bug, [], prog='train.py')


def test_images_too_small_for_the_model_are_one_line(tmp_path, capsys, monkeypatch):
    """--resize_mode none feeds images as they are; one narrower than the stem's 16x16 window is a user error."""
    from PIL import Image

    monkeypatch.delenv('ROBUSTCNN_TRACEBACK', raising=False)
    folder = tmp_path / 'val' / 'n01440764'
    folder.mkdir(parents=True)
    Image.new('RGB', (50, 1)).save(folder / 'strip.png')
    weights = tmp_path / 'pico.pth'
    torch.save(timm.create_model('robust_resnet_dw_pico').state_dict(), weights)
    argv = [str(tmp_path / 'val'), '--dataset', 'imagenet', '--resize_mode', 'none', '-b', '1', '--model',
            'robust_resnet_dw_pico', '--checkpoint', str(weights), '--workers', '0']
    _assert_rejected_in_one_line(validate.main, argv, 'validate.py', 'images of 1x50 pixels are too small', capsys)


def test_a_closed_output_pipe_is_a_quiet_exit_not_an_error(monkeypatch):
    """`validate.py ... | head` stopping early raises BrokenPipeError: exit 0, not a traceback or 'interrupted'."""
    import os

    monkeypatch.setattr(os, 'dup2', lambda *args: None)  # keep pytest's stdout

    def reader_went_away(argv):
        raise BrokenPipeError

    with pytest.raises(SystemExit) as exit_info:
        run_cli(reader_went_away, [], prog='validate.py')
    assert exit_info.value.code == 0


def test_ctrl_c_that_a_library_swallowed_still_exits_as_interrupted(capsys):
    """Ctrl-C reaches the loader workers too; when the main process's KeyboardInterrupt is lost inside a library and
    the dead workers surface later as a plain error, the run still ends as interrupted: exit 130, no traceback."""
    import os
    import signal

    def swallowed(argv):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pass  # a library's over-broad handler
        raise AttributeError("'NoneType' object has no attribute 'put'")  # not raised while handling it

    with pytest.raises(SystemExit) as exit_info:
        run_cli(swallowed, [], prog='validate.py')
    assert exit_info.value.code == 130 and capsys.readouterr().err.strip() == 'validate.py: interrupted'


def test_a_full_disk_is_one_line_not_a_traceback(capsys):
    import errno

    def disk_full(argv):
        raise OSError(errno.ENOSPC, 'could not write out/last.pth.tar (No space left on device); the previous file '
                                    'there is unchanged')

    with pytest.raises(SystemExit) as exit_info:
        run_cli(disk_full, [], prog='train.py')
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == ('train.py: error: could not write out/last.pth.tar (No space left on '
                                                'device); the previous file there is unchanged')
