"""Convolutions with weights pre-packed for oneDNN: the CPU fast path of the fused (inference) network.

Why: on a CPU, ``F.conv2d`` hands oneDNN a plain weight tensor on every call, and oneDNN reorders it into its
blocked layout each time. Robust-ResNet's patchify stem leaves small 14x14 / 7x7 maps, so at inference batch
sizes that per-call reorder costs about as much as the convolution itself (profiled: a 384->1536 1x1 conv on an
8x384x14x14 input takes ~17 ms with ``F.conv2d`` and ~8 ms with a pre-packed weight, one thread). Packing once, as
``torch.compile``'s freezing pass does, roughly halves the fused network's CPU time.

The packed weight is a cache, never state: the module is still an ``nn.Conv2d`` with the same ``weight``/``bias``
(state-dict keys unchanged), and it falls back to ``nn.Conv2d.forward`` whenever the fast path does not apply
(CUDA, autograd, autocast, non-float32, ``torch.compile`` tracing, a torch without the oneDNN op).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

__all__ = ['PrepackedConv2d', 'prepack_convolutions', 'prepack_available']


def prepack_available() -> bool:
    """True when this torch build has oneDNN and the pointwise-convolution ops inductor itself uses."""
    mkldnn_ops = getattr(torch.ops, 'mkldnn', None)
    return (torch.backends.mkldnn.is_available() and mkldnn_ops is not None
            and hasattr(mkldnn_ops, '_reorder_convolution_weight') and hasattr(mkldnn_ops, '_convolution_pointwise'))


class PrepackedConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that, for CPU float32 inference, runs oneDNN with a weight packed once and cached.

    The cache is keyed by the weight's storage, version counter and device, so in-place updates, ``.to()`` and
    ``load_state_dict`` re-pack it. Outputs equal ``nn.Conv2d``'s to float tolerance (different summation order);
    they come back channels-last, which is what oneDNN prefers for the next convolution.
    """

    _packed_cache: tuple[tuple[Any, ...], torch.Tensor] | None = None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> 'PrepackedConv2d':
        """Wrap ``conv``'s parameters (shared, not copied) in the pre-packing class."""
        if conv.padding_mode != 'zeros' or isinstance(conv.padding, str):
            raise ValueError(f'PrepackedConv2d needs zero padding given as numbers, got {conv.padding!r} '
                             f'({conv.padding_mode})')
        packed = cls.__new__(cls)
        packed.__dict__.update(conv.__dict__)
        packed._parameters = dict(conv._parameters)
        packed._buffers = dict(conv._buffers)
        packed._modules = dict(conv._modules)
        packed._packed_cache = None
        return packed

    def _use_fast_path(self, x: torch.Tensor) -> bool:
        if torch.jit.is_scripting() or torch.compiler.is_compiling():
            return False
        return (x.device.type == 'cpu' and x.dtype == torch.float32 and self.weight.dtype == torch.float32
                and x.dim() == 4 and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
                and not torch.is_autocast_enabled('cpu') and prepack_available())

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        # inference tensors (made under torch.inference_mode) have no version counter; their storage is the key
        version = -1 if weight.is_inference() else weight._version
        key = (weight.data_ptr(), version, weight.device, tuple(weight.shape))
        if self._packed_cache is None or self._packed_cache[0] != key:
            with torch.no_grad():
                packed = torch.ops.mkldnn._reorder_convolution_weight(
                    weight.detach(), list(self.padding), list(self.stride), list(self.dilation), self.groups,
                    list(x.shape))
            self._packed_cache = (key, packed)
        return self._packed_cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._use_fast_path(x):
            return super().forward(x)
        return torch.ops.mkldnn._convolution_pointwise(
            x, self._packed_weight(x), self.bias, list(self.padding), list(self.stride), list(self.dilation),
            self.groups, 'none', [], '')

    def __getstate__(self) -> dict[str, Any]:
        # oneDNN's packed tensors cannot be pickled or deep-copied; the cache is rebuilt on the next call.
        state = super().__getstate__() if hasattr(super(), '__getstate__') else self.__dict__.copy()
        state = dict(state)
        state['_packed_cache'] = None
        return state


def prepack_convolutions(module: nn.Module) -> nn.Module:
    """Replace every plain ``nn.Conv2d`` under ``module`` (in place, names kept) by a :class:`PrepackedConv2d`.

    Only for inference: call it after BatchNorm folding. Does nothing when the oneDNN ops are missing.
    """
    if not prepack_available():
        return module
    for name, child in list(module.named_children()):
        if type(child) is nn.Conv2d and child.padding_mode == 'zeros' and not isinstance(child.padding, str):
            setattr(module, name, PrepackedConv2d.from_conv(child))
        else:
            prepack_convolutions(child)
    return module
