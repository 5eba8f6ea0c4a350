"""The training run: wire data, model, recipe, loop, validation and checkpoints together (``train.py`` calls this).

Order of work is chosen so that user mistakes fail fast: arguments, then the data folders, then the model, then
the resume checkpoint, all before the first batch.
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import timm
from timm.data import Mixup, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

from .. import __version__
from ..atomic import atomic_write_text
from ..checkpoint import CheckpointError, CheckpointMetadata, load_checkpoint_file, load_model_weights
from ..cli import UsageError, setup_logging
from ..config import args_to_yaml, effective_learning_rate, total_batch_size
from ..data.folder import ClassFolderDataset, scan_class_folders
from ..data.label_space import LabelSpaceError
from ..data.loader import build_eval_loader
from ..data.train_data import build_train_loader, build_train_transform, check_split_folder, resolve_class_names
from ..tracking import NullTracker, Tracker, build_tracker
from ..run_folder import RunFolderClaim, claim_run_folder, set_aside
from .checkpointing import CheckpointSaver, ResumePoint, check_resume_geometry, find_resume_checkpoint, \
    restore_training_state, training_checkpoint
from .runtime import Runtime, init_runtime
from .train_loop import NonFiniteLossError, TrainingSetup, train_one_epoch, unwrap_model

if TYPE_CHECKING:
    from ..data.transforms import EvalPreprocessing
    from .evaluate import EvalResult

__all__ = ['run_training', 'TrainingOutcome', 'SUMMARY_COLUMNS', 'run_folder', 'build_recipe']

_logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = ['epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'lr', 'epoch_seconds',
                   'images_per_second']
EMA_COLUMNS = ['ema_eval_loss', 'ema_eval_top1', 'ema_eval_top5']


@dataclass
class TrainingOutcome:
    run_dir: Path
    epochs_run: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    last_eval: dict[str, float] = field(default_factory=dict)


@dataclass
class Recipe:
    """The objects the YAML describes: built in one place so tests can check them against the config."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    num_epochs: int
    loss_fn: torch.nn.Module
    mixup: Mixup | None
    learning_rate: float
    total_batch_size: int


def run_folder(args: argparse.Namespace) -> Path:
    name = args.experiment or '-'.join([time.strftime('%Y%m%d-%H%M%S'), args.model.replace('/', '_')])
    return Path(args.output) / name


def build_model(args: argparse.Namespace, num_classes: int) -> torch.nn.Module:
    if not timm.is_model(args.model):
        close = timm.list_models(f'*{args.model.split("_")[0]}*')[:5]
        raise UsageError(f'unknown --model {args.model!r}' + (f'; similar: {", ".join(close)}' if close else ''))
    kwargs = dict(args.model_kwargs or {})
    if args.drop_path is not None:
        kwargs['drop_path_rate'] = args.drop_path
    try:
        model = timm.create_model(args.model, pretrained=args.pretrained, num_classes=num_classes,
                                  drop_rate=args.drop, **kwargs)
    except TypeError as error:
        raise UsageError(f'--model {args.model} does not accept these arguments ({error}); check --model-kwargs') \
            from None
    except (ValueError, ZeroDivisionError, AssertionError, RuntimeError) as error:
        # patch_size=0, kernel_size=-3 fail inside the layers; --pretrained on a model timm has no weights for
        reason = ' '.join(str(error).split()) or type(error).__name__
        if args.pretrained and 'pretrained' in reason.lower():
            raise UsageError(f'--pretrained: {reason}; drop --pretrained or pick a model with weights') from None
        raise UsageError(f'cannot build --model {args.model} with --model-kwargs {kwargs} ({reason}); check the '
                         f'values') from None
    if args.initial_checkpoint:
        load_model_weights(model, args.initial_checkpoint)
    return model


def build_recipe(args: argparse.Namespace, model: torch.nn.Module, num_classes: int, world_size: int,
                 updates_per_epoch: int) -> Recipe:
    """Optimizer (no weight decay on biases and 1-D parameters), schedule, loss and mixup from the flags."""
    learning_rate = effective_learning_rate(args, world_size)
    optimizer_kwargs: dict[str, Any] = {}
    if args.opt_eps is not None:
        optimizer_kwargs['eps'] = args.opt_eps
    if args.opt_betas is not None:
        optimizer_kwargs['betas'] = tuple(args.opt_betas)
    try:
        optimizer = create_optimizer_v2(model, opt=args.opt, lr=learning_rate, weight_decay=args.weight_decay,
                                        momentum=args.momentum, filter_bias_and_bn=True, **optimizer_kwargs)
    except (AssertionError, ValueError, TypeError) as error:
        raise UsageError(f'cannot create optimizer --opt {args.opt}: {error}') from None
    try:
        scheduler, num_epochs = create_scheduler_v2(
            optimizer, sched=args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs,
            decay_milestones=args.decay_milestones, cooldown_epochs=args.cooldown_epochs,
            patience_epochs=args.patience_epochs, decay_rate=args.decay_rate, min_lr=args.min_lr,
            warmup_lr=args.warmup_lr, warmup_epochs=args.warmup_epochs, warmup_prefix=args.warmup_prefix,
            noise=args.lr_noise, noise_pct=args.lr_noise_pct, noise_std=args.lr_noise_std, noise_seed=args.seed,
            cycle_mul=args.lr_cycle_mul, cycle_decay=args.lr_cycle_decay, cycle_limit=args.lr_cycle_limit,
            k_decay=args.lr_k_decay, plateau_mode='min' if args.eval_metric == 'loss' else 'max',
            step_on_epochs=not args.sched_on_updates, updates_per_epoch=updates_per_epoch,
        )
    except (AssertionError, ValueError) as error:
        raise UsageError(f'cannot create schedule --sched {args.sched}: {error}') from None
    mixup_active = not args.no_aug and (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None)
    mixup = None
    if mixup_active:
        mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                      prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                      label_smoothing=args.smoothing, num_classes=num_classes)
        loss_fn: torch.nn.Module = SoftTargetCrossEntropy()  # smoothing is already in the mixed targets
    elif args.smoothing > 0:
        loss_fn = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        loss_fn = torch.nn.CrossEntropyLoss()
    return Recipe(optimizer=optimizer, scheduler=scheduler, num_epochs=num_epochs, loss_fn=loss_fn, mixup=mixup,
                  learning_rate=learning_rate, total_batch_size=total_batch_size(args, world_size))


def _continues_in(args: argparse.Namespace, run_dir: Path) -> bool:
    """Whether this start continues the run in ``run_dir`` (so may write over its files)."""
    if args.resume == 'auto':
        return True
    if not args.resume:
        return False
    return Path(args.resume).resolve().parent == run_dir.resolve()


def _read_summary_rows(path: Path, before_epoch: int) -> list[dict[str, str]]:
    """Rows of an existing summary.csv for epochs already done (a resumed run rewrites the ones it redoes).

    A damaged file is moved aside (never blocks a resume, never lost) and the table restarts from the resumed
    epoch on."""
    if not path.is_file():
        return []
    try:
        with path.open(newline='', encoding='utf-8') as file:
            return [row for row in csv.DictReader(file) if str(row.get('epoch') or '').isdigit()
                    and int(row['epoch']) < before_epoch]
    except (UnicodeDecodeError, csv.Error) as error:
        kept = set_aside(path, 'damaged')
        _logger.warning('%s is unreadable (%s); kept as %s, the new one starts at the resumed epoch', path.name,
                        error, kept.name)
        return []


def _write_summary(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction='ignore', lineterminator='\n')
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(buffer.getvalue(), path)


@dataclass(frozen=True)
class RunSetup:
    """What :meth:`_Trainer.prepare` resolved before the first batch; the epochs, validation and checkpoints read it.

    Frozen: nothing in it is replaced after prepare (the objects themselves, model and optimizer, still train).
    ``training`` is what :func:`train_one_epoch` works with (the model as trained, torch.compile and DDP wrappers
    included, with the recipe's optimizer, schedule, loss and mixup); ``plain_model`` is the module under those
    wrappers, whose weights the checkpoints hold. ``summary_rows`` (main process only) are summary.csv's rows so
    far, appended every epoch.
    """

    run_dir: Path
    class_names: list[str]
    num_classes: int
    data_config: dict[str, Any]          # timm's resolved input config (input_size, mean, std, ...)
    eval_preprocessing: EvalPreprocessing
    training: TrainingSetup
    plain_model: torch.nn.Module
    eval_loader: Any
    num_epochs: int
    learning_rate: float                 # the effective one (scaled to the total batch)
    total_batch_size: int
    resume: ResumePoint
    saver: CheckpointSaver
    summary_rows: list[dict[str, Any]]


def _build_adversary(args: argparse.Namespace, runtime: Runtime, data_config: dict[str, Any],
                     amp_dtype: torch.dtype | None, mixup: Mixup | None) -> Any:
    """--adv-train: the batches' attacker (robustcnn/adversarial/training.py), or None."""
    from ..adversarial.spec import adversarial_training_spec
    spec = adversarial_training_spec(args)
    if spec is None:
        return None
    from ..adversarial.training import AdversarialBatches
    adversary = AdversarialBatches(spec, data_config['mean'], data_config['std'],
                                   autocast=lambda: runtime.autocast(amp_dtype))
    _logger.info('adversarial training: %s', adversary.describe())
    if mixup is not None:
        _logger.info('adversarial training with mixup/cutmix on; Bai et al. (2021) train their CNNs '
                     'adversarially with --mixup 0 --cutmix 0 --reprob 0 (TRAIN.md)')
    return adversary


class _Trainer:
    """One run: :meth:`prepare` builds its :class:`RunSetup`, :meth:`run` trains the epochs.

    ``tracker`` and ``claim`` live outside the setup: ``run_training`` closes and releases them however far
    ``prepare`` got.
    """

    setup: RunSetup

    def __init__(self, args: argparse.Namespace, runtime: Runtime) -> None:
        self.args = args
        self.runtime = runtime
        self.tracker: Tracker = NullTracker()
        self.claim: RunFolderClaim | None = None

    def prepare(self) -> None:
        args, runtime = self.args, self.runtime
        device_settings = runtime.device_settings(amp=args.amp, amp_dtype=args.amp_dtype,
                                                       channels_last=args.channels_last, batch_size=args.batch_size)
        # the resolved switches are what args.yaml and checkpoints record, so a resume repeats them
        args.amp, args.channels_last = device_settings.amp_dtype is not None, device_settings.channels_last
        if args.torchcompile and args.torchcompile not in torch._dynamo.list_backends(exclude_tags=()):
            raise UsageError(f'--torchcompile {args.torchcompile}: not a torch.compile backend; choose from '
                             f'{", ".join(torch._dynamo.list_backends())}')
        # 1. data folders: a bad path is a one-line error before anything expensive
        train_folder = check_split_folder(args.data_dir, args.train_split, '--train-split')
        val_folder = check_split_folder(args.data_dir, args.val_split, '--val-split')
        class_names = resolve_class_names(train_folder)
        class_to_index = {name: index for index, name in enumerate(class_names)}
        num_classes = args.num_classes or len(class_names)
        if num_classes < len(class_names):
            raise UsageError(f'--num-classes {num_classes} is smaller than the {len(class_names)} class '
                             f'folders in {train_folder}')

        # 2. run folder and log file (main process only writes): locked, and an older run in it is never overwritten
        run_dir = run_folder(args)
        if runtime.is_main:
            self.claim = claim_run_folder(run_dir, continuing=_continues_in(args, run_dir), fresh=args.fresh)
        setup_logging(runtime.is_main, run_dir / 'train.log' if runtime.is_main else None)
        _logger.info('run folder %s; %s', run_dir, runtime.describe())
        runtime.configure_threads(args.threads)
        if self.claim is not None and self.claim.previous_run is not None:
            _logger.info('--fresh: moved the previous run to %s', self.claim.previous_run)

        # 3. model (same initial weights on every process: seeded identically)
        torch.manual_seed(args.seed)
        model = build_model(args, num_classes)
        data_config = resolve_data_config(
            {'img_size': args.img_size, 'input_size': args.input_size, 'crop_pct': args.crop_pct,
             'mean': args.mean, 'std': args.std, 'interpolation': args.interpolation}, model=model)
        if args.grad_checkpointing:
            model.set_grad_checkpointing(True)
        model.to(runtime.device)
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
        model = runtime.configure_batchnorm(model, sync_bn=args.sync_bn)
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay) if args.model_ema else None
        _logger.info('model %s: %.2f M parameters, %d classes, input %s', args.model,
                     sum(p.numel() for p in model.parameters()) / 1e6, num_classes, data_config['input_size'])

        # 4. data
        from ..data.transforms import build_eval_transform, resolve_eval_preprocessing
        pin_memory = args.pin_mem and runtime.kind == 'cuda'  # GPU recipes' --pin-mem: only a warning elsewhere
        train_loader = build_train_loader(
            args, train_folder, class_to_index, build_train_transform(args, data_config),
            num_replicas=runtime.world_size, rank=runtime.rank, pin_memory=pin_memory,
            batch_size=device_settings.batch_size,
            workers=runtime.loader_workers(runtime.process_batch_size(args.workers)))  # per device, like -b
        eval_preprocessing = resolve_eval_preprocessing(
            model, 'resize_center_crop', img_size=args.img_size, input_size=args.input_size, crop_pct=args.crop_pct,
            interpolation=args.interpolation, mean=args.mean, std=args.std)
        try:
            val_samples = scan_class_folders(val_folder, class_to_index)
        except LabelSpaceError as error:  # a validation folder that is not a training class
            raise UsageError(str(error).replace('pass --class-map with the model\'s class list',
                                                'validation classes must be training classes')) from None
        if not val_samples:
            raise UsageError(f'{val_folder} holds no image files in its class folders')
        eval_loader = build_eval_loader(
            ClassFolderDataset(val_samples, build_eval_transform(eval_preprocessing), on_decode_error='skip'),
            runtime.process_batch_size(args.validation_batch_size or args.batch_size),
            runtime.loader_workers(args.workers), runtime, pin_memory=pin_memory)
        num_batches = train_loader.sampler.full_length() // train_loader.batch_size
        updates_per_epoch = math.ceil(num_batches / args.grad_accum_steps)

        # 5. recipe
        recipe = build_recipe(args, model, num_classes, runtime.data_parallel_size, updates_per_epoch)
        amp_dtype = device_settings.torch_amp_dtype
        scaler = torch.amp.GradScaler(runtime.kind) if amp_dtype == torch.float16 else None
        adversary = _build_adversary(args, runtime, data_config, amp_dtype, recipe.mixup)
        _logger.info('recipe: %s lr %.3e (total batch %d = %d x %d devices x %d accumulation steps), '
                     '%s schedule over %d epochs, %d batches and %d updates per epoch',
                     args.opt, recipe.learning_rate, recipe.total_batch_size, args.batch_size,
                     runtime.data_parallel_size, args.grad_accum_steps, args.sched, recipe.num_epochs,
                     num_batches, updates_per_epoch)

        # 6. resume
        resume, resumed, fell_back = self._resume(run_dir, model, class_names, recipe, scaler, model_ema)
        # the schedule is a pure function of (epoch, updates): put the lr where the run continues
        recipe.scheduler.step(resume.epoch)
        recipe.scheduler.step_update(resume.num_updates)

        # 7. wrappers: compile, then DDP
        plain_model = model
        if args.torchcompile:
            model = torch.compile(model, backend=args.torchcompile)
        if runtime.distributed:
            device_ids = [runtime.local_rank] if runtime.kind == 'cuda' else None
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

        saver = CheckpointSaver(run_dir, metric_name=args.eval_metric, checkpoint_interval=args.checkpoint_interval,
                                max_history=args.checkpoint_hist)
        saver.best_metric, saver.best_epoch = resume.best_metric, resume.best_epoch
        saver.prune_history = not fell_back
        summary_rows: list[dict[str, Any]] = []
        if runtime.is_main:
            for path in saver.remove_stale_temp_files():
                _logger.info('removed %s, left by an interrupted write', path.name)
            atomic_write_text(args_to_yaml(args), run_dir / 'args.yaml')
            summary_rows = _read_summary_rows(run_dir / 'summary.csv', resume.epoch)
        # steps are updates: a resumed run keeps the points up to its checkpoint's and replaces the ones after it
        self.tracker = build_tracker(args, run_dir, is_main=runtime.is_main, config=vars(args),
                                     purge_step=resume.num_updates + 1 if resumed else 0, resume=resumed,
                                     default_name=run_dir.name)
        training = TrainingSetup(
            model=model, train_loader=train_loader, optimizer=recipe.optimizer, loss_fn=recipe.loss_fn,
            runtime=runtime, num_batches=num_batches, scheduler=recipe.scheduler, mixup=recipe.mixup, scaler=scaler,
            model_ema=model_ema, adversary=adversary, amp_dtype=amp_dtype, accum_steps=args.grad_accum_steps,
            clip_grad=args.clip_grad, clip_mode=args.clip_mode, channels_last=args.channels_last, seed=args.seed,
            log_interval=args.log_interval, recovery_interval=args.recovery_interval)
        self.setup = RunSetup(
            run_dir=run_dir, class_names=class_names, num_classes=num_classes, data_config=data_config,
            eval_preprocessing=eval_preprocessing, training=training, plain_model=plain_model,
            eval_loader=eval_loader, num_epochs=recipe.num_epochs, learning_rate=recipe.learning_rate,
            total_batch_size=recipe.total_batch_size, resume=resume, saver=saver, summary_rows=summary_rows)

    def _resume(self, run_dir: Path, model: torch.nn.Module, class_names: list[str], recipe: Recipe,
                scaler: torch.amp.GradScaler | None, model_ema: ModelEmaV3 | None) -> tuple[ResumePoint, bool, bool]:
        """Restore --resume's checkpoint into the run's objects; returns where the run continues, whether it
        resumed, and whether --resume auto fell back past damaged files (then no checkpoint-N is pruned)."""
        args, runtime = self.args, self.runtime
        checkpoint, source = None, ''
        fell_back = False
        if args.resume == 'auto':
            found = find_resume_checkpoint(run_dir)
            if found is None:
                _logger.info('--resume auto: no checkpoint in %s yet, starting a fresh run', run_dir)
            else:
                source, checkpoint = str(found.path), found.checkpoint
                _logger.info('--resume auto: continuing from %s, the newest checkpoint that verifies', found.path.name)
                fell_back = bool(found.skipped)
                for path, reason in found.skipped:
                    # moved aside, not left to be overwritten or pruned: a person may still recover something
                    kept = set_aside(path, 'damaged') if runtime.is_main else path
                    _logger.warning('--resume auto: skipped %s (%s); kept as %s', path.name, reason, kept.name)
                if fell_back:
                    _logger.warning('--resume auto fell back past damaged files: no checkpoint-N is pruned in this '
                                    'run')
        elif args.resume:
            source, checkpoint = args.resume, load_checkpoint_file(args.resume)
        if checkpoint is None:
            return ResumePoint(), False, fell_back
        check_resume_geometry(checkpoint, args, source)
        resume = restore_training_state(
            checkpoint, source, model, model_name=args.model, class_names=class_names,
            optimizer=recipe.optimizer, scheduler=recipe.scheduler, scaler=scaler,
            model_ema=model_ema, restore_optimizer=not args.no_resume_opt)
        _logger.info('resumed from %s: epoch %d, batch %d, %d updates done', source, resume.epoch,
                     resume.batch_in_epoch, resume.num_updates)
        return resume, True, fell_back

    def metadata(self) -> CheckpointMetadata:
        """What validate.py needs to use the weights without the training command: labels and preprocessing."""
        setup = self.setup
        config, preprocessing = setup.data_config, setup.eval_preprocessing
        return CheckpointMetadata(
            version=__version__,
            model=self.args.model,
            model_kwargs=dict(self.args.model_kwargs or {}),
            class_names=tuple(setup.class_names),
            num_classes=setup.num_classes,
            img_size=int(config['input_size'][-1]),
            input_size=tuple(int(value) for value in config['input_size']),
            interpolation=preprocessing.interpolation,
            crop_pct=float(preprocessing.crop_pct),
            mean=tuple(float(value) for value in preprocessing.mean),
            std=tuple(float(value) for value in preprocessing.std),
            total_batch_size=setup.total_batch_size,
            learning_rate=setup.learning_rate,
            world_size=self.runtime.data_parallel_size,
        )

    def checkpoint(self, epoch: int, num_updates: int, epoch_complete: bool, batch_in_epoch: int,
                   metrics: dict[str, float] | None = None, epoch_totals: dict[str, float] | None = None,
                   ) -> dict[str, Any]:
        training = self.setup.training
        checkpoint = training_checkpoint(
            self.setup.plain_model, training.optimizer, training.scheduler, self.args, self.metadata(), epoch=epoch,
            epoch_complete=epoch_complete, batch_in_epoch=batch_in_epoch, num_updates=num_updates,
            model_ema=training.model_ema, scaler=training.scaler, metrics=metrics, epoch_totals=epoch_totals)
        return self.runtime.host_state(checkpoint)

    def validate(self, model: torch.nn.Module, description: str) -> EvalResult:
        """Evaluate the unwrapped model with process 0's buffers, i.e. exactly the weights the checkpoint holds.

        BatchNorm running statistics drift apart between processes (each updates them from its own last batch);
        they are broadcast from process 0 first. The DDP wrapper is not used for evaluation: its per-forward buffer
        broadcast is a collective, and unpadded shards give processes different numbers of batches.
        """
        from .evaluate import evaluate
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        if self.runtime.distributed:
            import torch.distributed as dist
            for buffer in unwrap_model(model).buffers():
                dist.broadcast(buffer, src=0)
        preprocessing = self.setup.eval_preprocessing
        return evaluate(model, self.setup.eval_loader, self.runtime, amp_dtype=self.setup.training.amp_dtype,
                        channels_last=self.args.channels_last, normalization=(preprocessing.mean, preprocessing.std),
                        description=description)

    def run(self) -> TrainingOutcome:
        args, runtime, setup = self.args, self.runtime, self.setup
        training, saver = setup.training, setup.saver
        outcome = TrainingOutcome(run_dir=setup.run_dir)
        summary_columns = SUMMARY_COLUMNS + (EMA_COLUMNS if training.model_ema is not None else [])
        sampler = training.train_loader.sampler
        num_updates = setup.resume.num_updates
        start_batch = setup.resume.batch_in_epoch
        for epoch in range(setup.resume.epoch, setup.num_epochs):
            sampler.set_epoch(epoch)
            if start_batch:
                sampler.set_start(start_batch, training.train_loader.batch_size)
            if training.mixup is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
                training.mixup.mixup_enabled = False

            def save_recovery(batch_in_epoch: int, updates: int, totals: dict[str, float], epoch: int = epoch) -> None:
                runtime.step_done()
                if runtime.is_main:
                    checkpoint = self.checkpoint(epoch, updates, False, batch_in_epoch, epoch_totals=totals)
                    path = saver.save_recovery(checkpoint, epoch, batch_in_epoch)
                    _logger.info('saved recovery checkpoint %s', path.name)

            try:
                result = train_one_epoch(
                    training, epoch, start_batch=start_batch, num_updates=num_updates,
                    carried=setup.resume.epoch_totals if start_batch else None, tracker=self.tracker,
                    save_recovery=save_recovery)
            except NonFiniteLossError as error:
                if runtime.is_main:
                    for path in saver.remove_recovery_from(error.epoch, error.batch_index):
                        _logger.warning('removed %s: its weights gave the non-finite loss', path.name)
                raise
            num_updates, start_batch = result.num_updates, 0

            evaluation = self.validate(training.model, f'eval epoch {epoch}')
            row: dict[str, Any] = {
                'epoch': epoch, 'train_loss': f'{result.loss:.6f}', 'eval_loss': f'{evaluation.loss:.6f}',
                'eval_top1': f'{evaluation.top1:.4f}', 'eval_top5': f'{evaluation.top5:.4f}',
                'lr': f'{result.lr:.6e}', 'epoch_seconds': f'{result.seconds:.2f}',
                'images_per_second': f'{result.images_per_second:.1f}',
            }
            metrics = {'top1': evaluation.top1, 'top5': evaluation.top5, 'loss': evaluation.loss,
                       'num_samples': evaluation.num_samples}
            message = (f'epoch {epoch}: train loss {result.loss:.4f}, eval loss {evaluation.loss:.4f}, '
                       f'top1 {evaluation.top1:.2f}, top5 {evaluation.top5:.2f} ({evaluation.num_samples} images), '
                       f'{result.seconds:.1f}s, {result.images_per_second:.1f} img/s')
            if training.model_ema is not None:
                ema_evaluation = self.validate(training.model_ema.module, f'eval EMA epoch {epoch}')
                row.update({'ema_eval_loss': f'{ema_evaluation.loss:.6f}',
                            'ema_eval_top1': f'{ema_evaluation.top1:.4f}',
                            'ema_eval_top5': f'{ema_evaluation.top5:.4f}'})
                metrics.update({'ema_top1': ema_evaluation.top1, 'ema_top5': ema_evaluation.top5,
                                'ema_loss': ema_evaluation.loss})
                message += f'; EMA top1 {ema_evaluation.top1:.2f}'
            _logger.info(message)
            # per-epoch schedules move to the next epoch (plateau looks at the metric)
            training.scheduler.step(epoch + 1, metrics[args.eval_metric])

            metric = metrics[args.eval_metric]  # logged before the checkpoint: a resume from it keeps these points
            self.tracker.log_scalars({
                'epoch/epoch': epoch, 'epoch/train_loss': result.loss, 'epoch/lr': result.lr,
                **{f'epoch/eval_{name}': value for name, value in metrics.items() if name != 'num_samples'},
                f'epoch/best_{args.eval_metric}': metric if saver.is_better(metric) else saver.best_metric,
            }, step=num_updates)
            runtime.step_done()  # XLA: every host finishes the pending graph before the main one reads weights
            if runtime.is_main:
                setup.summary_rows.append(row)
                _write_summary(setup.run_dir / 'summary.csv', setup.summary_rows, summary_columns)
                checkpoint = self.checkpoint(epoch, num_updates, True, training.num_batches, metrics)
                if saver.save_epoch(checkpoint, epoch, metrics[args.eval_metric]):
                    _logger.info('new best %s %.4f at epoch %d', args.eval_metric, metrics[args.eval_metric], epoch)
            runtime.barrier()
            outcome.epochs_run += 1
            outcome.last_eval = metrics
        outcome.best_metric, outcome.best_epoch = saver.best_metric, saver.best_epoch
        if outcome.best_metric is not None:
            _logger.info('best %s %.4f at epoch %s', args.eval_metric, outcome.best_metric, outcome.best_epoch)
        return outcome


def run_training(args: argparse.Namespace, runtime: Runtime | None = None) -> TrainingOutcome:
    """Train as ``args`` says. Raises UsageError/CheckpointError for user mistakes, NonFiniteLossError on NaN."""
    setup_logging(runtime.is_main if runtime is not None else os.environ.get('RANK', '0') == '0')
    own_runtime = runtime is None
    if runtime is None:
        runtime = init_runtime(args.device)
    trainer = _Trainer(args, runtime)
    try:
        try:
            trainer.prepare()
        except BaseException:
            if trainer.claim is not None:
                trainer.claim.abandon()  # nothing was trained: leave no empty run folder behind
            raise
        return trainer.run()
    finally:
        trainer.tracker.close()
        if trainer.claim is not None:
            trainer.claim.release()
        if own_runtime:
            runtime.close()


__all__ += ['NonFiniteLossError', 'CheckpointError']
