"""The recipe objects, the data order and the training step, checked in-process on tiny models and data."""
from __future__ import annotations

import copy
import math
from collections import Counter
from pathlib import Path

import pytest
import timm
import torch
from timm.data.auto_augment import RandAugment
from timm.data.distributed_sampler import RepeatAugSampler
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation
from timm.loss import SoftTargetCrossEntropy

import robustcnn  # noqa: F401  (registers the models)
from robustcnn.config import parse_train_args
from robustcnn.data.loader import EvalBatch
from robustcnn.data.train_data import SeededSampler, build_train_loader, build_train_transform
from robustcnn.engine.checkpointing import capture_rng_state, restore_rng_state
from robustcnn.engine.runtime import Runtime
from robustcnn.engine.train_loop import NonFiniteGuard, NonFiniteLossError, OptimizerStep, TrainingSetup, \
    train_one_epoch
from robustcnn.engine.trainer import build_recipe

from helpers_train import make_image_folders

CONFIG = Path(__file__).resolve().parents[1] / 'configs' / 'robust_resnet_dw_small.yaml'
CPU = Runtime(kind='cpu', device=torch.device('cpu'))


@pytest.fixture(scope='module')
def recipe_args():
    return parse_train_args(['/data', '--config', str(CONFIG)])


def test_optimizer_is_adamw_without_decay_on_biases_and_1d_parameters(recipe_args):
    model = timm.create_model('robust_resnet_dw_pico', num_classes=4)
    recipe = build_recipe(recipe_args, model, num_classes=4, world_size=8, updates_per_epoch=10)
    optimizer = recipe.optimizer
    assert isinstance(optimizer, torch.optim.AdamW)
    assert recipe.learning_rate == pytest.approx(1e-3) and recipe.total_batch_size == 1024
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    decay = {group['weight_decay']: [names[id(p)] for p in group['params']] for group in optimizer.param_groups}
    assert set(decay) == {0.0, 0.05}
    parameters = dict(model.named_parameters())
    assert decay[0.0] and all(parameters[name].ndim <= 1 for name in decay[0.0])
    assert all(name.endswith('.bias') or parameters[name].ndim == 1 for name in decay[0.0])
    assert decay[0.05] and all(parameters[name].ndim > 1 for name in decay[0.05])
    assert len(decay[0.0]) + len(decay[0.05]) == len(parameters)
    assert all(group['eps'] == 1e-8 for group in optimizer.param_groups)


def test_schedule_warms_up_from_1e6_then_follows_the_cosine(recipe_args):
    model = timm.create_model('robust_resnet_dw_pico', num_classes=4)
    recipe = build_recipe(recipe_args, model, num_classes=4, world_size=8, updates_per_epoch=10)
    assert recipe.num_epochs == 300
    peak, floor = 1e-3, 1e-5

    def lr_at(epoch: int) -> float:
        recipe.scheduler.step(epoch)
        return recipe.optimizer.param_groups[0]['lr']

    assert lr_at(0) == pytest.approx(1e-6)
    assert lr_at(1) == pytest.approx(1e-6 + (peak - 1e-6) / 5)        # linear warm-up over 5 epochs
    for epoch in (5, 100, 150, 299):
        expected = floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * epoch / 300))
        assert lr_at(epoch) == pytest.approx(expected, rel=1e-9)
    assert lr_at(150) == pytest.approx((peak + floor) / 2)
    assert lr_at(300) == pytest.approx(floor)


def test_loss_mixup_and_augmentation_are_the_recipe(recipe_args, tmp_path):
    model = timm.create_model('robust_resnet_dw_pico', num_classes=4)
    recipe = build_recipe(recipe_args, model, num_classes=4, world_size=1, updates_per_epoch=10)
    assert isinstance(recipe.loss_fn, SoftTargetCrossEntropy)
    mixup = recipe.mixup
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.label_smoothing, mixup.num_classes) == (0.8, 1.0, 0.1, 4)
    transform = build_train_transform(recipe_args, {'input_size': (3, 224, 224), 'interpolation': 'bicubic',
                                                    'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225)})
    steps = list(transform.transforms)
    crop = next(step for step in steps if isinstance(step, RandomResizedCropAndInterpolation))
    assert crop.scale == (0.08, 1.0) and crop.size == (224, 224)
    assert str(crop.interpolation).lower().endswith('bicubic')
    augment = next(step for step in steps if isinstance(step, RandAugment))
    assert augment.num_layers == 2 and len(augment.ops) == 15
    assert all(op.magnitude == 9 and op.magnitude_std == 0.5 for op in augment.ops)
    erasing = next(step for step in steps if isinstance(step, RandomErasing))
    assert erasing.probability == 0.25 and erasing.mode == 'pixel'


@pytest.mark.parametrize('policy', ['rand-m10-mstd0-n1-inc1', 'augmix-m10-mstd0-w1-d1', 'v0'])
def test_posterize_to_zero_bits_gives_black_instead_of_a_crash(recipe_args, policy):
    """At magnitude 10 timm's PosterizeIncreasing keeps 0 bits, which Pillow 13 refuses; older Pillow made the
    image black. The paper's recipe (m9, std 0.5) reaches magnitude 10 about once per 800 images."""
    import random

    import numpy as np
    from PIL import Image
    from timm.data.auto_augment import AugmentOp

    from robustcnn.data.train_data import posterize_keeping_zero_bits

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    assert np.array(posterize_keeping_zero_bits(image, 0)).max() == 0
    assert np.array_equal(np.array(posterize_keeping_zero_bits(image, 2)), np.array(image) & 0b11000000)
    args = parse_train_args(['/data', '--config', str(CONFIG), '--aa', policy])
    transform = build_train_transform(args, {'input_size': (3, 16, 16), 'interpolation': 'bicubic',
                                             'mean': (0.5,) * 3, 'std': (0.5,) * 3})
    stages = list(transform.transforms)
    ops = [op for stage in stages for op in list(getattr(stage, 'ops', None) or [])
           + [op for sub in getattr(stage, 'policy', None) or [] for op in sub]]
    posterize_ops = [op for op in ops if isinstance(op, AugmentOp) and op.name.startswith('Posterize')]
    assert posterize_ops and all(op.aug_fn is posterize_keeping_zero_bits for op in posterize_ops)
    if policy.startswith('rand'):
        zero_bits = next(op for op in posterize_ops if op.name == 'PosterizeIncreasing')
        zero_bits.prob = 1.0
        random.seed(0)
        assert np.array(zero_bits(image)).max() == 0
        for seed in range(200):  # the whole pipeline, posterize chosen about once in 15
            random.seed(seed)
            assert transform(image).shape == (3, 16, 16)


def test_repeated_augmentation_is_used_on_a_single_device(recipe_args, tmp_path):
    data = make_image_folders(tmp_path, train_per_class=12, val_per_class=1, size=16)
    args = parse_train_args([str(data), '--config', str(CONFIG), '--batch-size', '8', '--workers', '0'])
    loader = build_train_loader(args, data / 'train', {name: i for i, name in enumerate(sorted(
        p.name for p in (data / 'train').iterdir()))}, transform=None, num_replicas=1, rank=0)
    sampler = loader.sampler
    assert isinstance(sampler.base, RepeatAugSampler)
    assert (sampler.base.num_repeats, sampler.base.num_replicas) == (3, 1)
    sampler.set_epoch(0)
    items = list(sampler)
    assert len(items) == 48
    counts = Counter(index for index, _ in items)
    assert len(counts) == 16 and set(counts.values()) == {3}       # 48 draws = 16 images x 3 augmentations
    assert len({seed for _, seed in items}) == 48                   # every repeat is augmented differently


def test_epoch_order_is_a_function_of_seed_and_epoch_and_resume_skips_exactly(tmp_path):
    dataset = list(range(50))
    first, second = SeededSampler(dataset, 2, 1, seed=5, aug_repeats=3), SeededSampler(dataset, 2, 1, seed=5,
                                                                                          aug_repeats=3)
    first.set_epoch(4)
    second.set_epoch(4)
    assert list(first) == list(second)
    second.set_epoch(5)
    assert list(first) != list(second)
    other_seed = SeededSampler(dataset, 2, 1, seed=6, aug_repeats=3)
    other_seed.set_epoch(4)
    assert [i for i, _ in first] != [i for i, _ in other_seed]
    full = list(first)
    first.set_start(num_batches=3, batch_size=4)
    assert list(first) == full[12:] and len(first) == len(full) - 12
    plain = SeededSampler(dataset, 1, 0, seed=5, aug_repeats=0)
    plain.set_epoch(0)
    assert sorted(index for index, _ in plain) == dataset


def test_augmented_batches_do_not_depend_on_the_number_of_workers(tmp_path):
    data = make_image_folders(tmp_path, train_per_class=4, val_per_class=1, size=32)
    batches = {}
    for workers in (0, 2):
        args = parse_train_args([str(data), '--img-size', '32', '--batch-size', '4', '--workers', str(workers),
                                 '--aug-repeats', '2'])
        transform = build_train_transform(args, {'input_size': (3, 32, 32), 'interpolation': 'bicubic',
                                                 'mean': (0.5,) * 3, 'std': (0.5,) * 3})
        classes = {name: i for i, name in enumerate(sorted(p.name for p in (data / 'train').iterdir()))}
        loader = build_train_loader(args, data / 'train', classes, transform, num_replicas=1, rank=0)
        loader.sampler.set_epoch(1)
        batches[workers] = [batch.images for batch in loader]
    assert len(batches[0]) == 4
    for without_workers, with_workers in zip(batches[0], batches[2]):
        assert torch.equal(without_workers, with_workers)


class _ListLoader(list):
    """A list of EvalBatch standing in for a DataLoader."""


def _batches(generator: torch.Generator, sizes: list[int]) -> _ListLoader:
    return _ListLoader(EvalBatch(torch.randn(size, 6, generator=generator),
                                 torch.randint(0, 3, (size,), generator=generator), torch.arange(size), 0,
                                 torch.empty(0, dtype=torch.long))
                       for size in sizes)


def test_gradient_accumulation_equals_the_large_batch_including_the_epoch_remainder():
    generator = torch.Generator().manual_seed(0)
    loader = _batches(generator, [4, 4, 4, 4, 4])            # 5 micro-batches, 2 per update: groups 2 + 2 + 1
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    reference = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    reference.load_state_dict(model.state_dict())

    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    setup = TrainingSetup(model, loader, optimizer, torch.nn.CrossEntropyLoss(), CPU, num_batches=len(loader),
                          accum_steps=2, log_interval=100)
    result = train_one_epoch(setup, epoch=0)
    assert result.num_updates == 3 and result.num_samples == 20

    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
    for group in ([0, 1], [2, 3], [4]):                      # one step on each concatenated group
        images = torch.cat([loader[i].images for i in group])
        targets = torch.cat([loader[i].targets for i in group])
        reference_optimizer.zero_grad()
        torch.nn.functional.cross_entropy(reference(images), targets).backward()
        reference_optimizer.step()
    for parameter, expected in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(parameter, expected, rtol=1e-5, atol=1e-6)


def test_a_non_finite_loss_stops_training():
    loader = _batches(torch.Generator().manual_seed(0), [4, 4, 4])
    model = torch.nn.Linear(6, 3)
    with torch.no_grad():
        model.weight[0, 0] = float('nan')
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    saved = []
    with pytest.raises(NonFiniteLossError, match='NaN or infinite in epoch 2'):
        train_one_epoch(TrainingSetup(model, loader, optimizer, torch.nn.CrossEntropyLoss(), CPU, num_batches=3,
                                      log_interval=100, recovery_interval=1),
                        epoch=2, save_recovery=lambda *a: saved.append(a))
    assert saved == []                                       # nothing was saved after the loss went bad


@pytest.mark.parametrize('poisoned_update,saved_before', [(3, 2), (2, 1)])
def test_weights_made_non_finite_by_an_update_are_never_saved(poisoned_update, saved_before):
    """The loss of every batch is finite, but an update overflows the weights: at the epoch's end (the epoch
    checkpoint comes next) or before a recovery save, training stops instead of saving weights no resume survives."""
    loader = _batches(torch.Generator().manual_seed(0), [4, 4, 4])
    model = torch.nn.Linear(6, 3)

    class OverflowingSGD(torch.optim.SGD):
        updates = 0

        def step(self, closure=None):
            result = super().step(closure)
            OverflowingSGD.updates += 1
            if OverflowingSGD.updates == poisoned_update:
                with torch.no_grad():
                    model.weight[1, 2] = float('inf')
            return result

    saved = []
    with pytest.raises(NonFiniteLossError, match=f'weights became NaN or infinite in epoch 2 in the update at batch '
                                                 f'{poisoned_update}/3') as error:
        train_one_epoch(TrainingSetup(model, loader, OverflowingSGD(model.parameters(), lr=0.1),
                                      torch.nn.CrossEntropyLoss(), CPU, num_batches=3, log_interval=100,
                                      recovery_interval=1),
                        epoch=2, save_recovery=lambda *a: saved.append(a))
    assert [entry[0] for entry in saved] == list(range(1, saved_before + 1))  # only weights before the overflow
    assert error.value.batch_index == poisoned_update  # recovery files from this batch on hold the bad weights


def test_accumulation_groups_count_from_the_epoch_start_and_the_last_holds_the_remainder():
    model = torch.nn.Linear(2, 2)
    setup = TrainingSetup(model, [], torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.CrossEntropyLoss(), CPU,
                          num_batches=7, accum_steps=3)
    updates = OptimizerStep(setup, num_updates=0)
    assert [updates.group_size(index) for index in range(7)] == [3, 3, 3, 3, 3, 3, 1]
    assert [index for index in range(7) if updates.is_update(index)] == [2, 5, 6]
    assert setup.updates_per_epoch == 3


def test_float16_scaling_clips_the_true_gradients_and_the_schedule_follows_every_update():
    """With a GradScaler the gradients are unscaled before they are clipped (clipping the scaled ones would clip
    65536 times too hard), so the update is the unscaled clipped one, bit for bit (the scale is a power of two)."""
    from timm.scheduler import create_scheduler_v2
    torch.manual_seed(0)
    images, targets = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    model = torch.nn.Linear(6, 3)
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler, _ = create_scheduler_v2(optimizer, sched='cosine', num_epochs=2, warmup_epochs=0,
                                       step_on_epochs=False, updates_per_epoch=4)
    setup = TrainingSetup(model, [], optimizer, torch.nn.CrossEntropyLoss(), CPU, num_batches=4, scheduler=scheduler,
                          scaler=torch.amp.GradScaler('cpu'), clip_grad=0.1)
    updates = OptimizerStep(setup, num_updates=4)
    updates.backward(torch.nn.functional.cross_entropy(model(images), targets), batch_index=0)
    updates.step()

    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
    torch.nn.functional.cross_entropy(reference(images), targets).backward()
    assert torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.1) > 0.1  # the clipping is in effect
    reference_optimizer.step()
    for parameter, expected in zip(model.parameters(), reference.parameters()):
        assert torch.equal(parameter, expected)
    assert all(parameter.grad is None for parameter in model.parameters())
    assert updates.num_updates == 5
    # cosine over 8 updates from 0.5 to 0, at update 5
    assert optimizer.param_groups[0]['lr'] == pytest.approx(0.25 * (1 + math.cos(math.pi * 5 / 8)))


def test_the_guard_names_the_first_non_finite_loss_and_looks_at_the_weights_before_a_save():
    weight = torch.nn.Parameter(torch.ones(3))
    guard = NonFiniteGuard(CPU, [weight], epoch=4, num_batches=10)
    for index, loss in enumerate([1.0, 2.0, float('inf'), float('nan')]):
        guard.observe(torch.tensor(loss), index)
    with pytest.raises(NonFiniteLossError, match='loss became NaN or infinite in epoch 4 at batch 3/10') as error:
        guard.check()
    assert error.value.batch_index == 2

    guard = NonFiniteGuard(CPU, [weight], epoch=4, num_batches=10)
    guard.observe(torch.tensor(0.5), 0)
    with torch.no_grad():
        weight[1] = float('nan')
    guard.check()  # the losses are finite; the weights are looked at only before a save
    with pytest.raises(NonFiniteLossError, match='weights became NaN or infinite in epoch 4 in the update at batch '
                                                 '6/10') as error:
        guard.check(weights_after_batch=5)
    assert error.value.batch_index == 6  # recovery files from batch 6 on hold these weights


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random
    import numpy as np
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.save({'rng': state}, tmp_path / 'rng.pth')
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_state(torch.load(tmp_path / 'rng.pth', weights_only=True)['rng'])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_unreadable_training_images_are_replaced_named_and_counted(tmp_path, caplog):
    import numpy as np
    data = make_image_folders(tmp_path, train_per_class=4, val_per_class=1, size=16)
    (data / 'train' / 'sea' / '001.png').write_bytes(b'not an image at all')
    args = parse_train_args([str(data), '--batch-size', '4', '--workers', '0', '--aug-repeats', '0'])
    classes = {name: i for i, name in enumerate(sorted(p.name for p in (data / 'train').iterdir()))}

    def to_tensor(image):
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)

    loader = build_train_loader(args, data / 'train', classes, to_tensor, num_replicas=1, rank=0)
    loader.sampler.set_epoch(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    with caplog.at_level('WARNING'):
        result = train_one_epoch(TrainingSetup(model, loader, torch.optim.SGD(model.parameters(), lr=0.1),
                                               torch.nn.CrossEntropyLoss(), CPU, num_batches=len(loader),
                                               log_interval=100), epoch=0)
    assert result.failed_images == 1 and result.num_samples == 16   # batch sizes stay full
    assert 'sea/001.png' in caplog.text
    assert 'epoch 0: 1 unreadable image file(s) were replaced' in caplog.text
