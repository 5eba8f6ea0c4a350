"""`robustcnn download`: fetched from a local HTTP server (nothing leaves the machine), verified by a strict load,
cached atomically with its sha256, then used by timm.create_model(pretrained=True); wrong, corrupt and truncated
files are refused and leave nothing behind; a missing download is a one-line error naming the command."""
from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import json
import sys
import threading
from pathlib import Path

import pytest
import timm
import torch

import robustcnn  # noqa: F401  (registers the models)
from robustcnn.__main__ import main
from robustcnn.checkpoint import CheckpointError
from robustcnn.cli import UsageError
from robustcnn.models.released import weights_cache_dir

pytest.importorskip('gdown')
REPO = Path(__file__).resolve().parents[1]
NAME = 'robust_resnet_dw_pico'  # no released weights: every test passes --url


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv('ROBUSTCNN_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setenv('NO_PROXY', '127.0.0.1,localhost')
    return tmp_path / 'cache' / 'weights'


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/served over HTTP on 127.0.0.1; yields the base URL."""
    root = tmp_path / 'served'
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f'http://127.0.0.1:{httpd.server_address[1]}'
    httpd.shutdown()
    httpd.server_close()


def released_style_checkpoint(path: Path, model_name: str = NAME, seed: int = 0) -> torch.nn.Module:
    """DeiT's layout, as the authors saved it: weights under 'model', with optimizer state and an argparse
    Namespace."""
    torch.manual_seed(seed)
    model = timm.create_model(model_name).eval()
    torch.save({'model': model.state_dict(), 'optimizer': {'state': {}}, 'epoch': 299,
                'args': argparse.Namespace(model=model_name, lr=5e-4)}, path)
    return model


def cache_contents(cache: Path) -> list[str]:
    return sorted(path.name for path in cache.iterdir()) if cache.exists() else []


def test_download_verifies_caches_and_timm_then_loads_it(cache, server, capsys):
    root, base = server
    model = released_style_checkpoint(root / 'pico.pth')
    assert main(['download', NAME, '--url', f'{base}/pico.pth', '--quiet']) == 0
    assert 'verified' in capsys.readouterr().out
    assert cache_contents(cache) == [f'{NAME}.json', f'{NAME}.safetensors']
    record = json.loads((cache / f'{NAME}.json').read_text())
    assert record['download_sha256'] == hashlib.sha256((root / 'pico.pth').read_bytes()).hexdigest()
    assert record['sha256'] == hashlib.sha256((cache / f'{NAME}.safetensors').read_bytes()).hexdigest()
    assert record['url'] == f'{base}/pico.pth' and record['model'] == NAME

    loaded = timm.create_model(NAME, pretrained=True).eval()
    assert loaded.pretrained_cfg['file'] == str(cache / f'{NAME}.safetensors')
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))

    # validate.py --pretrained scores exactly what --checkpoint with the served file scores
    sys.path.insert(0, str(REPO))
    import validate
    from dataset_trees import build_wnid_tree
    data = build_wnid_tree(root.parent / 'ImageNet' / 'val', {0: [0], 5: [5]})
    outcomes = []
    for source in (['--pretrained'], ['--checkpoint', str(root / 'pico.pth')]):
        results = root.parent / f'results{len(outcomes)}.json'
        assert validate.main([str(data), '--dataset', 'imagenet', '--model', NAME, *source, '--workers', '0',
                              '--img-size', '64', '--results-file', str(results)]) == 0
        entry = json.loads(results.read_text())['results']['imagenet']
        outcomes.append((entry['num_samples'], entry['top1'], entry['loss']))
    assert outcomes[0] == outcomes[1] and outcomes[0][0] == 2

    # a second call finds the verified copy and does not fetch (the server no longer has the file)
    (root / 'pico.pth').unlink()
    assert main(['download', NAME, '--url', f'{base}/pico.pth', '--quiet']) == 0


@pytest.mark.parametrize('kind', ['wrong model', 'not a checkpoint', 'truncated', 'missing on the server'])
def test_a_wrong_or_broken_download_is_refused_and_nothing_is_left(cache, server, kind):
    root, base = server
    served = root / 'file.pth'
    if kind == 'wrong model':
        released_style_checkpoint(served, model_name='robust_resnet_dw_nano')
        expected = 'does not fit model'
    elif kind == 'not a checkpoint':
        served.write_text('<html>Google Drive - Virus scan warning</html>')
        expected = 'not a PyTorch weights file'
    elif kind == 'truncated':
        released_style_checkpoint(served)
        served.write_bytes(served.read_bytes()[:served.stat().st_size // 2])
        expected = 'truncated or corrupt'
    else:
        expected = 'could not download'
    with pytest.raises(CheckpointError, match=expected):
        main(['download', NAME, '--url', f'{base}/file.pth', '--quiet'])
    assert cache_contents(cache) == []  # no weights, no record, no scratch folder
    with pytest.raises(CheckpointError, match=f'{NAME} has no released weights'):
        timm.create_model(NAME, pretrained=True)


def test_a_failed_forced_download_keeps_the_cached_copy(cache, server):
    root, base = server
    released_style_checkpoint(root / 'good.pth')
    assert main(['download', NAME, '--url', f'{base}/good.pth', '--quiet']) == 0
    before = (cache / f'{NAME}.safetensors').read_bytes()
    released_style_checkpoint(root / 'bad.pth', model_name='robust_resnet_dw_nano')
    with pytest.raises(CheckpointError, match='does not fit'):
        main(['download', NAME, '--url', f'{base}/bad.pth', '--force', '--quiet'])
    assert (cache / f'{NAME}.safetensors').read_bytes() == before
    assert cache_contents(cache) == [f'{NAME}.json', f'{NAME}.safetensors']


def test_missing_weights_name_the_download_command(cache, tmp_path, capsys):
    with pytest.raises(CheckpointError, match=r'run `robustcnn download robust_resnet_dw_small`'):
        timm.create_model('robust_resnet_dw_small', pretrained=True)
    sys.path.insert(0, str(REPO))
    import validate
    from dataset_trees import build_wnid_tree
    from robustcnn.cli import run_cli
    build_wnid_tree(tmp_path / 'ImageNet' / 'val', {0: [0]})
    with pytest.raises(SystemExit) as exit_info:
        run_cli(validate.main, [str(tmp_path / 'ImageNet'), '--model', 'robust_resnet_down_inverted_dw_small',
                                '--pretrained', '--workers', '0'], prog='validate.py')
    assert exit_info.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith('validate.py: error: the released weights of robust_resnet_down_inverted_dw_small are '
                           'not downloaded yet: run `robustcnn download robust_resnet_down_inverted_dw_small`')


def test_download_arguments_and_a_missing_gdown(cache, monkeypatch):
    with pytest.raises(UsageError, match='has no released weights.*--url'):
        main(['download', NAME])
    with pytest.raises(UsageError, match="unknown model 'robust_resnet_huge'"):
        main(['download', 'robust_resnet_huge'])
    with pytest.raises(UsageError, match='one NAME'):
        main(['download', NAME, 'robust_resnet_dw_nano', '--url', 'http://127.0.0.1:9/x'])
    monkeypatch.setitem(sys.modules, 'gdown', None)
    with pytest.raises(UsageError, match=r'needs gdown.*robustcnn\[download\]'):
        main(['download', 'robust_resnet_dw_small'])
    assert weights_cache_dir() == cache
