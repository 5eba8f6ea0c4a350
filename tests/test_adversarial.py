"""Adversarial attacks (validate.py --attack) and adversarial training (train.py --adv-train) on tiny models."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from adversarial_models import (TINY_MEAN, TINY_STD, ConstantNet, TinyNet, fit_tiny_net, normalized, reference_pgd,
                                register_tiny_net, save_tiny_checkpoint)
from helpers_train import CLASS_COLOURS, TINY_FLAGS, assert_same_weights, load_weights, make_image_folders, \
    run_train_subprocess
from robustcnn.adversarial.attacks import PixelSpaceModel, build_attack, check_perturbation
from robustcnn.adversarial.evaluation import attack_order
from robustcnn.adversarial.spec import AdversarialTrainingSpec, AttackSpec
from robustcnn.adversarial.training import AdversarialBatches

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import validate  # noqa: E402

MODEL = register_tiny_net()
CLASSES = sorted(CLASS_COLOURS)


def spec(attack: str = 'pgd', eps: float = 8 / 255, **options) -> AttackSpec:
    defaults = {'steps': 5 if attack == 'pgd' else (1 if attack == 'fgsm' else None), 'random_start': False}
    defaults.update(options)
    return AttackSpec(attack=attack, eps=(eps,), eps_text=(str(eps),), **defaults)


def images_with_saturated_pixels(count: int = 6, size: int = 8, seed: int = 0) -> torch.Tensor:
    """Random pixels, a third of them exactly 0 or 1, so clipping to [0, 1] is exercised."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(count, 3, size, size, generator=generator)
    saturated = torch.rand(pixels.shape, generator=generator) < 0.33
    return torch.where(saturated, pixels.round(), pixels)


@pytest.fixture()
def fast_autoattack(monkeypatch):
    """AutoAttack's real budget (100 iterations x 9 targets, 5000 Square queries) takes minutes on a shared CPU
    even for a tiny net; the composition is what these tests check, so they shrink the budget."""
    from robustcnn.adversarial import attacks
    monkeypatch.setattr(attacks, 'AUTOATTACK_ITERATIONS', 4)
    monkeypatch.setattr(attacks, 'SQUARE_QUERIES', 20)


@pytest.fixture()
def tiny() -> PixelSpaceModel:
    return PixelSpaceModel(TinyNet(num_classes=5).eval(), TINY_MEAN, TINY_STD)


@pytest.mark.parametrize('attack, norm, eps, options', [
    ('fgsm', 'linf', 8 / 255, {}),
    ('pgd', 'linf', 8 / 255, {'random_start': True, 'steps': 4}),
    ('pgd', 'linf', 0.03, {'random_start': False, 'steps': 3, 'step_size': 0.02}),
    ('pgd', 'l2', 0.5, {'random_start': True, 'steps': 4}),
])
def test_attacks_never_leave_the_ball_or_the_image_range(tiny, attack, norm, eps, options):
    pixels = images_with_saturated_pixels()
    labels = tiny(pixels).argmax(dim=1)
    torch.manual_seed(0)
    adversarial = build_attack(spec(attack, eps, norm=norm, **options), eps, tiny, 5)(pixels, labels)
    delta = (adversarial - pixels).flatten(1)
    size = delta.abs().amax(dim=1) if norm == 'linf' else delta.norm(dim=1)
    assert size.max().item() <= eps * (1 + 1e-6) + 1e-7
    assert adversarial.min().item() >= 0.0 and adversarial.max().item() <= 1.0
    assert size.max().item() > eps / 4  # it did move
    check_perturbation(adversarial, pixels, eps, norm)  # the run-time guard agrees


def test_the_run_time_guard_refuses_a_perturbation_outside_the_ball():
    pixels = torch.full((1, 3, 2, 2), 0.5)
    with pytest.raises(RuntimeError, match='left its threat model'):
        check_perturbation(pixels + 0.1, pixels, 0.05, 'linf')
    with pytest.raises(RuntimeError, match='left its threat model'):
        check_perturbation((pixels * 3).clamp(max=1.2), pixels, 1.0, 'linf')


def test_pgd_without_random_start_is_deterministic_and_equals_the_definition(tiny):
    pixels = images_with_saturated_pixels(count=8)
    labels = torch.arange(8) % 5
    attack_spec = spec('pgd', 6 / 255, steps=7, step_size=2 / 255)
    first = build_attack(attack_spec, 6 / 255, tiny, 5)(pixels, labels)
    second = build_attack(attack_spec, 6 / 255, tiny, 5)(pixels, labels)
    assert torch.equal(first, second)
    expected = reference_pgd(normalized(tiny.model, TINY_MEAN, TINY_STD), pixels, labels, 6 / 255, 2 / 255, 7)
    torch.testing.assert_close(first, expected, rtol=0, atol=1e-6)
    # and it is an attack: the loss went up for every image
    with torch.no_grad():
        before = F.cross_entropy(tiny(pixels), labels, reduction='none')
        after = F.cross_entropy(tiny(first), labels, reduction='none')
    assert (after > before).all()


def test_fgsm_is_one_signed_step_of_eps(tiny):
    pixels = images_with_saturated_pixels()
    labels = torch.arange(6) % 5
    adversarial = build_attack(spec('fgsm', 4 / 255), 4 / 255, tiny, 5)(pixels, labels)
    expected = reference_pgd(normalized(tiny.model, TINY_MEAN, TINY_STD), pixels, labels, 4 / 255, 4 / 255, 1)
    torch.testing.assert_close(adversarial, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize('attack', ['fgsm', 'pgd', 'autoattack'])
def test_a_constant_model_keeps_its_answers_under_every_attack(attack, fast_autoattack):
    model = PixelSpaceModel(ConstantNet(num_classes=5, answer=2), TINY_MEAN, TINY_STD)
    pixels = images_with_saturated_pixels(count=3, size=4)
    labels = torch.tensor([2, 1, 2])
    options = {'random_start': True} if attack == 'pgd' else {}
    adversarial = build_attack(spec(attack, 8 / 255, **options), 8 / 255, model, 5)(pixels, labels)
    assert model(adversarial).argmax(dim=1).tolist() == [2, 2, 2]
    check_perturbation(adversarial, pixels, 8 / 255, 'linf')


def test_label_subset_masking_happens_before_the_loss():
    """ImageNet-R/-A score 200 of 1000 outputs: the attack must maximize the loss over the scored classes only."""
    network = TinyNet(num_classes=7, seed=3).eval()
    subset = [1, 4, 6]
    model = PixelSpaceModel(network, TINY_MEAN, TINY_STD, label_subset=subset)
    pixels = images_with_saturated_pixels(count=6, seed=2)
    positions = torch.tensor([0, 1, 2, 0, 1, 2])  # targets are positions in the subset
    logits = network((pixels - torch.tensor(TINY_MEAN).view(1, -1, 1, 1)) / torch.tensor(TINY_STD).view(1, -1, 1, 1))
    torch.testing.assert_close(model(pixels), logits[:, subset])
    adversarial = build_attack(spec('pgd', 0.05, steps=4, step_size=0.02), 0.05, model, 3)(pixels, positions)
    plain = normalized(network, TINY_MEAN, TINY_STD)
    masked = reference_pgd(lambda x: plain(x)[:, subset], pixels, positions, 0.05, 0.02, 4)
    torch.testing.assert_close(adversarial, masked, rtol=0, atol=1e-6)
    # masking after the loss (CE over all 7 outputs, then read the subset) is a different attack
    unmasked = reference_pgd(plain, pixels, torch.tensor(subset)[positions], 0.05, 0.02, 4)
    assert (unmasked - masked).abs().max().item() > 1e-3


def test_autoattack_runs_on_the_cpu_and_is_at_least_as_strong_as_pgd(fast_autoattack):
    network = TinyNet(num_classes=5, seed=1).eval()
    model = PixelSpaceModel(network, TINY_MEAN, TINY_STD)
    pixels = images_with_saturated_pixels(count=4, size=6, seed=4)
    labels = model(pixels).argmax(dim=1)  # every image starts correct
    labels[0] = (labels[0] + 1) % 5        # but one is a clean mistake
    eps = 0.1
    adversarial = build_attack(spec('autoattack', eps), eps, model, 5)(pixels, labels)
    check_perturbation(adversarial, pixels, eps, 'linf')
    robust = model(adversarial).argmax(dim=1).eq(labels)
    pgd = build_attack(spec('pgd', eps, steps=10), eps, model, 5)(pixels, labels)
    pgd_robust = model(pgd).argmax(dim=1).eq(labels)
    assert not robust[0]
    assert (robust <= pgd_robust).all() and robust.sum() < 3  # it broke images (the radius is large for this net)


def test_folded_batchnorm_and_prepacked_weights_give_the_same_gradients():
    import timm

    import robustcnn  # noqa: F401
    torch.manual_seed(0)
    model = timm.create_model('robust_resnet_dw_pico', num_classes=4, patch_size=4).eval()
    for module in model.modules():  # non-trivial statistics, so folding really changes the weights
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    pixels = images_with_saturated_pixels(count=2, size=32)
    labels = torch.tensor([0, 3])
    plain = PixelSpaceModel(model, TINY_MEAN, TINY_STD)

    def gradient(wrapper: PixelSpaceModel) -> torch.Tensor:
        inputs = pixels.clone().requires_grad_(True)
        loss = F.cross_entropy(wrapper(inputs), labels)
        return torch.autograd.grad(loss, inputs)[0]

    expected = gradient(plain)
    import copy
    fused = PixelSpaceModel(copy.deepcopy(model).fuse(), TINY_MEAN, TINY_STD)
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in fused.modules())
    torch.testing.assert_close(gradient(fused), expected, rtol=1e-3, atol=1e-6)


def test_attack_order_takes_the_classes_in_turn():
    samples = [(f'a{index}', 0) for index in range(3)] + [('b0', 1)] + [(f'c{index}', 2) for index in range(2)]
    assert [name for name, _ in attack_order(samples)] == ['a0', 'b0', 'c0', 'a1', 'c1', 'a2']


# ---------------------------------------------------------------------------------------------------- validate.py

@pytest.fixture(scope='module')
def tree(tmp_path_factory) -> tuple[Path, Path]:
    root = make_image_folders(tmp_path_factory.mktemp('adv') / 'data', train_per_class=4, val_per_class=3)
    checkpoint = save_tiny_checkpoint(root / 'tiny.pth', CLASSES, fit_tiny_net(root / 'train', CLASSES))
    return root, checkpoint


def run_main(argv: list[str]) -> int:
    from robustcnn.cli import run_cli
    with pytest.raises(SystemExit) as exit_info:
        run_cli(validate.main, argv, prog='validate.py')
    return exit_info.value.code


def reference_numbers(root: Path, eps_values: list[float], steps: int) -> tuple[float, list[float]]:
    """Clean and robust top-1 of the checkpoint's model over root/val, computed without robustcnn's code."""
    network = TinyNet(num_classes=4)
    network.load_state_dict(torch.load(root / 'tiny.pth', weights_only=True)['state_dict'])
    model = normalized(network.eval(), TINY_MEAN, TINY_STD)
    paths = sorted((root / 'val').glob('*/*.png'))
    pixels = torch.stack([torch.tensor(np.array(Image.open(path).convert('RGB'))).permute(2, 0, 1)
                          for path in paths]).float() / 255.0
    labels = torch.tensor([CLASSES.index(path.parent.name) for path in paths])
    with torch.no_grad():
        clean = model(pixels).argmax(dim=1).eq(labels)
    robust = []
    for eps in eps_values:
        adversarial = reference_pgd(model, pixels, labels, eps, 2.5 * eps / steps, steps)  # Madry et al.'s step
        with torch.no_grad():
            robust.append(100.0 * (clean & model(adversarial).argmax(dim=1).eq(labels)).float().mean().item())
    return 100.0 * clean.float().mean().item(), robust


def attack_argv(root: Path, checkpoint: Path, results: Path, *extra: str) -> list[str]:
    return [str(root / 'val'), '--dataset', 'folder', '--model', MODEL, '--checkpoint', str(checkpoint),
            '--img-size', '32', '--crop-pct', '1', '--workers', '0', '-b', '4', '--log-freq', '1',
            '--results-file', str(results), '--attack', 'pgd', '--attack-steps', '5', '--no-attack-random-start',
            *extra]


def test_validate_pgd_equals_an_independent_pgd_and_reports_every_parameter(tree, tmp_path):
    root, checkpoint = tree
    results = tmp_path / 'results.json'
    assert run_main(attack_argv(root, checkpoint, results, '--attack-eps', '32/255,64/255', '--figure',
                                str(tmp_path / 'curve.png'))) == 0
    entry = json.loads(results.read_text())['results']['folder']
    clean, robust = reference_numbers(root, [32 / 255, 64 / 255], 5)
    assert entry['num_samples'] == 12
    assert entry['top1'] == pytest.approx(clean, abs=1e-3)
    assert [item['robust_top1'] for item in entry['robust_top1_by_eps']] == pytest.approx(robust, abs=1e-3)
    assert entry['robust_top1'] == pytest.approx(robust[1], abs=1e-3)  # the headline is the largest radius
    assert robust[1] <= robust[0] <= clean and robust[1] < clean  # robust <= clean, and the attack did something
    attack = entry['attack']
    assert attack['library'] == 'torchattacks' and attack['library_version'] not in ('', 'unknown')
    assert (attack['name'], attack['norm'], attack['steps'], attack['random_start']) == ('pgd', 'linf', 5, False)
    assert attack['eps_text'] == ['32/255', '64/255']
    assert attack['step_size'] == pytest.approx([16 / 255, 32 / 255], abs=1e-4)
    assert attack['gradient_dtype'] == 'float32'
    assert (tmp_path / 'curve.png').read_bytes()[:4] == b'\x89PNG'
    markdown = tmp_path / 'results.md'
    assert run_main(attack_argv(root, checkpoint, markdown, '--attack-eps', '32/255,64/255')) == 0
    text = markdown.read_text()
    assert f'| folder | pgd | linf | 32/255 | 5 | {clean:.2f} | {robust[0]:.2f} | 12 |' in text
    assert f'| folder | pgd | linf | 64/255 | 5 | {clean:.2f} | {robust[1]:.2f} | 12 |' in text


def test_max_samples_takes_the_classes_in_turn(tree, tmp_path):
    root, checkpoint = tree
    results = tmp_path / 'r.json'
    assert run_main(attack_argv(root, checkpoint, results, '--attack-eps', '0', '--max-samples', '5')) == 0
    entry = json.loads(results.read_text())['results']['folder']
    assert entry['num_samples'] == 5 and entry['attack']['max_samples'] == 5
    assert entry['robust_top1'] == entry['top1']  # eps 0: nothing can change
    seeded = []
    for _ in range(2):  # random starts are seeded: the same command gives the same numbers
        assert run_main(attack_argv(root, checkpoint, results, '--attack-eps', '48/255', '--attack-random-start',
                                    '--attack-seed', '3')) == 0
        seeded.append(json.loads(results.read_text())['results']['folder'])
    assert seeded[0]['robust_top1'] == seeded[1]['robust_top1'] and seeded[0]['attack']['random_start'] is True


def test_an_image_list_chooses_the_images_and_their_order(tree, tmp_path, capsys):
    root, checkpoint = tree
    listed = ['sun/002.png', 'apple/000.png', 'sea/001.png']
    image_list = tmp_path / 'ids.txt'
    image_list.write_text('\n'.join(listed) + '\n')
    results = tmp_path / 'r.json'
    assert run_main(attack_argv(root, checkpoint, results, '--attack-eps', '64/255', '--attack-image-list',
                                str(image_list), '--max-samples', '2')) == 0
    entry = json.loads(results.read_text())['results']['folder']
    assert entry['num_samples'] == 2 and entry['attack']['first_samples'] == listed[:2]
    image_list.write_text('sun/002.png\nsun/999.png\n')
    assert run_main(attack_argv(root, checkpoint, results, '--attack-image-list', str(image_list))) == 2
    assert '1 of 2 listed images are not under' in capsys.readouterr().err


LAUNCHER = """
import sys
sys.path.insert(0, {tests!r})
sys.path.insert(0, {repo!r})
import adversarial_models
adversarial_models.register_tiny_net()
import validate
from robustcnn.cli import run_cli
run_cli(validate.main, sys.argv[1:], prog='validate.py')
"""


@pytest.mark.slow
def test_a_killed_attack_run_resumes_and_gives_the_same_numbers(tree, tmp_path):
    root, checkpoint = tree
    launcher = tmp_path / 'launch.py'
    launcher.write_text(LAUNCHER.format(tests=str(REPO / 'tests'), repo=str(REPO)))
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}

    def run(results: Path, **extra_env: str) -> subprocess.CompletedProcess:
        argv = attack_argv(root, checkpoint, results, '--attack-eps', '64/255', '--save-every', '1', '-b', '2')
        return subprocess.run([sys.executable, str(launcher), *argv], env={**env, **extra_env}, capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)

    argv = attack_argv(root, checkpoint, tmp_path / 'reference.json', '--attack-eps', '64/255', '-b', '2')
    assert run_main(argv) == 0  # the uninterrupted run, in this process
    results = tmp_path / 'killed.json'
    killed = run(results, ROBUSTCNN_KILL_AT='attack-batch:3')
    assert killed.returncode == -9, killed.stderr[-2000:]
    partial = tmp_path / 'killed.folder.attack.partial.json'
    [unit] = json.loads(partial.read_text())['units'].values()  # the evaluator's ResumeStore, one unit per attack
    assert unit['done'] == 6  # batches 1-3 saved, then the kill after batch 3
    resumed = run(results)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert 'resuming; the first 6 of 12 images were already attacked' in resumed.stderr
    expected = json.loads((tmp_path / 'reference.json').read_text())['results']['folder']
    entry = json.loads(results.read_text())['results']['folder']
    assert entry['resumed_samples'] == 6 and not partial.exists()
    for key in ('top1', 'robust_top1', 'num_samples', 'robust_top1_by_eps'):
        assert entry[key] == expected[key], key


def test_resume_records_round_trip_through_a_resume_store_and_refuse_another_attack():
    """The same record kept as one unit of the evaluator's generic ResumeStore (load/save/discard of named units)."""
    from robustcnn.adversarial.evaluation import AttackCounts, ResumeStoreUnit

    class Store:  # the ResumeStore interface: {unit name: {count name: int}}, saved and read back as JSON
        units: dict = {}

        def load(self):
            return json.loads(json.dumps(self.units))

        def save(self, units):
            self.units = dict(units)

        def discard(self):
            self.units = {}

    store = Store()
    counts = AttackCounts(scored=6, clean_correct=5, robust_correct=[3, 1], skipped=1)
    ResumeStoreUnit(store, {'attack': {'eps': [1, 2]}}).save(7, counts)
    assert ResumeStoreUnit(store, {'attack': {'eps': [1, 2]}}).load(2) == (7, counts)
    assert ResumeStoreUnit(store, {'attack': {'eps': [1, 3]}}).load(2) == (0, None)  # another attack starts over
    ResumeStoreUnit(store, {'attack': {'eps': [1, 2]}}).discard()
    assert store.units == {}


@pytest.mark.distributed
@pytest.mark.slow
def test_torchrun_attacks_each_image_once(tree, tmp_path):
    root, checkpoint = tree
    launcher = tmp_path / 'launch.py'
    launcher.write_text(LAUNCHER.format(tests=str(REPO / 'tests'), repo=str(REPO)))
    results = tmp_path / 'two.json'
    argv = attack_argv(root, checkpoint, results, '--attack-eps', '32/255,64/255', '-b', '4', '--device', 'cpu',
                       '--save-every', '1')  # 12 images: shards of 6, saved after each of the 2 common steps
    command = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port',
               str(29700 + os.getpid() % 1000), str(launcher), *argv]
    completed = subprocess.run(command, env={**os.environ, 'OMP_NUM_THREADS': '1'}, cwd=tmp_path,
                               capture_output=True, text=True, timeout=180)
    assert completed.returncode == 0, completed.stderr[-3000:]
    entry = json.loads(results.read_text())['results']['folder']
    clean, robust = reference_numbers(root, [32 / 255, 64 / 255], 5)
    assert entry['num_samples'] == 12
    assert entry['top1'] == pytest.approx(clean, abs=1e-3)
    assert [item['robust_top1'] for item in entry['robust_top1_by_eps']] == pytest.approx(robust, abs=1e-3)
    assert not (tmp_path / 'two.folder.attack.partial.json').exists()


@pytest.mark.parametrize('flags, message', [
    (['--attack', 'pgd', '--attack-eps', '4/0'], "cannot read '4/0' as a radius"),
    (['--attack', 'pgd', '--attack-eps', '8'], 'at most 1'),
    (['--attack', 'pgd', '--attack-eps', '1/255,1/255'], 'listed twice'),
    (['--attack-eps', '4/255'], 'attack settings without an attack'),
    (['--attack-seed', '2'], 'attack settings without an attack'),
    (['--attack', 'fgsm', '--attack-steps', '3'], 'exactly one step'),
    (['--attack', 'fgsm', '--attack-norm', 'l2'], 'L-inf attack'),
    (['--attack', 'autoattack', '--attack-steps', '10'], 'parameter-free'),
    (['--attack', 'pgd', '--attack-steps', '0'], 'at least 1'),
    (['--attack', 'pgd', '--max-samples', '0'], '--max-samples must be positive'),
    (['--attack', 'pgd', '--attack-image-list', 'no_such_list.txt'], '--attack-image-list file not found'),
    (['--attack', 'pgd', '--dataset', 'imagenet-c'], 'not run on imagenet-c'),
    (['--attack', 'pgd', '--decode-on-device'], 'not used with --attack'),
])
def test_bad_attack_arguments_are_one_line_errors_before_the_model_loads(tree, tmp_path, capsys, monkeypatch,
                                                                         flags, message):
    root, checkpoint = tree
    from robustcnn.benchmarks import runner

    def no_model(*args, **kwargs):
        raise AssertionError('the model was loaded')
    monkeypatch.setattr(runner, 'load_eval_model', no_model)
    monkeypatch.setattr(runner, 'load_checkpoint_file', no_model)
    argv = [str(root / 'val'), '--model', MODEL, '--checkpoint', str(checkpoint), *flags]
    if '--dataset' not in flags:
        argv += ['--dataset', 'folder']
    assert run_main(argv) == 2
    output = capsys.readouterr().err
    errors = [line for line in output.splitlines() if ' INFO ' not in line]  # log lines may come first
    assert len(errors) == 1 and errors[0].startswith('validate.py: error: ') and message in errors[0], output


# ---------------------------------------------------------------------------------------------------- training

def test_adversarial_batches_stay_in_the_pixel_ball_and_leave_the_parameters_alone():
    network = TinyNet(num_classes=4, seed=5)
    mean, std = torch.tensor(TINY_MEAN).view(1, -1, 1, 1), torch.tensor(TINY_STD).view(1, -1, 1, 1)
    pixels = images_with_saturated_pixels(count=4)
    images = (pixels - mean) / std
    targets = torch.tensor([0, 1, 2, 3])
    eps = 4 / 255
    adversary = AdversarialBatches(AdversarialTrainingSpec('pgd', eps, 3, 2 / 255, True), TINY_MEAN, TINY_STD,
                                   autocast=contextlib.nullcontext)
    loss_fn = torch.nn.CrossEntropyLoss()
    torch.manual_seed(1)
    attacked = adversary(network, images, targets, loss_fn)
    torch.manual_seed(1)
    assert torch.equal(adversary(network, images, targets, loss_fn), attacked)  # a function of the seeded RNG
    attacked_pixels = attacked * std + mean
    assert (attacked_pixels - pixels).abs().max().item() <= eps + 1e-6
    assert attacked_pixels.min().item() >= -1e-6 and attacked_pixels.max().item() <= 1 + 1e-6
    assert all(parameter.grad is None for parameter in network.parameters())
    with torch.no_grad():
        assert loss_fn(network(attacked), targets) > loss_fn(network(images), targets)


def test_adversarial_training_flags_are_checked_at_parse_time():
    from robustcnn.cli import UsageError
    from robustcnn.config import parse_train_args
    with pytest.raises(UsageError, match='at most 1'):
        parse_train_args(['data', '--adv-train', 'pgd', '--adv-eps', '4'])
    with pytest.raises(UsageError, match='one step'):
        parse_train_args(['data', '--adv-train', 'fgsm', '--adv-steps', '3'])
    with pytest.raises(UsageError, match='settings without --adv-train'):
        parse_train_args(['data', '--adv-steps', '3'])
    args = parse_train_args(['data', '--adv-train', 'fgsm', '--adv-eps', '8/255'])
    from robustcnn.adversarial.spec import adversarial_training_spec
    recipe = adversarial_training_spec(args)
    assert (recipe.steps, recipe.random_start) == (1, True)
    assert recipe.step_size == pytest.approx(1.25 * 8 / 255)  # Wong et al. (2020)


@pytest.mark.slow
def test_adversarial_training_resumes_bit_exactly(tmp_path):
    dataset = make_image_folders(tmp_path / 'data', train_per_class=4, val_per_class=2)
    base = [str(dataset), *TINY_FLAGS, '--workers', '0', '--epochs', '2', '--output', str(tmp_path),
            '--adv-train', 'pgd', '--adv-steps', '2', '--adv-eps', '8/255']
    reference = run_train_subprocess(base + ['--experiment', 'reference'])
    assert reference.returncode == 0, reference.stderr[-2000:]
    assert 'adversarial training: PGD-2' in reference.stderr
    arguments = base + ['--experiment', 'killed', '--resume', 'auto', '--recovery-interval', '1']
    killed = run_train_subprocess(arguments, ROBUSTCNN_KILL_AFTER_UPDATES='3')
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = run_train_subprocess(arguments)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert '3 updates done' in resumed.stderr
    expected = load_weights(tmp_path / 'reference' / 'last.pth.tar')
    assert_same_weights(load_weights(tmp_path / 'killed' / 'last.pth.tar'), expected)


DEVICE = os.environ.get('ROBUSTCNN_TEST_DEVICE') or ('cuda' if torch.cuda.is_available() else None)


@pytest.mark.cuda
@pytest.mark.skipif(DEVICE is None, reason='needs a CUDA device (ROBUSTCNN_TEST_DEVICE=cpu checks it on the CPU)')
def test_attack_on_the_device_fused_and_channels_last_matches_the_cpu():
    """validate.py's CUDA path: folded BatchNorm, channels-last, float32 gradients; bf16 only when asked."""
    import copy

    import timm

    import robustcnn  # noqa: F401
    torch.manual_seed(0)
    model = timm.create_model('robust_resnet_dw_pico', num_classes=4, patch_size=4).eval()
    pixels = images_with_saturated_pixels(count=4, size=32)
    labels = torch.tensor([0, 1, 2, 3])
    attack_spec = spec('pgd', 4 / 255, steps=3)
    on_cpu = build_attack(attack_spec, 4 / 255, PixelSpaceModel(model, TINY_MEAN, TINY_STD), 4)(pixels, labels)
    device_model = copy.deepcopy(model).fuse().to(DEVICE).to(memory_format=torch.channels_last)
    wrapper = PixelSpaceModel(device_model, TINY_MEAN, TINY_STD, channels_last=True)
    on_device = build_attack(attack_spec, 4 / 255, wrapper, 4)(pixels.to(DEVICE), labels.to(DEVICE))
    check_perturbation(on_device, pixels.to(DEVICE), 4 / 255, 'linf')
    # float32 everywhere: the same signed steps except where a gradient component is ~0
    assert (on_device.cpu() - on_cpu).abs().gt(1e-4).float().mean().item() < 0.02
    bf16 = PixelSpaceModel(device_model, TINY_MEAN, TINY_STD, channels_last=True, amp_dtype=torch.bfloat16)
    assert bf16(pixels.to(DEVICE)).dtype == torch.float32  # logits come back in float32 for the loss
