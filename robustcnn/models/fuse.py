"""Inference-time folding of a timm model: the one helper that validate.py and the speed tool share."""
from __future__ import annotations

import torch.nn as nn

__all__ = ['fuse_for_inference']


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """Fold BatchNorms into convolutions where the model offers it, in place; returns the model to use.

    Robust-ResNets have ``fuse()`` (which also pre-packs the convolutions, see ``models/prepacked.py``); other timm
    models are offered timm's own ``reparameterize_model`` hook (RepVGG-style ``fuse``/``reparameterize`` methods),
    which leaves a model without such methods unchanged.
    """
    if callable(getattr(model, 'fuse', None)):
        fused = model.fuse()
        return fused if isinstance(fused, nn.Module) else model
    from timm.utils.model import reparameterize_model
    return reparameterize_model(model, inplace=True)
