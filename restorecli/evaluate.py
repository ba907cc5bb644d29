"""Benchmark evaluation with the conventions of the papers (the report it returns: ``restorecli.eval_report``).

Super-resolution (the convention of the MaIR/BasicSR test code): LR from the set's ``LR_bicubic/X{s}`` or, failing that,
MATLAB-bicubic ``imresize(GT, 1/s)`` of the ground truth cropped to a multiple of s; the ground truth
is cropped to ``s × LR size``; output clamped to [0, 1] and quantised to uint8; PSNR/SSIM on the
BT.601 Y channel with ``crop_border = s``.

Colour denoising (as MaIR's denoising test code): noisy = GT/255 + N(0, (σ/255)²) drawn over the (H, W, 3) **BGR**
array right after seeding NumPy with 0, for every image; float, not clipped, not quantised.
Metrics on RGB (the literature's headline) and on Y (what MaIR's own test configs report).

Deblurring, dehazing and real-noise denoising (``--task deblur|dehaze|realnoise``): inputs synthesised from the
clean images with the training degradations at fixed ranges, seeded per image name (``restorecli.eval_synthetic``),
quantised to uint8; metrics on RGB and Y, headline RGB, no crop. Baselines: the degraded input itself and, for
dehazing, the dark channel prior (``restorecli.dark_channel_prior``).

Inference follows one of the protocols of ``restorecli.eval_protocols``. The network runs without autograd (``torch.no_grad``; not ``inference_mode``, whose tensors, once
cached by a model, would break a later training step in the same process, for no measurable gain).
The time of an image is its inference alone (not reading, imresize or metrics); one-time costs
(loading or compiling the scan kernel, a warm-up pass, the blended protocol's tile measurement)
come first and are reported as ``setup_seconds``. Each image also reports its forward passes
(``forwards``): 1 for ``whole``, one per tile for the tiled protocols, times 8 under the
self-ensemble.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from restorecli import interrupts
from restorecli.datasets import DatasetSpec, Sample, image_key, list_samples
from restorecli.errors import ImageReadError, UsageError
from restorecli.eval_protocols import PROTOCOLS, ProtocolRunner, synchronise
from restorecli.eval_protocols import tiled_official as tiled_official  # part of this module's API
from restorecli.eval_report import ComparisonRow, EvalReport, ImageResult, zoomed_row
from restorecli.eval_synthetic import GENERATOR, SYNTHETIC_TASKS, synthesise
from restorecli.imresize import imresize
from restorecli.io import quantize_to_uint8, read_rgb8
from restorecli.metrics import psnr, ssim

if TYPE_CHECKING:
    import torch

    from restorecli.models.descriptor import LoadedModel

BASELINES = ("bicubic", "noisy", "degraded", "dcp")
EVAL_TASKS = ("sr", "denoise", *SYNTHETIC_TASKS)
"""Every task ``restore eval`` scores: the benchmarks' SR and Gaussian denoising, and the synthetic held-out ones."""
_COMPARISON_IMAGES = 3


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how.

    Attributes:
        task: ``sr``, ``denoise``, or a synthetic held-out task: ``deblur``, ``dehaze``, ``realnoise``.
        scale: SR factor (1 for denoising).
        sigma: Noise level on the [0, 255] scale (denoising).
        protocol: One of :data:`PROTOCOLS`.
        ensemble: 8-fold self-ensemble (MaIR+).
        crop_border: Border removed before the metrics; None means the scale for SR, 0 otherwise.
        lr_from_hr: Generate LR with :func:`imresize` even when the set ships LR images.
        baseline: Instead of a model: ``bicubic`` (SR), ``noisy`` (denoising), ``degraded`` (the
            synthetic input itself) or ``dcp`` (dark channel prior, dehazing).
        tile: Tile side of the ``blended`` protocol in input pixels (None: automatic, 0: whole image).
        overlap: Tile overlap of the ``blended`` protocol (None: the tool's default).
        device: ``auto|cpu|cuda|cuda:N``.
        precision: ``fp32|bf16|fp16`` (autocast; the papers' numbers are fp32).
        limit: Evaluate only the first ``limit`` images (quick checks).
    """

    task: str = "sr"
    scale: int = 1
    sigma: float | None = None
    protocol: str = "blended"
    ensemble: bool = False
    crop_border: int | None = None
    lr_from_hr: bool = False
    baseline: str | None = None
    tile: int | None = None
    overlap: int | None = None
    device: str = "auto"
    precision: str = "fp32"
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.task not in EVAL_TASKS:
            raise UsageError(f"task must be one of {', '.join(EVAL_TASKS)}, got {self.task!r}")
        if self.protocol not in PROTOCOLS:
            raise UsageError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.task == "sr" and self.scale < 2:
            raise UsageError(f"super-resolution needs --scale 2, 3 or 4 (or more), got {self.scale}")
        if self.task == "denoise" and (self.sigma is None or self.sigma < 0):
            raise UsageError(f"denoising needs a noise level --sigma (e.g. 15, 25, 50), got {self.sigma}")
        if self.synthetic:
            check_synthetic_options(self.task, scale=self.scale, sigma=self.sigma)
        expected = baselines_of(self.task)
        if self.baseline is not None and self.baseline not in expected:
            use = " or ".join(f"--baseline {b}" for b in expected)
            raise UsageError(f"--baseline {self.baseline} does not fit task {self.task}; use {use}")

    @property
    def synthetic(self) -> bool:
        """Whether the inputs are synthesised (``restorecli.eval_synthetic``)."""
        return self.task in SYNTHETIC_TASKS

    @property
    def baseline_is_input(self) -> bool:
        """Whether the baseline scores the (upscaled) degraded input itself rather than a method."""
        return self.baseline in ("bicubic", "noisy", "degraded")

    @property
    def border(self) -> int:
        """The crop border actually used."""
        if self.crop_border is not None:
            return self.crop_border
        return self.scale if self.task == "sr" else 0


def check_synthetic_options(
    task: str, *, scale: int | None, sigma: float | None, dataset: DatasetSpec | None = None
) -> None:
    """Refuse options that contradict a synthetic held-out task (a scale, a noise level, a grey set).

    Raises:
        UsageError: Naming the option to drop.
    """
    if scale not in (None, 1):
        raise UsageError(f"--task {task} restores at the same size: drop --scale {scale}")
    if sigma is not None:
        raise UsageError(
            f"--sigma sets the Gaussian noise of --task denoise; --task {task} synthesises its own degradation "
            "(docs/degradations.md): drop --sigma"
        )
    if dataset is not None and dataset.grey:
        raise UsageError(f"{dataset.name} is a grey set; --task {task} synthesises from colour images (e.g. Kodak24)")


def baselines_of(task: str) -> tuple[str, ...]:
    """The baselines that fit a task."""
    if task == "sr":
        return ("bicubic",)
    if task == "denoise":
        return ("noisy",)
    return ("degraded", "dcp") if task == "dehaze" else ("degraded",)


@dataclass(frozen=True)
class ModelInfo:
    """What the report says about the model (or baseline) that produced the outputs."""

    name: str
    weights_sha256: str | None = None
    arch: str | None = None


# ----------------------------------------------------------------------------- images


def add_noise(clean: np.ndarray, sigma: float) -> np.ndarray:
    """The official test-time noisy image: seeded with 0 for every image, drawn in BGR order.

    Args:
        clean: (H, W, C) uint8 RGB (or grey) image.
        sigma: Noise standard deviation on the [0, 255] scale.

    Returns:
        (H, W, C) float32 noisy image on the [0, 1] scale, not clipped.
    """
    # A fresh RandomState(0) draws the same stream as np.random.seed(0); np.random.normal(...).
    noise = np.random.RandomState(0).normal(0.0, sigma / 255.0, clean.shape)
    if clean.shape[2] == 3:
        noise = noise[..., ::-1]  # the protocol draws over the BGR array; ours is RGB
    return (clean.astype(np.float32) / np.float32(255.0) + noise).astype(np.float32)


def _metrics(out: np.ndarray, gt: np.ndarray, border: int) -> dict[str, float]:
    return {
        "psnr_y": psnr(out, gt, border, y_channel=True),
        "ssim_y": ssim(out, gt, border, y_channel=True),
        "psnr_rgb": psnr(out, gt, border),
        "ssim_rgb": ssim(out, gt, border),
    }


# ----------------------------------------------------------------------------- inference


def make_runner(model: torch.nn.Module, config: EvalConfig, device: str) -> ProtocolRunner:
    """The runner of ``config``'s protocol (see :class:`ProtocolRunner`)."""
    return ProtocolRunner(
        model,
        protocol=config.protocol,
        scale=config.scale if config.task == "sr" else 1,
        device=device,
        precision=config.precision,
        ensemble=config.ensemble,
        tile=config.tile,
        overlap=config.overlap,
    )


def _infer(run: Callable[[torch.Tensor], torch.Tensor], img: np.ndarray, channels: int) -> np.ndarray:
    """Run a float HWC [0, 1] image through the model and return the uint8 HWC output."""
    import torch

    src = img
    if src.shape[2] == 1 and channels == 3:
        src = np.repeat(src, 3, axis=2)  # grey set, colour model
    x = torch.from_numpy(np.ascontiguousarray(src.transpose(2, 0, 1)))[None].float()
    y = run(x)[0].numpy().transpose(1, 2, 0)
    if img.shape[2] == 1 and y.shape[2] == 3:
        y = y.mean(axis=2, keepdims=True)
    return quantize_to_uint8(y)


# ----------------------------------------------------------------------------- evaluation


def evaluate(
    samples: Sequence[Sample],
    config: EvalConfig,
    *,
    model: LoadedModel | torch.nn.Module | None = None,
    model_info: ModelInfo | None = None,
    dataset: DatasetSpec | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> EvalReport:
    """Score a model (or the config's baseline) on a list of samples.

    Args:
        samples: Ground truth (and LR) files, e.g. from :func:`restorecli.datasets.list_samples`.
        config: Task, protocol and metric options.
        model: A loaded model (``restorecli.load_model``) or a bare network (float NCHW RGB
            [0, 1] in and out); None with ``config.baseline``.
        model_info: Name and weights digest for the report.
        dataset: The set, for the report.
        progress: Called as ``progress(done, total, name)`` after each image.

    Returns:
        The report. Ctrl-C, SIGTERM or SIGHUP after the first image ends the run early with a
        report of the images done (``stop_signal`` set); before it, the interruption propagates.

    Raises:
        UsageError: Neither a model nor a baseline.
        ImageReadError: No image could be scored. One unreadable image, or an LR that does not
            fit its ground truth, leaves that image out: it is listed under ``failed`` in the
            report's meta, and the means cover the others.
    """
    if (model is None) == (config.baseline is None):
        raise UsageError("evaluate either a model or a baseline (--baseline), not both or neither")
    grey = bool(dataset and dataset.grey)
    samples = list(samples)[: config.limit] if config.limit else list(samples)
    channels = 3
    if model is not None:
        from restorecli.models import LoadedModel, run_facts

        channels = run_facts(model).in_channels
        model = model.module if isinstance(model, LoadedModel) else model
    setup = _prepare(model, config) if model is not None else None
    results: list[ImageResult] = []
    shown: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, dict[str, float]]] = []
    lr_sources: set[str] = set()
    stop_signal = None
    failed: list[dict[str, str]] = []
    with _count_forwards(model) as forwards:
        try:
            for done, sample in enumerate(samples, 1):
                try:
                    result, degraded, out, gt, scores = _score_sample(
                        sample, config, grey, setup, channels, forwards, lr_sources
                    )
                except ImageReadError as error:  # one bad file: reported, the others are scored
                    failed.append({"name": sample.name, "error": str(error)})
                else:
                    results.append(result)
                    if len(shown) < _COMPARISON_IMAGES:
                        shown.append((sample.name, degraded, out, gt, scores))
                if progress is not None:
                    progress(done, len(samples), sample.name)
        except KeyboardInterrupt as error:  # Ctrl-C, SIGTERM, SIGHUP (restorecli.interrupts)
            if not results:
                raise
            stop_signal = interrupts.handled(error)  # the report covers the images done
            shown.clear()  # no comparison image: whoever stopped the run wants it to end now
    _raise_if_none_scored(failed, results)
    # After the loop: imresize's BLAS threads stay busy for a while after a call, and would
    # compete with the next image's forward pass for the cores.
    crops = []
    for name, degraded, out, gt, scores in shown:
        shown_input = out if config.baseline_is_input else _shown_input(degraded, config)
        crops.append(_comparison_crops(name, shown_input, out, gt, config, scores, baseline=config.baseline_is_input))
    meta = _meta(config, model_info, dataset, setup, lr_sources, results)
    meta["images_total"] = len(samples)
    _note_failures(meta, failed, len(samples))
    meta["stopped_by"] = None if stop_signal is None else interrupts.signal_name(stop_signal)
    if stop_signal is not None:
        meta["notes"].append(
            f"Interrupted ({meta['stopped_by']}) after {len(results)} of {len(samples)} images; the means cover those."
        )
    return EvalReport(meta, results, crops, stop_signal=stop_signal)


@dataclass(frozen=True)
class _Setup:
    """The inference side of an evaluation, prepared before the first image is timed."""

    run: ProtocolRunner
    device: str
    backend: str | None
    """Scan backend label (see ``restorecli.inference.scan_backend_label``)."""
    seconds: float
    """Moving the model, loading the scan kernel, the warm-up pass and the tile measurement."""


def _prepare(model: torch.nn.Module, config: EvalConfig) -> _Setup:
    """Device, runner, scan backend and a warm-up pass: the one-time costs, timed apart from the
    images so that the time per image is what a forward pass of that size costs."""
    from restorecli.inference import resolve_device, scan_backend_label

    started = time.perf_counter()
    device = str(resolve_device(config.device))
    model = model.to(device).eval()
    run = make_runner(model, config, device)
    backend = scan_backend_label(model, device)
    run.warm_up()
    synchronise(device)
    return _Setup(run, device, backend, time.perf_counter() - started)


def _score_sample(
    sample: Sample,
    config: EvalConfig,
    grey: bool,
    setup: _Setup | None,
    channels: int,
    forwards: Callable[[], int],
    lr_sources: set[str],
) -> tuple[ImageResult, np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Degrade, restore and score one image: its result, degraded input, output, ground truth and scores."""
    gt = read_rgb8(sample.gt, grey=grey)
    if config.task == "sr":
        gt, degraded, source = _sr_pair(sample, gt, config, grey)
        lr_sources.add(source)
    elif config.task == "denoise":
        degraded = add_noise(gt, config.sigma or 0.0)
    else:
        degraded = synthesise(config.task, gt, sample.name)
    if config.baseline_is_input:  # bicubic upscaling of the LR, or the degraded image itself
        out, seconds = _shown_input(degraded, config), 0.0
    else:
        start = time.perf_counter()
        x = degraded if config.task == "denoise" else degraded.astype(np.float32) / 255.0
        out = _dehaze_dcp(x) if setup is None else _infer(setup.run, x, channels)
        if setup is not None:
            synchronise(setup.device)
        seconds = time.perf_counter() - start
    if out.shape != gt.shape:
        raise ImageReadError(f"{sample.name}: output is {out.shape} but the ground truth is {gt.shape}")
    scores = _metrics(out, gt, config.border)
    size = {"height": gt.shape[0], "width": gt.shape[1]}
    return ImageResult(sample.name, seconds=seconds, **size, forwards=forwards(), **scores), degraded, out, gt, scores


def _raise_if_none_scored(failed: list[dict[str, str]], results: list[ImageResult]) -> None:
    """No image could be scored: there is no report to give, only the first reason."""
    if failed and not results:
        first = failed[0]["error"]
        if len(failed) == 1:
            raise ImageReadError(first)
        raise ImageReadError(f"none of the {len(failed)} images could be scored: {first} (and {len(failed) - 1} more)")


def _note_failures(meta: dict[str, Any], failed: list[dict[str, str]], total: int) -> None:
    """The images that could not be scored, in the report and in a note (the means leave them out)."""
    meta["failed"] = failed
    if failed:
        names = ", ".join(item["name"] for item in failed[:5]) + (", ..." if len(failed) > 5 else "")
        meta["notes"].append(
            f"{len(failed)} of {total} images could not be scored ({names}; reasons under 'failed'); "
            f"the means cover the other {total - len(failed)}."
        )


@contextmanager
def _count_forwards(model: torch.nn.Module | None) -> Iterator[Callable[[], int]]:
    """Count the network's forward passes; yields a function returning the count since its last call."""
    calls = [0]

    def count(*_: object) -> None:
        calls[0] += 1

    def take() -> int:
        taken, calls[0] = calls[0], 0
        return taken

    handle = model.register_forward_pre_hook(count) if model is not None else None
    try:
        yield take
    finally:
        if handle is not None:
            handle.remove()


def _shown_input(degraded: np.ndarray, config: EvalConfig) -> np.ndarray:
    """The input as the baseline scores it and the comparison shows it: the LR upscaled with
    MATLAB-bicubic imresize, the noisy image quantised to uint8, or the synthetic input as it is."""
    if config.task == "sr":
        return imresize(degraded, config.scale)
    return quantize_to_uint8(degraded) if config.task == "denoise" else degraded


def _dehaze_dcp(hazy: np.ndarray) -> np.ndarray:
    """The dark-channel-prior baseline on a float HWC [0, 1] image, as uint8."""
    from restorecli.dark_channel_prior import dehaze_dark_channel_prior

    return quantize_to_uint8(dehaze_dark_channel_prior(hazy))


def _sr_pair(sample: Sample, gt: np.ndarray, config: EvalConfig, grey: bool) -> tuple[np.ndarray, np.ndarray, str]:
    s = config.scale
    if sample.lr is not None and not config.lr_from_hr:
        lr = read_rgb8(sample.lr, grey=grey)
        h, w = lr.shape[:2]
        if h * s > gt.shape[0] or w * s > gt.shape[1] or gt.shape[0] - h * s >= s or gt.shape[1] - w * s >= s:
            raise ImageReadError(
                f"{sample.lr.name} is {w}x{h}, which does not fit x{s} of its ground truth "
                f"{sample.gt.name} ({gt.shape[1]}x{gt.shape[0]}); expected "
                f"{gt.shape[1] // s}x{gt.shape[0] // s}"
            )
        return gt[: h * s, : w * s], lr, "LR_bicubic"
    if gt.shape[0] < s or gt.shape[1] < s:
        raise ImageReadError(
            f"{sample.gt.name} is {gt.shape[1]}x{gt.shape[0]}: too small for x{s} "
            f"(a ground truth needs at least {s}x{s} pixels to make a low-resolution input)"
        )
    gt = gt[: gt.shape[0] - gt.shape[0] % s, : gt.shape[1] - gt.shape[1] % s]
    return gt, imresize(gt, 1 / s), "imresize"


def _meta(
    config: EvalConfig,
    info: ModelInfo | None,
    dataset: DatasetSpec | None,
    setup: _Setup | None,
    lr_sources: set[str],
    results: Sequence[ImageResult],
) -> dict[str, Any]:
    sr = config.task == "sr"
    headline = "y" if sr else "rgb"
    notes = []
    if dataset is not None and dataset.note:
        notes.append(dataset.note)
    if config.task == "denoise" and not (dataset is not None and dataset.grey):
        notes.append(
            "Headline is RGB PSNR/SSIM, as the colour-denoising literature reports; MaIR's own test "
            "configs compute Y-channel metrics, which are higher and not comparable."
        )
    if dataset is not None and dataset.grey:
        notes.append("Grey set: the 'rgb' metrics are on the single grey channel.")
    if config.synthetic:
        notes.append(
            f"Synthetic held-out inputs ({GENERATOR}): {SYNTHETIC_TASKS[config.task].description}; seeded per image "
            "name, made from the test set's clean images (docs/degradations.md)."
        )
    if config.baseline == "dcp":
        notes.append("Dark channel prior (He et al.): 15x15 dark channel, omega 0.95, guided-filter refinement, t >= 0.1.")
    if config.baseline == "bicubic":
        notes.append(
            "The SR papers' 'Bicubic' rows were made on the Y channel alone with float resizing (and grey "
            "images scored without the 16-235 scaling); this baseline is bicubic on the uint8 RGB LR, "
            "scored like the models (Set5 x4: 28.43/0.8111 here vs 28.42/0.8104 cited). See docs/eval_baselines.md."
        )
    return {
        "dataset": dataset.name if dataset else None,
        "task": config.task,
        "scale": config.scale if sr else 1,
        "sigma": config.sigma if config.task == "denoise" else None,
        "degradation": GENERATOR if config.synthetic else None,
        "model": info.name if info else (config.baseline or "unknown"),
        "arch": info.arch if info else None,
        "weights_sha256": info.weights_sha256 if info else None,
        "baseline": config.baseline,
        "protocol": "baseline" if config.baseline else config.protocol,
        "ensemble": config.ensemble,
        "precision": config.precision if setup is not None else None,
        "tile": setup.run.tile if setup is not None else None,
        "forwards_per_image": float(np.mean([r.forwards for r in results])) if setup and results else None,
        "setup_seconds": setup.seconds if setup is not None else None,
        "device": setup.device if setup is not None else "cpu",
        "backend": setup.backend if setup is not None else None,
        "lr_source": ",".join(sorted(lr_sources)) if sr else None,
        "crop_border": config.border,
        "headline": headline,
        "metrics_convention": "uint8 outputs; Y = BT.601 (16-235, unrounded); SSIM 11x11 Gaussian sigma 1.5, valid",
        "notes": notes,
        "date": time.strftime("%Y-%m-%d"),
    }


# ----------------------------------------------------------------------------- scoring existing outputs


def score_dirs(
    pred_dir: Path,
    gt_dir: Path,
    *,
    scale: int | None = None,
    crop_border: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> EvalReport:
    """Score images produced by any tool against ground truth, with the same metric code.

    Predictions pair with ground truth by file stem, allowing a suffix (``baby_SwinIR.png``,
    ``babyx4_out.png`` pair with ``baby.png``). A ground truth up to ``scale - 1`` pixels larger
    than its prediction is cropped top-left (the SR convention).

    Args:
        pred_dir: Folder of restored images.
        gt_dir: Folder of ground-truth images.
        scale: SR scale: default crop border and the allowed size difference.
        crop_border: Border removed before the metrics (default: ``scale`` or 0).
        progress: Called as ``progress(done, total, name)`` after each image.

    A ground truth without prediction, an unreadable file or sizes that differ leave that image
    out: it is listed under ``failed`` in the report's meta, and the means cover the others.

    Raises:
        ImageReadError: Empty folders, or no image that could be scored.
    """
    from restorecli.datasets import IMAGE_SUFFIXES

    def images(folder: Path) -> list[Path]:
        if not Path(folder).is_dir():
            raise ImageReadError(f"expected a folder of images at {folder}, found none")
        return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    preds, gts = images(pred_dir), images(gt_dir)
    if not gts:
        raise ImageReadError(f"expected ground-truth images in {gt_dir}, found none")
    s = scale or 1
    border = crop_border if crop_border is not None else (s if s > 1 else 0)
    results = []
    failed: list[dict[str, str]] = []
    for done, gt_path in enumerate(gts, 1):
        key = image_key(gt_path.stem)
        try:
            results.append(_score_pair(key, gt_path, preds, pred_dir, s, border))
        except ImageReadError as error:  # one missing or bad file: reported, the others are scored
            failed.append({"name": key, "error": str(error)})
        if progress is not None:
            progress(done, len(gts), key)
    _raise_if_none_scored(failed, results)
    meta = {
        "dataset": str(gt_dir),
        "task": "sr" if s > 1 else "score",
        "scale": s,
        "model": str(pred_dir),
        "protocol": "scored outputs",
        "crop_border": border,
        "headline": "y" if s > 1 else "rgb",
        "metrics_convention": "uint8 images; Y = BT.601 (16-235, unrounded); SSIM 11x11 Gaussian sigma 1.5, valid",
        "notes": [],
        "date": time.strftime("%Y-%m-%d"),
        "images_total": len(gts),
    }
    _note_failures(meta, failed, len(gts))
    return EvalReport(meta, results)


def _score_pair(key: str, gt_path: Path, preds: list[Path], pred_dir: Path, scale: int, border: int) -> ImageResult:
    """Scores of the prediction that pairs with one ground truth."""
    pred_path = _match_prediction(key, gt_path.stem, preds)
    if pred_path is None:
        raise ImageReadError(f"no prediction for {gt_path.name} in {pred_dir}; expected a file named like {key}.png")
    pred, gt = read_rgb8(pred_path), read_rgb8(gt_path)
    ph, pw = pred.shape[:2]
    if not (0 <= gt.shape[0] - ph < scale and 0 <= gt.shape[1] - pw < scale):
        raise ImageReadError(
            f"{pred_path.name} is {pw}x{ph} but its ground truth {gt_path.name} is {gt.shape[1]}x{gt.shape[0]}"
        )
    gt = gt[:ph, :pw]
    return ImageResult(key, seconds=0.0, height=ph, width=pw, **_metrics(pred, gt, border))


def _match_prediction(key: str, stem: str, preds: list[Path]) -> Path | None:
    for candidate in (stem, key):
        exact = [p for p in preds if p.stem == candidate]
        if exact:
            return exact[0]
    prefixed = [p for p in preds if p.stem.startswith(key) and p.stem[len(key) : len(key) + 1] in ("_", "-", "x", ".")]
    return prefixed[0] if len(prefixed) == 1 else None


# ----------------------------------------------------------------------------- the comparison picture


def _comparison_crops(
    name: str,
    shown_input: np.ndarray,
    out: np.ndarray,
    gt: np.ndarray,
    config: EvalConfig,
    scores: dict[str, float],
    *,
    baseline: bool,
) -> ComparisonRow:
    y = config.task == "sr"
    key = "psnr_y" if y else "psnr_rgb"
    border = config.border
    in_psnr = psnr(shown_input, gt, border, y_channel=y)
    if config.task == "sr":
        label_in = "bicubic"
    elif config.task == "denoise":
        label_in = f"noisy s={config.sigma:g}"
    else:
        label_in = SYNTHETIC_TASKS[config.task].input_label

    panels = [(shown_input, f"{name} {label_in} {in_psnr:.2f}dB")]
    if not baseline:
        label_out = "DCP" if config.baseline == "dcp" else "output"
        panels.append((out, f"{label_out} {scores[key]:.2f}dB"))
    panels.append((gt, "ground truth"))
    return zoomed_row(name, panels, gt)


def evaluate_dataset(
    dataset: DatasetSpec,
    folder: Path,
    config: EvalConfig,
    *,
    model: LoadedModel | torch.nn.Module | None = None,
    model_info: ModelInfo | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> EvalReport:
    """:func:`evaluate` on a set folder (see :func:`restorecli.datasets.locate_dataset`)."""
    if config.synthetic:
        check_synthetic_options(config.task, scale=config.scale, sigma=config.sigma, dataset=dataset)
    elif config.task not in dataset.tasks:
        raise UsageError(f"{dataset.name} is a test set for {'/'.join(dataset.tasks)}, not for {config.task}")
    samples = list_samples(folder, config.scale if config.task == "sr" else None, use_lr=not config.lr_from_hr)
    return evaluate(samples, config, model=model, model_info=model_info, dataset=dataset, progress=progress)
