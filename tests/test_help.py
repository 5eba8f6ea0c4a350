"""--help and argument errors: answered before torch and timm load, every default said once, one help text per
command, and the flags that TRAIN.md / TEST.md / README.md show exist with the defaults they claim."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

import validate
from robustcnn.__main__ import FORWARDED_COMMANDS, build_parser as robustcnn_parser
from robustcnn.cli import DefaultsHelpFormatter
from robustcnn.config import build_train_parser
from robustcnn.synthetic.demo import build_parser as demo_parser

from helpers_train import REPO_ROOT, subprocess_env

# our scripts as the docs write them
_COMMANDS = ('train.py', 'validate.py', 'scripts/demo.py')
_PROBE = '''
import runpy, sys
sys.argv = {argv!r}
try:
    runpy.run_{kind}({target!r}, run_name='__main__', {extra})
except SystemExit as exit:
    code = exit.code
print('EXIT', code, 'torch' in sys.modules, 'timm' in sys.modules, file=sys.stderr)
'''


def _run_without_torch(argv: list[str], module: bool = False) -> subprocess.CompletedProcess:
    """Run a command line in a fresh interpreter and report whether torch/timm were imported by the time it exited."""
    code = _PROBE.format(argv=argv, kind='module' if module else 'path', target=argv[0],
                         extra='alter_sys=True' if module else '')
    return subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env=subprocess_env())


@pytest.mark.parametrize('argv, module, code', [
    (['train.py', '--help'], False, 0),
    (['train.py', '/data', '--epochs', 'many'], False, 2),
    (['train.py', '/data', '--no-such-flag'], False, 2),
    (['validate.py', '--help'], False, 0),
    (['validate.py', '/data', '--dataset', 'imagenet-x'], False, 2),
    (['validate.py', '/data', '--figure', 'plot.jpg'], False, 2),
    # errors found by the typed checkers, the request's own checks and the output-path checks: all before torch
    (['validate.py', '/data', '--crop-pct', '0'], False, 2),
    (['validate.py', '/data', '--suite', '--dataset', 'imagenet'], False, 2),
    (['validate.py', '/data', '--suite', '--dataset-dir', 'nowhere'], False, 2),
    (['validate.py', '/data', '--results-file', 'table.txt'], False, 2),
    (['validate.py', '/data', '--results-file', 'tests'], False, 2),
    (['scripts/demo.py', '--help'], False, 0),
    (['scripts/demo.py', '--epochs', '0'], False, 2),
    (['robustcnn', '--help'], True, 0),
    (['robustcnn', 'demo', '--help'], True, 0),
    (['robustcnn', 'convert', '--help'], True, 0),
])
def test_help_and_argument_errors_come_before_torch_and_timm(argv: list[str], module: bool, code: int) -> None:
    done = _run_without_torch(argv, module)
    last = done.stderr.strip().splitlines()[-1]
    assert last == f'EXIT {code} False False', done.stderr[-2000:]
    if code == 2:
        assert ': error: ' in done.stderr and done.stderr.count('\n') == 2  # the one line, then the probe's


def test_import_robustcnn_still_registers_the_models_with_timm() -> None:
    """Registration waits for timm instead of importing it: both import orders find the models."""
    for code in ('import robustcnn, timm; assert timm.is_model("robust_resnet_dw_small")',
                 'import timm, robustcnn; assert timm.is_model("robust_resnet_dw_small")',
                 'import robustcnn.config, sys; assert "torch" not in sys.modules; import timm; '
                 'assert timm.is_model("robust_resnet_dw_pico")'):
        done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120,
                              env=subprocess_env())
        assert done.returncode == 0, (code, done.stderr[-2000:])


def _parsers() -> dict[str, argparse.ArgumentParser]:
    parsers = {'train.py': build_train_parser(), 'validate.py': validate.build_parser(),
               'scripts/demo.py': demo_parser(), 'robustcnn demo': demo_parser('robustcnn demo')}
    top = robustcnn_parser()
    parsers['robustcnn'] = top
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, parser in action.choices.items():
                if name not in FORWARDED_COMMANDS:  # forwarded: its own parser (the demo's is checked above)
                    parsers[f'robustcnn {name}'] = parser
    return parsers


def test_every_flag_shows_its_default_once() -> None:
    for name, parser in _parsers().items():
        assert parser.formatter_class is DefaultsHelpFormatter, name
        text = parser.format_help()
        assert '--no-no-' not in text and '(default: None)' not in text, name
        assert not re.search(r'\(default[^()]*(\([^()]*\))?[^()]*\)\s*\(default', text), name
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or \
                    action.help == argparse.SUPPRESS or not action.option_strings:
                continue
            assert action.help, f'{name} {action.option_strings} has no help text (so --help shows no default)'
            assert '(default' in formatter._get_help_string(action) % {**vars(action), 'prog': name}, \
                f'{name} {action.option_strings}'


def test_one_help_text_per_command() -> None:
    assert demo_parser('robustcnn demo').format_help().startswith('usage: robustcnn demo ')
    assert demo_parser().format_help().startswith('usage: demo.py ')
    top = robustcnn_parser().format_help()
    assert 'demo' in top and 'models' in top and 'convert' in top
    assert '``' not in top and ':func:' not in top  # plain text, not reStructuredText


def _doc_commands(text: str) -> list[tuple[str, list[str]]]:
    """(script, its flags) for every command line in a document that runs one of our scripts: fenced blocks (with
    backslash continuations) and inline code spans. Flags before the script name belong to torchrun, gcloud, ..."""
    lines = []
    for block in re.findall(r'```(?:bash|sh|console)?\n(.*?)```', text, flags=re.S):
        lines += block.replace('\\\n', ' ').splitlines()
    lines += re.findall(r'`([^`\n]+)`', re.sub(r'```.*?```', '', text, flags=re.S))
    commands = []
    for line in lines:
        for script in _COMMANDS:
            match = re.search(rf'(?:^|[\s/]){re.escape(script)}\b(.*)', line)
            if match and not (script == 'train.py' and 'scripts/' in line.split(script)[0][-8:]):
                commands.append((script, re.findall(r'(?<![\w-])(--[a-zA-Z][\w-]*)', match.group(1))))
                break
    return commands


@pytest.mark.parametrize('document', ['README.md', 'TRAIN.md', 'TEST.md'])
def test_documented_flags_exist_in_the_commands_they_are_given_to(document: str) -> None:
    parsers = _parsers()
    text = (REPO_ROOT / document).read_text()
    commands = _doc_commands(text)
    assert commands, document
    for script, flags in commands:
        options = {option for action in parsers[script]._actions for option in action.option_strings}
        unknown = [flag for flag in flags if flag not in options]
        assert not unknown, f'{document}: {script} has no {", ".join(unknown)}'


@pytest.mark.parametrize('document, script', [('TRAIN.md', 'train.py'), ('TEST.md', 'validate.py')])
def test_defaults_the_docs_state_are_the_parsers(document: str, script: str) -> None:
    """"`--output`, default `./output/train`" and "`--device auto` (the default)" must match the parser."""
    parser = _parsers()[script]
    by_option = {option: action for action in parser._actions for option in action.option_strings}
    text = ' '.join((REPO_ROOT / document).read_text().split())
    claims = []
    for first, second, first_value, second_value in re.findall(
            r'`(--[\w-]+)` and `(--[\w-]+)` \(default `([^`]+)` and `([^`]+)`\)', text):
        claims += [(first, first_value), (second, second_value)]  # "`--a` and `--b` (default `x` and `y`)"
    text = re.sub(r'`(--[\w-]+)` and `(--[\w-]+)` \(default `([^`]+)` and `([^`]+)`\)', '', text)
    claims += re.findall(r'`(--[\w-]+)`,? \(?default `([^`]+)`', text)  # "`--output`, default `./output/train`"
    claims += re.findall(r'`(--[\w-]+) ([^`\s]+)` \(the default\)', text)  # "`--device auto` (the default)"
    claims += re.findall(r'`(--[\w-]+)(?: [A-Z]+)?` \((?:[\w ]+, )?default (\d+)\)', text)  # "`--x N` (a, default 5)"
    assert claims, document
    for flag, value in claims:
        assert flag in by_option, f'{document} claims a default for unknown {flag}'
        assert str(by_option[flag].default) == value, f'{document}: {flag} default {by_option[flag].default!r}'
