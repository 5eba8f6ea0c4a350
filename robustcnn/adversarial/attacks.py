"""The attacked model and the attacks: torchattacks' implementations, composed as the literature runs them.

Library choice (torchattacks, checked line by line against the definitions and the AutoAttack reference):
- ``PGD`` / ``PGDL2`` / ``FGSM`` are correct as written: cross entropy on the logits, the sign (L-inf) or
  normalized (L2) gradient step, projection onto the eps-ball around the clean image and then onto [0, 1] after every
  step, a uniform (L-inf) or uniform-radius (L2) random start clipped to [0, 1]. Used as they are.
- ``AutoAttack(version='standard')`` is **not** AutoAttack's standard version: it builds APGD-CE, APGD-T, FAB-T and
  Square with torchattacks' default of 10 iterations (AutoAttack uses 100) and with ``n_classes - 1`` target classes
  (999 on ImageNet, where AutoAttack uses 9: a hundred times the work and a different attack). So
  :class:`StandardAutoAttack` composes torchattacks' APGD, APGDT, FAB and Square (faithful ports of Croce & Hein's
  code) with the reference settings -- 100 iterations, 1 restart, 9 target classes, 5000 Square queries,
  p_init 0.8 -- and runs them as AutoAttack does: each attack only on the images every earlier one failed on.

Everything attacks the :class:`PixelSpaceModel`: pixels in [0, 1] in, the scored classes' logits out.
"""
from __future__ import annotations

import contextlib
import math
from importlib import metadata
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from .spec import AttackSpec

__all__ = ['PixelSpaceModel', 'build_attack', 'StandardAutoAttack', 'attack_record', 'check_perturbation',
           'library_version', 'AUTOATTACK_ITERATIONS', 'AUTOATTACK_TARGET_CLASSES', 'SQUARE_QUERIES']

AUTOATTACK_ITERATIONS = 100
AUTOATTACK_TARGET_CLASSES = 9
SQUARE_QUERIES = 5000
MIN_AUTOATTACK_CLASSES = 4  # APGD-T's targeted DLR loss reads the 1st, 3rd and 4th largest logits

Attack = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class PixelSpaceModel(nn.Module):
    """``pixels in [0, 1] -> (x - mean) / std -> model -> logits of the scored classes``, for attacks.

    - Normalization is inside, so an eps-ball is measured in pixel units, as RobustBench and AutoAttack define it.
    - ``label_subset`` (ImageNet-R/-A's 200 classes) selects the logits *before* any loss: an attack must fool the
      classifier that is scored, not push probability into one of the 800 classes never counted.
    - Float32 by default: bf16 gradients are coarse enough to weaken an attack (``amp_dtype`` opts in).
    - A model whose output ignores the input (constant) gets an exactly-zero gradient instead of autograd's
      "tensor not used in the graph" error: ``0 * pixels`` is added to the logits.
    The wrapped model must be in eval mode (its BatchNorm statistics and dropout must not depend on the batch).
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 label_subset: Sequence[int] | None = None, channels_last: bool = False,
                 amp_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.model = model
        device = next(iter(model.parameters()), torch.empty(0)).device
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1),
                             persistent=False)
        subset = None if label_subset is None else torch.as_tensor(list(label_subset), dtype=torch.long,
                                                                   device=device)
        self.register_buffer('label_subset', subset, persistent=False)
        self.channels_last = channels_last
        self.amp_dtype = amp_dtype

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        images = (pixels - self.mean) / self.std
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        autocast = (torch.autocast(device_type=pixels.device.type, dtype=self.amp_dtype)
                    if self.amp_dtype is not None else contextlib.nullcontext())
        with autocast:
            logits = self.model(images)
        logits = logits.float()
        if self.label_subset is not None:
            logits = logits.index_select(1, self.label_subset)
        return logits + 0.0 * pixels.flatten(1)[:, :1]


def library_version() -> str:
    try:
        return metadata.version('torchattacks')
    except metadata.PackageNotFoundError:
        return 'unknown'


def _import_torchattacks() -> Any:
    try:
        import torchattacks
    except ImportError:
        raise ImportError('attacks need torchattacks: pip install torchattacks (or pip install -e ".[adv]")') \
            from None
    return torchattacks


class StandardAutoAttack:
    """AutoAttack's standard version (Croce & Hein, 2020) as RobustBench runs it: APGD-CE, APGD-T, FAB-T, Square.

    Each attack sees only the images still classified correctly after every earlier one; an image counts as
    robust when all four fail. Returns the adversarial images (the clean image where every attack failed).
    """

    def __init__(self, model: PixelSpaceModel, norm: str, eps: float, num_classes: int, seed: int) -> None:
        torchattacks = _import_torchattacks()
        library_norm = {'linf': 'Linf', 'l2': 'L2'}[norm]
        # torchattacks' targeted attacks take "n_classes" and use n_classes - 1 target classes
        targets = min(AUTOATTACK_TARGET_CLASSES, num_classes - 1)
        self.model = model
        self.attacks = [
            ('apgd-ce', torchattacks.APGD(model, norm=library_norm, eps=eps, steps=AUTOATTACK_ITERATIONS,
                                          n_restarts=1, seed=seed, loss='ce', eot_iter=1, rho=0.75)),
            ('apgd-t', torchattacks.APGDT(model, norm=library_norm, eps=eps, steps=AUTOATTACK_ITERATIONS,
                                          n_restarts=1, seed=seed, eot_iter=1, rho=0.75, n_classes=targets + 1)),
            ('fab-t', torchattacks.FAB(model, norm=library_norm, eps=eps, steps=AUTOATTACK_ITERATIONS, n_restarts=1,
                                       alpha_max=0.1, eta=1.05, beta=0.9, seed=seed, multi_targeted=True,
                                       n_classes=targets + 1)),
            ('square', torchattacks.Square(model, norm=library_norm, eps=eps, n_queries=SQUARE_QUERIES,
                                           n_restarts=1, p_init=0.8, loss='margin', resc_schedule=True, seed=seed)),
        ]
        self.target_classes = targets

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        adversarial = images.clone()
        with torch.no_grad():
            remaining = (self.model(images).argmax(dim=1) == labels).nonzero().flatten()
        for _, attack in self.attacks:
            if remaining.numel() == 0:
                break
            candidates = attack(images[remaining], labels[remaining])
            with torch.no_grad():
                fooled = self.model(candidates).argmax(dim=1) != labels[remaining]
            adversarial[remaining[fooled]] = candidates[fooled]
            remaining = remaining[~fooled]
        return adversarial


def build_attack(spec: AttackSpec, eps: float, model: PixelSpaceModel, num_classes: int) -> Attack:
    """The attack at radius ``eps`` against ``model`` (``num_classes``: outputs of the scored label space)."""
    if eps == 0:
        return lambda images, labels: images  # the ball is the image itself (torchattacks' L2 would divide by 0)
    if spec.attack == 'autoattack':
        return StandardAutoAttack(model, spec.norm, eps, num_classes, spec.seed)
    torchattacks = _import_torchattacks()
    if spec.attack == 'fgsm':
        return torchattacks.FGSM(model, eps=eps)
    step_size = spec.step_size_for(eps)
    if spec.norm == 'linf':
        return torchattacks.PGD(model, eps=eps, alpha=step_size, steps=spec.steps, random_start=spec.random_start)
    return torchattacks.PGDL2(model, eps=eps, alpha=step_size, steps=spec.steps, random_start=spec.random_start)


def attack_record(spec: AttackSpec, num_classes: int, amp_dtype: str | None) -> dict[str, Any]:
    """Every parameter of the attack, for the results file (numbers must be reproducible from it alone)."""
    record: dict[str, Any] = {
        'name': spec.attack, 'norm': spec.norm, 'eps': list(spec.eps), 'eps_text': list(spec.eps_text),
        'library': 'torchattacks', 'library_version': library_version(),
        'loss': 'cross_entropy' if spec.attack != 'autoattack' else None,
        'gradient_dtype': amp_dtype if (spec.autocast and amp_dtype) else 'float32',
        'space': 'pixels in [0, 1], normalization inside the model', 'seed': spec.seed,
        'max_samples': spec.max_samples, 'scored_classes': num_classes,
    }
    if spec.attack in ('fgsm', 'pgd'):
        record.update(steps=spec.steps, step_size=[spec.step_size_for(eps) for eps in spec.eps],
                      step_size_text=spec.step_size_text, random_start=spec.random_start)
        if spec.attack == 'pgd':
            record['class'] = 'PGD' if spec.norm == 'linf' else 'PGDL2'
        else:
            record['class'] = 'FGSM'
    else:
        targets = min(AUTOATTACK_TARGET_CLASSES, num_classes - 1)
        record.update(version='standard', components=[
            {'name': 'apgd-ce', 'class': 'APGD', 'iterations': AUTOATTACK_ITERATIONS, 'restarts': 1, 'rho': 0.75},
            {'name': 'apgd-t', 'class': 'APGDT', 'iterations': AUTOATTACK_ITERATIONS, 'restarts': 1,
             'target_classes': targets, 'loss': 'targeted_dlr'},
            {'name': 'fab-t', 'class': 'FAB', 'iterations': AUTOATTACK_ITERATIONS, 'restarts': 1,
             'target_classes': targets, 'alpha_max': 0.1, 'eta': 1.05, 'beta': 0.9},
            {'name': 'square', 'class': 'Square', 'queries': SQUARE_QUERIES, 'restarts': 1, 'p_init': 0.8,
             'loss': 'margin'},
        ], composed_by='robustcnn (torchattacks AutoAttack uses 10 iterations and n_classes - 1 targets)')
    return record


def check_perturbation(adversarial: torch.Tensor, images: torch.Tensor, eps: float, norm: str) -> None:
    """Raise if an attack left the eps-ball or [0, 1]: a library bug must never become a robust-accuracy number."""
    if adversarial.shape != images.shape:
        raise RuntimeError(f'the attack returned shape {tuple(adversarial.shape)} for images {tuple(images.shape)}')
    tolerance = 1e-5
    delta = (adversarial - images).flatten(1).float()
    size = delta.abs().amax(dim=1) if norm == 'linf' else delta.norm(dim=1)
    worst = size.max().item() if size.numel() else 0.0
    low, high = adversarial.min().item(), adversarial.max().item()
    if not math.isfinite(worst) or worst > eps * (1 + tolerance) + tolerance or low < -tolerance \
            or high > 1 + tolerance:
        raise RuntimeError(f'the attack left its threat model: {norm} perturbation {worst:.6g} for eps {eps:.6g}, '
                           f'pixels in [{low:.4g}, {high:.4g}]; refusing to report robust accuracy')
