#!/usr/bin/env python3
"""Run train.py or validate.py on the XLA devices (TPU chips) of this host, as the original release's launcher did.

    python3 scripts/launch_xla.py --num-devices 8 train.py /path/to/ImageNet --model robust_resnet_dw_small ...

The release started one process per TPU core with ``xmp.spawn(fn, nprocs=8)``; torch_xla 2.9 accepts only
``nprocs=None`` or ``1`` there, and upstream now recommends SPMD. So this launcher keeps the command line and runs
the script once, in this process, with ``--device xla``: one SPMD program over every local device, each taking
``--batch-size`` images per step (8 x 128 = 1024, the release's total batch). ``--num-devices`` is checked against
the devices this host really has (on the CPU backend it sets them: ``PJRT_DEVICE=CPU``). On a pod run the same
command on every host (``gcloud compute tpus tpu-vm ssh NAME --worker=all --command=...``); see TRAIN.md.
"""
from __future__ import annotations

import argparse
import os
import runpy
import sys
from pathlib import Path
from typing import Sequence

# Read by robustcnn.engine.runtime, which stops with a clear message when the host has another number of devices.
NUM_DEVICES_ENV = 'ROBUSTCNN_XLA_NUM_DEVICES'


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Run a training or validation script on every XLA device of this host (SPMD).')
    parser.add_argument('--num-devices', type=int, default=None,
                        help='XLA devices of this host to use (default: all; the release used 8 on a TPU v3-8)')
    parser.add_argument('script', help='train.py or validate.py, followed by its own arguments')
    parser.add_argument('script_args', nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.num_devices is not None and args.num_devices < 1:
        parser.error(f'--num-devices must be at least 1, got {args.num_devices}')
    if not Path(args.script).is_file():
        parser.error(f'script not found: {args.script}')
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault('PJRT_DEVICE', 'TPU')
    if args.num_devices is not None:
        os.environ[NUM_DEVICES_ENV] = str(args.num_devices)
        if os.environ['PJRT_DEVICE'].upper() == 'CPU':
            os.environ['CPU_NUM_DEVICES'] = str(args.num_devices)
    script_args = list(args.script_args)
    if not any(arg == '--device' or arg.startswith('--device=') for arg in script_args):
        script_args += ['--device', 'xla']
    script = str(Path(args.script).resolve())
    sys.path.insert(0, str(Path(script).parent))
    sys.argv = [args.script, *script_args]
    print(f'launch_xla: {args.script} on the XLA devices of this host (SPMD, PJRT_DEVICE={os.environ["PJRT_DEVICE"]})',
          file=sys.stderr, flush=True)
    runpy.run_path(script, run_name='__main__')


if __name__ == '__main__':
    main()
