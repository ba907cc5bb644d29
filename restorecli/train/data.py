"""Training and validation data: folders of images, degradations, crops, augmentation, sampling.

Every random choice of a training sample (crop, flips, degradation parameters) comes from a NumPy
generator seeded by ``(seed, rank, epoch, index)``, never from global or per-worker RNG state. So
a sample is a pure function of its position in the data order (and the patch side of its stage),
loading is identical with any number of workers, and resuming at iteration *i* only needs the data
order, which :class:`ResumableSampler` recomputes from the seed.

Progressive patch sizes (``data.progressive``) are batches whose size and patch side follow the
stage of their iteration: :class:`StageBatchSampler` hands the loader lists of ``(epoch, index,
patch)`` keys, each stage taking exactly its batch of keys from the rank's data order. Batch
mixup draws from a generator seeded by ``(seed, rank, iteration)`` (:func:`mixup_rng`), so it too
is recomputed, not stored, on resume.

Images are uint8 HWC RGB in memory; samples float32 CHW arrays; batches float32 NCHW RGB tensors in [0, 1] (noise is not clipped
unless asked, as the official denoising data). The degradations themselves are
``restorecli.degradations``.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

# The degradations lived here before restorecli/degradations.py; their names stay importable.
from restorecli.degradations import add_haze as add_haze
from restorecli.degradations import add_noise as add_noise
from restorecli.degradations import degrade
from restorecli.degradations import motion_blur as motion_blur
from restorecli.degradations import motion_kernel as motion_kernel
from restorecli.degradations import smooth_field as smooth_field
from restorecli.errors import ConfigError, ImageReadError
from restorecli.imresize import imresize
from restorecli.io import read_rgb8

if TYPE_CHECKING:
    import torch

    from restorecli.train.config import (
        DataSection,
        DegradationSection,
        MixupSection,
        ValSet,
    )

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
IN_MEMORY_LIMIT = 1 << 30
"""Automatic in-memory mode for data sets whose files total less than this many bytes."""


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name.

    Raises:
        ConfigError: the folder does not exist or holds no images.
    """
    path = Path(folder)
    if path.is_file():
        raise ConfigError(f"image folder {str(path)!r} is a file, expected a folder of images")
    if not path.is_dir():
        raise ConfigError(f"image folder {str(path)!r} does not exist")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ConfigError(f"image folder {str(path)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def pair_folders(hq: str | Path, lq: str | Path, scale: int) -> list[tuple[Path, Path]]:
    """Match LQ to HQ files by stem; an LQ stem may carry the ``x{scale}`` suffix (``babyx4``).

    Raises:
        ConfigError: an HQ image without an LQ partner.
    """
    lq_by_stem = {p.stem: p for p in list_images(lq)}
    pairs = []
    for hq_path in list_images(hq):
        partner = lq_by_stem.get(hq_path.stem) or lq_by_stem.get(f"{hq_path.stem}x{scale}")
        if partner is None:
            raise ConfigError(f"no LQ image for {hq_path.name} in {str(lq)!r} (matched by name)")
        pairs.append((hq_path, partner))
    return pairs


def fit_pair(hq: np.ndarray, lq: np.ndarray, scale: int, hq_path: Path, lq_path: Path) -> np.ndarray:
    """The HQ of a pair cropped to ``scale`` × the LQ (top-left), as the benchmarks crop it.

    Raises:
        ImageReadError: the HQ is smaller than that, or ``scale`` px or more larger (another scale).
    """
    (h, w), (hh, hw) = lq.shape[:2], hq.shape[:2]
    if not (scale * h <= hh < scale * (h + 1) and scale * w <= hw < scale * (w + 1)):
        slack = f" (up to {scale * w + scale - 1}x{scale * h + scale - 1})" if scale > 1 else ""
        raise ImageReadError(
            f"{hq_path}: is {hw}x{hh} px; expected x{scale} of its LQ {lq_path.name} ({w}x{h}): {scale * w}x{scale * h}{slack}"
        )
    return hq[: scale * h, : scale * w]


def check_scale_size(hq: np.ndarray, scale: int, path: Path) -> None:
    """Raise ImageReadError when an HQ image has fewer than ``scale`` px on a side (nothing left at 1/scale)."""
    if min(hq.shape[:2]) < scale:
        raise ImageReadError(f"{path}: is {hq.shape[1]}x{hq.shape[0]} px; expected at least {scale}x{scale} for x{scale}")


def crop_to_scale(hq: np.ndarray, scale: int) -> np.ndarray:
    """Top-left crop so both sides are multiples of ``scale`` (the benchmark convention)."""
    h, w = hq.shape[0] - hq.shape[0] % scale, hq.shape[1] - hq.shape[1] % scale
    return hq[:h, :w]


def bicubic_lr(hq: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB-bicubic 1/scale downscale of the scale-cropped image (uint8 in, uint8 out)."""
    return imresize(crop_to_scale(hq, scale), 1.0 / scale)


def augment(lq: np.ndarray, hq: np.ndarray, rng: np.random.Generator, flip: bool, rot90: bool) -> tuple[np.ndarray, np.ndarray]:
    """Same random horizontal flip, vertical flip and transpose (= 90° rotation with the flips) on both."""
    if flip and rng.random() < 0.5:
        lq, hq = lq[:, ::-1], hq[:, ::-1]
    if flip and rng.random() < 0.5:
        lq, hq = lq[::-1], hq[::-1]
    if rot90 and rng.random() < 0.5:
        lq, hq = lq.transpose(1, 0, 2), hq.transpose(1, 0, 2)
    return lq, hq


def _pad_to(img: np.ndarray, side: int) -> np.ndarray:
    """Reflect-pad an image smaller than ``side`` (as the official loaders do)."""
    ph, pw = max(0, side - img.shape[0]), max(0, side - img.shape[1])
    if ph or pw:
        img = cv2.copyMakeBorder(img, 0, ph, 0, pw, cv2.BORDER_REFLECT)
    return img


def grey_luma(img: np.ndarray) -> np.ndarray:
    """(H, W, 1) BT.601 luma of a float32 HWC RGB image, as ``read_rgb8(grey=True)`` makes it."""
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None]


def _to_float(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)


@dataclass(frozen=True)
class _Item:
    hq: Path
    lq: Path | None


class TrainDataset:
    """Random training patches; ``dataset[(epoch, index)]`` -> (lq, hq) float32 CHW tensors.

    Modes: paired (``data.lq`` given: aligned crops of LQ and HQ), HQ-only bicubic (the LR of the
    whole image is made once with the MATLAB-exact resize and cached, so patches equal crops of a
    benchmark-style LR), and HQ-only with other steps (degraded per patch, after cropping).

    In memory, every image is decoded up front and one that cannot be read or does not fit (an HQ
    under ``scale`` px, a pair whose sizes are not ``scale`` apart) is left out with a warning;
    read from disk, such a file ends the run with an :class:`ImageReadError` when it is drawn.
    """

    def __init__(self, data: DataSection, degradation: DegradationSection, seed: int, rank: int = 0) -> None:
        self.data, self.degradation, self.seed, self.rank = data, degradation, seed, rank
        self.scale = degradation.scale
        items: list[_Item] = []
        for i, hq_folder in enumerate(data.hq):
            if data.lq:
                items += [_Item(h, lq) for h, lq in pair_folders(hq_folder, data.lq[i], self.scale)]
            else:
                items += [_Item(h, None) for h in list_images(hq_folder)]
        self.items = items
        self.paired = bool(data.lq)
        # Pure bicubic SR: precompute the LR of whole images (exact benchmark convention).
        self.precomputed_lr = not self.paired and tuple(degradation.steps) == ("bicubic",)
        in_memory = data.in_memory
        if in_memory is None:
            in_memory = sum(p.hq.stat().st_size + (p.lq.stat().st_size if p.lq else 0) for p in items) < IN_MEMORY_LIMIT
        self._cache: list[tuple[np.ndarray, np.ndarray | None]] | None = None
        if in_memory:
            self._cache = self._load_usable()

    def __len__(self) -> int:
        return len(self.items)

    def _load_usable(self) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Decode every image; leave out (with a warning) those that cannot be read or do not fit.

        Raises:
            ConfigError: none of them can be used.
        """
        usable, loaded, failures = [], [], []
        for index, item in enumerate(self.items):
            try:
                loaded.append(self._load(index))
            except ImageReadError as error:
                failures.append(str(error))
                if self.rank == 0:
                    logger.warning("leaving out a training image: %s", error)
            else:
                usable.append(item)
        if not usable:
            raise ConfigError(f"none of the {len(self.items)} training images can be used; the first: {failures[0]}")
        if failures and self.rank == 0:
            logger.warning("training on %d of %d images (%d left out, see above)", len(usable), len(self.items), len(failures))
        self.items = usable
        return loaded

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        item = self.items[index]
        hq = read_rgb8(item.hq)
        if item.lq is not None:
            lq = read_rgb8(item.lq)
            return fit_pair(hq, lq, self.scale, item.hq, item.lq), lq
        check_scale_size(hq, self.scale, item.hq)
        if self.precomputed_lr:
            hq = crop_to_scale(hq, self.scale)
            return hq, bicubic_lr(hq, self.scale)
        return hq, None

    def sample(self, epoch: int, index: int, patch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One (lq, hq) pair of float32 HWC arrays for position ``index`` of epoch ``epoch``.

        ``patch`` is the LQ patch side (default ``data.patch``; a progressive stage passes its own).
        """
        rng = np.random.default_rng((self.seed, self.rank, epoch, index))
        hq, lq = self._cache[index] if self._cache is not None else self._load(index)
        s, p = self.scale, self.data.patch if patch is None else patch
        if lq is not None:
            lq = _pad_to(lq, p)
            hq = _pad_to(hq, p * s)
            y, x = int(rng.integers(0, lq.shape[0] - p + 1)), int(rng.integers(0, lq.shape[1] - p + 1))
            lq_patch = _to_float(lq[y : y + p, x : x + p])
            hq_patch = _to_float(hq[y * s : (y + p) * s, x * s : (x + p) * s])
        else:
            side = p * s
            hq = _pad_to(hq, side)
            y, x = int(rng.integers(0, hq.shape[0] - side + 1)), int(rng.integers(0, hq.shape[1] - side + 1))
            hq_patch = _to_float(hq[y : y + side, x : x + side])
            if self.data.grey > 0 and rng.random() < self.data.grey:  # no draw when off: old runs replay
                luma = grey_luma(hq_patch)
                hq_patch = np.repeat(luma, 3, axis=2)
                lq_patch = np.repeat(degrade(luma, self.degradation.steps, self.degradation, rng), 3, axis=2)
            else:
                lq_patch = degrade(hq_patch, self.degradation.steps, self.degradation, rng)
        lq_patch, hq_patch = augment(lq_patch, hq_patch, rng, self.data.flip, self.data.rot90)
        return np.ascontiguousarray(lq_patch), np.ascontiguousarray(hq_patch)

    def __getitem__(self, key: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(lq, hq) float32 CHW arrays for ``(epoch, index)`` or ``(epoch, index, patch)``."""
        lq, hq = self.sample(*key)
        return np.ascontiguousarray(lq.transpose(2, 0, 1)), np.ascontiguousarray(hq.transpose(2, 0, 1))


def collate(samples: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack samples into (N, C, H, W) tensors with NumPy.

    NumPy copies on one thread; torch's ``stack`` would use the intra-op pool, whose barriers
    stall on a busy 2-core machine (docs/training.md).
    """
    import torch

    return torch.from_numpy(np.stack([s[0] for s in samples])), torch.from_numpy(np.stack([s[1] for s in samples]))


class ResumableSampler:
    """Endless data order of ``(epoch, index)`` keys, sharded like ``DistributedSampler``, resumable.

    Epoch *e* is ``DistributedSampler(shuffle=True, seed=seed)`` after ``set_epoch(e)``: a
    permutation from ``seed + e``, padded to a multiple of the world size, every ``world``-th index
    for this rank. ``start`` skips that many of this rank's keys, so a run resumed at iteration *i*
    with batch *b* continues at key ``i * b`` exactly.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1, start: int = 0) -> None:
        self.size, self.seed, self.rank, self.world, self.start = size, seed, rank, world, start
        self.per_epoch = math.ceil(size / world)

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's indices of one epoch."""
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(range(self.size), num_replicas=self.world, rank=self.rank, shuffle=True, seed=self.seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.start, self.per_epoch)
        while True:
            for index in self.epoch_indices(epoch)[offset:]:
                yield epoch, index
            epoch, offset = epoch + 1, 0


@dataclass(frozen=True)
class Stage:
    """A stretch of training from iteration ``start`` with one LQ patch side and batch per process."""

    start: int
    patch: int
    batch: int


def stages(data: DataSection) -> list[Stage]:
    """The progressive stages in order; one stage (``data.patch``, ``data.batch``) without them."""
    spans = data.progressive
    if not spans.iterations:
        return [Stage(0, data.patch, data.batch)]
    starts = itertools.accumulate(spans.iterations[:-1], initial=0)
    return [Stage(start, p, b) for start, p, b in zip(starts, spans.patch, spans.batch)]


def stage_index(data: DataSection, iteration: int) -> int:
    """The stage of the update at 0-based ``iteration`` (past the last span: the last stage)."""
    return sum(1 for stage in stages(data)[1:] if iteration >= stage.start)


def samples_before(data: DataSection, iteration: int) -> int:
    """How many samples of its data order a process uses before 0-based ``iteration``."""
    bounds = stages(data)
    ends = [stage.start for stage in bounds[1:]] + [iteration]
    return sum(max(0, min(iteration, end) - stage.start) * stage.batch for stage, end in zip(bounds, ends))


class StageBatchSampler:
    """Endless batches of ``(epoch, index, patch)`` keys, one per iteration from ``start_iteration``.

    The keys are this rank's :class:`ResumableSampler` order, cut into batches of the size of each
    iteration's stage; so the keys of iteration *i* depend only on the seed, rank, world size and
    stages, and a resumed loader starts at key :func:`samples_before` (i).
    """

    def __init__(self, data: DataSection, size: int, seed: int, rank: int = 0, world: int = 1, start_iteration: int = 0) -> None:
        self.data, self.start_iteration = data, start_iteration
        self.order = ResumableSampler(size, seed, rank, world, start=samples_before(data, start_iteration))

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        bounds = stages(self.data)
        keys = iter(self.order)
        for iteration in itertools.count(self.start_iteration):
            stage = bounds[stage_index(self.data, iteration)]
            yield [(epoch, index, stage.patch) for epoch, index in itertools.islice(keys, stage.batch)]


def make_loader(dataset: TrainDataset, world: int, start_iteration: int) -> Iterator:
    """An endless iterator of (lq, hq) batches, one per iteration from ``start_iteration``.

    Batch size and patch side follow ``data.progressive`` (else ``data.batch``/``data.patch``);
    ``data.workers`` loader processes; this rank's shard of the data order.
    """
    from torch.utils.data import DataLoader

    batches = StageBatchSampler(dataset.data, len(dataset), dataset.seed, dataset.rank, world, start_iteration)
    workers = dataset.data.workers
    loader = DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_sampler=batches,  # type: ignore[arg-type]
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=workers > 0,
    )
    return iter(loader)


MIXUP_STREAM = 1
"""Spawn key that keeps the mixup generators apart from the sample generators."""


def mixup_rng(seed: int, rank: int, iteration: int) -> np.random.Generator:
    """The generator of the mixup draw of ``iteration`` on ``rank`` (recomputed on resume)."""
    return np.random.default_rng(np.random.SeedSequence((seed, rank, iteration), spawn_key=(MIXUP_STREAM,)))


def draw_mixup(mixup: MixupSection, batch: int, rng: np.random.Generator) -> tuple[float, np.ndarray] | None:
    """None (no mixing, probability 1 − ``prob``) or λ ~ Beta(alpha, alpha) and a permutation of the batch."""
    if rng.random() >= mixup.prob:
        return None
    return float(rng.beta(mixup.alpha, mixup.alpha)), rng.permutation(batch)


def apply_mixup(
    lq: torch.Tensor, hq: torch.Tensor, mixup: MixupSection, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a batch with a permutation of itself (same λ and permutation for LQ and HQ), or return it as is.

    Args:
        lq: (N, C, h, w) LQ batch.
        hq: (N, C, H, W) HQ batch.
        mixup: probability and Beta parameter.
        rng: the draw's generator (:func:`mixup_rng`).
    """
    import torch

    draw = draw_mixup(mixup, lq.shape[0], rng)
    if draw is None:
        return lq, hq
    lam, perm = draw
    order = torch.from_numpy(perm).to(lq.device)
    return lam * lq + (1.0 - lam) * lq[order], lam * hq + (1.0 - lam) * hq[order]


@dataclass(frozen=True)
class ValImage:
    """A validation pair: uint8 HWC RGB LQ and the HQ cropped to match."""

    name: str
    lq: np.ndarray
    hq: np.ndarray


def load_val_set(val: ValSet, degradation: DegradationSection) -> list[ValImage]:
    """Load a validation set into memory.

    With an LQ folder the pairs are matched by name and the HQ cropped to ``scale`` × LQ (top-left).
    Without one the training degradation is applied with a fixed seed per image, quantised to uint8
    (bicubic exactly as the benchmarks' LR).
    """
    s = degradation.scale
    images = []
    if val.lq:
        for hq_path, lq_path in pair_folders(val.hq, val.lq, s):
            lq, hq = read_rgb8(lq_path), read_rgb8(hq_path)
            images.append(ValImage(hq_path.stem, lq, fit_pair(hq, lq, s, hq_path, lq_path)))
        return images
    for index, hq_path in enumerate(list_images(val.hq)):
        hq = read_rgb8(hq_path)
        check_scale_size(hq, s, hq_path)
        hq = crop_to_scale(hq, s)
        if tuple(degradation.steps) == ("bicubic",):
            lq = bicubic_lr(hq, s)
        else:
            rng = np.random.default_rng((0, index))
            lq_f = degrade(_to_float(hq), degradation.steps, degradation, rng)
            lq = np.clip(np.floor(lq_f * 255.0 + 0.5), 0, 255).astype(np.uint8)
        images.append(ValImage(hq_path.stem, lq, hq))
    return images
