"""``restore train``: train or fine-tune from a YAML config; ``restore train export`` / ``presets``.

``train`` is a command group whose default action trains (``restore train --config FILE``), so
training reads as one command and the helpers sit beside it (``restore train export CKPT OUT``). Under
``torchrun --nproc_per_node=N -m restorecli train ...`` every rank runs the same command.
torch is imported inside the command bodies so that ``--help`` stays instant.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from restorecli.cli.options import JsonOpt, OverwriteOpt, QuietOpt
from restorecli.cli.stopping import exit_stopped
from restorecli.console import Bars, Output
from restorecli.errors import UsageError

if TYPE_CHECKING:
    from restorecli.train import StepReport

train_app = typer.Typer(
    name="train",
    help="Train or fine-tune a network from a YAML config (resumable; torchrun for several GPUs).",
    invoke_without_command=True,
)

ConfigOpt = Annotated[
    Optional[str],  # noqa: UP045 - Typer reads the annotation at runtime
    typer.Option("--config", "-c", help="YAML config file or preset name (see `restore train presets`).", show_default=False),
]
SetOpt = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option("--set", help="Override a config key, value parsed as YAML: --set optim.lr=2e-4 (repeatable).", show_default=False),
]
ResumeOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--resume", help="Training checkpoint to continue from (its config is used when --config is absent).", dir_okay=False, show_default=False),
]
UntilOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option("--until", min=1, help="Stop after this iteration with a resumable latest.pth (the schedule is unchanged).", show_default=False),
]
_STEP_STATS = "loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[its]:.2f} it/s"


class _StepBar:
    """The training loop's ``progress(StepReport)`` callback: one bar with loss, learning rate and it/s."""

    def __init__(self, bars: Bars, total: int, start: int) -> None:
        self.bars = bars
        self.bar = bars.add("train", total=total, completed=start, loss=0.0, lr=0.0, its=0.0)

    def __call__(self, report: StepReport) -> None:
        self.bars.update(self.bar, completed=report.iteration, loss=report.loss, lr=report.lr, its=report.its)


def _setup_logging(quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("restorecli").setLevel(level)


@train_app.callback()
def train_command(
    ctx: typer.Context,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    resume: ResumeOpt = None,
    until: UntilOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train from a config: checkpoints, metrics.jsonl and config.json go to output.dir (runs/<name>).

    Ctrl-C, SIGTERM or SIGHUP stops after the current iteration and writes a resumable
    latest.pth (exit code 128 + the signal: 130, 143, 129); a second one aborts at once.
    """
    if ctx.invoked_subcommand is not None:
        if config or overrides or resume or until:
            raise UsageError(f"--config/--set/--resume/--until belong to `restore train`, not `restore train {ctx.invoked_subcommand}`")
        return
    if config is None and resume is None:
        raise UsageError("restore train needs --config FILE (or --resume CKPT); see `restore train --help`")
    from restorecli.train import apply_overrides, config_from_mapping, load_config, read_training_checkpoint, train

    _setup_logging(quiet)
    state = read_training_checkpoint(resume) if resume is not None else None
    if config is not None:
        cfg = load_config(config, overrides or [])
    else:
        assert state is not None
        cfg = config_from_mapping(apply_overrides(state["train_config"], overrides or []))
    start = int(state["iteration"]) if state is not None else 0
    del state  # train() reads the checkpoint itself; do not hold two copies
    output = Output(quiet=quiet)
    with output.progress(stats=_STEP_STATS, keep=True) as bars:
        # without bars, the training loop logs a line every output.log_every iterations instead
        progress = _StepBar(bars, cfg.schedule.iterations, start) if bars.enabled else None
        result = train(cfg, resume=resume, stop_at=until, progress=progress)
    summary = {
        "iteration": result.iteration,
        "total": result.total,
        "output_dir": str(result.output_dir),
        "best_psnr": result.best_metric,
        "best_iteration": result.best_iteration,
        "wall_s": round(result.wall_s, 1),
        "interrupted": result.interrupted,
    }
    output.data(summary, indent=None)
    if result.interrupted:
        exit_stopped(
            output,
            result.stop_signal or signal.SIGINT,
            f"at iteration {result.iteration}; resume with --resume {result.output_dir / 'latest.pth'}",
        )


@train_app.command("export")
def export_command(
    checkpoint: Annotated[Path, typer.Argument(help="Training checkpoint (latest.pth, best.pth, ...).", dir_okay=False, show_default=False)],
    out: Annotated[Path, typer.Argument(help="Output .safetensors file (inference weights + arch/config).", dir_okay=False, show_default=False)],
    half: Annotated[bool, typer.Option("--half", help="Store float16 weights (half the size; loaded back as float32).")] = False,
    name: Annotated[Optional[str], typer.Option("--name", help="Model name in the file and manifest entry (default: the run name).")] = None,  # noqa: UP045
    raw: Annotated[bool, typer.Option("--params", help="Export the raw weights even when EMA weights exist.")] = False,
    task: Annotated[Optional[str], typer.Option("--task", help="sr, denoise, deblur or dehaze (default: what the run trained).")] = None,  # noqa: UP045
) -> None:
    """Write inference-only weights and print the manifest entry (sha256, size, config) as JSON."""
    if out.suffix != ".safetensors":
        raise UsageError(f"the output must end in .safetensors, got {out.name}")
    from restorecli.hub.manifest import TASKS
    from restorecli.train import read_training_checkpoint
    from restorecli.train.export import export_weights

    if task is not None and task not in TASKS:
        raise UsageError(f"--task: expected one of {', '.join(TASKS)}, got {task!r}")
    entry = export_weights(read_training_checkpoint(checkpoint), out, name=name, task=task, half=half, raw=raw)
    Output().data(entry)


@train_app.command("presets")
def presets_command() -> None:
    """List the shipped presets (use one with --config NAME)."""
    from restorecli.train.config import preset_names

    output = Output()
    for preset in preset_names():
        output.line(preset)


@train_app.command("plot")
def plot_command(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (output.dir) or their metrics.jsonl files.", show_default=False)],
    out: Annotated[Path, typer.Option("--output", "-o", help="PNG file to write.", dir_okay=False, show_default=False)],
    metric: Annotated[Optional[str], typer.Option("--metric", help="Validation metric, e.g. val/Set5/psnr (default: the first PSNR).", show_default=False)] = None,  # noqa: UP045
    x_axis: Annotated[str, typer.Option("--x", help="x axis: cpu (CPU-minutes), wall (minutes) or iter.")] = "cpu",
    labels: Annotated[Optional[list[str]], typer.Option("--label", help="Legend label per run, in order (default: folder names).", show_default=False)] = None,  # noqa: UP045
    title: Annotated[str, typer.Option("--title", help="Title above the chart.")] = "",
    overwrite: OverwriteOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Draw the validation curves of runs against CPU-minutes (or wall time, iterations) as a PNG."""
    import cv2

    from restorecli.io import write_bytes_atomic
    from restorecli.train.curves import X_AXES, draw_curves, read_curve

    if out.suffix.lower() != ".png":
        raise UsageError(f"--output: expected a .png file, got {out.name}")
    if labels and len(labels) != len(runs):
        raise UsageError(f"--label: expected one per run ({len(runs)}), got {len(labels)}")
    curves = [read_curve(run, metric=metric, x_axis=x_axis, label=labels[i] if labels else None) for i, run in enumerate(runs)]
    metrics = sorted({c.metric for c in curves})
    if len(metrics) > 1:
        raise UsageError(f"the runs have different first metrics ({', '.join(metrics)}); choose one with --metric")
    picture = draw_curves(curves, x_label=X_AXES[x_axis][2], y_label=metrics[0].removeprefix("val/"), title=title)
    ok, encoded = cv2.imencode(".png", picture)
    if not ok:
        raise UsageError(f"could not encode {out.name} as PNG")
    write_bytes_atomic(out, encoded.tobytes(), overwrite=overwrite)
    output = Output(json_output=json_output)
    if json_output:
        output.data({"output": str(out), "metric": metrics[0], "x": x_axis, "runs": [
            {"label": c.label, "iterations": list(c.iterations), "x": [round(v, 3) for v in c.x], "y": list(c.y)} for c in curves
        ]})
    else:
        for c in curves:
            output.line(f"{c.label}: {c.metric} {c.y[-1]:.4f} at iteration {c.iterations[-1]} ({c.x[-1]:.1f} {x_axis})")
        output.line(f"wrote {out}")


def register(app: typer.Typer) -> None:
    """Add ``restore train`` to the app."""
    app.add_typer(train_app)
