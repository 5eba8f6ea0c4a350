"""Robust-ResNet models and the ResNet ablation model; importing this package registers them with timm."""
from .blocks import BLOCK_TYPES, DownInvertedDWBlock, DWBlock, InvertedDWBlock, UpInvertedDWBlock
from .resnet_ablation import ResNetAblation
from .robust_resnet import RobustResNet, RobustResNetStage, checkpoint_filter_fn

__all__ = [
    'BLOCK_TYPES', 'DWBlock', 'InvertedDWBlock', 'UpInvertedDWBlock', 'DownInvertedDWBlock',
    'RobustResNet', 'RobustResNetStage', 'checkpoint_filter_fn', 'ResNetAblation',
]
