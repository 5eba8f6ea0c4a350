"""RobustCNN: Robust-ResNet models registered with timm, plus training and robustness-evaluation tools.

Importing the package registers every ``robust_resnet_*`` model with timm, so ``timm.create_model`` finds them.
"""
from .version import __version__
from . import models  # noqa: F401  (registers the models with timm)

__all__ = ['__version__', 'models']
