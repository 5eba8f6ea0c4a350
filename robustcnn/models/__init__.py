"""Robust-ResNet models and the ResNet ablation model; importing this package registers them with timm."""
from typing import NamedTuple, Tuple

from .blocks import BLOCK_TYPES, DownInvertedDWBlock, DWBlock, InvertedDWBlock, UpInvertedDWBlock
from .resnet_ablation import ResNetAblation
from .robust_resnet import RobustResNet, RobustResNetStage, checkpoint_filter_fn
from .staged import StagedNetwork


class ModelFamily(NamedTuple):
    """One family of our registered models: the timm module that registers it, its name pattern, what it is."""

    module: str
    pattern: str
    title: str


# Every family this package registers with timm, in the order `robustcnn models` lists them; the timm model-suite
# runner (scripts/run_timm_model_tests.py) opts the same modules into timm's tests.
MODEL_FAMILIES: Tuple[ModelFamily, ...] = (
    ModelFamily('robust_resnet', 'robust_resnet*',
                'Robust-ResNet (the paper\'s networks; the four *_small have released weights)'),
    ModelFamily('resnet_ablation', 'resnet_ablation*',
                'ResNet ablation (the paper\'s section 4: the classic ResNet, each design on its own switch; '
                'no weights)'),
)

__all__ = [
    'BLOCK_TYPES', 'DWBlock', 'InvertedDWBlock', 'UpInvertedDWBlock', 'DownInvertedDWBlock',
    'RobustResNet', 'RobustResNetStage', 'checkpoint_filter_fn', 'ResNetAblation', 'StagedNetwork',
    'ModelFamily', 'MODEL_FAMILIES',
]
