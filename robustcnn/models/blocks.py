"""The four Robust-ResNet residual blocks.

Each block has exactly one BatchNorm and one activation (the paper's third design: fewer activation and
normalization layers) and one large-kernel depthwise convolution (the second design). Sub-module names match the
released checkpoints (``pwconv1``, ``norm1``/``norm2``, ``act1``/``act2``/``act3``, ``conv_dw``, ``pwconv2``,
``gamma``, ``downsample.0``/``downsample.1``), so those load strictly.

Where the stride is placed and what widths flow in and out follow the release:
- DW: 1x1 in->d, BN, depthwise kxk (stride), 1x1 d->4d, add, ReLU. Output width 4d.
- Inverted-DW: 1x1 in->4d, BN, ReLU, depthwise kxk on 4d (stride), 1x1 4d->d, add. Output width d.
- Up-Inverted-DW: depthwise kxk in->d (groups=in, stride), BN, 1x1 d->4d, ReLU, 1x1 4d->d, add.
- Down-Inverted-DW: 1x1 in->4d, BN, ReLU, 1x1 4d->d, depthwise kxk on d (stride), add.
"""

from typing import Dict, Optional, Tuple, Type

import torch
import torch.nn as nn

from timm.layers import DropPath

from .prepacked import prepack_convolutions

__all__ = [
    'BLOCK_TYPES', 'RobustResNetBlock', 'DWBlock', 'InvertedDWBlock', 'UpInvertedDWBlock', 'DownInvertedDWBlock',
    'fold_batchnorm',
]


@torch.no_grad()
def fold_batchnorm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv equal to ``norm(conv(x))`` with ``norm`` in eval mode (its running statistics folded in)."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=True, device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    fused.bias.copy_((bias - norm.running_mean) * scale + norm.bias)
    return fused


def _shortcut(
        in_chs: int,
        out_chs: int,
        stride: int,
        norm_layer: Type[nn.Module],
        device: Optional[torch.device],
        dtype: Optional[torch.dtype],
) -> nn.Module:
    """Identity, or a strided 1x1 conv (with bias) + BN where width or resolution changes (``downsample``)."""
    if in_chs == out_chs and stride == 1:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel_size=1, stride=stride, bias=True, device=device, dtype=dtype),
        norm_layer(out_chs, device=device, dtype=dtype),
    )


class RobustResNetBlock(nn.Module):
    """Shared residual wiring: ``act_out(drop_path(gamma * branch(x)) + downsample(x))``.

    Subclasses build ``branch`` layers and implement :meth:`residual_branch`; ``out_chs`` is the output width.
    """

    out_chs: int
    # (conv, norm) attribute pairs where the norm directly follows the conv, for inference-time folding
    conv_norm_pairs: Tuple[Tuple[str, str], ...] = ()

    def _init_residual(
            self,
            in_chs: int,
            out_chs: int,
            stride: int,
            drop_path: float,
            layer_scale_init_value: float,
            norm_layer: Type[nn.Module],
            device: Optional[torch.device],
            dtype: Optional[torch.dtype],
    ) -> None:
        self.in_chs = in_chs
        self.out_chs = out_chs
        self.stride = stride
        self.gamma = nn.Parameter(
            torch.full((out_chs,), float(layer_scale_init_value), device=device, dtype=dtype)
        ) if layer_scale_init_value > 0 else None
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.downsample = _shortcut(in_chs, out_chs, stride, norm_layer, device, dtype)

    def residual_branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def reparameterize(self, prepack: bool = True) -> None:
        """Fold every BatchNorm into the conv before it, for inference (timm's ``reparameterize_model`` hook).

        The block then has no normalization left; outputs are unchanged in eval mode. Do not train afterwards.
        ``prepack``: also make the convolutions :class:`PrepackedConv2d` (oneDNN weights packed once; about 2x
        faster CPU inference, same state-dict keys, no effect on CUDA).
        """
        for conv_name, norm_name in self.conv_norm_pairs:
            norm = getattr(self, norm_name)
            if isinstance(norm, nn.BatchNorm2d):
                setattr(self, conv_name, fold_batchnorm(getattr(self, conv_name), norm))
                setattr(self, norm_name, nn.Identity())
        if isinstance(self.downsample, nn.Sequential) and isinstance(self.downsample[1], nn.BatchNorm2d):
            self.downsample = fold_batchnorm(self.downsample[0], self.downsample[1])
        if prepack:
            prepack_convolutions(self)

    def output_activation(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.residual_branch(x)
        if self.gamma is not None:
            branch = branch * self.gamma.reshape(1, -1, 1, 1)
        return self.output_activation(self.drop_path(branch) + self.downsample(x))


class DWBlock(RobustResNetBlock):
    """Robust-ResNet-DW block: the ResNet bottleneck with its 3x3 made a large depthwise conv."""

    conv_norm_pairs = (('pwconv1', 'norm1'),)

    def __init__(
            self,
            in_chs: int,
            dim: int,
            stride: int = 1,
            kernel_size: int = 11,
            mlp_ratio: float = 4.,
            drop_path: float = 0.,
            layer_scale_init_value: float = 0.,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            act_layer: Type[nn.Module] = nn.ReLU,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        out_chs = int(mlp_ratio * dim)
        self.pwconv1 = nn.Conv2d(in_chs, dim, kernel_size=1, bias=True, **dd)
        self.norm1 = norm_layer(dim, **dd)
        self.conv_dw = nn.Conv2d(
            dim, dim, kernel_size, stride=stride, padding=kernel_size // 2, groups=dim, bias=True, **dd)
        self.pwconv2 = nn.Conv2d(dim, out_chs, kernel_size=1, bias=True, **dd)
        self.act3 = act_layer()
        self._init_residual(in_chs, out_chs, stride, drop_path, layer_scale_init_value, norm_layer, device, dtype)

    def residual_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.pwconv2(self.conv_dw(self.norm1(self.pwconv1(x))))

    def output_activation(self, x: torch.Tensor) -> torch.Tensor:
        return self.act3(x)


class InvertedDWBlock(RobustResNetBlock):
    """Robust-ResNet-Inverted-DW block: inverted bottleneck, depthwise conv on the expanded width."""

    conv_norm_pairs = (('pwconv1', 'norm1'),)

    def __init__(
            self,
            in_chs: int,
            dim: int,
            stride: int = 1,
            kernel_size: int = 7,
            mlp_ratio: float = 4.,
            drop_path: float = 0.,
            layer_scale_init_value: float = 0.,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            act_layer: Type[nn.Module] = nn.ReLU,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        hidden_chs = int(mlp_ratio * dim)
        self.pwconv1 = nn.Conv2d(in_chs, hidden_chs, kernel_size=1, bias=True, **dd)
        self.norm1 = norm_layer(hidden_chs, **dd)
        self.act1 = act_layer()
        self.conv_dw = nn.Conv2d(
            hidden_chs, hidden_chs, kernel_size, stride=stride, padding=kernel_size // 2, groups=hidden_chs,
            bias=True, **dd)
        self.pwconv2 = nn.Conv2d(hidden_chs, dim, kernel_size=1, bias=True, **dd)
        self._init_residual(in_chs, dim, stride, drop_path, layer_scale_init_value, norm_layer, device, dtype)

    def residual_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.pwconv2(self.conv_dw(self.act1(self.norm1(self.pwconv1(x)))))


class UpInvertedDWBlock(RobustResNetBlock):
    """Robust-ResNet-Up-Inverted-DW block: depthwise conv moved up, before the expanding 1x1 (as in ConvNeXt)."""

    conv_norm_pairs = (('conv_dw', 'norm1'),)

    def __init__(
            self,
            in_chs: int,
            dim: int,
            stride: int = 1,
            kernel_size: int = 11,
            mlp_ratio: float = 4.,
            drop_path: float = 0.,
            layer_scale_init_value: float = 0.,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            act_layer: Type[nn.Module] = nn.ReLU,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if dim % in_chs:
            raise ValueError(f'Up-Inverted-DW needs the stage width ({dim}) to be a multiple of its input ({in_chs})')
        hidden_chs = int(mlp_ratio * dim)
        # groups=in_chs: a true depthwise conv that may also widen (each input channel feeds dim/in_chs outputs).
        self.conv_dw = nn.Conv2d(
            in_chs, dim, kernel_size, stride=stride, padding=kernel_size // 2, groups=in_chs, bias=True, **dd)
        self.norm1 = norm_layer(dim, **dd)
        self.pwconv1 = nn.Conv2d(dim, hidden_chs, kernel_size=1, bias=True, **dd)
        self.act2 = act_layer()
        self.pwconv2 = nn.Conv2d(hidden_chs, dim, kernel_size=1, bias=True, **dd)
        self._init_residual(in_chs, dim, stride, drop_path, layer_scale_init_value, norm_layer, device, dtype)

    def residual_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.pwconv2(self.act2(self.pwconv1(self.norm1(self.conv_dw(x)))))


class DownInvertedDWBlock(RobustResNetBlock):
    """Robust-ResNet-Down-Inverted-DW block: depthwise conv moved down, after the projecting 1x1."""

    conv_norm_pairs = (('pwconv1', 'norm2'),)

    def __init__(
            self,
            in_chs: int,
            dim: int,
            stride: int = 1,
            kernel_size: int = 11,
            mlp_ratio: float = 4.,
            drop_path: float = 0.,
            layer_scale_init_value: float = 0.,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            act_layer: Type[nn.Module] = nn.ReLU,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        hidden_chs = int(mlp_ratio * dim)
        self.pwconv1 = nn.Conv2d(in_chs, hidden_chs, kernel_size=1, bias=True, **dd)
        self.norm2 = norm_layer(hidden_chs, **dd)
        self.act2 = act_layer()
        self.pwconv2 = nn.Conv2d(hidden_chs, dim, kernel_size=1, bias=True, **dd)
        self.conv_dw = nn.Conv2d(
            dim, dim, kernel_size, stride=stride, padding=kernel_size // 2, groups=dim, bias=True, **dd)
        self._init_residual(in_chs, dim, stride, drop_path, layer_scale_init_value, norm_layer, device, dtype)

    def residual_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_dw(self.pwconv2(self.act2(self.norm2(self.pwconv1(x)))))


BLOCK_TYPES: Dict[str, Type[RobustResNetBlock]] = {
    'dw': DWBlock,
    'inverted_dw': InvertedDWBlock,
    'up_inverted_dw': UpInvertedDWBlock,
    'down_inverted_dw': DownInvertedDWBlock,
}
