"""Tiny differentiable classifiers for the attack tests, and PGD written from its definition (Madry et al., 2018).

The reference loop here shares no code with torchattacks or robustcnn.adversarial: it is the textbook update
``x <- Proj_{B(x0, eps) and [0, 1]}(x + alpha * sign(grad_x CE(f(x), y)))`` on a model that takes [0, 1] pixels.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

TINY_NET_NAME = 'adversarial_test_tiny_net'
TINY_MEAN = (0.5, 0.4, 0.3)
TINY_STD = (0.25, 0.2, 0.3)


class TinyNet(torch.nn.Module):
    """conv 3x3 -> ReLU -> global average -> linear: differentiable, random, and fast at 8-32 px."""

    def __init__(self, num_classes: int = 4, width: int = 6, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.num_classes = num_classes
        self.conv = torch.nn.Conv2d(3, width, 3, padding=1)
        self.head = torch.nn.Linear(width, num_classes)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.8)
        self.pretrained_cfg = {'input_size': (3, 32, 32), 'crop_pct': 1.0, 'interpolation': 'bilinear',
                               'mean': TINY_MEAN, 'std': TINY_STD, 'num_classes': num_classes}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.conv(images)).mean(dim=(2, 3)))


class ConstantNet(torch.nn.Module):
    """Ignores its input: robust by construction (no perturbation can change its answer)."""

    def __init__(self, num_classes: int = 5, answer: int = 2) -> None:
        super().__init__()
        logits = torch.zeros(num_classes)
        logits[answer] = 3.0
        self.logits = torch.nn.Parameter(logits)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits.unsqueeze(0).expand(images.shape[0], -1)


def register_tiny_net() -> str:
    import timm
    from timm.models import register_model

    if not timm.is_model(TINY_NET_NAME):
        def adversarial_test_tiny_net(pretrained: bool = False, num_classes: int = 4, **kwargs) -> torch.nn.Module:
            return TinyNet(num_classes=num_classes)
        adversarial_test_tiny_net.__module__ = __name__
        register_model(adversarial_test_tiny_net)
    return TINY_NET_NAME


def fit_tiny_net(folder: str | os.PathLike, class_names: Sequence[str], steps: int = 80) -> TinyNet:
    """A TinyNet fitted (deterministically) to ``folder/<class>/*.png`` so that clean accuracy is high."""
    import numpy as np
    from PIL import Image

    paths = sorted(Path(folder).glob('*/*.png'))
    pixels = torch.stack([torch.tensor(np.array(Image.open(path).convert('RGB'))).permute(2, 0, 1)
                          for path in paths]).float() / 255.0
    labels = torch.tensor([list(class_names).index(path.parent.name) for path in paths])
    model = TinyNet(num_classes=len(class_names))
    forward = normalized(model, TINY_MEAN, TINY_STD)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(forward(pixels), labels).backward()
        optimizer.step()
    return model.eval()


def save_tiny_checkpoint(path: str | os.PathLike, class_names: Sequence[str], model: TinyNet | None = None) -> Path:
    model = model if model is not None else TinyNet(num_classes=len(class_names))
    torch.save({'state_dict': model.state_dict(),
                'metadata': {'model': TINY_NET_NAME, 'class_names': list(class_names),
                             'num_classes': len(class_names)}}, path)
    return Path(path)


def reference_pgd(model: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, labels: torch.Tensor,
                  eps: float, step_size: float, steps: int) -> torch.Tensor:
    """L-inf PGD without random start, from the definition; ``model`` maps [0, 1] pixels to logits."""
    original = pixels.detach()
    current = original.clone()
    for _ in range(steps):
        current.requires_grad_(True)
        loss = F.cross_entropy(model(current), labels)
        gradient, = torch.autograd.grad(loss, current)
        current = current.detach() + step_size * gradient.sign()
        current = torch.max(torch.min(current, original + eps), original - eps).clamp(0.0, 1.0)
    return current.detach()


def normalized(model: torch.nn.Module, mean: Sequence[float], std: Sequence[float]
               ) -> Callable[[torch.Tensor], torch.Tensor]:
    mean_tensor = torch.tensor(mean).view(1, -1, 1, 1)
    std_tensor = torch.tensor(std).view(1, -1, 1, 1)
    return lambda pixels: model((pixels - mean_tensor) / std_tensor)
