#!/usr/bin/env bash
# The GPU numbers in one command, within 8 minutes (3 with --quick); see BENCHMARKS.md, "Device check".
#
#   bash scripts/device_check.sh OUT_DIR                        # on a CUDA GPU: tests, throughput, pipeline, compile
#   bash scripts/device_check.sh --quick OUT_DIR                # a short loan: the headline ratio and the main rows
#   bash scripts/device_check.sh --device cpu --quick OUT_DIR   # the same plan with tiny models, on a CPU
#
# Writes OUT_DIR/device_check.{json,csv,md} (and cuda_tests.log/.xml), prints the Markdown; exits 1 if a CUDA test
# failed or did not finish. PYTHON=/path/to/python picks the interpreter (default: python on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
# torch.compile's kernel caches: in a temp dir (not OUT_DIR, whose files travel back from a loaned machine, and not
# ~/.triton, which may be read-only there), fixed so that a second run on the same machine finds them warm. They
# must be set before Python starts: importing timm already fixes torch's cache directory.
cache="${TMPDIR:-/tmp}/robustcnn-compile-cache"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$cache/inductor}"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$cache/triton}"
exec "${PYTHON:-python}" scripts/speed.py device-check "$@"
