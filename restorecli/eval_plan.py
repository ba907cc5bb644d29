"""What a ``restore eval`` call means: the data set, task, scale and noise level to score.

The options give some of these; the rest follow from the data set (a denoising set means
denoising), the named model (``mair-sr-x4`` means ×4 super-resolution, ``mair-deblur`` the
synthetic deblurring set) and, last, the loaded network (``--weights`` alone: its scale). The
synthetic held-out tasks (``deblur``, ``dehaze``, ``realnoise``: ``restorecli.eval_synthetic``)
are asked for with ``--task`` or follow from a named model of that task. These rules live here rather than in the command so that
they are tested without a terminal and hold for any caller of :mod:`restorecli.evaluate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from restorecli.errors import UnknownModelError, UsageError

if TYPE_CHECKING:
    from restorecli.datasets import DatasetSpec
    from restorecli.models import LoadedModel, ModelSpec

EVAL_TASKS = ("sr", "denoise")
"""The benchmark tasks inferred from a set or a model (see :class:`restorecli.evaluate.EvalConfig`)."""
SYNTHETIC_EVAL_TASKS = ("deblur", "dehaze", "realnoise")
"""The held-out tasks on inputs synthesised from a set's clean images (``--task``)."""


@dataclass(frozen=True)
class EvalPlan:
    """The evaluation one ``restore eval`` call asks for.

    Attributes:
        dataset: The benchmark set.
        task: ``sr``, ``denoise``, ``deblur``, ``dehaze`` or ``realnoise``.
        scale: SR factor, or None: not super-resolution, or only the loaded network can tell it
            (see :meth:`final_scale`).
        sigma: Noise level on the [0, 255] scale (denoising), else None.
        model: Model name to load, or None (the task's default, or ``weights``).
        weights: Checkpoint file or URL, or None.
        baseline: ``bicubic``, ``noisy``, ``degraded`` or ``dcp`` instead of a model, or None.
    """

    dataset: DatasetSpec
    task: str
    scale: int | None
    sigma: float | None
    model: str | None
    weights: str | None
    baseline: str | None

    @property
    def needs_model(self) -> bool:
        """Whether a network is loaded (no baseline)."""
        return self.baseline is None

    def final_scale(self, loaded: LoadedModel | None) -> int:
        """The scale to evaluate at: the plan's, else the loaded network's; 1 for denoising.

        Args:
            loaded: The network that will be scored; None for a baseline. Its ``scale`` is read
                only when the plan has none.

        Raises:
            UsageError: Super-resolution without a scale from the options, the model or the network.
        """
        if self.task != "sr":
            return 1
        scale = self.scale or (loaded.scale if loaded is not None else None)
        if not scale:
            raise UsageError("--scale is required for super-resolution")
        return scale


def infer_task(dataset_tasks: tuple[str, ...] | None, sigma: float | None, spec: ModelSpec | None) -> str:
    """The task of an evaluation: a noise level means denoising, else the model's task (when it is
    one eval scores), else the set's only task, else super-resolution."""
    if sigma is not None:
        return "denoise"
    if spec is not None and spec.task in EVAL_TASKS:
        return spec.task
    if dataset_tasks and len(dataset_tasks) == 1:
        return dataset_tasks[0]
    return "sr"


def plan_evaluation(
    dataset: str,
    *,
    scale: int | None = None,
    sigma: float | None = None,
    model: str | None = None,
    weights: str | None = None,
    baseline: str | None = None,
    manifest: Path | None = None,
    task: str | None = None,
) -> EvalPlan:
    """The plan of scoring ``model`` (or ``weights``, or a baseline) on ``dataset``.

    Args:
        dataset: Benchmark set name (see :func:`restorecli.datasets.get_dataset`).
        scale: SR factor from the options, or None.
        sigma: Noise level from the options, or None.
        model: Model name, or None.
        weights: Checkpoint file or URL, or None.
        baseline: ``bicubic``, ``noisy``, ``degraded`` or ``dcp`` instead of a model, or None.
        manifest: Extra weights manifest that may name ``model``.
        task: The task from ``--task``, or None (inferred).

    Returns:
        The plan; its scale may still wait for the loaded network (:meth:`EvalPlan.final_scale`).

    Raises:
        UsageError: A baseline together with a model, an unknown baseline, super-resolution
            without a scale or a model to take it from, denoising without a noise level, or
            options that do not fit the task (``--task deblur --scale 4``).
        ConfigError: The set is unknown.
    """
    from restorecli.datasets import get_dataset
    from restorecli.evaluate import BASELINES, check_synthetic_options

    spec_ds = get_dataset(dataset)
    if baseline is not None and (model or weights):
        raise UsageError("--baseline replaces the model: drop --model/--weights")
    if baseline is not None and baseline not in BASELINES:
        raise UsageError(f"--baseline: expected one of {', '.join(BASELINES)}, got {baseline!r}")
    model_spec = _model_spec(model, manifest) if model else None
    every_task = (*EVAL_TASKS, *SYNTHETIC_EVAL_TASKS)
    if task is not None and task not in every_task:
        raise UsageError(f"--task: expected one of {', '.join(every_task)}, got {task!r}")
    task = task or _task_of_baseline(baseline) or _synthetic_task_of(model_spec)
    if task is None and baseline == "degraded":
        raise UsageError("--baseline degraded scores a synthetic input: add --task deblur, dehaze or realnoise")
    task = task or infer_task(spec_ds.tasks, sigma, model_spec)
    if task in SYNTHETIC_EVAL_TASKS:
        check_synthetic_options(task, scale=scale, sigma=sigma, dataset=spec_ds)
        return EvalPlan(
            dataset=spec_ds, task=task, scale=None, sigma=None, model=model, weights=weights, baseline=baseline
        )
    if task == "sr" and sigma is not None:
        raise UsageError("--sigma is the noise level of denoising; --task sr takes none")
    if task == "sr":
        scale = scale or (model_spec.scale if model_spec is not None else None)
        if not scale and baseline is None and weights is None and model is None:
            raise UsageError("--scale is required for super-resolution (or give --model/--weights)")
        sigma = None
    else:
        scale = None
        sigma = sigma if sigma is not None or model_spec is None else model_spec.sigma
        if sigma is None:
            raise UsageError(f"{spec_ds.name} is a denoising set: give the noise level with --sigma (15, 25 or 50)")
    return EvalPlan(
        dataset=spec_ds, task=task, scale=scale, sigma=sigma, model=model, weights=weights, baseline=baseline
    )


def _task_of_baseline(baseline: str | None) -> str | None:
    """The task a baseline implies: ``noisy`` denoising, ``dcp`` dehazing (``degraded`` fits several)."""
    return {"noisy": "denoise", "dcp": "dehaze"}.get(baseline or "")


def _synthetic_task_of(spec: ModelSpec | None) -> str | None:
    """The synthetic held-out task of a named model: deblurring, dehazing, real-noise denoising."""
    if spec is None:
        return None
    if spec.task in ("deblur", "dehaze"):
        return spec.task
    return "realnoise" if spec.task == "denoise" and spec.variant == "real" else None


def _model_spec(name: str, manifest: Path | None) -> ModelSpec | None:
    """Task/scale/sigma of a named model (the one name lookup), or None for an unknown name."""
    from restorecli.hub.manifest import load_manifest

    try:
        return load_manifest(manifest).spec(name)
    except UnknownModelError:  # reported by load_model, with suggestions
        return None
