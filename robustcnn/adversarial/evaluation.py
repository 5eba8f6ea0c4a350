"""Robust accuracy over an evaluation set: clean top-1 and robust top-1 of the same images, resumable after a kill.

An image is robust at a radius when the model classifies it correctly both clean and after the attack (a clean
mistake is never robust: AutoAttack and RobustBench count this way). Only clean-correct images are attacked; in
eval mode an image's result does not depend on the others in its batch, so this changes no number, only the cost.

Order and resume: the images are put in one fixed order (:func:`attack_order`), cut to ``--max-samples``, and
sharded over processes with strided shards, so after every process has done ``k`` batches the finished images are
exactly the first ``k * batch * processes`` of the order. The counts of that prefix are saved atomically beside the
results file every ``--save-every`` batches; a restarted run with the same identity skips the prefix.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..checkpoint import atomic_write_text
from ..cli import UsageError
from ..data.folder import ClassFolderDataset
from ..data.transforms import EvalPreprocessing, build_eval_transform
from ..engine.evaluate import format_duration
from ..faults import kill_point
from .attacks import MIN_AUTOATTACK_CLASSES, PixelSpaceModel, attack_record, build_attack, check_perturbation
from .spec import AttackSpec

__all__ = ['attack_order', 'select_attack_samples', 'check_attack_request', 'attack_partial_path', 'AttackCounts',
           'evaluate_attack', 'run_attack']

_logger = logging.getLogger(__name__)


def attack_order(samples: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """Classes in turn: the first image of every class (in the dataset's sorted order), then every second, ...

    So ``--max-samples N`` covers the classes evenly (the first 5,000 of ImageNet's validation set are the first
    five file names of each of the 1,000 classes) instead of the first N/50 classes.
    """
    by_class: dict[int, list[tuple[str, int]]] = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    columns = list(by_class.values())
    ordered = []
    for position in range(max((len(column) for column in columns), default=0)):
        ordered.extend(column[position] for column in columns if position < len(column))
    return ordered


def select_attack_samples(samples: Sequence[tuple[str, int]], max_samples: int | None) -> list[tuple[str, int]]:
    ordered = attack_order(samples)
    return ordered if max_samples is None else ordered[:max_samples]


def check_attack_request(spec: AttackSpec, datasets: Sequence[str], device_kind: str, decode_on_device: bool) -> None:
    """Combinations that cannot work, refused before the model loads."""
    if 'imagenet-c' in datasets:
        raise UsageError('--attack is not run on imagenet-c (75 folders of corrupted copies); attack the clean '
                         'set, or one corruption folder with --dataset folder')
    if device_kind == 'xla':
        raise UsageError('--attack runs on cuda or cpu: attack loops stop and branch per image, which XLA would '
                         'recompile at every step; use --device cuda')
    if decode_on_device:
        raise UsageError('--decode-on-device is not used with --attack (attacks spend their time in gradients, '
                         'not decoding); drop it')


def attack_partial_path(results_file: str | None, dataset: str) -> Path | None:
    """Where finished images are recorded for resuming: beside --results-file (no results file: no resume)."""
    if not results_file:
        return None
    results = Path(results_file)
    return results.with_name(f'{results.stem}.{dataset}.attack.partial.json')


@dataclass
class AttackCounts:
    """Totals over all processes: images scored, clean top-1 correct, robust per radius, files that failed."""

    scored: int
    clean_correct: int
    robust_correct: list[int]
    skipped: int

    def as_dict(self) -> dict[str, Any]:
        return {'scored': self.scored, 'clean_correct': self.clean_correct,
                'robust_correct': list(self.robust_correct), 'skipped': self.skipped}

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> 'AttackCounts':
        items = [int(value) for value in values.cpu().tolist()]
        return cls(scored=items[0], clean_correct=items[1], skipped=items[2], robust_correct=items[3:])

    def tensor(self, device: Any) -> torch.Tensor:
        return torch.tensor([self.scored, self.clean_correct, self.skipped, *self.robust_correct], dtype=torch.long,
                            device=device)


def _load_partial(path: Path | None, identity: Mapping[str, Any], num_eps: int) -> tuple[int, AttackCounts | None]:
    if path is None or not path.is_file():
        return 0, None
    try:
        saved = json.loads(path.read_text(encoding='utf-8'))
        if saved.get('identity') != json.loads(json.dumps(dict(identity))):
            _logger.warning('attack partial results %s come from another model/attack/preprocessing; starting over',
                            path)
            return 0, None
        counts = saved['counts']
        result = AttackCounts(scored=int(counts['scored']), clean_correct=int(counts['clean_correct']),
                              robust_correct=[int(value) for value in counts['robust_correct']],
                              skipped=int(counts['skipped']))
        if len(result.robust_correct) != num_eps:
            raise ValueError('wrong number of radii')
        return int(saved['done']), result
    except (OSError, ValueError, KeyError, TypeError) as error:
        _logger.warning('ignoring unreadable attack partial results %s (%s); starting over', path, error)
        return 0, None


def _write_partial(path: Path, identity: Mapping[str, Any], done: int, counts: AttackCounts) -> None:
    text = json.dumps({'identity': dict(identity), 'done': done, 'counts': counts.as_dict()}, indent=1,
                      sort_keys=True)
    atomic_write_text(text + '\n', path)


def _batch_seed(seed: int, eps_index: int, first_position: int) -> int:
    """Random starts of one batch: a function of the attack seed, the radius and the batch's place in the order."""
    state = np.random.SeedSequence([seed, eps_index, first_position, 14]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 32 | int(state[1])) >> 1


def evaluate_attack(
        model: torch.nn.Module,
        samples: Sequence[tuple[str, int]],
        preprocessing: EvalPreprocessing,
        runtime: Any,
        spec: AttackSpec,
        *,
        label_subset: Sequence[int] | None = None,
        num_classes: int,
        batch_size: int = 64,
        workers: int = 0,
        pin_memory: bool = False,
        channels_last: bool = False,
        amp_dtype: torch.dtype | None = None,
        log_freq: int = 0,
        description: str = 'attack',
        partial_path: Path | None = None,
        identity: Mapping[str, Any] | None = None,
        save_every: int = 50,
) -> tuple[AttackCounts, int, float]:
    """Attack ``samples`` (already in attack order) at every radius of ``spec``.

    Returns the summed counts, how many images an earlier run had already finished, and the seconds spent.
    """
    from ..benchmarks.loader import build_eval_loader  # the evaluation sets' one loader (sharded, no padding)

    device = runtime.device
    identity = dict(identity or {})
    num_eps = len(spec.eps)
    done, saved = _load_partial(partial_path, identity, num_eps) if runtime.is_main else (0, None)
    shared = torch.tensor([done, *(saved.tensor('cpu').tolist() if saved else [0] * (3 + num_eps))],
                          dtype=torch.long, device=device)
    runtime.all_reduce_sum(shared)  # only the main process read the file: everyone continues from its view
    done = int(shared[0].item())
    carried = AttackCounts.from_tensor(shared[1:])
    if done:
        _logger.info('%s: resuming; the first %d of %d images were already attacked (%s)', description, done,
                     len(samples), partial_path)

    was_training = model.training
    model.eval()
    parameters_required = [parameter.requires_grad for parameter in model.parameters()]
    for parameter in model.parameters():
        parameter.requires_grad_(False)  # gradients with respect to the pixels only
    attacked = PixelSpaceModel(model, preprocessing.mean, preprocessing.std, label_subset=label_subset,
                               channels_last=channels_last, amp_dtype=amp_dtype if spec.autocast else None)
    attacks = [build_attack(spec, eps, attacked, num_classes) for eps in spec.eps]

    remaining = list(samples[done:])
    dataset = ClassFolderDataset(remaining, build_eval_transform(preprocessing), on_decode_error='skip')
    loader = build_eval_loader(dataset, batch_size, workers, runtime, pin_memory)
    world_size = runtime.world_size
    shortest = min(len(range(rank, len(remaining), world_size)) for rank in range(world_size))
    sync_limit = -(-shortest // batch_size)
    total_steps = len(loader)
    counts = torch.zeros(3 + num_eps, dtype=torch.long, device=device)  # scored, clean correct, skipped, robust...
    start = time.perf_counter()
    step = 0
    local_images = 0

    def summed() -> AttackCounts:
        total = AttackCounts.from_tensor(runtime.all_reduce_sum(counts.clone()))
        return AttackCounts(scored=total.scored + carried.scored, clean_correct=total.clean_correct +
                            carried.clean_correct, skipped=total.skipped + carried.skipped,
                            robust_correct=[a + b for a, b in zip(total.robust_correct, carried.robust_correct)])

    try:
        for step, batch in enumerate(loader, start=1):
            counts[2] += int(batch.num_failed)
            if batch.images.numel():
                pixels = batch.images.to(device, non_blocking=True).float().div_(255.0)
                targets = batch.targets.to(device, non_blocking=True)
                with torch.no_grad():
                    clean_correct = attacked(pixels).argmax(dim=1).eq(targets)
                counts[0] += targets.numel()
                counts[1] += clean_correct.sum()
                to_attack = clean_correct.nonzero().flatten()
                # the batch's first place in the order, as the strided sampler deals it (failed files included)
                first_position = done + runtime.rank + world_size * (step - 1) * batch_size
                for eps_index, (eps, attack) in enumerate(zip(spec.eps, attacks)):
                    if to_attack.numel() == 0:
                        continue
                    torch.manual_seed(_batch_seed(spec.seed, eps_index, first_position))
                    clean = pixels[to_attack]
                    adversarial = attack(clean, targets[to_attack]).detach()
                    check_perturbation(adversarial, clean, eps, spec.norm)
                    with torch.no_grad():
                        still_right = attacked(adversarial).argmax(dim=1).eq(targets[to_attack])
                    counts[3 + eps_index] += still_right.sum()
                local_images += targets.numel()
            if partial_path is not None and save_every and step % save_every == 0 and step <= sync_limit:
                finished = min(done + step * batch_size * world_size, len(samples))
                totals = summed()
                if runtime.is_main:
                    _write_partial(partial_path, identity, finished, totals)
            if log_freq and runtime.is_main and (step % log_freq == 0 or step == total_steps):
                elapsed = time.perf_counter() - start
                scored = max(int(counts[0].item()), 1)
                robust = ', '.join(f'{text} {100.0 * counts[3 + index].item() / scored:.2f}'
                                   for index, text in enumerate(spec.eps_text))
                _logger.info('%s [%d/%d] %.1f images/s, elapsed %s, ETA %s, top1 %.2f, robust_top1 %s '
                             '(this process)', description, step, total_steps,
                             local_images * world_size / max(elapsed, 1e-9), format_duration(elapsed),
                             format_duration(elapsed / step * (total_steps - step)),
                             100.0 * counts[1].item() / scored, robust)
            kill_point('attack-batch')
    finally:
        for parameter, required in zip(model.parameters(), parameters_required):
            parameter.requires_grad_(required)
        model.train(was_training)
    return summed(), done, time.perf_counter() - start


def run_attack(context: Any, dataset: str, prepared: Any, preprocessing: EvalPreprocessing,
               preprocessing_record: Mapping[str, Any], identity: Mapping[str, Any]) -> dict[str, Any]:
    """validate.py's results entry for one evaluation set under ``context.request.attack``.

    ``context``: the runner's evaluation context (request, runtime, model, amp_dtype, workers).
    """
    request, runtime = context.request, context.runtime
    spec: AttackSpec = request.attack
    num_classes = len(prepared.label_subset) if prepared.label_subset is not None else _model_outputs(context.model)
    if spec.attack == 'autoattack' and num_classes < MIN_AUTOATTACK_CLASSES:
        raise UsageError(f'--attack autoattack needs at least {MIN_AUTOATTACK_CLASSES} scored classes (APGD-T\'s '
                         f'targeted DLR loss), {dataset} scores {num_classes}; use --attack pgd')
    samples = select_attack_samples(prepared.samples, spec.max_samples)
    record = attack_record(spec, num_classes, request.amp_dtype)
    record['order'] = 'classes in turn (attack_order), first --max-samples'
    partial_path = attack_partial_path(request.results_file, dataset)
    full_identity = {**identity, 'dataset': dataset, 'attack': record, 'num_samples': len(samples),
                     'channels_last': request.channels_last}
    _logger.info('%s: %s attack (%s, eps %s) on %d of %d images, preprocessing %s', dataset, spec.attack, spec.norm,
                 ', '.join(spec.eps_text), len(samples), len(prepared.samples), preprocessing)
    counts, resumed, seconds = evaluate_attack(
        context.model, samples, preprocessing, runtime, spec, label_subset=prepared.label_subset,
        num_classes=num_classes, batch_size=request.batch_size, workers=context.workers,
        pin_memory=request.pin_memory, channels_last=request.channels_last, amp_dtype=context.amp_dtype,
        log_freq=request.log_freq, description=f'{dataset} {spec.attack}', partial_path=partial_path,
        identity=full_identity, save_every=request.group_sync_every)
    scored = counts.scored
    percent = (lambda value: 100.0 * value / scored) if scored else (lambda value: float('nan'))
    by_eps = [{'eps': eps, 'eps_text': text, 'robust_top1': percent(correct)}
              for eps, text, correct in zip(spec.eps, spec.eps_text, counts.robust_correct)]
    strongest = max(range(len(spec.eps)), key=lambda index: spec.eps[index])
    entry: dict[str, Any] = {
        'top1': percent(counts.clean_correct),
        'robust_top1': by_eps[strongest]['robust_top1'],
        'robust_top1_by_eps': by_eps,
        'attack': record,
        'num_samples': scored,
        'skipped_files': counts.skipped,
        'resumed_samples': resumed,
        'preprocessing': dict(preprocessing_record),
        'elapsed_seconds': seconds,
    }
    if prepared.label_subset is not None:
        entry['label_subset_size'] = len(prepared.label_subset)
    _logger.info('%s: top1 %.2f, robust_top1 %s over %d images', dataset, entry['top1'],
                 ', '.join(f'{item["eps_text"]}: {item["robust_top1"]:.2f}' for item in by_eps), scored)
    if runtime.is_main and partial_path is not None and partial_path.exists():
        partial_path.unlink()  # complete: the results file now holds everything
    return entry


def _model_outputs(model: torch.nn.Module) -> int:
    outputs = getattr(model, 'num_classes', None)
    if isinstance(outputs, int) and outputs > 0:
        return outputs
    head = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    return head[-1].out_features if head else 0
