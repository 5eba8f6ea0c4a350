"""What Robust-ResNet and the ResNet ablation share: ``stem -> stages of residual blocks -> classifier head``, and
timm's model API over that shape (features, intermediates, pruning, classifier reset, grad checkpointing, init,
BatchNorm folding, the pretrained filter, the cfg).

The two networks differ only in how they build their stem and their blocks (``robust_resnet.py``,
``resnet_ablation.py``); everything timm's own model tests check is written once here, so the end points of the
ablation and the released models cannot drift apart in behaviour. Attribute names (``stem``, ``stages.N.blocks.M``,
``head.fc``) are the released checkpoints' and stay in the subclasses' hands.
"""

from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Type, Union

import torch
import torch.nn as nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, calculate_drop_path_rates, get_device_dtype
from timm.models import build_model_with_cfg, checkpoint_seq
from timm.models._features import feature_take_indices

from ..checkpoint import extract_state_dict
from .blocks import RobustResNetBlock
from .prepacked import prepack_convolutions

__all__ = ['BlockStage', 'StagedNetwork', 'checkpoint_filter_fn', 'create_staged_network', 'staged_cfg']


class BlockStage(nn.Module):
    """A run of residual blocks at one resolution; the stride (if any) sits in one block of it.

    Subclasses keep their explicit constructor (timm's convention) and call :meth:`_init_blocks` with how to build
    one block.
    """

    out_chs: int

    def __init__(self) -> None:
        super().__init__()
        self.grad_checkpointing = False

    def _init_blocks(
            self,
            make_block: Callable[[int, int, float], RobustResNetBlock],
            in_chs: int,
            depth: int,
            stride: int,
            stride_index: int,
            drop_path_rates: Optional[Sequence[float]],
    ) -> None:
        """``make_block(in_chs, stride, drop_path)`` for each of ``depth`` blocks; the widths chain through."""
        drop_path_rates = list(drop_path_rates) if drop_path_rates is not None else [0.] * depth
        blocks: List[RobustResNetBlock] = []
        for index in range(depth):
            block = make_block(in_chs, stride if index == stride_index else 1, drop_path_rates[index])
            blocks.append(block)
            in_chs = block.out_chs
        self.out_chs = in_chs
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


def stage_drop_path_rates(drop_path_rate: float, depths: Sequence[int]) -> List[List[float]]:
    """Stochastic depth rising linearly from 0 to ``drop_path_rate`` over all blocks, split per stage."""
    rates = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=False)
    return [rates[sum(depths[:index]):sum(depths[:index + 1])] for index in range(len(depths))]


class StagedNetwork(nn.Module):
    """``stem -> stages -> head``: subclasses build ``self.stem`` and their :class:`BlockStage` list, then call
    :meth:`_init_stages_and_head`, which sets ``stages``, ``feature_info``, ``num_features`` and ``head``.

    (No class-level attribute annotations: TorchScript would read them as the attributes' types.)
    """

    def _init_stages_and_head(
            self,
            stages: Sequence[BlockStage],
            stage_strides: Sequence[int],
            stem_reduction: int,
            stem_chs: int,
            num_classes: int,
            global_pool: str,
            drop_rate: float,
            device: Optional[torch.device],
            dtype: Optional[torch.dtype],
    ) -> None:
        """Stages, their ``feature_info`` (one entry per stage), the classifier head and the init."""
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        reduction, channels = stem_reduction, stem_chs
        self.feature_info = []
        for index, (stage, stride) in enumerate(zip(stages, stage_strides)):
            channels = stage.out_chs
            reduction *= stride
            self.feature_info.append(dict(num_chs=channels, reduction=reduction, module=f'stages.{index}'))
        self.stages = nn.Sequential(*stages)
        self.num_features = channels
        # No norm before the head: the released model pools the last block's output directly.
        self.head = ClassifierHead(channels, num_classes, pool_type=global_pool, drop_rate=drop_rate,
                                   device=device, dtype=dtype)
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
    def fuse(self, prepack: bool = True) -> 'StagedNetwork':
        """Fold each block's BatchNorms (and each shortcut's) into the conv before them: for inference, the same
        outputs (eval mode). Modifies the model in place and puts it in eval mode; a stem's own BatchNorm (the
        ablation's classic stem) is kept.

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
    keys possibly prefixed ``module.``. The released key layout is the model's own, so nothing is renamed."""
    only_ema = not any(key in state_dict for key in ('model', 'state_dict')) and \
        any(key in state_dict for key in ('state_dict_ema', 'model_ema'))
    return extract_state_dict(state_dict, use_ema=only_ema)


def create_staged_network(model_class: Type[StagedNetwork], variant: str, pretrained: bool,
                          **kwargs: Any) -> StagedNetwork:
    """timm's builder with our filter and a feature extractor over the four stages (``features_only=True``)."""
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    return build_model_with_cfg(
        model_class,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, flatten_sequential=True),
        **kwargs,
    )


def staged_cfg(url: str = '', **kwargs: Any) -> Dict[str, Any]:
    """The cfg both families share (ImageNet-1k at 224, the paper); ``first_conv`` and the like per family."""
    return {
        'url': url,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'classifier': 'head.fc',
        'paper_ids': 'arXiv:2206.03452',
        'paper_name': 'Can CNNs Be More Robust Than Transformers?',
        'license': 'mit',
        **kwargs,
    }
