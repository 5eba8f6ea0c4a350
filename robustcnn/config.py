"""Command-line flags and YAML configs for training.

A YAML config is a mapping whose keys are flag names (``batch-size`` or ``batch_size``); its values become the
parser's defaults, so any flag on the command line still wins. Unknown keys and wrongly typed values are errors that
name the key: a typo in a 300-epoch recipe must fail before any work, not be silently ignored.

Flag names and meanings are timm's; the defaults are the paper's DeiT recipe (except ``--scale-lr``, which stays off
as in timm so that ``--lr`` is the real learning rate unless asked otherwise).
"""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .adversarial.spec import add_adversarial_training_arguments, check_adversarial_training_args
from .arguments import (AMP_DTYPE_NAMES, FLOAT_TYPES, GEOMETRIC_INTERPOLATIONS, INT_TYPES, INTERPOLATIONS, RESIZE_MODES,
                        check_channel_values, check_input_size, crop_fraction, finite_float, interpolation,
                        non_negative_float, non_negative_int, positive_float, positive_int, probability)
from .cli import DefaultsHelpFormatter, OneLineErrorParser, UsageError

__all__ = [
    'INTERPOLATIONS', 'RESIZE_MODES', 'ConfigError', 'build_train_parser', 'parse_train_args', 'load_yaml_config',
    'apply_yaml_defaults', 'args_to_yaml', 'effective_learning_rate', 'total_batch_size',
]

DEFAULT_AUTO_AUGMENT = 'rand-m9-mstd0.5-inc1'


class ConfigError(UsageError):
    """A config file or flag value is wrong; the message names the key."""


class KeyValueAction(argparse.Action):
    """``--model-kwargs patch_size=4 kernel_size=11``: values are read as YAML scalars (numbers, bools, lists)."""

    def __call__(self, parser, namespace, values, option_string=None):
        result = dict(getattr(namespace, self.dest, None) or {})
        for item in values:
            if '=' not in item:
                raise argparse.ArgumentError(self, f'expected KEY=VALUE, got {item!r}')
            key, value = item.split('=', 1)
            try:
                result[key.strip()] = yaml.safe_load(value)
            except yaml.YAMLError as error:  # e.g. a !!python tag: plain values only
                raise argparse.ArgumentError(self, f'{item!r} is not a plain value ({" ".join(str(error).split())})')
        setattr(namespace, self.dest, result)


class TrainArgumentParser(OneLineErrorParser):
    """Bad flags raise ConfigError: one line and exit status 2 instead of the usage block."""

    error_class = ConfigError


def build_train_parser() -> argparse.ArgumentParser:
    """All training flags. The original release's TRAIN.md flags are all accepted with their meanings."""
    parser = TrainArgumentParser(
        prog='train.py',
        description='Train a Robust-ResNet (or any timm model) on an image-folder dataset with the DeiT recipe.',
        formatter_class=DefaultsHelpFormatter,
    )
    bool_flag = argparse.BooleanOptionalAction
    add = parser.add_argument
    add('-c', '--config', default='', metavar='FILE', help='YAML file of flag defaults (keys are flag names)')

    group = parser.add_argument_group('data')
    group.add_argument('data_dir_positional', nargs='?', default=None, metavar='DATA_DIR',
                       help='dataset root holding TRAIN_SPLIT/ and VAL_SPLIT/ class folders')
    group.add_argument('--data-dir', default=None, metavar='DIR', help='same as the positional DATA_DIR')
    group.add_argument('--train-split', default='train', help='training folder under DATA_DIR')
    group.add_argument('--val-split', default='val', help='validation folder under DATA_DIR')
    group.add_argument('--num-classes', type=positive_int, default=None,
                       help='classifier size (default: the number of class folders)')
    group.add_argument('--img-size', type=positive_int, default=None, help='input size (default: the model\'s)')
    group.add_argument('--input-size', type=positive_int, nargs=3, default=None, metavar=('C', 'H', 'W'),
                       help='input size C H W (default: the model\'s; --img-size sets H and W)')
    group.add_argument('--crop-pct', type=crop_fraction, default=None, help='validation center-crop fraction')
    group.add_argument('--mean', type=finite_float, nargs='+', default=None,
                       help='normalization mean per channel (default: the model\'s)')
    group.add_argument('--std', type=positive_float, nargs='+', default=None,
                       help='normalization std per channel (default: the model\'s)')
    group.add_argument('--interpolation', type=interpolation, default='',
                       help='validation resize interpolation (default: model\'s)')
    group.add_argument('-b', '--batch-size', type=positive_int, default=128, help='per-device batch size')
    group.add_argument('-vb', '--validation-batch-size', type=positive_int, default=None,
                       help='per-device validation batch size (default: --batch-size)')
    group.add_argument('-j', '--workers', type=non_negative_int, default=6, help='data-loading processes per device')
    group.add_argument('--pin-mem', action=bool_flag, default=False, help='pin host memory for faster GPU copies')

    group = parser.add_argument_group('model')
    group.add_argument('--model', default='robust_resnet_dw_small', help='timm model name')
    group.add_argument('--model-kwargs', nargs='*', action=KeyValueAction, default={}, metavar='KEY=VALUE',
                       help='extra model constructor arguments, e.g. patch_size=8 kernel_size=11')
    group.add_argument('--pretrained', action=bool_flag, default=False, help='start from timm pretrained weights')
    group.add_argument('--initial-checkpoint', default='', metavar='PATH', help='start from these weights')
    group.add_argument('--drop', type=probability, default=0.0, help='classifier dropout')
    group.add_argument('--drop-path', type=probability, default=0.1, help='stochastic depth rate')
    group.add_argument('--grad-checkpointing', action=bool_flag, default=False,
                       help='recompute activations in the backward pass (less memory, slower)')
    group.add_argument('--channels-last', action=bool_flag, default=None,
                       help='channels-last memory format (default: on with CUDA, off elsewhere)')
    group.add_argument('--torchcompile', nargs='?', const='inductor', default=None, metavar='BACKEND',
                       help='torch.compile the model (default backend inductor)')
    group.add_argument('--sync-bn', action=bool_flag, default=False, help='synchronize BatchNorm across devices')
    group.add_argument('--model-ema', action=bool_flag, default=False, help='keep (and validate) an EMA of weights')
    group.add_argument('--model-ema-decay', type=probability, default=0.99996, help='EMA decay per update')

    group = parser.add_argument_group('optimizer')
    group.add_argument('--opt', default='adamw', help='timm optimizer name')
    group.add_argument('--opt-eps', type=float, default=1e-8, help='optimizer epsilon')
    group.add_argument('--opt-betas', type=float, nargs='+', default=None,
                       help='optimizer betas, two values (default: the optimizer\'s)')
    group.add_argument('--momentum', type=float, default=0.9, help='SGD momentum (momentum optimizers only)')
    group.add_argument('--weight-decay', type=non_negative_float, default=0.05,
                       help='not applied to biases and 1-D parameters (norm weights)')
    group.add_argument('--clip-grad', type=non_negative_float, default=None, metavar='NORM',
                       help='clip gradients at this norm or value (default: no clipping)')
    group.add_argument('--clip-mode', default='norm', choices=['norm', 'value', 'agc'], help='how --clip-grad clips')
    group.add_argument('--grad-accum-steps', '--update_freq', '--update-freq', dest='grad_accum_steps',
                       type=positive_int, default=1,
                       help='micro-batches per optimizer step (effective batch = batch x devices x this)')

    group = parser.add_argument_group('learning-rate schedule')
    group.add_argument('--sched', default='cosine', help='timm scheduler name')
    group.add_argument('--sched-on-updates', action=bool_flag, default=False,
                       help='step the schedule every optimizer update instead of every epoch')
    group.add_argument('--lr', type=non_negative_float, default=5e-4, help='peak learning rate (see --scale-lr)')
    group.add_argument('--scale-lr', action=bool_flag, default=False,
                       help='use lr x total batch / 512 (total batch = batch x devices x accumulation steps)')
    group.add_argument('--lr-noise', type=float, nargs='+', default=None,
                       help='epoch fraction(s) between which lr noise is added (default: no noise)')
    group.add_argument('--lr-noise-pct', type=float, default=0.67, help='lr noise limit, fraction of the lr')
    group.add_argument('--lr-noise-std', type=float, default=1.0, help='lr noise standard deviation')
    group.add_argument('--lr-cycle-mul', type=float, default=1.0, help='cycle length multiplier (restarts)')
    group.add_argument('--lr-cycle-decay', type=float, default=0.1, help='lr multiplier at each restart')
    group.add_argument('--lr-cycle-limit', type=positive_int, default=1, help='number of cycles (restarts + 1)')
    group.add_argument('--lr-k-decay', type=float, default=1.0, help='k-decay exponent of cosine/poly schedules')
    group.add_argument('--warmup-lr', type=non_negative_float, default=1e-6, help='lr at the warm-up\'s start')
    group.add_argument('--min-lr', type=non_negative_float, default=1e-5, help='lower bound of the schedule')
    group.add_argument('--epochs', type=positive_int, default=300, help='training epochs (before cool-down)')
    group.add_argument('--decay-epochs', type=float, default=90, help='step/multistep schedules only')
    group.add_argument('--decay-milestones', type=int, nargs='+', default=[90, 180, 270],
                       help='multistep schedule only: epochs at which the lr decays')
    group.add_argument('--decay-rate', '--dr', type=float, default=0.1, help='step/multistep/plateau lr factor')
    group.add_argument('--warmup-epochs', type=non_negative_int, default=5,
                       help='linear warm-up from --warmup-lr (per update with --sched-on-updates)')
    group.add_argument('--warmup-prefix', action=bool_flag, default=False,
                       help='warm-up epochs come before the schedule instead of being part of it')
    group.add_argument('--cooldown-epochs', type=non_negative_int, default=0,
                       help='epochs at --min-lr after the schedule')
    group.add_argument('--patience-epochs', type=non_negative_int, default=10,
                       help='plateau schedule only: epochs without improvement before a decay')

    group = parser.add_argument_group('augmentation and regularization')
    group.add_argument('--no-aug', action='store_true', default=False, help='resize/crop only, no augmentation')
    group.add_argument('--scale', type=float, nargs=2, default=[0.08, 1.0], help='random-resized-crop area range')
    group.add_argument('--ratio', type=float, nargs=2, default=[3. / 4., 4. / 3.],
                       help='random-resized-crop aspect-ratio range')
    group.add_argument('--hflip', type=probability, default=0.5, help='horizontal flip probability')
    group.add_argument('--vflip', type=probability, default=0.0, help='vertical flip probability')
    group.add_argument('--color-jitter', type=float, default=0.4, help='unused when --aa is set (as in timm)')
    group.add_argument('--aa', default=DEFAULT_AUTO_AUGMENT, help='timm auto-augment policy; "none" disables')
    group.add_argument('--aug-repeats', type=non_negative_int, default=3,
                       help='repeated augmentation count (0 or 1: off); used on one device too')
    group.add_argument('--reprob', type=probability, default=0.25, help='random erasing probability')
    group.add_argument('--remode', default='pixel', choices=['const', 'rand', 'pixel'], help='random erasing fill')
    group.add_argument('--recount', type=positive_int, default=1, help='random erasing count')
    group.add_argument('--mixup', type=non_negative_float, default=0.8, help='mixup alpha (0: off)')
    group.add_argument('--cutmix', type=non_negative_float, default=1.0, help='cutmix alpha (0: off)')
    group.add_argument('--cutmix-minmax', type=float, nargs=2, default=None,
                       help='cutmix box size range, overrides --cutmix alpha (default: not used)')
    group.add_argument('--mixup-prob', type=probability, default=1.0, help='probability of mixing a batch')
    group.add_argument('--mixup-switch-prob', type=probability, default=0.5,
                       help='probability of cutmix instead of mixup when both are on')
    group.add_argument('--mixup-mode', default='batch', choices=['batch', 'pair', 'elem'],
                       help='mix per batch, per pair or per element')
    group.add_argument('--mixup-off-epoch', type=non_negative_int, default=0, help='0: never turned off')
    group.add_argument('--smoothing', type=probability, default=0.1, help='label smoothing')
    group.add_argument('--train-interpolation', default='bicubic', help='random-resized-crop interpolation')

    group = parser.add_argument_group('device and precision')
    group.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda', 'xla'],
                       help='auto: xla when PJRT_DEVICE is set, else cuda when a GPU is visible, else cpu')
    group.add_argument('--amp', action=bool_flag, default=None,
                       help='mixed precision autocast (default: on with CUDA, off elsewhere; --no-amp to disable)')
    group.add_argument('--amp-dtype', default='bfloat16', choices=AMP_DTYPE_NAMES,
                       help='float16 uses a gradient scaler, bfloat16 does not need one')
    group.add_argument('--threads', type=positive_int, default=None, metavar='N',
                       help='torch threads per process (default on a CPU: the usable cores, i.e. affinity and '
                            'cgroup quota, divided by the processes on this machine)')
    group.add_argument('--local_rank', '--local-rank', type=int, default=None, help=argparse.SUPPRESS)

    group = parser.add_argument_group('run, logging and checkpoints')
    group.add_argument('--seed', type=non_negative_int, default=0, help='seed of weights, data order, augmentation')
    group.add_argument('--output', default='./output/train', metavar='PATH', help='parent folder of run folders')
    group.add_argument('--experiment', default='', metavar='NAME',
                       help='run folder name under --output (default: date-model-size)')
    group.add_argument('--resume', default='', metavar='PATH|auto',
                       help='checkpoint to continue from; "auto": the newest valid one in the run folder')
    group.add_argument('--fresh', action='store_true', default=False,
                       help='start a new run even though the run folder holds one: the old run is moved to '
                            'NAME.old-TIMESTAMP beside it (never deleted)')
    group.add_argument('--no-resume-opt', action='store_true', default=False,
                       help='with --resume, keep the weights and the position but start a fresh optimizer, '
                            'schedule and grad-scaler state (e.g. after changing --lr or --opt)')
    group.add_argument('--log-interval', type=positive_int, default=50, help='optimizer updates between log lines')
    group.add_argument('--recovery-interval', type=non_negative_int, default=0,
                       help='optimizer updates between recovery checkpoints (0: none)')
    group.add_argument('--checkpoint-interval', type=positive_int, default=10,
                       help='epochs between checkpoint-{epoch}.pth.tar files')
    group.add_argument('--checkpoint-hist', type=non_negative_int, default=1,
                       help='how many checkpoint-{epoch}.pth.tar files to keep')
    group.add_argument('--eval-metric', default='top1', choices=['top1', 'top5', 'loss'],
                       help='metric that picks model_best.pth.tar')
    add_adversarial_training_arguments(parser)

    from .tracking import add_tracking_arguments
    add_tracking_arguments(parser, default_place='in the run folder')
    return parser


def _actions_by_key(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every name a YAML key may use for an action: its dest and each long option, with '-' and '_' both."""
    names: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.dest == 'config':
            continue
        candidates = [action.dest] + [option.lstrip('-') for option in action.option_strings if option.startswith('--')]
        if action.dest == 'data_dir_positional':
            continue  # the YAML names the data folder 'data_dir' / 'data-dir', which is the --data-dir action
        for name in candidates:
            names[name.replace('-', '_')] = action
    return names


def _convert_scalar(key: str, action: argparse.Action, value: Any) -> Any:
    """Check one YAML scalar against the flag's type; strings are run through the type (YAML reads 5e-4 as text)."""
    converter = action.type
    if value is None:
        if action.default is None or action.nargs == '?':
            return None
        raise ConfigError(f'config key {key!r} is empty (null); give a value or remove the key')
    if isinstance(value, bool):
        raise ConfigError(f'config key {key!r} expects {_type_name(converter)}, got the boolean {value}')
    try:
        if converter in INT_TYPES:
            if isinstance(value, float):
                raise ValueError('not a whole number')
            result = converter(value) if isinstance(value, int) else converter(str(value))
        elif converter in FLOAT_TYPES:
            if not isinstance(value, (int, float, str)):
                raise ValueError('not a number')
            result = converter(str(value)) if converter is not float else float(value)
        else:  # strings
            if not isinstance(value, str):
                raise ValueError('not text')
            result = converter(value) if converter is not None else value
    except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
        raise ConfigError(
            f'config key {key!r} expects {_type_name(converter)}, got {value!r} ({error})') from None
    if action.choices is not None and result not in action.choices:
        raise ConfigError(f'config key {key!r} must be one of {", ".join(map(str, action.choices))}, got {result!r}')
    return result


def _type_name(converter: Any) -> str:
    if converter in INT_TYPES:
        return 'an integer' if converter is int else f'a {converter.__name__}'
    if converter in FLOAT_TYPES:
        return 'a number' if converter is float else f'a {converter.__name__}'
    return 'text'


def _convert_value(key: str, action: argparse.Action, value: Any) -> Any:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        if value is None and action.default is None:  # a switch whose default depends on the device
            return None
        if not isinstance(value, bool):
            raise ConfigError(f'config key {key!r} is a switch: write true or false, not {value!r}')
        return value
    if isinstance(action, KeyValueAction):
        if value is None:
            return {}
        if not isinstance(value, Mapping) or not all(isinstance(name, str) for name in value):
            raise ConfigError(f'config key {key!r} expects a mapping of argument names to values, got {value!r}')
        return dict(value)
    nargs = action.nargs
    if nargs in ('+', '*') or isinstance(nargs, int):
        if value is None and action.default is None:
            return None
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f'config key {key!r} expects a list, got {value!r}')
        if isinstance(nargs, int) and len(value) != nargs:
            raise ConfigError(f'config key {key!r} expects {nargs} values, got {len(value)}')
        if nargs == '+' and not value:
            raise ConfigError(f'config key {key!r} expects at least one value')
        return [_convert_scalar(key, action, item) for item in value]
    return _convert_scalar(key, action, value)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word; in a recipe that hides a typo or a stale value."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f'key {key!r} appears twice', key_node.start_mark)
        return super().construct_mapping(node, deep)


def load_yaml_config(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'config file not found: {path}')
    try:
        text = path.read_text(encoding='utf-8')
    except UnicodeDecodeError as error:
        raise ConfigError(f'config file {path} is not UTF-8 text ({error.reason} at byte {error.start})') from None
    try:
        content = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise ConfigError(f'config file {path} is not valid YAML: {" ".join(str(error).split())}') from None
    if content is None:
        return {}
    if not isinstance(content, Mapping):
        raise ConfigError(f'config file {path} must hold a mapping of flag names to values, not a '
                          f'{type(content).__name__}')
    return dict(content)


def apply_yaml_defaults(parser: argparse.ArgumentParser, config: Mapping[str, Any], source: str = 'config') -> None:
    """Validate ``config`` against the parser's flags and install its values as defaults."""
    actions = _actions_by_key(parser)
    defaults: dict[str, Any] = {}
    for raw_key, value in config.items():
        key = str(raw_key)
        action = actions.get(key.replace('-', '_'))
        if action is None:
            close = [name for name in actions if name.startswith(key.replace('-', '_')[:4])][:3]
            hint = f' (did you mean {", ".join(close)}?)' if close else ''
            raise ConfigError(f'unknown key {key!r} in {source}{hint}; keys are the flag names of train.py --help')
        defaults[action.dest] = _convert_value(key, action, value)
    parser.set_defaults(**defaults)


def parse_train_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse flags (with ``--config`` YAML defaults) and check combinations before any expensive work."""
    parser = build_train_parser()
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument('-c', '--config', default='')
    known, _ = config_parser.parse_known_args(argv)
    if known.config:
        apply_yaml_defaults(parser, load_yaml_config(known.config), source=known.config)
    args = parser.parse_args(argv)
    finalize_train_args(args)
    return args


def finalize_train_args(args: argparse.Namespace) -> None:
    """Merge the two spellings of the data folder and reject combinations that cannot work."""
    positional = args.__dict__.pop('data_dir_positional', None)
    if positional and args.data_dir and os.path.normpath(positional) != os.path.normpath(args.data_dir):
        raise ConfigError(f'two data folders given: {positional} (positional) and {args.data_dir} (--data-dir)')
    args.data_dir = positional or args.data_dir
    if not args.data_dir:
        raise ConfigError('no data folder given: pass DATA_DIR (or --data-dir, or data_dir in the config)')
    if args.aa in ('', 'none', 'None'):
        args.aa = None
    mixup_active = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
    if mixup_active and not args.no_aug and args.batch_size % 2:
        raise ConfigError(f'mixup/cutmix need an even --batch-size, got {args.batch_size}')
    if args.resume == 'auto' and not args.experiment:
        raise ConfigError('--resume auto needs --experiment NAME to find the run folder')
    if args.fresh and args.resume:
        raise ConfigError('--fresh starts over and --resume continues: give one of them')
    if args.experiment:
        from .run_folder import check_experiment_path
        check_experiment_path(args.output, args.experiment)
    for flag, path in (('--resume', args.resume if args.resume != 'auto' else ''),
                       ('--initial-checkpoint', args.initial_checkpoint)):
        if path and not os.path.isfile(path):  # checked now, not after the data scan and model build
            raise ConfigError(f'{flag} file not found: {path}')
    if args.opt_betas is not None and len(args.opt_betas) != 2:
        raise ConfigError(f'--opt-betas expects 2 values, got {len(args.opt_betas)}')
    _check_augmentation_args(args)
    check_adversarial_training_args(args)
    from .tracking import check_tracking_args
    check_tracking_args(args)


_MAX_SEED = 2 ** 32 - 1  # per-sample seeds are derived as seed * ~1e6 + ...; torch generators take 64 bits


def _check_augmentation_args(args: argparse.Namespace) -> None:
    """Values argparse lets through but that would fail on the first batch (or in a worker), named now."""
    if args.train_interpolation not in INTERPOLATIONS + ('random',):
        raise ConfigError(f'--train-interpolation must be one of {", ".join(INTERPOLATIONS + ("random",))}, got '
                          f'{args.train_interpolation!r}')
    if args.aa and args.train_interpolation not in GEOMETRIC_INTERPOLATIONS + ('random',):
        raise ConfigError(f'--train-interpolation {args.train_interpolation} cannot be used with --aa {args.aa}: '
                          f'its rotate/shear/translate ops accept {", ".join(GEOMETRIC_INTERPOLATIONS)} or random')
    low, high = args.ratio
    if not 0 < low <= high:
        raise ConfigError(f'--ratio takes two positive aspect ratios, low <= high, got {low} {high}')
    low, high = args.scale
    if not 0 < low <= high <= 1:
        raise ConfigError(f'--scale takes two area fractions with 0 < low <= high <= 1, got {low} {high}')
    jitter = args.color_jitter if isinstance(args.color_jitter, (list, tuple)) else [args.color_jitter]
    if any(value is not None and value < 0 for value in jitter):
        raise ConfigError(f'--color-jitter must be 0 or more, got {args.color_jitter}')
    check_input_size(args.input_size)
    check_channel_values('--mean', args.mean, finite_float)
    check_channel_values('--std', args.std, positive_float)
    if args.cutmix_minmax is not None and not 0 < args.cutmix_minmax[0] <= args.cutmix_minmax[1] <= 1:
        raise ConfigError(f'--cutmix-minmax takes two box-size fractions with 0 < min <= max <= 1, got '
                          f'{args.cutmix_minmax[0]} {args.cutmix_minmax[1]}')
    if args.aa:
        _check_policy_sections(args.aa)
        from .data.train_data import build_train_transform
        try:  # timm parses the policy string when the transform is built: build one now for a one-line error
            build_train_transform(args, {'input_size': (3, 32, 32), 'interpolation': 'bicubic',
                                         'mean': (0.5,) * 3, 'std': (0.5,) * 3})
        except (AssertionError, ValueError, KeyError, IndexError) as error:
            raise ConfigError(f'--aa {args.aa!r} is not a timm augmentation policy ({error or "bad format"}); '
                              f'e.g. rand-m9-mstd0.5-inc1, augmix-m5-w4-d2, v0, original, or none') from None
    if args.seed > _MAX_SEED:
        raise ConfigError(f'--seed must be at most {_MAX_SEED}, got {args.seed}')


def _check_policy_sections(policy: str) -> None:
    """timm skips a policy section it cannot parse (``rand-zz-garbage`` trains as plain ``rand``): every section
    after the policy name must be a known key with a number (m9, mstd0.5, inc1, n2, w4, d2, p0.5...)."""
    for section in policy.split('-')[1:]:
        if not re.fullmatch(r'[a-z]+\d+(\.\d+)?', section):
            raise ConfigError(f'--aa {policy!r}: section {section!r} is not KEY+NUMBER, so timm would ignore it; '
                              f'e.g. rand-m9-mstd0.5-inc1, augmix-m5-w4-d2')


def args_to_yaml(args: argparse.Namespace) -> str:
    """The resolved flags as YAML that ``--config`` accepts again (lists instead of tuples)."""
    plain = {}
    for key, value in vars(args).items():
        if key in ('config', 'local_rank'):
            continue
        plain[key] = list(value) if isinstance(value, tuple) else value
    return yaml.safe_dump(plain, default_flow_style=False, sort_keys=True)


def total_batch_size(args: argparse.Namespace, world_size: int) -> int:
    return args.batch_size * world_size * args.grad_accum_steps


def effective_learning_rate(args: argparse.Namespace, world_size: int) -> float:
    """``--scale-lr``: the linear scaling rule, lr x total batch / 512 (5e-4 -> 1e-3 at a total batch of 1024)."""
    if args.scale_lr:
        return args.lr * total_batch_size(args, world_size) / 512.0
    return args.lr
