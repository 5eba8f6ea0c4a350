"""RobustCNN: Robust-ResNet models registered with timm, plus training and robustness-evaluation tools.

Importing the package registers every ``robust_resnet_*`` model with timm, so ``timm.create_model`` finds them.

The registration waits for timm: when timm is already imported it happens now, otherwise the moment timm's own
import finishes. So ``import robustcnn; import timm`` still finds the models, while the command lines, which import
``robustcnn.config`` to parse their arguments, answer ``--help`` and argument errors without loading torch and
timm first (seconds on a quiet machine, a minute or more on a busy one).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from typing import Any

from .version import __version__

__all__ = ['__version__', 'models']


class _RegisterWhenTimmLoads(importlib.abc.MetaPathFinder):
    """Finds ``timm`` like the normal path finder does, and runs our registration after the module has executed.

    Our own code because the standard library has no post-import hook (PEP 369 was withdrawn).
    """

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != 'timm':
            return None
        sys.meta_path.remove(self)  # fire once; also keeps the lookup below from finding this finder again
        spec = None
        for finder in sys.meta_path:  # whichever finder would have found timm (site-packages, an editable install)
            find = getattr(finder, 'find_spec', None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, 'exec_module'):
            return spec
        loader = spec.loader
        execute = loader.exec_module

        def exec_module(module: Any) -> None:
            execute(module)
            importlib.import_module(f'{__name__}.models')

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def __getattr__(name: str) -> Any:
    if name == 'models':
        return importlib.import_module(f'{__name__}.models')
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


if 'timm' in sys.modules:
    from . import models  # noqa: F401  (registers the models with timm)
elif not any(isinstance(finder, _RegisterWhenTimmLoads) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenTimmLoads())
