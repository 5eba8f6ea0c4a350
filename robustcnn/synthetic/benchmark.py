"""The synthetic shape-vs-texture robustness benchmark: generated once into a cache folder, in the real datasets'
layouts, so that ``train.py`` and ``validate.py`` read it through exactly the code they use for ImageNet.

Layout of the folder (every image a 64 px PNG; ``<class>`` is a shape name)::

    train/<class>/*.png                               training split (train.py's DATA_DIR is the folder itself)
    val/<class>/*.png                                 clean validation split, same distribution as train
    corruption/<corruption>/<1..5>/<class>/*.png      ImageNet-C layout: 15 corruptions x 5 severities of val images
    stylized/<class>/*.png                            val shapes wearing another class's texture (Stylized-ImageNet)
    stylized-texture-labels/<class>/*.png             the same stylized images, foldered by their texture's class
    sketch/<class>/*.png                              val shapes as pencil outlines on paper (ImageNet-Sketch)
    rendition/<class>/*.png                           val shapes as flat cartoons (an ImageNet-R-like rendering)
    manifest.json                                     written last: the folder is complete iff it exists

How the question "shape or texture?" is built in: the class is the shape. In train and val a shape is filled with
its class's typical texture with probability ``texture_correlation`` (0.8) and with a random other texture
otherwise, over a background of a random texture; colours never depend on the class. Texture is therefore a
tempting cue (right 80% of the time, and easy to see in a small patch) but only shape is always right. The shifts
keep each val image's shape, size, position and rotation and change only the rendering.

Every image is a pure function of ``(seed, split, class, index)`` (NumPy generators seeded with those numbers), so
the bytes do not depend on the number of worker processes or the order they run in.
"""
from __future__ import annotations

import colorsys
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from ..atomic import atomic_write_text
from ..cli import UsageError
from ..interrupts import ignore_interrupts
from .corruptions import CORRUPTIONS, corrupt
from .shapes import SHAPE_NAMES, ShapePlacement, render_mask, render_outline
from .textures import TEXTURE_NAMES, colorize, smooth_noise, texture_pattern

__all__ = [
    'FORMAT_VERSION', 'CLASS_NAMES', 'CLASS_TEXTURES', 'TEXTURE_CLASSES', 'TEXTURE_LABELLED', 'SHIFTS', 'SEVERITIES',
    'SyntheticConfig', 'SampleSpec', 'SyntheticBenchmarkError', 'default_cache_root', 'default_benchmark_dir',
    'sample_spec', 'stylized_spec', 'render_sample', 'corruption_stream', 'ensure_benchmark', 'generate_benchmark',
    'read_manifest',
]

_logger = logging.getLogger(__name__)

# Bump when the images change for the same config: old cache folders are then not reused.
FORMAT_VERSION = 1
CLASS_NAMES: tuple[str, ...] = SHAPE_NAMES
# The texture each class wears most of the time (a fixed pairing; any one-to-one pairing asks the same question).
CLASS_TEXTURES: dict[str, str] = dict(zip(CLASS_NAMES, TEXTURE_NAMES))
TEXTURE_CLASSES: dict[str, str] = {texture: name for name, texture in CLASS_TEXTURES.items()}
# The stylized images once more, in folders named after the class whose texture they wear.
TEXTURE_LABELLED = 'stylized-texture-labels'
SHIFTS: tuple[str, ...] = ('stylized', 'sketch', 'rendition')
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
MANIFEST_NAME = 'manifest.json'
# Numbers that keep the random streams of the splits apart.
_STREAMS = {'train': 1, 'val': 2, 'stylized': 3, 'sketch': 4, 'rendition': 5, 'corruption': 6}


class SyntheticBenchmarkError(UsageError):
    """A cache folder exists but is not a complete benchmark of the requested configuration (a user error: the
    command names another folder, so it is reported in one line)."""


@dataclass(frozen=True)
class SyntheticConfig:
    """What the generated images depend on. The defaults are the demo's benchmark."""

    seed: int = 0
    image_size: int = 64
    train_per_class: int = 1000
    val_per_class: int = 50
    shift_per_class: int = 50
    corruption_per_class: int = 20
    texture_correlation: float = 0.8

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ValueError(f'image_size must be at least 16, got {self.image_size}')
        for name in ('train_per_class', 'val_per_class', 'shift_per_class', 'corruption_per_class'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be at least 1, got {getattr(self, name)}')
        for name in ('shift_per_class', 'corruption_per_class'):
            if getattr(self, name) > self.val_per_class:
                raise ValueError(f'{name} ({getattr(self, name)}) cannot exceed val_per_class ({self.val_per_class}):'
                                 f' the shifted images are renderings of val images')
        if not 0.0 <= self.texture_correlation <= 1.0:
            raise ValueError(f'texture_correlation must be in [0, 1], got {self.texture_correlation}')
        if self.seed < 0:
            raise ValueError(f'seed must be 0 or more, got {self.seed}')

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def folder_name(self) -> str:
        """``synthetic-v1-seed0`` for the default sizes; other sizes get a short hash so they never collide."""
        name = f'synthetic-v{FORMAT_VERSION}-seed{self.seed}'
        defaults = SyntheticConfig(seed=self.seed)
        if self != defaults:
            digest = hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:8]
            name += f'-{digest}'
        return name


def default_cache_root() -> Path:
    """``$ROBUSTCNN_CACHE``, else ``$XDG_CACHE_HOME/robustcnn``, else ``~/.cache/robustcnn``."""
    if os.environ.get('ROBUSTCNN_CACHE'):
        return Path(os.environ['ROBUSTCNN_CACHE']).expanduser()
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(base) / 'robustcnn'


def default_benchmark_dir(config: SyntheticConfig) -> Path:
    return default_cache_root() / config.folder_name()


# ---------------------------------------------------------------------------------------------------- one image

@dataclass(frozen=True)
class SampleSpec:
    """Everything one image depends on; the shifted renderings of a val image share its placement."""

    class_name: str
    placement: ShapePlacement
    foreground_texture: str
    background_texture: str
    foreground_colors: tuple[tuple[int, int, int], tuple[int, int, int]]
    background_colors: tuple[tuple[int, int, int], tuple[int, int, int]]
    texture_seed: int


def _hsv(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    red, green, blue = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
    return int(round(red * 255)), int(round(green * 255)), int(round(blue * 255))


Color = tuple[int, int, int]


def _color_pair(rng: np.random.Generator, hue: float, contrast: float) -> tuple[Color, Color]:
    """Two colours of one hue, one dark and one light, ``contrast`` apart in value."""
    saturation = rng.uniform(0.35, 0.9)
    dark = rng.uniform(0.1, 0.95 - contrast)
    return _hsv(hue, saturation, dark), _hsv(hue + rng.uniform(-0.05, 0.05), saturation, dark + contrast)


def sample_spec(config: SyntheticConfig, stream: str, class_index: int, index: int) -> SampleSpec:
    """The random choices of image ``index`` of class ``class_index`` in ``stream`` ('train' or 'val')."""
    rng = np.random.default_rng([config.seed, _STREAMS[stream], class_index, index])
    size = config.image_size
    class_name = CLASS_NAMES[class_index]
    radius = size * rng.uniform(0.26, 0.40)
    margin = radius + size * 0.03
    placement = ShapePlacement(class_name, float(rng.uniform(margin, size - margin)),
                               float(rng.uniform(margin, size - margin)), float(radius), float(rng.uniform(0, 360)))
    typical = CLASS_TEXTURES[class_name]
    if rng.random() < config.texture_correlation:
        foreground = typical
    else:
        foreground = str(rng.choice([name for name in TEXTURE_NAMES if name != typical]))
    background = str(rng.choice([name for name in TEXTURE_NAMES if name != foreground]))
    hue = rng.random()
    foreground_colors = _color_pair(rng, hue, rng.uniform(0.45, 0.7))
    background_colors = _color_pair(rng, hue + rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.25))
    return SampleSpec(class_name, placement, foreground, background, foreground_colors, background_colors,
                      int(rng.integers(2 ** 62)))


def stylized_spec(config: SyntheticConfig, spec: SampleSpec, class_index: int, index: int) -> SampleSpec:
    """The same image with the foreground texture of a *different* class (texture and shape disagree)."""
    rng = np.random.default_rng([config.seed, _STREAMS['stylized'], class_index, index])
    own = CLASS_TEXTURES[spec.class_name]
    foreground = str(rng.choice([name for name in TEXTURE_NAMES if name != own]))
    background = spec.background_texture if spec.background_texture != foreground else own
    return SampleSpec(spec.class_name, spec.placement, foreground, background, spec.foreground_colors,
                      spec.background_colors, spec.texture_seed)


@dataclass
class RenderedSample:
    image: np.ndarray  # uint8 (size, size, 3)
    mask: np.ndarray  # float32 (size, size) in [0, 1]: where the shape is


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def render_sample(spec: SampleSpec, size: int, style: str = 'textured') -> RenderedSample:
    """Draw ``spec`` as a ``textured`` image (train, val, stylized), a ``sketch`` or a ``rendition`` (cartoon)."""
    mask = render_mask(spec.placement, size)
    rng = np.random.default_rng(spec.texture_seed)
    if style == 'textured':
        foreground = colorize(texture_pattern(spec.foreground_texture, size, rng),
                              *(np.array(color, dtype=np.float64) for color in spec.foreground_colors))
        background = colorize(texture_pattern(spec.background_texture, size, rng),
                              *(np.array(color, dtype=np.float64) for color in spec.background_colors))
        image = background * (1 - mask[..., None]) + foreground * mask[..., None]
    elif style == 'sketch':
        outline = render_outline(spec.placement, size, width=rng.uniform(1.0, 1.8))[..., None]
        paper = 242 + 10 * (smooth_noise(size, rng, 3.0) - 0.5)
        ink = rng.uniform(20, 90)
        image = np.repeat((paper[..., None] * (1 - outline) + ink * outline), 3, axis=2)
    elif style == 'rendition':
        outline = render_outline(spec.placement, size, width=2.0)[..., None]
        hue = rng.random()
        top, bottom = (np.array(_hsv(hue + offset, 0.15, 0.97), dtype=np.float64) for offset in (0.0, 0.1))
        ramp = np.linspace(0, 1, size)[:, None, None]
        background = top * (1 - ramp) + bottom * ramp
        fill = np.array(_hsv(hue + rng.uniform(0.3, 0.7), rng.uniform(0.6, 1.0), rng.uniform(0.6, 0.95)),
                        dtype=np.float64)
        image = background * (1 - mask[..., None]) + fill * mask[..., None]
        image = image * (1 - outline) + 25.0 * outline
    else:
        raise ValueError(f'unknown style {style!r}; expected textured, sketch or rendition')
    return RenderedSample(_to_uint8(image), mask)


def corruption_stream(config: SyntheticConfig, corruption: str, class_index: int, index: int) -> np.random.Generator:
    """The generator of one image's corruption: the same for all five severities (only the strength changes)."""
    return np.random.default_rng([config.seed, _STREAMS['corruption'], CORRUPTIONS.index(corruption), class_index,
                                  index])


# ---------------------------------------------------------------------------------------------------- writing

def _file_name(class_name: str, index: int) -> str:
    return f'{class_name}_{index:05d}.png'


def _save_png(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image, mode='RGB').save(path, format='PNG', optimize=False, compress_level=6)


def _tasks(config: SyntheticConfig) -> Iterator[tuple[str, Any]]:
    """Units of work for the worker processes: one (split, class) or one corruption each."""
    for split in ('train', 'val', *SHIFTS):
        for class_index in range(len(CLASS_NAMES)):
            yield split, class_index
    for corruption in CORRUPTIONS:
        yield 'corruption', corruption


def _run_task(config: SyntheticConfig, root: str, task: tuple[str, Any]) -> int:
    """Render and write one unit of work; returns the number of files written."""
    kind, argument = task
    size = config.image_size
    root_path = Path(root)
    written = 0
    if kind == 'corruption':
        corruption = str(argument)
        for class_index, class_name in enumerate(CLASS_NAMES):
            folders = {severity: root_path / 'corruption' / corruption / str(severity) / class_name
                       for severity in SEVERITIES}
            for folder in folders.values():
                folder.mkdir(parents=True, exist_ok=True)
            for index in range(config.corruption_per_class):
                clean = render_sample(sample_spec(config, 'val', class_index, index), size).image
                for severity in SEVERITIES:
                    rng = corruption_stream(config, corruption, class_index, index)
                    _save_png(corrupt(clean, corruption, severity, rng), folders[severity] / _file_name(class_name,
                                                                                                         index))
                    written += 1
        return written
    class_index = int(argument)
    class_name = CLASS_NAMES[class_index]
    folder = root_path / kind / class_name
    folder.mkdir(parents=True, exist_ok=True)
    count = {'train': config.train_per_class, 'val': config.val_per_class}.get(kind, config.shift_per_class)
    for index in range(count):
        spec = sample_spec(config, 'train' if kind == 'train' else 'val', class_index, index)
        if kind == 'stylized':
            styled = stylized_spec(config, spec, class_index, index)
            sample = render_sample(styled, size)
            # the same image again, labelled with the class whose texture it wears: scoring it measures how often
            # the model follows the texture (the shape-bias test of Geirhos et al. 2019)
            texture_class = TEXTURE_CLASSES[styled.foreground_texture]
            texture_folder = root_path / TEXTURE_LABELLED / texture_class
            texture_folder.mkdir(parents=True, exist_ok=True)
            _save_png(sample.image, texture_folder / f'{class_name}_{index:05d}.png')
            written += 1
        elif kind in ('sketch', 'rendition'):
            sample = render_sample(spec, size, kind)
        else:
            sample = render_sample(spec, size)
        _save_png(sample.image, folder / _file_name(class_name, index))
        written += 1
    return written


def _manifest(config: SyntheticConfig, seconds: float, files: int) -> dict[str, Any]:
    return {
        'format': 'robustcnn-synthetic-benchmark',
        'version': FORMAT_VERSION,
        'config': config.as_dict(),
        'class_names': list(CLASS_NAMES),
        'class_textures': dict(CLASS_TEXTURES),
        'corruptions': list(CORRUPTIONS),
        'severities': list(SEVERITIES),
        'folders': ['train', 'val', 'corruption', *SHIFTS, TEXTURE_LABELLED],
        'images': files,
        'generation_seconds': round(seconds, 2),
    }


def read_manifest(root: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a complete benchmark folder, or None when the folder is not one."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None


def _check_existing(root: Path, config: SyntheticConfig) -> bool:
    """True when ``root`` holds this config's complete benchmark; False when there is nothing there."""
    if not root.exists():
        return False
    manifest = read_manifest(root)
    if manifest is None:
        raise SyntheticBenchmarkError(
            f'{root} exists but is not a complete synthetic benchmark (no readable {MANIFEST_NAME}); remove it or '
            f'choose another folder')
    if manifest.get('version') != FORMAT_VERSION or manifest.get('config') != config.as_dict():
        raise SyntheticBenchmarkError(
            f'{root} holds a synthetic benchmark of another version/configuration '
            f'(version {manifest.get("version")}, config {manifest.get("config")}); remove it or choose another '
            f'folder')
    return True


_PROGRESS = '.generation.json'  # in a partial folder: the config it is generated for
_DONE = '.done'  # in a partial folder: one file per finished task, holding its number of images
PROGRESS_SECONDS = 5.0  # a progress line at most this often while generating


def _task_key(task: tuple[str, Any]) -> str:
    return f'{task[0]}-{task[1]}'


def _task_images(config: SyntheticConfig, task: tuple[str, Any]) -> int:
    """How many files a task writes (for progress lines)."""
    kind = task[0]
    if kind == 'corruption':
        return len(CLASS_NAMES) * config.corruption_per_class * len(SEVERITIES)
    count = {'train': config.train_per_class, 'val': config.val_per_class}.get(kind, config.shift_per_class)
    return 2 * count if kind == 'stylized' else count


def _adopt_abandoned(root: Path, config: SyntheticConfig, partial: Path) -> bool:
    """Continue the generation a killed process left behind: its partial folder becomes ``partial`` (finished tasks
    are kept, see :data:`_DONE`) when it was made for the same config. Other leftovers are deleted."""
    prefix = f'.{root.name}.partial-'
    if not root.parent.is_dir():
        return False
    adopted = False
    for entry in sorted(root.parent.iterdir()):
        if not entry.name.startswith(prefix):
            continue
        pid_text = entry.name[len(prefix):].split('-')[0]
        try:
            if int(pid_text) != os.getpid():  # this process's own leftover is from an interrupted earlier call
                os.kill(int(pid_text), 0)
                continue  # still being generated by a live process
        except (ValueError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        if not adopted and _read_progress_config(entry) == config.as_dict():
            try:
                os.rename(entry, partial)
                adopted = True
                done = len(list((partial / _DONE).glob('*')))
                _logger.info('continuing the interrupted generation in %s (%d parts already done)', entry, done)
                continue
            except OSError:
                pass
        _logger.info('removing %s, left by an interrupted generation', entry)
        shutil.rmtree(entry, ignore_errors=True)
    return adopted


def _read_progress_config(partial: Path) -> Any:
    try:
        return json.loads((partial / _PROGRESS).read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None


def _run_recorded_task(config: SyntheticConfig, root: str, task: tuple[str, Any]) -> int:
    """Run a task and record it as done (after its files are written: a killed task is redone, never half kept)."""
    written = _run_task(config, root, task)
    atomic_write_text(str(written), Path(root) / _DONE / _task_key(task))
    return written


class _Progress:
    """A line every :data:`PROGRESS_SECONDS` while parts finish, so a long generation is never silent."""

    def __init__(self, total_images: int, images_done: int, parts_total: int, parts_done: int) -> None:
        self.total_images, self.images_done = total_images, images_done
        self.parts_total, self.parts_done = parts_total, parts_done
        self.started = self.last = time.perf_counter()

    def add(self, images: int, parts: int = 1) -> None:
        self.images_done += images
        self.parts_done += parts
        self.tick()

    def tick(self) -> None:
        now = time.perf_counter()
        if now - self.last >= PROGRESS_SECONDS:
            self.last = now
            _logger.info('synthetic benchmark: %d of %d images (%d/%d parts), %.0f s', self.images_done,
                         self.total_images, self.parts_done, self.parts_total, now - self.started)


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel the parts not started and end the running ones now.

    Why: leaving the ``with`` block calls ``shutdown(wait=True)``, which waits for every running part (a corruption
    part takes minutes at the demo's sizes) in processes that ignore Ctrl-C. Python 3.14 has
    ``terminate_workers()``; before it the executor's process table is the only handle on its processes.
    """
    terminate_workers = getattr(pool, 'terminate_workers', None)
    if terminate_workers is not None:
        terminate_workers()
        return
    for process in list((getattr(pool, '_processes', None) or {}).values()):
        process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def generate_benchmark(config: SyntheticConfig, root: str | os.PathLike, workers: int | None = None) -> Path:
    """Generate into a hidden sibling folder, then rename it to ``root`` in one step.

    An interrupted generation leaves only the hidden folder, never a ``root`` that looks complete; the next run
    continues it (each finished part is recorded) if it is for the same config, or removes it. ``workers``
    processes share the work (default: the usable cores, at most 8).
    """
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    partial = root.parent / f'.{root.name}.partial-{os.getpid()}-{time.time_ns()}'
    if not _adopt_abandoned(root, config, partial):
        partial.mkdir()
        (partial / _PROGRESS).write_text(json.dumps(config.as_dict()), encoding='utf-8')
    (partial / _DONE).mkdir(exist_ok=True)
    started = time.perf_counter()
    done = {}
    for marker in (partial / _DONE).iterdir():
        try:
            done[marker.name] = int(marker.read_text(encoding='utf-8'))
        except (OSError, ValueError):
            pass  # a marker being written when the process died: that task is redone
    tasks = [task for task in _tasks(config) if _task_key(task) not in done]
    total_tasks = len(tasks) + len(done)
    progress = _Progress(sum(_task_images(config, task) for task in _tasks(config)), sum(done.values()), total_tasks,
                         len(done))
    if workers is None:
        from ..engine.runtime import usable_cpu_count
        workers = min(8, usable_cpu_count())
    try:
        files = sum(done.values())
        if workers <= 1:
            for task in tasks:
                written = _run_recorded_task(config, str(partial), task)
                files += written
                progress.add(written)
        else:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context('fork' if 'fork' in methods else 'spawn')
            with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=ignore_interrupts) as pool:
                try:
                    # the slow corruption tasks first, so the pool finishes together
                    ordered = sorted(tasks, key=lambda task: task[0] != 'corruption')
                    pending = {pool.submit(_run_recorded_task, config, str(partial), task) for task in ordered}
                    while pending:
                        finished, pending = wait(pending, timeout=PROGRESS_SECONDS, return_when=FIRST_COMPLETED)
                        for future in finished:
                            written = future.result()
                            files += written
                            progress.add(written)
                        progress.tick()
                except BaseException:  # Ctrl-C, or a part that failed: the parts still running are not waited for
                    _stop_pool(pool)
                    raise
        seconds = time.perf_counter() - started
        shutil.rmtree(partial / _DONE)
        (partial / _PROGRESS).unlink()
        manifest = json.dumps(_manifest(config, seconds, files), indent=1) + '\n'
        (partial / MANIFEST_NAME).write_text(manifest, encoding='utf-8')
        try:
            os.rename(partial, root)
        except OSError:
            if read_manifest(root) is None:
                raise
            # another process finished the same benchmark first; keep theirs
            shutil.rmtree(partial, ignore_errors=True)
    except Exception:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _logger.info('synthetic benchmark: %d images in %.1f s -> %s', files, seconds, root)
    return root


def ensure_benchmark(config: SyntheticConfig | None = None, root: str | os.PathLike | None = None,
                     workers: int | None = None) -> Path:
    """The benchmark folder for ``config``, generated first if it does not exist yet (cached afterwards)."""
    config = config or SyntheticConfig()
    root = Path(root) if root is not None else default_benchmark_dir(config)
    if _check_existing(root, config):
        _logger.info('synthetic benchmark: using %s', root)
        return root
    _logger.info('synthetic benchmark: generating %s (once; cached for later runs)', root)
    return generate_benchmark(config, root, workers=workers)


def config_fields() -> tuple[str, ...]:
    return tuple(field.name for field in fields(SyntheticConfig))
