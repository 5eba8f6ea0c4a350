#!/usr/bin/env bash
# The XLA tests (TPU code path on XLA's CPU backend, 2 devices) in their own environment: torch_xla 2.9.0 needs
# torch 2.9.0 exactly, which the main environment does not have. The environment is built once and reused while
# its spec (below, and setup.py) is unchanged. Run from anywhere; CI runs it after the main suite.
#   scripts/test_xla.sh            build/reuse .venv-xla-<hash> and run tests/xla
#   XLA_VENV=/path scripts/test_xla.sh   use (or build) that environment instead
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
SPEC='torch==2.9.0 torchvision==0.24.0 torch_xla==2.9.0 timm>=1.0.31,<1.1 pytest pyyaml pillow safetensors numpy'
# Resolve everything from the package index (a local pip config may point at a CPU-only torch wheel).
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL || true
export PIP_DISABLE_PIP_VERSION_CHECK=1

key=$( (echo "$SPEC"; cat setup.py) | sha256sum | cut -c1-16)
venv=${XLA_VENV:-.venv-xla-$key}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import torch_xla, torchvision, timm, pytest' 2>/dev/null; then
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install -q $SPEC
fi
"$venv/bin/python" -m pip install -q --no-deps -e .
"$venv/bin/python" -c 'import torch, torch_xla, timm, robustcnn; print("torch", torch.__version__, "torch_xla", torch_xla.__version__, "timm", timm.__version__, "robustcnn", robustcnn.__version__)'

# SPMD over 2 XLA devices on the CPU backend; no persistent compile cache in the test process itself (the
# compile-count test must see every compilation; the tests give their subprocesses a cache of their own).
unset XLA_PERSISTENT_CACHE_PATH || true
PJRT_DEVICE=CPU CPU_NUM_DEVICES=2 "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/xla "$@"
