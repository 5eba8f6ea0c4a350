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

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..atomic import atomic_write_text
from ..cli import UsageError
from ..data.folder import ClassFolderDataset
from ..data.transforms import EvalPreprocessing, build_eval_transform
from ..engine.evaluate import format_duration
from ..faults import kill_point
from ..interrupts import until_interrupted
from .attacks import MIN_AUTOATTACK_CLASSES, PixelSpaceModel, attack_record, build_attack, check_perturbation
from .spec import AttackSpec

__all__ = ['attack_order', 'select_attack_samples', 'check_attack_request', 'attack_partial_path', 'AttackCounts',
           'PartialFile', 'ResumeStoreUnit', 'evaluate_attack', 'run_attack']

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


def select_attack_samples(samples: Sequence[tuple[str, int]], max_samples: int | None, root: str | Path | None = None,
                          image_list: str | None = None) -> list[tuple[str, int]]:
    """The images to attack, in order: those ``image_list`` names (paths relative to ``root``, in the file's order),
    else :func:`attack_order`; then the first ``max_samples``."""
    if image_list is None:
        ordered = attack_order(samples)
    else:
        by_path = {Path(path).relative_to(root).as_posix(): (path, label) for path, label in samples}
        names = [line.strip() for line in Path(image_list).read_text(encoding='utf-8').splitlines() if line.strip()]
        missing = [name for name in names if name not in by_path]
        if missing or not names:
            raise UsageError(f'--attack-image-list {image_list}: {len(missing)} of {len(names)} listed images are not '
                             f'under {root} (e.g. {", ".join(missing[:3]) or "the file is empty"}); paths are '
                             f'<class folder>/<file> relative to the dataset\'s image folder')
        if len(set(names)) != len(names):
            raise UsageError(f'--attack-image-list {image_list} names an image twice')
        ordered = [by_path[name] for name in names]
    return ordered if max_samples is None else ordered[:max_samples]


def check_attack_request(spec: AttackSpec, datasets: Sequence[str], device_kind: str, decode_on_device: bool) -> None:
    """Combinations that cannot work, refused before the model loads."""
    if spec.image_list is not None and not Path(spec.image_list).is_file():
        raise UsageError(f'--attack-image-list file not found: {spec.image_list}')
    if 'imagenet-c' in datasets:
        raise UsageError('--attack is not run on imagenet-c (75 folders of corrupted copies); attack the clean '
                         'set, or one corruption folder with --dataset folder (with --suite: pick the sets with '
                         '--datasets)')
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


class PartialFile:
    """The finished prefix and its counts in a small JSON file beside the results file (self-contained, so it works
    before and after the evaluator's generic ``ResumeStore``; see :class:`ResumeStoreUnit`)."""

    def __init__(self, path: Path, identity: Mapping[str, Any]) -> None:
        self.path = path
        self.identity = json.loads(json.dumps(dict(identity)))  # compared as it will be read back

    def load(self, num_eps: int) -> tuple[int, AttackCounts | None]:
        if not self.path.is_file():
            return 0, None
        try:
            saved = json.loads(self.path.read_text(encoding='utf-8'))
            if saved.get('identity') != self.identity:
                _logger.warning('attack partial results %s come from another model/attack/preprocessing; '
                                'starting over', self.path)
                return 0, None
            return _parse_unit(saved['unit'], num_eps)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            _logger.warning('ignoring unreadable attack partial results %s (%s); starting over', self.path, error)
            return 0, None

    def save(self, done: int, counts: AttackCounts) -> None:
        text = json.dumps({'identity': self.identity, 'unit': _unit(done, counts)}, indent=1, sort_keys=True)
        atomic_write_text(text + '\n', self.path)

    def discard(self) -> None:
        if self.path.exists():
            self.path.unlink()


class ResumeStoreUnit:
    """The same record kept as one unit of a ``ResumeStore`` (load() -> {unit: {name: int}}, save(units),
    discard(); robustcnn/benchmarks/context.py after issue 12). The store's identity covers the model,
    preprocessing, data folder and label space; the unit's name adds a digest of the attack and its image list."""

    def __init__(self, store: Any, attack_identity: Mapping[str, Any]) -> None:
        digest = hashlib.sha256(json.dumps(attack_identity, sort_keys=True, default=str).encode('utf-8'))
        self.store = store
        self.unit_name = f'attack-{digest.hexdigest()[:16]}'

    def load(self, num_eps: int) -> tuple[int, AttackCounts | None]:
        unit = self.store.load().get(self.unit_name)
        if not unit:
            return 0, None
        try:
            return _parse_unit(unit, num_eps)
        except (ValueError, KeyError, TypeError) as error:
            _logger.warning('ignoring unreadable attack resume unit %s (%s); starting over', self.unit_name, error)
            return 0, None

    def save(self, done: int, counts: AttackCounts) -> None:
        self.store.save({self.unit_name: _unit(done, counts)})

    def discard(self) -> None:
        self.store.discard()


def _unit(done: int, counts: AttackCounts) -> dict[str, int]:
    """Flat integers (what a ResumeStore unit holds): the prefix length and its counts."""
    unit = {'done': done, 'scored': counts.scored, 'clean_correct': counts.clean_correct, 'skipped': counts.skipped}
    unit.update({f'robust_correct_{index}': value for index, value in enumerate(counts.robust_correct)})
    return unit


def _parse_unit(unit: Mapping[str, Any], num_eps: int) -> tuple[int, AttackCounts]:
    counts = AttackCounts(scored=int(unit['scored']), clean_correct=int(unit['clean_correct']),
                          skipped=int(unit['skipped']),
                          robust_correct=[int(unit[f'robust_correct_{index}']) for index in range(num_eps)])
    return int(unit['done']), counts


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
        resume: PartialFile | ResumeStoreUnit | None = None,
        save_every: int = 50,
) -> tuple[AttackCounts, int, float]:
    """Attack ``samples`` (already in attack order) at every radius of ``spec``.

    Returns the summed counts, how many images an earlier run had already finished, and the seconds spent.
    """
    from ..data.loader import build_eval_loader  # the evaluation sets' one loader (sharded, no padding)

    device = runtime.device
    num_eps = len(spec.eps)
    done, saved = resume.load(num_eps) if (resume is not None and runtime.is_main) else (0, None)
    shared = torch.tensor([done, *(saved.tensor('cpu').tolist() if saved else [0] * (3 + num_eps))],
                          dtype=torch.long, device=device)
    runtime.all_reduce_sum(shared)  # only the main process read the file: everyone continues from its view
    done = int(shared[0].item())
    carried = AttackCounts.from_tensor(shared[1:])
    if done:
        _logger.info('%s: resuming; the first %d of %d images were already attacked', description, done,
                     len(samples))

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
        for step, batch in enumerate(until_interrupted(loader), start=1):
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
            if resume is not None and save_every and step % save_every == 0 and step <= sync_limit:
                finished = min(done + step * batch_size * world_size, len(samples))
                totals = summed()  # a collective: every process takes this step
                if runtime.is_main:
                    resume.save(finished, totals)
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
               preprocessing_record: Mapping[str, Any], identity: Mapping[str, Any] | None = None,
               store: Any = None) -> dict[str, Any]:
    """validate.py's results entry for one evaluation set under ``context.request.attack``.

    ``context``: the runner's evaluation context (request, runtime, model, amp_dtype, workers). Resume: into
    ``store`` (an evaluator ``ResumeStore``) when given, else a :class:`PartialFile` beside --results-file whose
    identity is ``identity`` (model, checkpoint, preprocessing) plus the attack.
    """
    request, runtime = context.request, context.runtime
    spec: AttackSpec = request.attack
    num_classes = len(prepared.label_subset) if prepared.label_subset is not None else _model_outputs(context.model)
    if spec.attack == 'autoattack' and num_classes < MIN_AUTOATTACK_CLASSES:
        raise UsageError(f'--attack autoattack needs at least {MIN_AUTOATTACK_CLASSES} scored classes (APGD-T\'s '
                         f'targeted DLR loss), {dataset} scores {num_classes}; use --attack pgd')
    samples = select_attack_samples(prepared.samples, spec.max_samples, prepared.root, spec.image_list)
    record = attack_record(spec, num_classes, context.settings.amp_dtype)
    record['order'] = (f'--attack-image-list {spec.image_list}' if spec.image_list else
                       'classes in turn (the first file of every class, then the second, ...)')
    record['first_samples'] = [Path(path).relative_to(prepared.root).as_posix() for path, _ in samples[:5]]
    attack_identity = {'dataset': dataset, 'attack': record, 'num_samples': len(samples),
                       'first_samples': [path for path, _ in samples[:3]],
                       'channels_last': context.settings.channels_last}
    resume: PartialFile | ResumeStoreUnit | None = None
    if store is not None:
        resume = ResumeStoreUnit(store, attack_identity)
    elif (partial_path := attack_partial_path(request.results_file, dataset)) is not None:
        resume = PartialFile(partial_path, {**dict(identity or {}), **attack_identity})
    _logger.info('%s: %s attack (%s, eps %s) on %d of %d images, preprocessing %s', dataset, spec.attack, spec.norm,
                 ', '.join(spec.eps_text), len(samples), len(prepared.samples), preprocessing)
    counts, resumed, seconds = evaluate_attack(
        context.model, samples, preprocessing, runtime, spec, label_subset=prepared.label_subset,
        num_classes=num_classes, batch_size=context.settings.batch_size, workers=context.workers,
        pin_memory=request.pin_memory, channels_last=context.settings.channels_last, amp_dtype=context.amp_dtype,
        log_freq=request.log_freq, description=f'{dataset} {spec.attack}', resume=resume,
        save_every=request.group_sync_every)
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
    if runtime.is_main and resume is not None:
        resume.discard()  # complete: the results file now holds everything
    return entry


def _model_outputs(model: torch.nn.Module) -> int:
    outputs = getattr(model, 'num_classes', None)
    if isinstance(outputs, int) and outputs > 0:
        return outputs
    head = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    return head[-1].out_features if head else 0
