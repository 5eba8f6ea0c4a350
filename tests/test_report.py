"""Results files: the JSON schema, CSV/Markdown tables, the README row, and the PNG figure."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from robustcnn.report import readme_row, results_to_markdown, write_figure, write_results

PAYLOAD = {
    'model': 'robust_resnet_dw_small', 'checkpoint': 'ckpt.pth',
    'results': {
        'imagenet': {'top1': 79.4, 'top5': 94.6, 'loss': 0.91234567, 'num_samples': 50000, 'skipped_files': 0},
        'imagenet-c': {'mean_corruption_error': 42.3, 'mce': 54.123456, 'relative_mce': None, 'num_samples': 3750000,
                       'skipped_files': 2, 'partial': False, 'missing': [],
                       'errors': {'gaussian_noise': {'1': 31.2, '2': 40.0}, 'fog': {'1': 20.0, '2': float('nan')}},
                       'corruption_errors': {'gaussian_noise': 50.0, 'fog': 30.0}},
        'imagenet-r': {'top1': 45.9, 'top5': 60.1, 'loss': 2.5, 'num_samples': 30000, 'skipped_files': 0},
    },
}


def test_json_schema_and_rounding(tmp_path: Path) -> None:
    path = write_results(tmp_path / 'out.json', PAYLOAD)
    data = json.loads(path.read_text())
    assert data['model'] == 'robust_resnet_dw_small' and data['checkpoint'] == 'ckpt.pth'
    assert data['results']['imagenet-r'] == {'top1': 45.9, 'top5': 60.1, 'loss': 2.5, 'num_samples': 30000,
                                             'skipped_files': 0}
    corruption = data['results']['imagenet-c']
    assert corruption['mce'] == 54.1235 and corruption['relative_mce'] is None
    assert corruption['errors']['gaussian_noise'] == {'1': 31.2, '2': 40.0}
    assert corruption['errors']['fog']['2'] is None  # NaN is not JSON
    assert not list(tmp_path.glob('*.tmp')) and not list(tmp_path.glob('.*'))


def test_csv_one_row_per_dataset(tmp_path: Path) -> None:
    rows = list(csv.DictReader(write_results(tmp_path / 'out.csv', PAYLOAD).open()))
    assert [row['dataset'] for row in rows] == ['imagenet', 'imagenet-c', 'imagenet-r']
    assert rows[0]['top1'] == '79.4' and rows[1]['mean_corruption_error'] == '42.3' and rows[1]['top1'] == ''


def test_markdown_report_and_readme_row(tmp_path: Path) -> None:
    assert readme_row(PAYLOAD) == '| robust_resnet_dw_small | 79.4 | – | 42.3 | 45.9 | – |'
    text = write_results(tmp_path / 'out.md', PAYLOAD).read_text()
    assert text == results_to_markdown(PAYLOAD)
    assert '| ImageNet↑ | Stylized-ImageNet↑ | ImageNet-C↓ | ImageNet-R↑ | ImageNet-Sketch↑ |' in text
    assert '| gaussian_noise | 31.20 | 40.00 | 35.60 | 50.00 |' in text
    assert 'mCE' in text and '| imagenet-c | – | – | – | 42.30 | 54.12 | – | 3750000 | 2 |' in text


def test_unknown_suffix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='.json, .csv, .md'):
        write_results(tmp_path / 'out.txt', PAYLOAD)


def test_png_figure(tmp_path: Path) -> None:
    path = write_figure(tmp_path / 'figure.png', PAYLOAD)
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and path.stat().st_size > 5000
    with pytest.raises(ValueError, match='nothing to plot'):
        write_figure(tmp_path / 'empty.png', {'model': 'x', 'results': {}})


def test_every_corruption_suite_gets_its_own_heat_map(tmp_path):
    """ImageNet-C, -C-bar and -3DCC results are each drawn as a corruption x severity heat map (one panel each)."""
    from PIL import Image

    from robustcnn.report import write_figure

    table = {'fog': {'1': 10.0, '2': 20.0}, 'blur': {'1': 30.0, '2': 40.0}}
    payload = {'model': 'm', 'results': {
        'imagenet-c': {'errors': table, 'mean_corruption_error': 25.0, 'mce': None},
        'imagenet-c-bar': {'errors': table, 'mean_corruption_error': 25.0},
        'imagenet-3dcc': {'errors': table, 'mean_corruption_error': 25.0}}}
    with Image.open(write_figure(tmp_path / 'three.png', payload)) as image:
        three = image.size[0]
    del payload['results']['imagenet-3dcc'], payload['results']['imagenet-c-bar']
    with Image.open(write_figure(tmp_path / 'one.png', payload)) as image:
        one = image.size[0]
    assert three == 3 * one  # 7 inches per panel at the same dpi, no bar chart (no set here has a top-1)
