"""Robust-ResNet: a pure CNN as robust out of distribution as a Vision Transformer.

Paper: `Can CNNs Be More Robust Than Transformers?` (Wang, Bai, Zhou, Xie; ICLR 2023) -
https://arxiv.org/abs/2206.03452. Original release: https://github.com/UCSC-VLAA/RobustCNN (MIT).

A ResNet-style network changed in three ways: a patchify stem (one ``patch_size`` x ``patch_size`` conv with that
stride), large depthwise kernels, and one activation and one normalization per block. The class exposes every
knob of that ablation: ``patch_size``, ``kernel_size``, ``block_type``, ``depths``, ``dims``, ``mlp_ratio``,
``stage_strides``/``stride_block`` (where the stride-2 point sits), ``layer_scale_init_value`` and drop path.
"""

from typing import Any, Dict, Optional, Sequence, Tuple, Type

import torch
import torch.nn as nn

from timm.layers import LayerType, get_act_layer
from timm.models import generate_default_cfgs, register_model

from .blocks import BLOCK_TYPES, RobustResNetBlock
from .released import pretrained_overlay
from .staged import BlockStage, StagedNetwork, checkpoint_filter_fn, create_staged_network, stage_drop_path_rates, \
    staged_cfg

__all__ = ['RobustResNet', 'RobustResNetStage', 'checkpoint_filter_fn']


class RobustResNetStage(BlockStage):
    """A run of blocks at one resolution; the stride (if any) sits in the first or the last block."""

    def __init__(
            self,
            block_type: str,
            in_chs: int,
            dim: int,
            depth: int,
            stride: int = 1,
            stride_block: str = 'first',
            kernel_size: int = 11,
            mlp_ratio: float = 4.,
            drop_path_rates: Optional[Sequence[float]] = None,
            layer_scale_init_value: float = 0.,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            act_layer: Type[nn.Module] = nn.ReLU,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        block_class = BLOCK_TYPES[block_type]

        def make_block(block_in_chs: int, block_stride: int, drop_path: float) -> RobustResNetBlock:
            return block_class(
                in_chs=block_in_chs,
                dim=dim,
                stride=block_stride,
                kernel_size=kernel_size,
                mlp_ratio=mlp_ratio,
                drop_path=drop_path,
                layer_scale_init_value=layer_scale_init_value,
                norm_layer=norm_layer,
                act_layer=act_layer,
                device=device,
                dtype=dtype,
            )

        stride_index = 0 if stride_block == 'first' else depth - 1
        self._init_blocks(make_block, in_chs, depth, stride, stride_index, drop_path_rates)


class RobustResNet(StagedNetwork):
    """Robust-ResNet: patchify stem -> 4 stages of large-kernel depthwise blocks -> pool -> dropout -> linear."""

    def __init__(
            self,
            block_type: str = 'dw',
            depths: Tuple[int, ...] = (3, 4, 12, 3),
            dims: Tuple[int, ...] = (96, 192, 384, 768),
            patch_size: int = 16,
            kernel_size: int = 11,
            mlp_ratio: float = 4.,
            stage_strides: Tuple[int, ...] = (1, 1, 1, 2),
            stride_block: Optional[str] = None,
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
            block_type: 'dw', 'inverted_dw', 'up_inverted_dw' or 'down_inverted_dw'.
            depths: Blocks per stage.
            dims: Stage widths ``d`` (the DW block outputs ``mlp_ratio * d``, the inverted kinds ``d``).
            patch_size: Kernel and stride of the patchify stem.
            kernel_size: Depthwise kernel size (padding ``kernel_size // 2``).
            mlp_ratio: Expansion ratio of the blocks.
            stage_strides: Stride of each stage (the released models have one stride-2 point).
            stride_block: Which block of a strided stage carries the stride, 'first' or 'last'
                (default: 'last' for Down-Inverted-DW, whose depthwise conv ends the block, else 'first').
            layer_scale_init_value: Per-channel residual scale init; 0 (the released models) disables it.
            act_layer: The one activation per block (timm name or class).
            num_classes: Classifier outputs; 0 removes the classifier.
            in_chans: Input image channels.
            global_pool: Global pooling type; '' keeps the feature map.
            output_stride: If given, must equal ``patch_size * prod(stage_strides)`` (dilation is not supported).
            drop_rate: Dropout before the classifier.
            drop_path_rate: Stochastic depth, rising linearly from 0 to this over all blocks.
            device: Device to create parameters on.
            dtype: Parameter dtype.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if block_type not in BLOCK_TYPES:
            raise ValueError(f'unknown block_type {block_type!r}; expected one of {", ".join(BLOCK_TYPES)}')
        if not (len(depths) == len(dims) == len(stage_strides)):
            raise ValueError(f'depths {depths}, dims {dims} and stage_strides {stage_strides} must have equal length')
        if stride_block is None:
            stride_block = 'last' if block_type == 'down_inverted_dw' else 'first'
        if stride_block not in ('first', 'last'):
            raise ValueError(f"stride_block must be 'first' or 'last', not {stride_block!r}")
        for name, value in (('patch_size', patch_size), ('kernel_size', kernel_size), ('mlp_ratio', mlp_ratio)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f'{name} must be a positive number, got {value!r}')  # 0 built empty layers
        if any(depth < 0 for depth in depths) or any(dim < 1 for dim in dims) or any(s < 1 for s in stage_strides):
            raise ValueError(f'depths must be >= 0, dims and stage_strides >= 1; got {depths}, {dims}, {stage_strides}')
        total_stride = patch_size
        for stride in stage_strides:
            total_stride *= stride
        if output_stride is not None and output_stride != total_stride:
            raise ValueError(
                f'output_stride {output_stride} is not supported: this configuration has output stride {total_stride}')
        act_layer = get_act_layer(act_layer)

        self.in_chans = in_chans
        self.block_type = block_type

        # Design 1: "patchify" stem, a single non-overlapping conv (with bias, no norm, no activation).
        self.stem = nn.Conv2d(in_chans, dims[0], kernel_size=patch_size, stride=patch_size, bias=True, **dd)

        stages = []
        in_chs = dims[0]
        drop_path_rates = stage_drop_path_rates(drop_path_rate, depths)
        for depth, dim, stride, rates in zip(depths, dims, stage_strides, drop_path_rates):
            stage = RobustResNetStage(
                block_type,
                in_chs,
                dim,
                depth,
                stride=stride,
                stride_block=stride_block,
                kernel_size=kernel_size,
                mlp_ratio=mlp_ratio,
                drop_path_rates=rates,
                layer_scale_init_value=layer_scale_init_value,
                norm_layer=nn.BatchNorm2d,
                act_layer=act_layer,
                **dd,
            )
            stages.append(stage)
            in_chs = stage.out_chs
        self._init_stages_and_head(
            stages, stage_strides, patch_size, dims[0], num_classes, global_pool, drop_rate, **dd)


def _create_robust_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> RobustResNet:
    if pretrained:  # no source given: the weights `robustcnn download` cached, or a one-line error naming it
        kwargs = pretrained_overlay(variant, kwargs)
    return create_staged_network(RobustResNet, variant, pretrained, **kwargs)


def _cfg(url: str = '', **kwargs: Any) -> Dict[str, Any]:
    return staged_cfg(url, first_conv='stem', origin_url='https://github.com/UCSC-VLAA/RobustCNN', **kwargs)


# The released ImageNet-1k weights live on Google Drive (see README and released.py): after
# `robustcnn download NAME`, timm.create_model(NAME, pretrained=True) loads them from the cache; any other file with
# timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH)).
default_cfgs = generate_default_cfgs({
    'robust_resnet_dw_small.in1k': _cfg(),
    'robust_resnet_inverted_dw_small.in1k': _cfg(),
    'robust_resnet_up_inverted_dw_small.in1k': _cfg(),
    'robust_resnet_down_inverted_dw_small.in1k': _cfg(),
    # Small sizes for quick CPU experiments and tests; not from the paper, no released weights.
    'robust_resnet_dw_pico.untrained': _cfg(),
    'robust_resnet_dw_nano.untrained': _cfg(),
    'robust_resnet_inverted_dw_nano.untrained': _cfg(),
    'robust_resnet_up_inverted_dw_nano.untrained': _cfg(),
    'robust_resnet_down_inverted_dw_nano.untrained': _cfg(),
})


def _model(variant: str, pretrained: bool, model_args: Dict[str, Any], kwargs: Dict[str, Any]) -> RobustResNet:
    return _create_robust_resnet(variant, pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def robust_resnet_dw_small(pretrained: bool = False, **kwargs: Any) -> RobustResNet:
    """Robust-ResNet-DW-Small: DW blocks, kernel 11, depths 3-4-12-3 (38.6 M params, 4.5 GMACs)."""
    model_args = dict(block_type='dw', depths=(3, 4, 12, 3), dims=(96, 192, 384, 768), kernel_size=11)
    return _model('robust_resnet_dw_small', pretrained, model_args, kwargs)


@register_model
def robust_resnet_inverted_dw_small(pretrained: bool = False, **kwargs: Any) -> RobustResNet:
    """Robust-ResNet-Inverted-DW-Small: inverted blocks, kernel 7, depths 3-4-14-3 (33.6 M, 4.6 GMACs)."""
    model_args = dict(block_type='inverted_dw', depths=(3, 4, 14, 3), dims=(96, 192, 384, 768), kernel_size=7)
    return _model('robust_resnet_inverted_dw_small', pretrained, model_args, kwargs)


@register_model
def robust_resnet_up_inverted_dw_small(pretrained: bool = False, **kwargs: Any) -> RobustResNet:
    """Robust-ResNet-Up-Inverted-DW-Small: depthwise first, kernel 11, depths 3-4-14-3 (34.4 M, 4.4 GMACs)."""
    model_args = dict(block_type='up_inverted_dw', depths=(3, 4, 14, 3), dims=(96, 192, 384, 768), kernel_size=11)
    return _model('robust_resnet_up_inverted_dw_small', pretrained, model_args, kwargs)


@register_model
def robust_resnet_down_inverted_dw_small(pretrained: bool = False, **kwargs: Any) -> RobustResNet:
    """Robust-ResNet-Down-Inverted-DW-Small: depthwise last, kernel 11, depths 3-4-15-3, stride-2 point in the
    last block of stage 3 (34.3 M, 4.5 GMACs)."""
    model_args = dict(
        block_type='down_inverted_dw', depths=(3, 4, 15, 3), dims=(96, 192, 384, 768), kernel_size=11,
        stage_strides=(1, 1, 2, 1), stride_block='last')
    return _model('robust_resnet_down_inverted_dw_small', pretrained, model_args, kwargs)


@register_model
def robust_resnet_dw_pico(pretrained: bool = False, **kwargs: Any) -> RobustResNet:
    """Tiny DW model for unit tests (not from the paper): widths 16-32-64-128, one block per stage, kernel 7."""
    model_args = dict(block_type='dw', depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), kernel_size=7)
    return _model('robust_resnet_dw_pico', pretrained, model_args, kwargs)


@register_model
def robust_resnet_dw_nano(pretrained: bool = False, **kwargs: Any) -> RobustResNet:
    """Small DW model for quick CPU experiments (not from the paper): widths 32-64-128-256, depths 1-1-3-1."""
    model_args = dict(block_type='dw', depths=(1, 1, 3, 1), dims=(32, 64, 128, 256), kernel_size=11)
    return _model('robust_resnet_dw_nano', pretrained, model_args, kwargs)


@register_model
def robust_resnet_inverted_dw_nano(pretrained: bool = False, **kwargs: Any) -> RobustResNet:
    """Small Inverted-DW model for quick CPU experiments (not from the paper)."""
    model_args = dict(block_type='inverted_dw', depths=(1, 1, 3, 1), dims=(32, 64, 128, 256), kernel_size=7)
    return _model('robust_resnet_inverted_dw_nano', pretrained, model_args, kwargs)


@register_model
def robust_resnet_up_inverted_dw_nano(pretrained: bool = False, **kwargs: Any) -> RobustResNet:
    """Small Up-Inverted-DW model for quick CPU experiments (not from the paper)."""
    model_args = dict(block_type='up_inverted_dw', depths=(1, 1, 3, 1), dims=(32, 64, 128, 256), kernel_size=11)
    return _model('robust_resnet_up_inverted_dw_nano', pretrained, model_args, kwargs)


@register_model
def robust_resnet_down_inverted_dw_nano(pretrained: bool = False, **kwargs: Any) -> RobustResNet:
    """Small Down-Inverted-DW model for quick CPU experiments (not from the paper)."""
    model_args = dict(
        block_type='down_inverted_dw', depths=(1, 1, 3, 1), dims=(32, 64, 128, 256), kernel_size=11,
        stage_strides=(1, 1, 2, 1), stride_block='last')
    return _model('robust_resnet_down_inverted_dw_nano', pretrained, model_args, kwargs)
