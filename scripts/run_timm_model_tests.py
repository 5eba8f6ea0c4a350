#!/usr/bin/env python
"""Run timm's own model test-suite (tests/test_models.py of the installed timm's source release) on our models.

The suite is not shipped in timm's wheel, so the matching source distribution is fetched once from the package
index and cached. Two things are added, nothing in timm's tests is changed: a conftest that imports
``robustcnn`` (registering the models), and our model modules (``robust_resnet``, ``resnet_ablation``: every
family in ``robustcnn.models.MODEL_FAMILIES``) appended to the suite's list of model modules that implement
``forward_intermediates`` (the list is how timm opts a module into those tests). Only our models' tests run.

Usage: python scripts/run_timm_model_tests.py [--cache-dir DIR] [extra pytest args]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import timm

from robustcnn.models import MODEL_FAMILIES

MODULE_LIST_LINE = 'FEAT_INTER_FILTERS = ['
PYTEST_INI = """[pytest]
markers =
    base
    cfg
    cfg_nonstd
    torchscript
    features
    fxforward
    fxbackward
    forward
    backward
    timeout(seconds): per-test time limit (pytest-timeout)
"""


def default_cache_dir() -> Path:
    return Path(os.environ.get('ROBUSTCNN_CACHE', Path.home() / '.cache' / 'robustcnn')) / 'timm-suite'


def fetch_sdist(version: str, cache_dir: Path) -> Path:
    """Download timm's source release for ``version`` unless it is cached."""
    sdist = cache_dir / f'timm-{version}.tar.gz'
    if sdist.is_file():
        return sdist
    cache_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:',
               '-d', str(cache_dir), f'timm=={version}']
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not sdist.is_file():
        raise SystemExit(f'could not download timm {version} source release:\n{result.stdout}\n{result.stderr}')
    return sdist


def prepare_suite(sdist: Path, suite_dir: Path) -> Path:
    """Extract test_models.py, opt our module into the intermediates tests, and add the conftest."""
    member = f'{sdist.name[:-len(".tar.gz")]}/tests/test_models.py'
    with tarfile.open(sdist) as archive:
        source = archive.extractfile(member).read().decode('utf-8')
    if MODULE_LIST_LINE not in source:
        raise SystemExit(f'{member}: could not find "{MODULE_LIST_LINE}"; timm changed its test layout')
    modules = ''.join(f'{family.module!r}, ' for family in MODEL_FAMILIES)
    source = source.replace(MODULE_LIST_LINE, f'{MODULE_LIST_LINE}{modules}', 1)
    suite_dir.mkdir(parents=True, exist_ok=True)
    (suite_dir / 'test_models.py').write_text(source)
    (suite_dir / 'conftest.py').write_text('import robustcnn  # noqa: F401  (registers our models with timm)\n')
    (suite_dir / 'pytest.ini').write_text(PYTEST_INI)
    return suite_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cache-dir', type=Path, default=default_cache_dir())
    args, pytest_args = parser.parse_known_args(argv)
    sdist = fetch_sdist(timm.__version__, args.cache_dir)
    suite_dir = prepare_suite(sdist, args.cache_dir / f'suite-{timm.__version__}')
    selection = ' or '.join(family.pattern.rstrip('*') for family in MODEL_FAMILIES)  # our models' test ids only
    command = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-c', str(suite_dir / 'pytest.ini'),
               '--rootdir', str(suite_dir), str(suite_dir / 'test_models.py'), '-k', selection, *pytest_args]
    return subprocess.call(command)


if __name__ == '__main__':
    raise SystemExit(main())
