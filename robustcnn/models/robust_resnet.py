"""Robust-ResNet: a pure CNN as robust out of distribution as a Vision Transformer.

Paper: `Can CNNs Be More Robust Than Transformers?` (Wang, Bai, Zhou, Xie; ICLR 2023) -
https://arxiv.org/abs/2206.03452. Original release: https://github.com/UCSC-VLAA/RobustCNN (MIT).

A ResNet-style network changed in three ways: a patchify stem (one ``patch_size`` x ``patch_size`` conv with that
stride), large depthwise kernels, and one activation and one normalization per block. The class exposes every
knob of that ablation: ``patch_size``, ``kernel_size``, ``block_type``, ``depths``, ``dims``, ``mlp_ratio``,
``stage_strides``/``stride_block`` (where the stride-2 point sits), ``layer_scale_init_value`` and drop path.
"""

from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Type, Union

import torch
import torch.nn as nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, LayerType, calculate_drop_path_rates, get_act_layer, get_device_dtype
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ..checkpoint import extract_state_dict
from .blocks import BLOCK_TYPES, RobustResNetBlock
from .prepacked import prepack_convolutions
from .released import pretrained_overlay

__all__ = ['RobustResNet', 'RobustResNetStage', 'checkpoint_filter_fn']


class RobustResNetStage(nn.Module):
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
        self.grad_checkpointing = False
        block_class = BLOCK_TYPES[block_type]
        stride_index = 0 if stride_block == 'first' else depth - 1
        drop_path_rates = list(drop_path_rates) if drop_path_rates is not None else [0.] * depth
        blocks: List[RobustResNetBlock] = []
        for index in range(depth):
            block = block_class(
                in_chs=in_chs,
                dim=dim,
                stride=stride if index == stride_index else 1,
                kernel_size=kernel_size,
                mlp_ratio=mlp_ratio,
                drop_path=drop_path_rates[index],
                layer_scale_init_value=layer_scale_init_value,
                norm_layer=norm_layer,
                act_layer=act_layer,
                device=device,
                dtype=dtype,
            )
            blocks.append(block)
            in_chs = block.out_chs
        self.out_chs = in_chs
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class RobustResNet(nn.Module):
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

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.block_type = block_type
        self.grad_checkpointing = False

        # Design 1: "patchify" stem, a single non-overlapping conv (with bias, no norm, no activation).
        self.stem = nn.Conv2d(in_chans, dims[0], kernel_size=patch_size, stride=patch_size, bias=True, **dd)
        reduction = patch_size
        in_chs = dims[0]

        drop_path_rates = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=False)
        self.feature_info: List[Dict[str, Any]] = []
        stages = []
        for index, (depth, dim, stride) in enumerate(zip(depths, dims, stage_strides)):
            first_block = sum(depths[:index])
            stage = RobustResNetStage(
                block_type,
                in_chs,
                dim,
                depth,
                stride=stride,
                stride_block=stride_block,
                kernel_size=kernel_size,
                mlp_ratio=mlp_ratio,
                drop_path_rates=drop_path_rates[first_block:first_block + depth],
                layer_scale_init_value=layer_scale_init_value,
                norm_layer=nn.BatchNorm2d,
                act_layer=act_layer,
                **dd,
            )
            stages.append(stage)
            in_chs = stage.out_chs
            reduction *= stride
            self.feature_info.append(dict(num_chs=in_chs, reduction=reduction, module=f'stages.{index}'))
        self.stages = nn.Sequential(*stages)
        self.num_features = in_chs

        # No norm before the head: the released model pools the last block's output directly.
        self.head = ClassifierHead(in_chs, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.head_hidden_size = self.head.num_features
        self.init_weights()

    def init_weights(self) -> None:
        """ResNet init of the release: Kaiming-normal (fan_out, relu) convs with zero bias, BN at identity."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @torch.no_grad()
    def fuse(self, prepack: bool = True) -> 'RobustResNet':
        """Fold each block's BatchNorm (and each shortcut's) into the conv before it: a norm-free network for
        inference with the same outputs (eval mode). Modifies the model in place and puts it in eval mode.

        ``prepack`` (default): convolutions also keep a oneDNN-packed copy of their weight for CPU float32
        inference, which halves CPU time at small batch (see ``models/prepacked.py``); no effect elsewhere.
        """
        self.eval()
        for module in self.modules():
            if isinstance(module, RobustResNetBlock):
                module.reparameterize(prepack=prepack)
        if prepack:
            prepack_convolutions(self)
        return self

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        # Biases, BN and layer-scale are excluded by the optimizer factory's 1-D rule; nothing extra here.
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [(r'^stages\.(\d+)\.blocks\.(\d+)', None)],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier (0 removes it); ``global_pool`` None keeps the current pooling."""
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool, in_features=self.num_features, **get_device_dtype(self))
        self.head_hidden_size = self.head.num_features

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward through the stages, also returning the outputs of the stages in ``indices``.

        Args:
            x: Input images.
            indices: Last n stages if int, all if None, else the stage indices to take.
            norm: Accepted for API parity; the network has no final norm.
            stop_early: Stop after the last stage needed.
            output_fmt: Only 'NCHW'.
            intermediates_only: Return only the intermediates.
        """
        assert output_fmt in ('NCHW',), 'Output shape must be NCHW.'
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        x = self.stem(x)
        if torch.jit.is_scripting() or not stop_early:  # can't slice blocks in torchscript
            stages = self.stages
        else:
            stages = self.stages[:max_index + 1]
        for stage_index, stage in enumerate(stages):
            x = stage(x)
            if stage_index in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and head) not needed to produce the intermediates in ``indices``."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Accept every released form: a bare state dict or one under ``model``/``state_dict``/``state_dict_ema``,
    keys possibly prefixed ``module.``. The released key layout is this model's, so nothing is renamed."""
    only_ema = not any(key in state_dict for key in ('model', 'state_dict')) and \
        any(key in state_dict for key in ('state_dict_ema', 'model_ema'))
    return extract_state_dict(state_dict, use_ema=only_ema)


def _create_robust_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> RobustResNet:
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    if pretrained:  # no source given: the weights `robustcnn download` cached, or a one-line error naming it
        kwargs = pretrained_overlay(variant, kwargs)
    return build_model_with_cfg(
        RobustResNet,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, flatten_sequential=True),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs: Any) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem', 'classifier': 'head.fc',
        'paper_ids': 'arXiv:2206.03452',
        'paper_name': 'Can CNNs Be More Robust Than Transformers?',
        'origin_url': 'https://github.com/UCSC-VLAA/RobustCNN',
        'license': 'mit',
        **kwargs,
    }


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
