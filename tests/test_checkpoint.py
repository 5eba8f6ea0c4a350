"""Checkpoint safety: no pickled code runs, every released form unwraps, writes are atomic, safetensors round-trip."""
import errno
import os
import pickle
import re
import subprocess
import sys

import pytest
import timm
import torch

import robustcnn  # noqa: F401
from robustcnn import checkpoint as ckpt
from robustcnn.checkpoint import (
    CheckpointError, atomic_save, atomic_write_text, extract_state_dict, load_checkpoint_file, load_model_weights,
    save_safetensors, with_checksum,
)


class _CreatesFileWhenUnpickled:
    """Unpickling this calls ``open(path, 'w')``: a stand-in for arbitrary code in a downloaded checkpoint."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, 'w')


def test_malicious_pickle_runs_nothing_and_says_why(tmp_path):
    marker = tmp_path / 'pwned.txt'
    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'payload': _CreatesFileWhenUnpickled(marker)}, evil)
    # the payload is real: plain unpickling would create the marker file
    probe = tmp_path / 'probe.pkl'
    probe.write_bytes(pickle.dumps(_CreatesFileWhenUnpickled(tmp_path / 'probe_marker')))
    pickle.loads(probe.read_bytes())
    assert (tmp_path / 'probe_marker').exists()

    with pytest.raises(CheckpointError, match=r'blocked by weights-only loading \(safety\): loading it would call '
                                              r'(builtins|io)\.open'):
        load_checkpoint_file(evil)
    assert not marker.exists()
    # timm's pretrained-file path refuses it too (weights_only), and nothing is created
    with pytest.raises(Exception):
        timm.create_model('robust_resnet_dw_pico', pretrained=True, pretrained_cfg_overlay=dict(file=str(evil)))
    assert not marker.exists()


def test_training_checkpoint_with_namespace_args_still_loads(tmp_path):
    import argparse
    path = tmp_path / 'timm_style.pth.tar'
    torch.save({'state_dict': {'w': torch.ones(2)}, 'args': argparse.Namespace(lr=1e-3), 'epoch': 3}, path)
    assert torch.equal(extract_state_dict(load_checkpoint_file(path))['w'], torch.ones(2))


@pytest.mark.parametrize('content,reason', [(b'', 'truncated or corrupt'), (b'not a checkpoint', 'not a PyTorch weights file')])
def test_unreadable_checkpoint_is_a_clear_error(tmp_path, content, reason):
    path = tmp_path / 'bad.pth'
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=reason if content else 'bad.pth'):
        load_checkpoint_file(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match='checkpoint not found'):
        load_checkpoint_file(tmp_path / 'nope.pth')


def test_extract_state_dict_forms_and_ema_choice():
    weights, ema = {'a': torch.zeros(1)}, {'a': torch.ones(1)}
    assert extract_state_dict({'model': weights})['a'].item() == 0
    assert extract_state_dict({'state_dict': weights, 'state_dict_ema': ema})['a'].item() == 0
    assert extract_state_dict({'state_dict': weights, 'state_dict_ema': ema}, use_ema=True)['a'].item() == 1
    assert list(extract_state_dict({'module._orig_mod.a': torch.zeros(1)})) == ['a']
    assert list(extract_state_dict({'_orig_mod.module.a': torch.zeros(1)})) == ['a']
    with pytest.raises(CheckpointError, match='has no state_dict_ema'):
        extract_state_dict({'state_dict': weights}, use_ema=True)
    with pytest.raises(CheckpointError, match='has no weights'):
        extract_state_dict({'epoch': 3, 'optimizer': {}})


def test_checkpoint_of_another_model_names_the_mismatch(tmp_path):
    path = tmp_path / 'other.pth'
    torch.save(timm.create_model('robust_resnet_inverted_dw_nano').state_dict(), path)
    model = timm.create_model('robust_resnet_dw_nano')
    with pytest.raises(CheckpointError, match=r'does not fit model RobustResNet: .*missing keys|shape mismatches'):
        load_model_weights(model, path)
    path_classes = tmp_path / 'classes.pth'
    torch.save(timm.create_model('robust_resnet_dw_pico', num_classes=10).state_dict(), path_classes)
    with pytest.raises(CheckpointError, match=r'head\.fc\.weight: checkpoint \(10, 512\) vs model \(1000, 512\)'):
        load_model_weights(timm.create_model('robust_resnet_dw_pico'), path_classes)


def test_atomic_save_leaves_previous_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / 'last.pth.tar'
    atomic_save({'epoch': 1}, path)
    real_save = torch.save

    def disk_full(obj, file):
        file.write(b'x' * 100)
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(ckpt.torch, 'save', disk_full)
    with pytest.raises(OSError, match='No space left on device.*previous file there is unchanged'):
        atomic_save({'epoch': 2}, path)
    monkeypatch.setattr(ckpt.torch, 'save', real_save)
    assert torch.load(path, weights_only=True) == {'epoch': 1}
    assert [p.name for p in tmp_path.iterdir()] == ['last.pth.tar'], 'no temp file left behind'


def test_ctrl_c_inside_torch_save_stays_an_interrupt(tmp_path, monkeypatch):
    """torch.save turns a KeyboardInterrupt raised in a file write into a RuntimeError; the user pressed Ctrl-C, so
    the run must end as interrupted (exit 130), not as a failed write, and the old file must survive."""
    path = tmp_path / 'last.pth.tar'
    atomic_save({'epoch': 1}, path)
    real_open = ckpt.os.fdopen

    class InterruptedFile:
        def __init__(self, file):
            self.file, self.writes = file, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                raise KeyboardInterrupt
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

    monkeypatch.setattr(ckpt.os, 'fdopen', lambda fd, mode: InterruptedFile(real_open(fd, mode)))
    with pytest.raises(KeyboardInterrupt):
        atomic_save({'epoch': 2, 'w': torch.zeros(1000)}, path)
    monkeypatch.setattr(ckpt.os, 'fdopen', real_open)
    assert torch.load(path, weights_only=True) == {'epoch': 1}
    assert [p.name for p in tmp_path.iterdir()] == ['last.pth.tar'], 'no temp file left behind'


def test_atomic_save_killed_mid_write_never_leaves_a_partial_file(tmp_path):
    """SIGKILL while a large checkpoint is being written: the target is the old file or the new one, never half."""
    path = tmp_path / 'ckpt.pth'
    atomic_save({'version': 0}, path)
    script = (
        'import sys, torch; from robustcnn.checkpoint import atomic_save\n'
        'big = {"w": torch.zeros(64, 1024, 1024)}\n'
        'print("writing", flush=True)\n'
        'while True:\n    atomic_save(big, sys.argv[1])\n'
    )
    process = subprocess.Popen([sys.executable, '-c', script, str(path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == 'writing'
    import time
    time.sleep(1.5)
    process.kill()
    process.wait()
    loaded = torch.load(path, weights_only=True)
    assert loaded == {'version': 0} or tuple(loaded['w'].shape) == (64, 1024, 1024)


def test_safetensors_round_trip_and_convert_command(tmp_path):
    model = timm.create_model('robust_resnet_dw_pico')
    source = tmp_path / 'model.pth.tar'
    torch.save({'state_dict': model.state_dict(), 'epoch': 7}, source)
    output = tmp_path / 'model.safetensors'
    result = subprocess.run([sys.executable, '-m', 'robustcnn', 'convert', str(source), str(output)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f'to {output}' in result.stdout
    loaded = load_checkpoint_file(output)
    assert set(loaded) == set(model.state_dict())
    fresh = timm.create_model('robust_resnet_dw_pico', pretrained=True, pretrained_cfg_overlay=dict(file=str(output)))
    assert torch.equal(fresh.stem.weight, model.stem.weight)
    # direct writer, and a bad output name is a one-line usage error
    save_safetensors(model.state_dict(), tmp_path / 'direct.safetensors')
    assert torch.equal(load_checkpoint_file(tmp_path / 'direct.safetensors')['stem.bias'], model.stem.bias)
    bad = subprocess.run([sys.executable, '-m', 'robustcnn', 'convert', str(source), str(tmp_path / 'x.pth')],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().count('\n') == 0 and 'must end in .safetensors' in bad.stderr
    assert not os.path.exists(tmp_path / 'x.pth')


def test_converted_training_checkpoint_keeps_what_validate_needs(tmp_path):
    """Model name, model_kwargs (only in args, as timm's train.py stores them), class names and input size survive
    conversion, so validate.py evaluates the .safetensors file exactly like the original, with no extra flags."""
    import json

    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    import validate

    torch.manual_seed(0)
    model = timm.create_model('robust_resnet_dw_pico', num_classes=3, patch_size=4)
    source = tmp_path / 'last.pth.tar'
    torch.save({'state_dict': model.state_dict(), 'args': {'model_kwargs': {'patch_size': 4}},
                'metadata': {'model': 'robust_resnet_dw_pico', 'class_names': ['ant', 'bee', 'cat'],
                             'num_classes': 3, 'input_size': [3, 32, 32]}}, source)
    output = tmp_path / 'last.safetensors'
    done = subprocess.run([sys.executable, '-m', 'robustcnn', 'convert', str(source), str(output)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and 'metadata (class_names, input_size, model, model_kwargs' in done.stdout
    loaded = load_checkpoint_file(output)
    assert loaded['metadata']['model_kwargs'] == {'patch_size': 4}
    assert loaded['metadata']['class_names'] == ['ant', 'bee', 'cat']
    rng = np.random.default_rng(0)
    for name in ('bee', 'cat'):
        (tmp_path / 'val' / name).mkdir(parents=True)
        for index in range(3):
            pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / 'val' / name / f'{index}.png')
    results = {}
    for weights in (source, output):
        path = tmp_path / f'{weights.name}.json'
        assert validate.main([str(tmp_path / 'val'), '--dataset', 'folder', '--checkpoint', str(weights),
                              '--workers', '0', '--log-freq', '0', '--results-file', str(path)]) == 0
        payload = json.loads(path.read_text())
        entry = {key: value for key, value in payload['results']['folder'].items() if key != 'elapsed_seconds'}
        results[weights.suffix] = (payload['model'], entry)
    assert results['.safetensors'] == results['.tar']
    assert results['.tar'][1]['num_samples'] == 6 and results['.tar'][1]['preprocessing']['input_size'] == [3, 32, 32]


class _RunsShellCommand:
    def __reduce__(self):
        return os.system, ('echo pwned',)


def test_a_blocked_os_call_is_named_as_blocked_for_safety_not_as_corrupt(tmp_path):
    """torch 2.15 words a blocked module differently ('unsupported GLOBAL posix.system whose module posix is
    blocked'); the message must still say it was refused for safety and name the call."""
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'payload': _RunsShellCommand()}, path)
    with pytest.raises(CheckpointError, match=r'blocked by weights-only loading \(safety\): loading it would call '
                                              r'(posix|os)\.system'):
        load_checkpoint_file(path)


def test_a_flipped_bit_in_tensor_data_is_detected_on_load(tmp_path):
    weights = torch.full((64,), 1.5)  # 0x3FC00000: a byte pattern found once in the file
    path = tmp_path / 'last.pth.tar'
    torch.save(with_checksum({'state_dict': {'w': weights}, 'epoch': 3, 'args': {'lr': 0.1}}), path)
    assert torch.equal(load_checkpoint_file(path)['state_dict']['w'], weights)
    data = bytearray(path.read_bytes())
    offset = data.find(weights.numpy().tobytes())
    assert offset >= 0
    data[offset + 4 * 10 + 3] ^= 0x40  # weight 10 becomes 1.5 * 2**-128: torch.load alone accepts it
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=True)['state_dict']['w'][10].item() != 1.5
    with pytest.raises(CheckpointError, match='last.pth.tar is damaged: its contents do not match the checksum'):
        load_checkpoint_file(path)
    # a changed plain value is caught too, and files without a checksum (older runs, other tools) still load
    torch.save({**with_checksum({'state_dict': {'w': weights}, 'epoch': 3}), 'epoch': 4}, path)
    with pytest.raises(CheckpointError, match='is damaged'):
        load_checkpoint_file(path)
    torch.save({'state_dict': {'w': weights}, 'epoch': 3}, path)
    assert load_checkpoint_file(path)['epoch'] == 3


def test_a_full_disk_is_named_as_such(tmp_path, monkeypatch):
    """torch.save reports ENOSPC as '[enforce fail at inline_container.cc:671] unexpected pos'; say what it is."""
    path = tmp_path / 'last.pth.tar'

    def full(obj, file):
        file.write(b'x' * 10)
        raise RuntimeError('[enforce fail at inline_container.cc:671] . unexpected pos 832 vs 746')

    class NoRoom:
        f_bavail, f_frsize = 3, 4096

    monkeypatch.setattr(ckpt.torch, 'save', full)
    monkeypatch.setattr(ckpt.os, 'statvfs', lambda directory: NoRoom())
    with pytest.raises(OSError, match=r'could not write .*last.pth.tar \(No space left on device\); no file was '
                                      r'written') as raised:
        atomic_save({'epoch': 1}, path)
    assert raised.value.errno == errno.ENOSPC and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('umask', [0o022, 0o002, 0o077])
def test_atomically_written_files_get_the_umask_permissions(tmp_path, umask):
    previous = os.umask(umask)
    try:
        written = atomic_write_text('x', tmp_path / f'results-{umask:o}.json')
    finally:
        os.umask(previous)
    assert written.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize('metadata,field', [
    ({'model_kwargs': {'checkpoint_path': '/elsewhere/weights.pth'}},
     'metadata.model_kwargs.checkpoint_path would make'),
    ({'model_kwargs': {'pretrained_cfg_overlay': {'file': 'x.pth'}}}, 'metadata.model_kwargs.pretrained_cfg_overlay'),
    ({'model_kwargs': {'dims': [64, 10 ** 9]}}, 'metadata.model_kwargs.dims is 1000000000'),
    ({'input_size': [3, 60000, 60000]}, 'metadata.input_size is [3, 60000, 60000]'),
    ({'crop_pct': 1e-4}, 'metadata.crop_pct is 0.0001'),
    ({'num_classes': 10 ** 9}, 'metadata.num_classes is 1000000000'),
    ({'num_classes': '10'}, "metadata.num_classes is '10'"),
    ({'mean': ['red', 0.5, 0.5]}, 'metadata.mean'),
    ({'std': [0.2, 0.0, 0.2]}, 'metadata.std'),
    ({'interpolation': 'sinc'}, "metadata.interpolation is 'sinc'"),
    ({'class_names': ['ant', 'ant']}, 'metadata.class_names'),
    ({'model': 7}, 'metadata.model is'),
])
def test_untrusted_safetensors_metadata_is_checked_field_by_field(tmp_path, metadata, field):
    import json

    path = tmp_path / 'weights.safetensors'
    save_safetensors({'w': torch.ones(2)}, path, metadata={ckpt.SAFETENSORS_METADATA_KEY: json.dumps(metadata)})
    with pytest.raises(CheckpointError, match=rf'weights.safetensors: {re.escape(field)}.*altered or not written by'):
        load_checkpoint_file(path)


def test_model_kwargs_in_timm_style_args_may_not_name_files(tmp_path):
    import argparse

    path = tmp_path / 'timm_style.pth.tar'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'args': argparse.Namespace(model_kwargs={'checkpoint_path': 'x'})},
               path)
    with pytest.raises(CheckpointError, match='args.model_kwargs.checkpoint_path would make timm read'):
        load_checkpoint_file(path)
    torch.save({'state_dict': {'w': torch.ones(1)}, 'args': {'model_kwargs': {'drop_path_rate': 0.1, 'dims': [8]}},
                'metadata': {'model': 'robust_resnet_dw_pico', 'input_size': [3, 32, 32], 'crop_pct': 0.875,
                             'interpolation': 'bicubic', 'mean': [0.5] * 3, 'std': [0.25] * 3, 'num_classes': 3,
                             'class_names': ['a', 'b', 'c']}}, path)
    assert load_checkpoint_file(path)['metadata']['num_classes'] == 3
