"""What an adversarial attack (validate.py --attack) or adversarial training (train.py --adv-train) is asked to do.

Parsed and checked here, before torch is imported and long before the model loads: a typo in ``--attack-eps``
must cost a second. Radii are in pixel units of the preprocessed [0, 1] image (the convention of RobustBench,
AutoAttack and torchattacks), written either as a fraction (``4/255``) or a float.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from fractions import Fraction
from ..cli import UsageError

__all__ = ['ATTACKS', 'NORMS', 'ADVERSARIAL_TRAINING', 'AttackSpec', 'AdversarialTrainingSpec', 'parse_radius',
           'parse_radii', 'add_attack_arguments', 'attack_spec_from_args', 'add_adversarial_training_arguments',
           'check_adversarial_training_args', 'adversarial_training_spec', 'default_pgd_step_size']

ATTACKS = ('fgsm', 'pgd', 'autoattack')
NORMS = ('linf', 'l2')
ADVERSARIAL_TRAINING = ('none', 'pgd', 'fgsm')
DEFAULT_PGD_STEPS = 10


def parse_radius(text: str, flag: str, norm: str = 'linf') -> float:
    """``'4/255'`` or ``'0.0157'`` -> float; L-inf radii must lie in [0, 1] (pixel units), L2 radii be finite."""
    cleaned = str(text).strip()
    try:
        value = float(Fraction(cleaned)) if '/' in cleaned else float(cleaned)
    except (ValueError, ZeroDivisionError):
        raise UsageError(f'{flag}: cannot read {text!r} as a radius; write a fraction such as 4/255 or a number '
                         f'such as 0.0157 (pixel units of the [0, 1] image)') from None
    if not math.isfinite(value) or value < 0:
        raise UsageError(f'{flag}: the radius must be a finite number >= 0, got {text!r}')
    if norm == 'linf' and value > 1:
        raise UsageError(f'{flag}: an L-inf radius is in pixel units of the [0, 1] image, so at most 1, got '
                         f'{text!r} (for 8 of 255 levels write 8/255)')
    return value


def parse_radii(text: str, flag: str, norm: str = 'linf') -> tuple[tuple[float, ...], tuple[str, ...]]:
    """Comma-separated radii (``1/255,2/255,4/255``): the values and the spellings (for tables), no repeats."""
    parts = [part.strip() for part in str(text).split(',')]
    if not parts or any(not part for part in parts):
        raise UsageError(f'{flag}: expected one radius or a comma-separated list such as 1/255,2/255,4/255, '
                         f'got {text!r}')
    values = tuple(parse_radius(part, flag, norm) for part in parts)
    if len(set(values)) != len(values):
        raise UsageError(f'{flag}: the same radius is listed twice in {text!r}')
    return values, tuple(parts)


def default_pgd_step_size(eps: float, steps: int) -> float:
    """Madry et al. (2018)'s rule, 2.5 * eps / steps: enough to cross the ball and come back from the far side."""
    return 2.5 * eps / steps


@dataclass(frozen=True)
class AttackSpec:
    """One attack over one or several radii. ``steps``/``step_size`` are None where the attack fixes them."""

    attack: str
    eps: tuple[float, ...]
    eps_text: tuple[str, ...]
    norm: str = 'linf'
    steps: int | None = None
    step_size: float | None = None      # None: derived from each eps (see step_size_for)
    step_size_text: str | None = None
    random_start: bool = False
    seed: int = 0
    autocast: bool = False              # attack under the run's --amp autocast instead of float32
    max_samples: int | None = None
    image_list: str | None = None       # file of image paths (RobustBench's list): attack these, in this order

    def step_size_for(self, eps: float) -> float | None:
        if self.attack == 'fgsm':
            return eps
        if self.attack == 'pgd':
            assert self.steps is not None
            return self.step_size if self.step_size is not None else default_pgd_step_size(eps, self.steps)
        return None

    def forward_backward_per_image(self) -> int:
        """Gradient computations per attacked image and radius (the cost TEST.md quotes); AutoAttack's varies."""
        return 1 if self.attack == 'fgsm' else (self.steps or 0)


def add_attack_arguments(parser: argparse.ArgumentParser) -> None:
    """validate.py's attack flags (one group); checked by :func:`attack_spec_from_args`."""
    group = parser.add_argument_group('adversarial attack (robust accuracy; see TEST.md)')
    group.add_argument('--attack', choices=ATTACKS, default=None,
                       help='attack every image (pixel space, [0, 1], normalization inside the model) and report '
                            'robust_top1 beside the clean top1 of the same images')
    group.add_argument('--attack-eps', default=None, metavar='EPS[,EPS...]',
                       help='radius in [0, 1] pixel units: 4/255 or 0.0157; several (1/255,2/255,4/255) give a '
                            'table and, with --figure, a curve (default: 4/255)')
    group.add_argument('--attack-norm', choices=NORMS, default='linf', help='threat model')
    group.add_argument('--attack-steps', type=int, default=None, metavar='N',
                       help=f'PGD iterations (default {DEFAULT_PGD_STEPS}); FGSM is one step, AutoAttack fixes its own')
    group.add_argument('--attack-step-size', default=None, metavar='ALPHA',
                       help='PGD step size in pixel units, e.g. 1/255 (default 2.5 * eps / steps)')
    group.add_argument('--attack-random-start', action=argparse.BooleanOptionalAction, default=None,
                       help='PGD: start at a uniform random point of the ball, as Madry et al. and Bai et al. '
                            '(default off: deterministic, every image starts at itself)')
    group.add_argument('--attack-seed', type=int, default=0, help='seed of random starts and AutoAttack')
    group.add_argument('--attack-autocast', action='store_true',
                       help='compute attack gradients under --amp autocast (default float32, as RobustBench)')
    group.add_argument('--max-samples', type=int, default=None, metavar='N',
                       help='attack only the first N images in the fixed order TEST.md describes (one per class '
                            'in turn); RobustBench ImageNet uses 5000')
    group.add_argument('--attack-image-list', default=None, metavar='FILE',
                       help='attack exactly the images this file names, in its order: one path per line relative '
                            'to the dataset folder\'s class folders (RobustBench\'s imagenet_test_image_ids.txt)')


def attack_spec_from_args(args: argparse.Namespace) -> AttackSpec | None:
    """The attack the flags ask for (None without --attack); every inconsistency is one line."""
    attack = getattr(args, 'attack', None)
    if attack is None:
        unset = (('--attack-eps', args.attack_eps), ('--attack-steps', args.attack_steps),
                 ('--attack-step-size', args.attack_step_size), ('--attack-random-start', args.attack_random_start),
                 ('--max-samples', args.max_samples), ('--attack-autocast', args.attack_autocast or None),
                 ('--attack-image-list', args.attack_image_list),
                 ('--attack-norm', None if args.attack_norm == 'linf' else args.attack_norm),
                 ('--attack-seed', args.attack_seed or None))
        given = [flag for flag, value in unset if value is not None]
        if given:
            raise UsageError(f'{", ".join(given)}: attack settings without an attack; add --attack fgsm|pgd|autoattack')
        return None
    norm = args.attack_norm
    eps, eps_text = parse_radii(args.attack_eps if args.attack_eps is not None else '4/255', '--attack-eps', norm)
    if args.max_samples is not None and args.max_samples <= 0:
        raise UsageError(f'--max-samples must be positive, got {args.max_samples}')
    if args.attack_seed < 0:
        raise UsageError(f'--attack-seed must be 0 or more, got {args.attack_seed}')
    steps, step_size, step_size_text = args.attack_steps, None, None
    random_start = bool(args.attack_random_start)
    if attack == 'fgsm':
        if norm != 'linf':
            raise UsageError('--attack fgsm is the L-inf attack (sign of the gradient); for one L2 step use '
                             '--attack pgd --attack-norm l2 --attack-steps 1')
        if steps not in (None, 1):
            raise UsageError(f'--attack fgsm takes exactly one step, got --attack-steps {steps}; use --attack pgd')
        if args.attack_step_size is not None:
            raise UsageError('--attack fgsm steps by exactly eps; drop --attack-step-size or use --attack pgd')
        if args.attack_random_start:
            raise UsageError('--attack fgsm has no random start; use --attack pgd --attack-steps 1 '
                             '--attack-random-start')
        steps = 1
    elif attack == 'pgd':
        steps = DEFAULT_PGD_STEPS if steps is None else steps
        if steps < 1:
            raise UsageError(f'--attack-steps must be at least 1, got {steps}')
        if args.attack_step_size is not None:
            step_size = parse_radius(args.attack_step_size, '--attack-step-size', norm='l2')
            step_size_text = str(args.attack_step_size).strip()
            if step_size == 0:
                raise UsageError('--attack-step-size must be positive')
        random_start = bool(args.attack_random_start)
    else:
        fixed = [flag for flag, value in (('--attack-steps', steps), ('--attack-step-size', args.attack_step_size),
                                          ('--attack-random-start', args.attack_random_start)) if value is not None]
        if fixed:
            raise UsageError(f'--attack autoattack is parameter-free (its standard version fixes iterations, step '
                             f'sizes and restarts); drop {", ".join(fixed)}')
        steps = None
    return AttackSpec(attack=attack, eps=eps, eps_text=eps_text, norm=norm, steps=steps, step_size=step_size,
                      step_size_text=step_size_text, random_start=random_start, seed=args.attack_seed,
                      autocast=bool(args.attack_autocast), max_samples=args.max_samples,
                      image_list=args.attack_image_list)


# ---------------------------------------------------------------------------------------------------- training

@dataclass(frozen=True)
class AdversarialTrainingSpec:
    """PGD adversarial training: every training batch is replaced by its attacked version (L-inf, pixel units)."""

    method: str          # 'pgd' (PGD-AT, Madry et al.) or 'fgsm' (fast AT, Wong et al. 2020)
    eps: float
    steps: int
    step_size: float
    random_start: bool


def add_adversarial_training_arguments(parser: argparse.ArgumentParser) -> None:
    """train.py's adversarial-training flags (one group); YAML configs may set them too."""
    group = parser.add_argument_group('adversarial training (see TRAIN.md)')
    group.add_argument('--adv-train', default='none', choices=ADVERSARIAL_TRAINING,
                       help='train on L-inf adversarial examples: pgd (PGD-AT; Bai et al. 2021 use 1 step of 4/255 '
                            'with a random start) or fgsm (fast AT, Wong et al. 2020: random start, step 1.25 eps)')
    group.add_argument('--adv-eps', default='4/255', metavar='EPS', help='L-inf radius in [0, 1] pixel units')
    group.add_argument('--adv-steps', type=int, default=None, metavar='N',
                       help='PGD iterations per batch (default 1; fgsm: always 1)')
    group.add_argument('--adv-step-size', default=None, metavar='ALPHA',
                       help='step in pixel units (default: eps for pgd with 1 step, 2.5 * eps / steps for more; '
                            '1.25 * eps for fgsm)')
    group.add_argument('--adv-random-start', action=argparse.BooleanOptionalAction, default=True,
                       help='start from a uniform random point of the ball')


def adversarial_training_spec(args: argparse.Namespace) -> AdversarialTrainingSpec | None:
    """The resolved recipe (None: ordinary training); raises UsageError on inconsistent flags."""
    method = getattr(args, 'adv_train', 'none') or 'none'
    if method == 'none':
        return None
    eps = parse_radius(args.adv_eps, '--adv-eps')
    steps = args.adv_steps
    if method == 'fgsm':
        if steps not in (None, 1):
            raise UsageError(f'--adv-train fgsm takes one step, got --adv-steps {steps}; use --adv-train pgd')
        steps = 1
    steps = 1 if steps is None else steps
    if steps < 1:
        raise UsageError(f'--adv-steps must be at least 1, got {steps}')
    if args.adv_step_size is not None:
        step_size = parse_radius(args.adv_step_size, '--adv-step-size', norm='l2')
    elif method == 'fgsm':
        step_size = 1.25 * eps          # Wong et al. (2020), "Fast is better than free"
    else:
        step_size = eps if steps == 1 else default_pgd_step_size(eps, steps)
    if eps > 0 and step_size <= 0:
        raise UsageError('--adv-step-size must be positive')
    return AdversarialTrainingSpec(method=method, eps=eps, steps=steps, step_size=step_size,
                                   random_start=bool(args.adv_random_start))


def check_adversarial_training_args(args: argparse.Namespace) -> None:
    """Called from train.py's argument checks: a bad recipe fails at parse time."""
    spec = adversarial_training_spec(args)
    if spec is None:
        given = [flag for flag, value in (('--adv-steps', args.adv_steps), ('--adv-step-size', args.adv_step_size))
                 if value is not None]
        if given:
            raise UsageError(f'{", ".join(given)}: adversarial-training settings without --adv-train; add --adv-train '
                             f'pgd|fgsm')

