"""ResNet ablation: the classic ResNet bottleneck network with each of the paper's three designs on its own switch.

Paper: `Can CNNs Be More Robust Than Transformers?` (Wang, Bai, Zhou, Xie; ICLR 2023), section 4, the component
diagnosis: starting from a ResNet, change one design at a time and read the effect on out-of-distribution accuracy.

Start point (every switch off): the ResNet bottleneck (1x1 reduce, BN, ReLU, 3x3, BN, ReLU, 1x1 expand, BN, add,
ReLU) after the classic stem (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max pool). The switches:

1. ``stem='patchify'`` with ``patch_size``: one ``patch_size`` x ``patch_size`` conv with that stride (bias, no norm,
   no activation), as in ViT and the released Robust-ResNets (section 4.1).
2. ``depthwise=True`` and ``kernel_size``: the bottleneck's spatial conv made depthwise, then enlarged (section 4.2).
3. ``activations`` and ``norms``: which layers of a block keep their activation / BatchNorm (section 4.3).
   ``'all'`` is the ResNet block, ``'one'`` the released Robust-ResNet-DW block (one ReLU after the residual add,
   one BN after the first 1x1), ``'none'`` none; or name the positions joined by ``+``, e.g. ``'conv1+out'``.

With all three switched (patch 16, depthwise 11x11, one activation, one norm, conv biases on) the network is layer
for layer the released Robust-ResNet-DW (``robust_resnet_dw_*``, ``blocks.DWBlock``): same parameters, same
function; only the module names differ (``conv1``/``conv2``/``conv3`` here, ``pwconv1``/``conv_dw``/``pwconv2`` there).
The tests check both end points: the start point against timm's ResNet-50, the end point against Robust-ResNet-DW.

By default the stages' stride-2 points are placed so the whole network keeps a total stride of 32 whatever the stem
(``stage_strides`` None): the classic stem and a 4x4 patch stride in stages 2-4 as ResNet does, an 8x8 patch in
stages 3-4, a 16x16 patch only in stage 4 as the released Robust-ResNets do. Feature maps at the end are then the
same size for every stem, so a patch-size comparison does not also compare final resolutions.
"""

import math
from typing import Any, Dict, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn

from timm.layers import LayerType, get_act_layer
from timm.models import generate_default_cfgs, register_model

from .blocks import RobustResNetBlock
from .staged import BlockStage, StagedNetwork, create_staged_network, stage_drop_path_rates, staged_cfg

__all__ = ['ResNetAblation', 'AblationBottleneck', 'ResNetAblationStage', 'ACTIVATION_POSITIONS', 'NORM_POSITIONS',
           'LAYER_PRESETS', 'parse_positions']

# Where a bottleneck can have an activation: after conv1 (+ its norm), after conv2 (+ its norm), after the add.
ACTIVATION_POSITIONS: Tuple[str, ...] = ('conv1', 'conv2', 'out')
# Where it can have a BatchNorm: after each of its three convs.
NORM_POSITIONS: Tuple[str, ...] = ('conv1', 'conv2', 'conv3')
# 'all': the ResNet bottleneck; 'one': the released Robust-ResNet-DW block (paper section 4.3 / Figure 4).
LAYER_PRESETS: Dict[str, Dict[str, Tuple[str, ...]]] = {
    'activations': {'all': ('conv1', 'conv2', 'out'), 'one': ('out',), 'none': ()},
    'norms': {'all': ('conv1', 'conv2', 'conv3'), 'one': ('conv1',), 'none': ()},
}
TOTAL_STRIDE = 32


def parse_positions(spec: Union[str, Sequence[str]], kind: str) -> Tuple[str, ...]:
    """``'all'``/``'one'``/``'none'``, ``'conv1+out'`` or a sequence of positions -> positions in block order.

    A string spec (not a list) is what survives a command line, a YAML recipe and a checkpoint's metadata alike.
    """
    allowed = ACTIVATION_POSITIONS if kind == 'activations' else NORM_POSITIONS
    presets = LAYER_PRESETS[kind]
    if isinstance(spec, str):
        if spec in presets:
            return presets[spec]
        names = [name.strip() for name in spec.split('+')] if spec.strip() else []
    else:
        names = [str(name) for name in spec]
    unknown = [name for name in names if name not in allowed]
    if unknown or len(set(names)) != len(names):
        raise ValueError(
            f'{kind}={spec!r}: expected one of {", ".join(presets)} or positions from {", ".join(allowed)} joined '
            f'by "+" (each at most once), e.g. {"+".join(allowed[:2])!r}')
    return tuple(name for name in allowed if name in names)


def _maybe(enabled: bool, layer: Type[nn.Module], *args: Any, **kwargs: Any) -> nn.Module:
    return layer(*args, **kwargs) if enabled else nn.Identity()


class AblationBottleneck(RobustResNetBlock):
    """The ResNet bottleneck with switchable spatial conv and activation / norm positions.

    ``act3(drop_path(conv3 -> norm3 (conv2 -> norm2 -> act2 (conv1 -> norm1 -> act1 (x)))) + downsample(x))``;
    the stride sits in ``conv2`` (and the shortcut), as in both timm's ResNet and the released DW block. The residual
    wiring, layer scale, drop path and inference-time BatchNorm folding are :class:`RobustResNetBlock`'s.
    """

    conv_norm_pairs = (('conv1', 'norm1'), ('conv2', 'norm2'), ('conv3', 'norm3'))

    def __init__(
            self,
            in_chs: int,
            dim: int,
            stride: int = 1,
            kernel_size: int = 3,
            depthwise: bool = False,
            mlp_ratio: float = 4.,
            activations: Tuple[str, ...] = ACTIVATION_POSITIONS,
            norms: Tuple[str, ...] = NORM_POSITIONS,
            conv_bias: bool = True,
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
        self.conv1 = nn.Conv2d(in_chs, dim, kernel_size=1, bias=conv_bias, **dd)
        self.norm1 = _maybe('conv1' in norms, norm_layer, dim, **dd)
        self.act1 = _maybe('conv1' in activations, act_layer)
        self.conv2 = nn.Conv2d(
            dim, dim, kernel_size, stride=stride, padding=kernel_size // 2, groups=dim if depthwise else 1,
            bias=conv_bias, **dd)
        self.norm2 = _maybe('conv2' in norms, norm_layer, dim, **dd)
        self.act2 = _maybe('conv2' in activations, act_layer)
        self.conv3 = nn.Conv2d(dim, out_chs, kernel_size=1, bias=conv_bias, **dd)
        self.norm3 = _maybe('conv3' in norms, norm_layer, out_chs, **dd)
        self.act3 = _maybe('out' in activations, act_layer)
        self._init_residual(in_chs, out_chs, stride, drop_path, layer_scale_init_value, norm_layer, device, dtype)
        if not conv_bias and isinstance(self.downsample, nn.Sequential):  # the shortcut conv follows the switch too
            self.downsample[0] = nn.Conv2d(in_chs, out_chs, kernel_size=1, stride=stride, bias=False, **dd)

    def residual_branch(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.norm1(self.conv1(x)))
        x = self.act2(self.norm2(self.conv2(x)))
        return self.norm3(self.conv3(x))

    def output_activation(self, x: torch.Tensor) -> torch.Tensor:
        return self.act3(x)


class ResNetAblationStage(BlockStage):
    """A run of bottlenecks at one resolution; the stride (if any) sits in the first block."""

    def __init__(
            self,
            in_chs: int,
            dim: int,
            depth: int,
            stride: int = 1,
            kernel_size: int = 3,
            depthwise: bool = False,
            mlp_ratio: float = 4.,
            activations: Tuple[str, ...] = ACTIVATION_POSITIONS,
            norms: Tuple[str, ...] = NORM_POSITIONS,
            conv_bias: bool = True,
            drop_path_rates: Optional[Sequence[float]] = None,
            layer_scale_init_value: float = 0.,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            act_layer: Type[nn.Module] = nn.ReLU,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()

        def make_block(block_in_chs: int, block_stride: int, drop_path: float) -> AblationBottleneck:
            return AblationBottleneck(
                block_in_chs, dim, stride=block_stride, kernel_size=kernel_size, depthwise=depthwise,
                mlp_ratio=mlp_ratio, activations=activations, norms=norms, conv_bias=conv_bias, drop_path=drop_path,
                layer_scale_init_value=layer_scale_init_value, norm_layer=norm_layer, act_layer=act_layer,
                device=device, dtype=dtype)

        self._init_blocks(make_block, in_chs, depth, stride, 0, drop_path_rates)


def default_stage_strides(stem_reduction: int, num_stages: int) -> Tuple[int, ...]:
    """Stride 2 in the last stages, as many as keep the total stride at 32 (see the module docstring)."""
    remaining = TOTAL_STRIDE / stem_reduction
    doublings = round(math.log2(remaining)) if remaining >= 1 else -1
    if doublings < 0 or 2 ** doublings != remaining or doublings > num_stages:
        raise ValueError(f'a stem with stride {stem_reduction} cannot reach a total stride of {TOTAL_STRIDE} with '
                         f'{num_stages} stride-1-or-2 stages; pass stage_strides explicitly')
    return (1,) * (num_stages - doublings) + (2,) * doublings


class ResNetAblation(StagedNetwork):
    """ResNet bottleneck network whose stem, spatial conv and per-block activations / norms are switches."""

    def __init__(
            self,
            depths: Tuple[int, ...] = (3, 4, 6, 3),
            dims: Tuple[int, ...] = (64, 128, 256, 512),
            stem: str = 'classic',
            patch_size: Optional[int] = None,
            stem_width: Optional[int] = None,
            kernel_size: int = 3,
            depthwise: bool = False,
            activations: Union[str, Sequence[str]] = 'all',
            norms: Union[str, Sequence[str]] = 'all',
            mlp_ratio: float = 4.,
            stage_strides: Optional[Tuple[int, ...]] = None,
            conv_bias: bool = True,
            layer_scale_init_value: float = 0.,
            act_layer: LayerType = 'relu',
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = 'avg',
            output_stride: Optional[int] = None,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        """
        Args:
            depths: Blocks per stage.
            dims: Bottleneck widths per stage (a block outputs ``mlp_ratio`` times its width).
            stem: 'classic' (7x7 stride-2 conv, BN, act, 3x3 stride-2 max pool) or 'patchify'.
            patch_size: Kernel and stride of the patchify stem (default 16); only with ``stem='patchify'``.
            stem_width: Stem output channels (default ``dims[0]``, as in both ResNet-50 and Robust-ResNet).
            kernel_size: Spatial conv kernel (padding ``kernel_size // 2``); odd.
            depthwise: Make the spatial conv depthwise (groups = width).
            activations: Activation positions per block: 'all', 'one', 'none' or e.g. 'conv1+out'.
            norms: BatchNorm positions per block: 'all', 'one', 'none' or e.g. 'conv1+conv3'.
            mlp_ratio: Bottleneck expansion (4 in ResNet and Robust-ResNet).
            stage_strides: Stride of each stage (default: keep the total stride at 32, see the module docstring).
            conv_bias: Biases on the block and stem convs (True: the released Robust-ResNet, where a bias before a
                BatchNorm is redundant but present; False: torchvision / timm ResNet).
            layer_scale_init_value: Per-channel residual scale init; 0 disables it.
            act_layer: The activation (timm name or class).
            num_classes: Classifier outputs; 0 removes the classifier.
            in_chans: Input image channels.
            global_pool: Global pooling type; '' keeps the feature map.
            output_stride: If given, must equal the total stride (dilation is not supported).
            drop_rate: Dropout before the classifier.
            drop_path_rate: Stochastic depth, rising linearly from 0 to this over all blocks.
            device: Device to create parameters on.
            dtype: Parameter dtype.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if stem not in ('classic', 'patchify'):
            raise ValueError(f"stem must be 'classic' or 'patchify', not {stem!r}")
        if stem == 'classic' and patch_size is not None:
            raise ValueError(f'patch_size={patch_size} needs stem=\'patchify\' (the classic stem has no patch size)')
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'kernel_size must be odd (padding kernel_size // 2 keeps the size), got {kernel_size}')
        if stage_strides is not None and not len(depths) == len(dims) == len(stage_strides):
            raise ValueError(f'depths {depths}, dims {dims} and stage_strides {stage_strides} must have equal length')
        if len(depths) != len(dims):
            raise ValueError(f'depths {depths} and dims {dims} must have equal length')
        activation_positions = parse_positions(activations, 'activations')
        norm_positions = parse_positions(norms, 'norms')
        act_layer = get_act_layer(act_layer)
        stem_width = stem_width or dims[0]

        self.in_chans = in_chans

        # Design 1: the stem. Both are a Sequential whose first module is the conv, so ``stem.0`` is the first conv.
        if stem == 'patchify':
            patch_size = patch_size or 16
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, stem_width, kernel_size=patch_size, stride=patch_size, bias=True, **dd))
            reduction = patch_size
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, stem_width, kernel_size=7, stride=2, padding=3, bias=conv_bias, **dd),
                nn.BatchNorm2d(stem_width, **dd),
                act_layer(),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            )
            reduction = 4
        stage_strides = tuple(stage_strides) if stage_strides is not None else default_stage_strides(
            reduction, len(depths))
        total_stride = reduction * math.prod(stage_strides)
        if output_stride is not None and output_stride != total_stride:
            raise ValueError(
                f'output_stride {output_stride} is not supported: this configuration has output stride {total_stride}')

        stages = []
        in_chs = stem_width
        drop_path_rates = stage_drop_path_rates(drop_path_rate, depths)
        for depth, dim, stride, rates in zip(depths, dims, stage_strides, drop_path_rates):
            stage = ResNetAblationStage(
                in_chs, dim, depth, stride=stride, drop_path_rates=rates,
                kernel_size=kernel_size, depthwise=depthwise, mlp_ratio=mlp_ratio,  # designs 2 and 3 in the blocks
                activations=activation_positions, norms=norm_positions, conv_bias=conv_bias,
                layer_scale_init_value=layer_scale_init_value, norm_layer=nn.BatchNorm2d, act_layer=act_layer, **dd)
            stages.append(stage)
            in_chs = stage.out_chs
        self._init_stages_and_head(
            stages, stage_strides, reduction, stem_width, num_classes, global_pool, drop_rate, **dd)


def _create_resnet_ablation(variant: str, pretrained: bool = False, **kwargs: Any) -> ResNetAblation:
    return create_staged_network(ResNetAblation, variant, pretrained, **kwargs)


def _cfg(url: str = '', **kwargs: Any) -> Dict[str, Any]:
    return staged_cfg(url, first_conv='stem.0', **kwargs)


# Ablation start points; none has released weights (train them with train.py or scripts/study.py).
default_cfgs = generate_default_cfgs({
    'resnet_ablation_50.untrained': _cfg(),
    'resnet_ablation_small.untrained': _cfg(),
    'resnet_ablation_nano.untrained': _cfg(),
    'resnet_ablation_pico.untrained': _cfg(),
})


def _model(variant: str, pretrained: bool, model_args: Dict[str, Any], kwargs: Dict[str, Any]) -> ResNetAblation:
    return _create_resnet_ablation(variant, pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def resnet_ablation_50(pretrained: bool = False, **kwargs: Any) -> ResNetAblation:
    """ResNet-50 as the ablation's start point: depths 3-4-6-3, widths 64-512, no conv biases (timm's resnet50
    layer for layer, 25.6 M params)."""
    model_args = dict(depths=(3, 4, 6, 3), dims=(64, 128, 256, 512), conv_bias=False)
    return _model('resnet_ablation_50', pretrained, model_args, kwargs)


@register_model
def resnet_ablation_small(pretrained: bool = False, **kwargs: Any) -> ResNetAblation:
    """Robust-ResNet-DW-Small's depths and widths (3-4-12-3, 96-768) with every switch at the ResNet setting;
    ``stem='patchify', patch_size=16, depthwise=True, kernel_size=11, activations='one', norms='one'`` is
    ``robust_resnet_dw_small``."""
    model_args = dict(depths=(3, 4, 12, 3), dims=(96, 192, 384, 768))
    return _model('resnet_ablation_small', pretrained, model_args, kwargs)


@register_model
def resnet_ablation_nano(pretrained: bool = False, **kwargs: Any) -> ResNetAblation:
    """CPU-sized ablation (not from the paper): ``robust_resnet_dw_nano``'s depths 1-1-3-1 and widths 32-256."""
    model_args = dict(depths=(1, 1, 3, 1), dims=(32, 64, 128, 256))
    return _model('resnet_ablation_nano', pretrained, model_args, kwargs)


@register_model
def resnet_ablation_pico(pretrained: bool = False, **kwargs: Any) -> ResNetAblation:
    """Tiny ablation for unit tests (not from the paper): ``robust_resnet_dw_pico``'s sizes, one block per stage."""
    model_args = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))
    return _model('resnet_ablation_pico', pretrained, model_args, kwargs)
