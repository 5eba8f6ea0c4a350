"""train.py's flags and YAML configs: merging, strict keys and types, --scale-lr, and the documented commands."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from robustcnn.config import (
    ConfigError, args_to_yaml, build_train_parser, effective_learning_rate, parse_train_args, total_batch_size,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / 'configs'
RELEASED_MODELS = ['robust_resnet_dw_small', 'robust_resnet_inverted_dw_small', 'robust_resnet_up_inverted_dw_small',
                   'robust_resnet_down_inverted_dw_small']


def write_yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / 'config.yaml'
    path.write_text(text)
    return str(path)


def test_yaml_keys_with_dashes_or_underscores_and_command_line_wins(tmp_path):
    config = write_yaml(tmp_path, 'batch-size: 64\nwarmup_lr: 2.0e-6\nupdate_freq: 4\npin-mem: true\n'
                                  'model-kwargs: {patch_size: 8}\nscale: [0.2, 1.0]\n')
    args = parse_train_args(['/data', '--config', config, '--batch-size', '32'])
    assert args.batch_size == 32                   # flag beats YAML
    assert args.warmup_lr == 2e-6
    assert args.grad_accum_steps == 4              # the release's --update_freq is --grad-accum-steps
    assert args.pin_mem is True
    assert args.model_kwargs == {'patch_size': 8}
    assert args.scale == [0.2, 1.0]
    assert parse_train_args(['/data', '--config', config, '--no-pin-mem']).pin_mem is False


def test_yaml_reads_exponent_numbers_written_as_text(tmp_path):
    # PyYAML reads 5e-4 (no dot) as a string; a recipe written that way must still mean 0.0005.
    args = parse_train_args(['/data', '--config', write_yaml(tmp_path, 'lr: 5e-4\nepochs: 7\n')])
    assert args.lr == pytest.approx(5e-4) and args.epochs == 7


@pytest.mark.parametrize('text, message', [
    ('batch_sise: 64\n', "unknown key 'batch_sise'"),
    ('epochs: ten\n', "'epochs' expects"),
    ('epochs: 2.5\n', "'epochs' expects"),
    ('lr: true\n', "'lr' expects"),
    ('pin-mem: 1\n', "'pin-mem' is a switch"),
    ('scale: 0.5\n', "'scale' expects a list"),
    ('scale: [0.1, 0.5, 1.0]\n', "'scale' expects 2 values"),
    ('mixup-mode: rows\n', "'mixup-mode' must be one of"),
    ('batch-size: 0\n', "'batch-size' expects"),
    ('model-kwargs: [1, 2]\n', "'model-kwargs' expects a mapping"),
    ('- just\n- a list\n', 'must hold a mapping'),
])
def test_bad_yaml_is_an_error_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_train_args(['/data', '--config', write_yaml(tmp_path, text)])


def test_missing_data_folder_and_config_file_are_usage_errors(tmp_path):
    with pytest.raises(ConfigError, match='no data folder'):
        parse_train_args(['--model', 'resnet18'])
    with pytest.raises(ConfigError, match='config file not found'):
        parse_train_args(['/data', '--config', str(tmp_path / 'missing.yaml')])
    with pytest.raises(ConfigError, match='even --batch-size'):
        parse_train_args(['/data', '--batch-size', '7'])  # mixup pairs images
    with pytest.raises(ConfigError, match='--experiment'):
        parse_train_args(['/data', '--resume', 'auto'])
    assert parse_train_args(['--data-dir', '/data']).data_dir == '/data'


def test_resolved_args_yaml_round_trips_as_a_config(tmp_path):
    args = parse_train_args(['/data', '--config', str(CONFIG_DIR / 'cpu_smoke_test.yaml'), '--epochs', '9',
                             '--experiment', 'x'])
    saved = write_yaml(tmp_path, args_to_yaml(args))
    reloaded = parse_train_args(['--config', saved])
    assert {**vars(reloaded), 'config': ''} == {**vars(args), 'config': ''}


@pytest.mark.parametrize('batch, devices, accumulation, expected', [
    (128, 8, 1, 1e-3),       # the paper: 5e-4 x 1024 / 512
    (128, 4, 2, 1e-3),       # fewer GPUs, same total batch through accumulation
    (64, 1, 1, 6.25e-5),
    (32, 2, 4, 2.5e-4),
])
def test_scale_lr_is_the_linear_rule_on_the_total_batch(batch, devices, accumulation, expected):
    args = parse_train_args(['/data', '--lr', '5e-4', '--scale-lr', '--batch-size', str(batch),
                             '--grad-accum-steps', str(accumulation)])
    assert total_batch_size(args, devices) == batch * devices * accumulation
    assert effective_learning_rate(args, devices) == pytest.approx(expected, rel=1e-12)
    args.scale_lr = False
    assert effective_learning_rate(args, devices) == 5e-4


@pytest.mark.parametrize('model', RELEASED_MODELS)
def test_released_configs_hold_the_paper_recipe(model):
    args = parse_train_args(['/data', '--config', str(CONFIG_DIR / f'{model}.yaml')])
    assert args.model == model
    assert (args.opt, args.opt_eps, args.weight_decay, args.lr, args.scale_lr) == ('adamw', 1e-8, 0.05, 5e-4, True)
    assert (args.sched, args.epochs, args.warmup_epochs, args.warmup_lr, args.min_lr, args.cooldown_epochs) == \
        ('cosine', 300, 5, 1e-6, 1e-5, 0)
    assert (args.aa, args.aug_repeats, args.reprob, args.mixup, args.cutmix, args.smoothing) == \
        ('rand-m9-mstd0.5-inc1', 3, 0.25, 0.8, 1.0, 0.1)
    assert (args.train_interpolation, args.drop_path, args.batch_size) == ('bicubic', 0.1, 128)
    assert effective_learning_rate(args, 8) == pytest.approx(1e-3)


def _train_commands(markdown: str) -> list[list[str]]:
    """Every command in a fenced block that runs train.py, continuation lines joined, launcher removed."""
    commands = []
    for block in re.findall(r'```(?:bash|sh|shell)?\n(.*?)```', markdown, flags=re.S):
        text = re.sub(r'\\\n', ' ', block)
        for line in text.splitlines():
            line = line.split(' #')[0].strip()
            if 'train.py' not in line or line.startswith('#'):
                continue
            words = shlex.split(line)
            # a command run on every TPU host: gcloud ... --command="cd robustcnn && ... python3 train.py ..."
            words = [part for word in words for part in
                     (shlex.split(word.split('=', 1)[1]) if word.startswith('--command=') else [word])]
            position = next(i for i, word in enumerate(words) if word.endswith('train.py'))
            commands.append(words[position + 1:])
    return commands


def test_every_train_command_in_train_md_parses():
    commands = _train_commands((REPO_ROOT / 'TRAIN.md').read_text())
    assert len(commands) >= 6
    flags_seen = set()
    for words in commands:
        words = [REPO_ROOT / word if word.startswith('configs/') else word for word in words]
        args = parse_train_args([str(word) for word in words])
        assert args.data_dir
        flags_seen.update(word for word in map(str, words) if word.startswith('--'))
    # the original release's command (quoted in TRAIN.md) uses every one of these flags
    release_flags = {
        '--val-split', '--model', '--batch-size', '--opt', '--opt-eps', '--momentum', '--weight-decay', '--sched',
        '--lr', '--scale-lr', '--lr-cycle-decay', '--warmup-lr', '--epochs', '--decay-epochs', '--cooldown-epochs',
        '--aa', '--aug-repeats', '--reprob', '--mixup', '--cutmix', '--smoothing', '--train-interpolation',
        '--drop-path', '--log-interval', '--checkpoint-interval', '--checkpoint-hist', '--workers', '--pin-mem',
        '--seed', '--output', '--experiment', '--update_freq',
    }
    assert release_flags <= flags_seen, release_flags - flags_seen


def test_every_flag_has_a_yaml_spelling():
    parser = build_train_parser()
    for action in parser._actions:
        if action.dest in ('help', 'config', 'local_rank', 'data_dir_positional'):
            continue
        value = action.default if action.default is not None else None
        if value is None:
            continue
        key = action.dest.replace('_', '-')
        loaded = yaml.safe_load(yaml.safe_dump({key: value}))
        from robustcnn.config import apply_yaml_defaults
        apply_yaml_defaults(build_train_parser(), loaded)  # must not raise: defaults are valid config values


@pytest.mark.parametrize('flags, message', [
    (['--batch-size', '0'], 'argument -b/--batch-size: must be at least 1, got 0'),
    (['--epochs', '-3'], 'argument --epochs: must be at least 1, got -3'),
    (['--reprob', '1.5'], 'argument --reprob: must be between 0 and 1, got 1.5'),
    (['--lr', 'nan'], 'argument --lr: must be a finite number >= 0, got nan'),
    (['--bogus-flag'], 'unrecognized arguments: --bogus-flag'),
    (['--model-kwargs', 'patch_size'], 'expected KEY=VALUE'),
])
def test_bad_flags_are_one_line_usage_errors(flags, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_train_args(['/data', *flags])


def test_amp_and_channels_last_are_left_unset_for_the_device_to_decide():
    """The device defaults themselves (on for CUDA) are resolved by Runtime.device_settings: test_command_lines."""
    unset = parse_train_args(['/data'])
    assert unset.amp is None and unset.channels_last is None
    off = parse_train_args(['/data', '--no-amp', '--no-channels-last'])
    assert off.amp is False and off.channels_last is False
