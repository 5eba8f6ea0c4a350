"""Read back what an offline W&B run wrote (``run-<id>.wandb``), to check the logged scalars in tests.

wandb >= 0.19 no longer ships a Python reader for its run files; the format is LevelDB's log format (32 KiB blocks of
records with a 7-byte header: crc32c, length, type) after a 7-byte ``:W&B`` file header, each record a
``wandb_internal_pb2.Record`` protobuf. Only what the tests need is read: history rows, the config and the run id.
"""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

_BLOCK = 32768
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2
    data = Path(path).read_bytes()
    assert data[:4] == b':W&B', f'{path} is not a W&B run file'
    position, pending, records = _HEADER, b'', []
    while position + _HEADER <= len(data):
        space = _BLOCK - position % _BLOCK
        if space < _HEADER:  # the rest of a block too short for a header is padding
            position += space
            continue
        _, length, kind = struct.unpack('<IHB', data[position:position + _HEADER])
        if kind not in (_FULL, _FIRST, _MIDDLE, _LAST):  # zero padding to the end of the block
            position += space
            continue
        chunk = data[position + _HEADER:position + _HEADER + length]
        position += _HEADER + length
        if kind == _FULL:
            payloads = [chunk]
        elif kind == _FIRST:
            pending, payloads = chunk, []
        elif kind == _MIDDLE:
            pending, payloads = pending + chunk, []
        else:
            payloads, pending = [pending + chunk], b''
        for payload in payloads:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            records.append(record)
    return records


def wait_until_complete(path: Path, patience: float = 120.0) -> Path:
    """Return once the run's ``exit`` record is on disk: ``wandb.finish()`` returns before W&B's separate service
    process has written everything (seen under load), and a test reading the file at once would see a prefix."""
    deadline = time.monotonic() + patience
    while True:
        try:
            if any(record.WhichOneof('record_type') == 'exit' for record in read_records(path)):
                return path
        except Exception:  # a record being written
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f'{path}: no exit record after {patience:.0f} s')
        time.sleep(0.2)


def history(path: Path) -> list[dict[str, Any]]:
    """One dict per logged step: ``_step`` and the logged values."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof('record_type') == 'history':
            row = {item.key or '/'.join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            row.setdefault('_step', record.history.step.num)
            rows.append(row)
    return rows


def run_id(path: Path) -> str:
    for record in read_records(path):
        if record.WhichOneof('record_type') == 'run':
            return record.run.run_id
    raise AssertionError(f'{path} has no run record')


def config(path: Path) -> dict[str, Any]:
    """The config values the run recorded (merged over its config records)."""
    values: dict[str, Any] = {}
    for record in read_records(path):
        if record.WhichOneof('record_type') == 'run' and record.run.HasField('config'):
            items = record.run.config.update
        elif record.WhichOneof('record_type') == 'config':
            items = record.config.update
        else:
            continue
        for item in items:
            values[item.key or '/'.join(item.nested_key)] = json.loads(item.value_json)
    return values
