"""Adversarial training: each training batch is replaced by its L-inf PGD version before the usual step.

PGD-AT (Madry et al., 2018) and fast AT (Wong et al., 2020; FGSM from a random start with step 1.25 eps) as Bai et
al. (2021) used them to compare CNNs and Transformers: their ImageNet models train on PGD-1 (eps 4/255, step 4/255,
random start). Per update this costs ``steps`` extra forward/backward passes.

Written here rather than taken from torchattacks because the training batch is already normalized, may carry
mixup's soft targets, must use the recipe's own loss (label smoothing) and autocast, and must draw its random start
from the loop's per-batch seeded generator so that a resumed run stays bit-identical; torchattacks' PGD takes hard
labels and [0, 1] inputs only. The step is the textbook one: ``delta <- clip(delta + alpha * sign(grad))``.

As in Madry et al.'s and Wong et al.'s reference code the attack runs with the model in training mode (BatchNorm
uses the batch's statistics; drop path stays random); gradients flow to the perturbation only, never into the
parameters' ``.grad``. The ball is measured in pixel units of the [0, 1] image although the batch is normalized:
``delta`` is divided by the std before it is added. Pixels that augmentation already put outside [0, 1] (random
erasing's noise) are allowed to stay where they are, but never pushed further out.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .spec import AdversarialTrainingSpec

__all__ = ['AdversarialBatches']


class AdversarialBatches:
    """``adversary(model, images, targets, loss_fn) -> images``: the normalized batch, attacked."""

    def __init__(self, spec: AdversarialTrainingSpec, mean: Sequence[float], std: Sequence[float],
                 autocast: Callable[[], Any]) -> None:
        self.spec = spec
        self.mean = tuple(float(value) for value in mean)
        self.std = tuple(float(value) for value in std)
        self.autocast = autocast
        self._cache: dict[tuple[Any, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def _statistics(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (images.device, images.dtype)
        if key not in self._cache:
            self._cache[key] = (torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1),
                                torch.tensor(self.std, device=images.device).view(1, -1, 1, 1))
        return self._cache[key]

    def describe(self) -> str:
        spec = self.spec
        name = 'fast AT (FGSM, random start)' if spec.method == 'fgsm' else f'PGD-{spec.steps}'
        return (f'{name}, L-inf eps {spec.eps:.5g} (= {spec.eps * 255:.3g}/255), step {spec.step_size:.5g}, '
                f'random start {"on" if spec.random_start else "off"}; {spec.steps + 1} forward/backward passes '
                f'per batch')

    def __call__(self, model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        spec = self.spec
        if spec.eps == 0:
            return images
        images = images.detach()
        mean, std = self._statistics(images)
        pixels = images.float() * std + mean
        # the perturbation's box: the eps-ball intersected with [0, 1], never tighter than where the pixel already is
        lower = torch.clamp(torch.minimum(-pixels, torch.zeros_like(pixels)), min=-spec.eps)
        upper = torch.clamp(torch.maximum(1.0 - pixels, torch.zeros_like(pixels)), max=spec.eps)
        if spec.random_start:
            delta = torch.rand_like(pixels).mul_(2 * spec.eps).sub_(spec.eps)
        else:
            delta = torch.zeros_like(pixels)
        delta = torch.minimum(torch.maximum(delta, lower), upper)
        for _ in range(spec.steps):
            delta.requires_grad_(True)
            with self.autocast():
                loss = loss_fn(model(images + (delta / std).to(images.dtype)), targets)
            gradient, = torch.autograd.grad(loss, delta)
            delta = delta.detach() + spec.step_size * gradient.sign()
            delta = torch.minimum(torch.maximum(delta, lower), upper)
        return (images + (delta / std).to(images.dtype)).detach()
