"""The training loop: optimisation, schedule, EMA, validation, checkpoints, exact resume.

A training checkpoint is a dict readable with ``torch.load(weights_only=True)``::

    {"format": "restorecli-train", "arch": ..., "config": {...network...}, "name": ...,
     "params": state_dict, "params_ema": state_dict (EMA runs only), "optimizer": ...,
     "iteration": i, "train_config": {...}, "rng": [per-rank torch/CUDA states],
     "best": {"metric": psnr, "iteration": j}, "elapsed": seconds, "cpu_seconds": seconds}

so ``restore sr --weights latest.pth`` loads it directly (``params_ema`` is preferred).

``metrics.jsonl`` records wall time (``time``) and the CPU time of this process (``cpu_s``, all
threads, validation included) so that curves can be drawn against CPU-minutes, the budget that
the CPU recipes in docs/training.md are sized by; both carry over a resume.

Resume is exact: the learning rate and the progressive stage are pure functions of the iteration,
the data order and every sample are pure functions of (seed, rank, epoch, index), the mixup draw
of (seed, rank, iteration) (see ``restorecli.train.data``), and the torch RNG (drop-path) is
restored per rank. So stopping at iteration *i* and resuming gives the same loss sequence as an
uninterrupted run (on the same device, thread count and backend).

The module is longer than most on purpose: the exact-resume guarantee spans the step, the EMA,
validation, the checkpoint format and the stop handling; they read and write the same state, and
keeping them in one file keeps that state's shape in one view.
"""

from __future__ import annotations

import dataclasses

import json
import logging
import math
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from restorecli import interrupts
from restorecli.errors import CheckpointError, ConfigError, ImageWriteError, RestoreError, TrainingError
from restorecli.metrics.ssim import WINDOW_SIZE
from restorecli.train import distributed as dist_utils
from restorecli.train.config import (
    ScheduleSection,
    TrainConfig,
    config_from_mapping,
    config_to_mapping,
)
from restorecli.train.data import (
    TrainDataset,
    ValImage,
    apply_mixup,
    load_val_set,
    make_loader,
    mixup_rng,
    stage_index,
    stages,
)
from restorecli.train.losses import make_loss

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "restorecli-train"


@dataclass(frozen=True)
class StepReport:
    """What the progress display shows after each iteration."""

    iteration: int
    total: int
    loss: float
    lr: float
    its: float
    eta_s: float


@dataclass(frozen=True)
class TrainResult:
    """Summary of a finished, stopped or interrupted run."""

    iteration: int
    total: int
    output_dir: Path
    best_metric: float | None
    best_iteration: int | None
    interrupted: bool
    wall_s: float
    losses: tuple[float, ...]
    stop_signal: int | None = None
    """The signal that interrupted the run (SIGINT for Ctrl-C), or None."""


def lr_factor(schedule: ScheduleSection, iteration: int) -> float:
    """Multiplier of the base learning rate for the update made at 0-based ``iteration``."""
    if schedule.warmup and iteration < schedule.warmup:
        return (iteration + 1) / schedule.warmup
    if schedule.type == "multistep":
        return schedule.gamma ** sum(1 for m in schedule.milestones if iteration >= m)
    start = schedule.warmup + schedule.cosine_start
    span = max(1, schedule.iterations - start)
    progress = min(1.0, max(0.0, (iteration - start) / span))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def learning_rate(config: TrainConfig, iteration: int) -> float:
    """Learning rate of the update at ``iteration`` (cosine decays to ``schedule.eta_min``)."""
    base, factor = config.optim.lr, lr_factor(config.schedule, iteration)
    if config.schedule.type == "cosine" and not (config.schedule.warmup and iteration < config.schedule.warmup):
        eta = min(config.schedule.eta_min, base)
        return eta + (base - eta) * factor
    return base * factor


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam (BasicSR recipes) or AdamW (realDenoising recipes; decay on all parameters)."""
    cls = torch.optim.Adam if config.optim.type == "adam" else torch.optim.AdamW
    params = [p for p in model.parameters() if p.requires_grad]
    # The fused update is one kernel over all tensors instead of about ten operators per
    # tensor: on the CPU 1.1 instead of 6.6 ms a step for the bundled network's 154 tensors.
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64) for p in params)
    return cls(params, lr=config.optim.lr, betas=config.optim.betas, weight_decay=config.optim.weight_decay, fused=fused)


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through the package's atomic writer (no torn checkpoints)."""
    from restorecli.io import atomic_output

    with atomic_output(path, overwrite=True, error=CheckpointError) as temporary:
        torch.save(obj, temporary)


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a training checkpoint (weights_only) and check it holds the training state.

    Raises:
        CheckpointError: unreadable, or an inference-only file.
    """
    from restorecli.models.checkpoint import load_file

    path = Path(path)
    state, metadata = load_file(path)
    if metadata is not None or not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a restorecli training checkpoint (no training state to resume)")
    return state


RESUME_KEYS = ("arch", "config", "params", "optimizer", "iteration", "train_config", "best")
"""What ``--resume`` needs of a training checkpoint (``export`` needs fewer)."""


def prepare_output_dir(folder: Path) -> None:
    """Make the output folder, and check that files can be created in it, before any work is done.

    Raises:
        ConfigError: ``output.dir`` (or a folder above it) is a file.
        ImageWriteError: the folder cannot be made or written into.
    """
    blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ConfigError(f"output.dir {str(folder)!r}: {blocker} is a file, expected a folder (or a path to make one)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise ImageWriteError(f"output.dir {str(folder)!r}: cannot write into this folder: {error.strerror or error}") from None


class Ema:
    """Exponential moving average of the parameters (float32 shadow copies); buffers are copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow = decay * shadow + (1 - decay) * current."""
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                self.shadow[key].mul_(self.decay).add_(value.float(), alpha=1.0 - self.decay)
            else:
                self.shadow[key].copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights."""
        return self.shadow


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _gather_rng(info: dist_utils.DistInfo, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Every rank's RNG state (rank order), so each rank resumes its own stream."""
    mine = _rng_state(device)
    if not info.enabled:
        return [mine]
    import torch.distributed as dist

    states: list[Any] = [None] * info.world
    dist.all_gather_object(states, mine)
    return states


@torch.no_grad()
def validate(
    model: nn.Module, images: list[ValImage], device: torch.device, crop_border: int, y_channel: bool, with_ssim: bool
) -> dict[str, float]:
    """Mean PSNR (and SSIM) of the model's uint8-quantised outputs over a validation set."""
    from restorecli.io import quantize_to_uint8
    from restorecli.metrics import psnr, ssim

    was_training = model.training
    model.eval()
    scores: dict[str, list[float]] = {"psnr": [], "ssim": []}
    for image in images:
        lq = torch.from_numpy(image.lq).permute(2, 0, 1)[None].float().div(255.0).to(device)
        out = quantize_to_uint8(model(lq)[0].float().permute(1, 2, 0).cpu().numpy())
        scores["psnr"].append(psnr(out, image.hq, crop_border=crop_border, y_channel=y_channel))
        if with_ssim:
            scores["ssim"].append(ssim(out, image.hq, crop_border=crop_border, y_channel=y_channel))
    model.train(was_training)
    return {key: float(np.mean(values)) for key, values in scores.items() if values}


class _StopFlag:
    """First Ctrl-C, SIGTERM or SIGHUP asks the loop to stop after the current iteration (and
    write a resumable checkpoint); a second one aborts at once (``restorecli.interrupts``)."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._signals = interrupts.stop_signals(self._handle)

    def __enter__(self) -> _StopFlag:
        self._signals.__enter__()  # off the main thread nothing is installed: a signal aborts
        return self

    def _handle(self, signum: int) -> None:
        if self.requested:
            raise interrupts.Interrupted(signum)
        self.requested, self.signum = True, signum
        logger.warning(
            "%s: stopping after this iteration and writing a resumable checkpoint", interrupts.signal_name(signum)
        )

    def __exit__(self, *exc: object) -> None:
        self._signals.__exit__(*exc)


class _MetricsLog:
    """JSON lines in ``metrics.jsonl`` plus TensorBoard scalars when it is installed (rank 0 only)."""

    def __init__(self, folder: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.file = None
        self.writer = None
        if not enabled:
            return
        folder.mkdir(parents=True, exist_ok=True)
        self.file = (folder / "metrics.jsonl").open("a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                logger.debug("tensorboard not installed; JSON-lines metrics only")
            else:
                self.writer = SummaryWriter(str(folder / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled or self.file is None:
            return
        self.file.write(json.dumps(record, sort_keys=True) + "\n")
        self.file.flush()
        if self.writer is not None:
            step = record["iter"]
            for key, value in record.items():
                if key != "iter" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.writer is not None:
            self.writer.close()


def _build_model(config: TrainConfig, device: torch.device) -> nn.Module:
    from restorecli import models
    from restorecli.loading import load_model
    from restorecli.train.export import training_task

    model = models.build_arch(config.model.arch, config.model.config, device=device)
    if config.model.pretrained:
        # The one loading path: an official file, a restorecli checkpoint or safetensors.
        arch_config = dataclasses.asdict(config.model.config)
        architecture = (config.model.arch, arch_config)
        try:
            # No task check: a start may do another task (the deblur and dehaze recipes start from
            # the denoiser, restorecli/presets/restorecli-light-deblur-cpu.yml); the network must fit.
            start = load_model(config.model.pretrained, device="cpu", architecture=architecture)
        except CheckpointError:
            # A bare state dict of a network outside the model table is read as the one trained
            # here, which needs the run's task.
            task = training_task(config_to_mapping(config), config.model.arch, arch_config)
            start = load_model(config.model.pretrained, task=task, device="cpu", architecture=architecture)
        state = start.module.state_dict()
        if config.model.strict:
            models.load_checkpoint(model, state)
        else:
            # Official fine-tuning starts (x3/x4 from x2) load what fits and skip the rest.
            own = model.state_dict()
            fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
            model.load_state_dict(fitting, strict=False)
            logger.info("loaded %d of %d tensors from %s (strict: false)", len(fitting), len(own), config.model.pretrained)
    return model.train()


def train(
    config: TrainConfig,
    *,
    resume: str | Path | None = None,
    stop_at: int | None = None,
    progress: Callable[[StepReport], None] | None = None,
) -> TrainResult:
    """Train (or resume training) a network as configured.

    Args:
        config: the validated training config.
        resume: a training checkpoint to continue from (its iteration, weights, optimiser, EMA,
            RNG and best score; the data order follows from the seed).
        stop_at: stop after this iteration with a resumable ``latest.pth`` (the schedule still
            runs to ``schedule.iterations``).
        progress: called on rank 0 after every iteration.

    Returns:
        A summary; ``interrupted`` is true when stopped by Ctrl-C, SIGTERM or SIGHUP
        (``stop_signal`` says which).
    """
    from restorecli.inference import resolve_device

    if config.threads > 0:
        torch.set_num_threads(config.threads)
    info = dist_utils.from_environment()
    device = dist_utils.rank_device(info, resolve_device(config.device))
    dist_utils.setup(info, device)
    try:
        return _train(config, info, device, resume, stop_at, progress)
    finally:
        dist_utils.cleanup(info)


def _train(
    config: TrainConfig,
    info: dist_utils.DistInfo,
    device: torch.device,
    resume: str | Path | None,
    stop_at: int | None,
    progress: Callable[[StepReport], None] | None,
) -> TrainResult:
    started = time.perf_counter()
    cpu_started = time.process_time()
    out_dir = config.output_dir
    state = read_training_checkpoint(resume) if resume else None
    if state is not None:
        missing = [key for key in RESUME_KEYS if key not in state]
        if missing:
            expected = ", ".join(RESUME_KEYS)
            raise CheckpointError(f"{resume}: expected a training checkpoint with {expected}; it lacks {', '.join(missing)}")
    torch.manual_seed(config.seed + info.rank)  # per-rank stream (drop-path); data RNG is separate

    model = _build_model(config, device)
    if state is not None:
        if state["arch"] != config.model.arch or state["config"] != config_to_mapping(config)["model"]["config"]:
            raise ConfigError(f"{resume} was trained with a different network config than this config")
        model.load_state_dict(state["params"], strict=True)
    if info.is_main:
        # after the network is built (a config no network can have makes no folder) and before
        # the data is loaded (an unusable folder is named at once)
        prepare_output_dir(out_dir)
    ema = Ema(model, config.optim.ema) if config.optim.ema > 0 else None
    if ema is not None and state is not None and "params_ema" in state:
        ema.shadow = {k: v.to(device).float() for k, v in state["params_ema"].items()}
    optimizer = make_optimizer(config, model)
    start = 0
    best_metric: float | None = None
    best_iteration: int | None = None
    elapsed_before = 0.0
    cpu_before = 0.0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["iteration"])
        best_metric, best_iteration = state["best"].get("metric"), state["best"].get("iteration")
        elapsed_before = float(state.get("elapsed", 0.0))
        cpu_before = float(state.get("cpu_seconds", 0.0))
        rng = state.get("rng") or []
        if len(rng) == info.world:
            _set_rng_state(rng[info.rank], device)
        else:
            logger.warning("checkpoint has RNG states of %d ranks, this job has %d: reseeding", len(rng), info.world)
            torch.manual_seed(config.seed + info.rank + start)
    net = dist_utils.wrap(model, info, device)

    dataset = TrainDataset(config.data, config.degradation, config.seed, info.rank)
    if len(dataset) < config.data.batch:
        raise ConfigError(f"data has {len(dataset)} images, fewer than data.batch = {config.data.batch}")
    batches: Iterator = make_loader(dataset, info.world, start)
    stage_list = stages(config.data)
    stage = -1
    val_sets = {v.name: load_val_set(v, config.degradation) for v in config.val.sets} if info.is_main else {}
    crop = config.val.crop_border if config.val.crop_border >= 0 else config.degradation.scale
    smallest = 2 * crop + (WINDOW_SIZE if config.val.ssim else 1)  # what PSNR and SSIM need after the crop
    for name, images in val_sets.items():
        for image in images:  # checked now, not at the first validation
            if min(image.hq.shape[:2]) < smallest:
                raise ConfigError(
                    f"val set {name}: {image.name} is {image.hq.shape[1]}x{image.hq.shape[0]} px; expected at least "
                    f"{smallest}x{smallest} (val.crop_border {crop} on each side{', SSIM window' if config.val.ssim else ''})"
                )
    loss_fn = make_loss(config.optim.loss, config.optim.charbonnier_eps)
    autocast = device.type == "cuda" and config.optim.bf16
    total = config.schedule.iterations
    end = min(total, stop_at) if stop_at is not None else total
    log = _MetricsLog(out_dir, info.is_main, config.output.tensorboard)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(config_to_mapping(config), indent=2) + "\n", encoding="utf-8")
        logger.info("training %s on %s: iterations %d..%d of %d, %d images", config.run_name, device, start, end, total, len(dataset))
        if start >= end:
            logger.warning(
                "nothing to train: the run is at iteration %d and %s ends at %d (a longer schedule.iterations, "
                "or model.pretrained for a new run, trains on)", start, "--until" if end < total else "the schedule", end,
            )

    def wall_seconds() -> float:
        return elapsed_before + time.perf_counter() - started

    def cpu_seconds() -> float:
        return cpu_before + time.process_time() - cpu_started

    def checkpoint(iteration: int) -> dict[str, Any]:
        rng_states = _gather_rng(info, device)
        payload: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "arch": config.model.arch,
            "config": config_to_mapping(config)["model"]["config"],
            "name": config.run_name,
            "params": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "iteration": iteration,
            "train_config": config_to_mapping(config),
            "rng": rng_states,
            "best": {"metric": best_metric, "iteration": best_iteration},
            "elapsed": wall_seconds(),
            "cpu_seconds": cpu_seconds(),
        }
        if ema is not None:
            payload["params_ema"] = {k: v.detach().cpu() for k, v in ema.state_dict().items()}
        return payload

    def save(iteration: int, names: list[str]) -> None:
        payload = checkpoint(iteration)  # collective under DDP: every rank calls it
        if info.is_main:
            for name in names:
                save_atomic(payload, out_dir / name)

    def run_validation(iteration: int) -> bool:
        """Validate on rank 0; True when the score improved (the best checkpoint must be written)."""
        nonlocal best_metric, best_iteration
        improved = False
        if info.is_main and val_sets:
            eval_model = model
            if ema is not None:
                eval_model = _ema_copy(model, ema)
            record: dict[str, Any] = {"iter": iteration, "time": wall_seconds(), "cpu_s": cpu_seconds()}
            first = None
            for name, images in val_sets.items():
                scores = validate(eval_model, images, device, crop, config.val.y_channel, config.val.ssim)
                for key, value in scores.items():
                    record[f"val/{name}/{key}"] = value
                first = scores["psnr"] if first is None else first
                logger.info("iter %d  %s  %s", iteration, name, "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))
            if first is not None and (best_metric is None or first > best_metric):
                best_metric, best_iteration, improved = first, iteration, True
            log.write(record)
        return dist_utils.broadcast_flag(info, improved, device)

    losses: list[float] = []
    interrupted = False
    iteration = start
    window_start, window_iters = time.perf_counter(), 0
    its = 0.0
    with _StopFlag() as stop:
        while iteration < end:
            current = stage_index(config.data, iteration)
            if info.is_main and len(stage_list) > 1 and current != stage:
                stage = current
                logger.info(
                    "iter %d: progressive stage %d of %d, patch %d, batch %d per process",
                    iteration, stage + 1, len(stage_list), stage_list[stage].patch, stage_list[stage].batch,
                )
            try:
                lq, hq = next(batches)
            except RestoreError:  # a file read from disk (data.in_memory false) that cannot be used
                if not info.enabled and iteration > start:
                    save(iteration, ["latest.pth"])  # the state after `iteration` updates: resumable
                raise
            lq, hq = lq.to(device, non_blocking=True), hq.to(device, non_blocking=True)
            if config.data.mixup.prob > 0:
                lq, hq = apply_mixup(lq, hq, config.data.mixup, mixup_rng(config.seed, info.rank, iteration))
            lr = learning_rate(config, iteration)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                pred = net(lq)
            loss = loss_fn(pred, hq)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
            optimizer.step()
            if ema is not None:
                ema.update(model)
            iteration += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingError(
                    f"loss became {value} at iteration {iteration}, expected a finite number: lower optim.lr or set "
                    f"optim.grad_clip (--resume from a checkpoint in {out_dir}, if one was written, keeps the progress)"
                )
            losses.append(value)
            window_iters += 1
            now = time.perf_counter()
            if now - window_start > 0:
                its = window_iters / (now - window_start)
            if info.is_main and progress is not None:
                progress(StepReport(iteration, total, value, lr, its, (total - iteration) / its if its else float("inf")))
            if iteration % config.output.log_every == 0 and info.is_main:
                log.write({"iter": iteration, "loss": value, "lr": lr, "it_s": its, "time": wall_seconds(), "cpu_s": cpu_seconds()})
                if progress is None:  # no progress bar (not a TTY): a log line instead
                    logger.info("iter %d/%d  loss %.4f  lr %.2e  %.3f it/s", iteration, total, value, lr, its)
                window_start, window_iters = now, 0
            names: list[str] = []
            if config.val.every and (iteration % config.val.every == 0 or iteration == total):
                if run_validation(iteration):
                    names.append("best.pth")
                names.append("latest.pth")
            if config.output.save_every and iteration % config.output.save_every == 0:
                names += [f"iter_{iteration:07d}.pth", "latest.pth"]
            if dist_utils.broadcast_flag(info, stop.requested, device):
                interrupted = True
            if interrupted or iteration == end:
                names.append("latest.pth")
            if names:
                save(iteration, sorted(set(names)))
            if interrupted:
                break
    log.close()
    wall = time.perf_counter() - started
    if info.is_main:
        logger.info("stopped at iteration %d of %d after %.0f s", iteration, total, wall)
    stop_signal = (stop.signum or signal.SIGINT) if interrupted else None  # other ranks learn only the flag
    return TrainResult(iteration, total, out_dir, best_metric, best_iteration, interrupted, wall, tuple(losses), stop_signal)


def _ema_copy(model: nn.Module, ema: Ema) -> nn.Module:
    """A copy of the model carrying the EMA weights (for validation)."""
    import copy

    clone = copy.deepcopy(model)
    clone.load_state_dict({k: v.to(dtype=model.state_dict()[k].dtype) for k, v in ema.state_dict().items()})
    return clone


def config_of_checkpoint(state: dict[str, Any]) -> TrainConfig:
    """The training config embedded in a training checkpoint."""
    return config_from_mapping(state["train_config"])
