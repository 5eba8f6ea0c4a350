"""Adversarial robustness: attacks for validate.py (FGSM, PGD, AutoAttack) and adversarial training for train.py.

``spec`` (flags, checked before torch loads), ``attacks`` (the pixel-space model and the attack objects),
``evaluation`` (robust accuracy over an evaluation set, resumable), ``training`` (adversarial batches in the loop).
Importing this package does not import torch.
"""
from .spec import AdversarialTrainingSpec, AttackSpec, attack_spec_from_args  # noqa: F401
