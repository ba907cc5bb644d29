"""`restore eval` (benchmark scores and reports) and `restore datasets list|download`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from restorecli.cli.options import (
    AllowUnverifiedOpt,
    DeviceOpt,
    EnsembleOpt,
    JsonOpt,
    ManifestOpt,
    ModelOpt,
    PrecisionOpt,
    QuietOpt,
    TileOpt,
    TileOverlapOpt,
    WeightsOpt,
)
from restorecli.cli.stopping import exit_stopped
from restorecli.console import Bars, Output, cell, item_error_line
from restorecli.errors import UsageError

if TYPE_CHECKING:
    from restorecli.eval_report import EvalReport
    from restorecli.evaluate import ModelInfo
    from restorecli.models import LoadedModel

datasets_app = typer.Typer(help="Benchmark data sets: list them, download them into the cache.", no_args_is_help=True)

def load_model(
    task: str,
    model: str | None,
    weights: str | None,
    scale: int | None,
    sigma: float | None,
    *,
    manifest: Path | None = None,
    allow_unverified: bool = False,
    progress: bool = False,
) -> tuple[LoadedModel, ModelInfo]:
    """Obtain the network to evaluate through ``restorecli.load_model``, as the restore commands do.

    Kept small and separate so that tests can replace it.
    """
    from restorecli.evaluate import ModelInfo
    from restorecli.loading import load_model as load

    # The real-noise held-out set scores denoisers; the real-noise model is its default.
    real = task == "realnoise"
    loaded = load(
        model,
        weights=weights,
        task="denoise" if real else task,
        real=real,
        scale=scale,
        sigma=int(sigma) if sigma is not None else None,
        device="cpu",  # evaluate() moves it to --device
        manifest=manifest,
        allow_unverified=allow_unverified,
        progress=progress,
    )
    name = loaded.name or Path(loaded.weights.path).name
    return loaded, ModelInfo(name, loaded.weights.sha256, loaded.arch)


class _ItemBar:
    """A ``progress(done, total, name)`` callback of the library drawing one bar (see ``Bars``)."""

    def __init__(self, bars: Bars, label: str) -> None:
        self.bars, self.label = bars, label
        self.bar = bars.add(label)

    def __call__(self, done: int, total: int, name: str) -> None:
        self.bars.update(self.bar, completed=done, total=total, description=f"{self.label} {name}")


def _print_summary(report: EvalReport, output: Output) -> None:
    from rich.table import Table

    summary = report.summary()
    head = summary["headline"]
    # with --pred-dir/--gt-dir the model and data set are folder paths: plain text, not rich markup
    title = f"{cell(str(summary['model']))} on {cell(str(summary['dataset']))} ({summary['protocol']})"
    table = Table(title=title, title_justify="left")
    for column in ("image", "PSNR Y", "SSIM Y", "PSNR RGB", "SSIM RGB", "s"):
        table.add_column(column, justify="left" if column == "image" else "right")

    def fmt(v: float | None, d: int) -> str:
        return "inf" if v is None else f"{v:.{d}f}"

    for r in summary["images"]:
        table.add_row(
            cell(r["name"]),  # a file's stem: plain text, not rich markup
            fmt(r["psnr_y"], 2),
            fmt(r["ssim_y"], 4),
            fmt(r["psnr_rgb"], 2),
            fmt(r["ssim_rgb"], 4),
            f"{r['seconds']:.3f}",
        )
    m = summary["mean"]
    table.add_section()
    table.add_row(
        "mean",
        fmt(m["psnr_y"], 2),
        fmt(m["ssim_y"], 4),
        fmt(m["psnr_rgb"], 2),
        fmt(m["ssim_rgb"], 4),
        f"{m['seconds']:.3f}",
        style="bold",
    )
    output.show(table)
    key = "y" if head == "y" else "rgb"
    output.show(
        f"{cell(str(summary['dataset']))}: PSNR {fmt(m['psnr_' + key], 2)} dB, SSIM {fmt(m['ssim_' + key], 4)} "
        f"({key.upper()}, crop border {summary['crop_border']})",
        highlight=False,
    )
    if summary.get("forwards_per_image") is not None:
        scan = summary["backend"] or "none"
        output.show(
            f"{summary['protocol']} protocol, forward passes per image: {summary['forwards_per_image']:g}; "
            f"{summary['time_per_image']:.3f} s per image on {summary['device']} (scan {scan}); "
            f"setup {summary['setup_seconds']:.2f} s, not in the time per image",
            highlight=False,
        )
    for note in summary.get("notes", []):
        output.show(f"note: {cell(note)}", highlight=False, style="dim")


def eval_command(
    dataset: Annotated[
        str | None, typer.Option("--dataset", "-d", help="Benchmark set (see `restore datasets list`).")
    ] = None,
    scale: Annotated[int | None, typer.Option("--scale", "-s", min=1, help="SR factor (default: the model's).")] = None,
    sigma: Annotated[
        float | None, typer.Option("--sigma", min=0, help="Gaussian noise level on 0-255: evaluates denoising.")
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            help="sr or denoise (default: from --sigma, the model or the set), or a held-out set synthesised "
            "from the clean images: deblur, dehaze, realnoise (docs/degradations.md).",
        ),
    ] = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline",
            help="Score 'bicubic' (SR), 'noisy' (denoising), 'degraded' (the synthetic input) or 'dcp' "
            "(dark channel prior, dehazing) instead of a model.",
        ),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Local copy holding <Set>/HR and <Set>/LR_bicubic/X<s>.")
    ] = None,
    lr_from_hr: Annotated[
        bool, typer.Option("--lr-from-hr", help="Make LR with MATLAB-bicubic imresize even when the set ships LR.")
    ] = False,
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol",
            help="blended (default): the tool's overlapping tiles, one forward pass per image up to "
            "the tile size (--tile; automatic: at most 256 px on the CPU), more for larger images; "
            "tiled-official: MaIR's test tiling, (h//200+1)x(w//200+1) passes per image, each tile 10% "
            "larger; whole: one pass on the whole image. The report gives the passes per image.",
        ),
    ] = "blended",
    ensemble: EnsembleOpt = False,
    tile: TileOpt = None,
    tile_overlap: TileOverlapOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    crop_border: Annotated[
        int | None,
        typer.Option("--crop-border", min=0, help="Pixels ignored at each side (default: scale for SR, 0 otherwise)."),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N images.")] = None,
    pred_dir: Annotated[
        Path | None, typer.Option("--pred-dir", help="Score existing outputs in this folder (with --gt-dir).")
    ] = None,
    gt_dir: Annotated[Path | None, typer.Option("--gt-dir", help="Ground truth for --pred-dir.")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write report.json/.csv/.md and comparison.png here.")
    ] = None,
    manifest: ManifestOpt = None,
    allow_unverified: AllowUnverifiedOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score a model (or a baseline) on a benchmark with the papers' conventions, or score existing outputs.

    Without --model/--weights/--baseline the task's default model is used. An image that cannot be
    scored (unreadable, no prediction, sizes that do not fit) is reported and left out of the means;
    the command then exits with status 1 after writing the report.

    Examples: `restore eval -d Set5 -s 4 --baseline bicubic`; `restore eval -d Set5 --model mair-sr-x4
    --protocol tiled-official --out report/`; `restore eval -d Kodak24 --task dehaze --baseline dcp`;
    `restore eval --pred-dir out/ --gt-dir Set5/HR -s 4`.
    """
    from restorecli import evaluate as ev

    output = Output(json_output=as_json, quiet=quiet)
    if out is not None and out.exists() and not out.is_dir():
        # refused now: the report is written only after every image has been scored
        raise UsageError(f"--out: expected a folder, got the existing file {out}")
    if pred_dir is not None or gt_dir is not None:
        if pred_dir is None or gt_dir is None:
            raise UsageError("--pred-dir and --gt-dir go together: give both")
        if dataset or model or weights or baseline or task:
            raise UsageError("--pred-dir/--gt-dir score existing files; drop --dataset/--model/--weights/--baseline/--task")
        with output.progress() as bars:
            report = ev.score_dirs(pred_dir, gt_dir, scale=scale, crop_border=crop_border, progress=_ItemBar(bars, "scoring"))
        _finish(report, out, output)
        return

    if dataset is None:
        raise UsageError("--dataset is required (or --pred-dir with --gt-dir); see `restore datasets list`")
    from restorecli import datasets
    from restorecli.eval_plan import plan_evaluation

    plan = plan_evaluation(
        dataset, scale=scale, sigma=sigma, model=model, weights=weights, baseline=baseline, manifest=manifest, task=task
    )
    module = info = None
    if plan.needs_model:
        module, info = load_model(
            plan.task,
            plan.model,
            plan.weights,
            plan.scale,
            plan.sigma,
            manifest=manifest,
            allow_unverified=allow_unverified,
            progress=output.bars_enabled,
        )
    config = ev.EvalConfig(
        task=plan.task,
        scale=plan.final_scale(module),
        sigma=plan.sigma,
        protocol=protocol,
        ensemble=ensemble,
        crop_border=crop_border,
        lr_from_hr=lr_from_hr,
        baseline=plan.baseline,
        tile=tile,
        overlap=tile_overlap,
        device=device,
        precision=precision,
        limit=limit,
    )
    spec_ds = plan.dataset
    with output.progress() as bars:
        fetching = bars.enabled and data_dir is None and not datasets.is_cached(spec_ds.name)
        downloading = _ItemBar(bars, f"downloading {spec_ds.name}") if fetching else None
        folder = datasets.locate_dataset(spec_ds.name, data_dir, progress=downloading)
    with output.progress() as bars:
        report = ev.evaluate_dataset(spec_ds, folder, config, model=module, model_info=info, progress=_ItemBar(bars, spec_ds.name))
    _finish(report, out, output)


def _finish(report: EvalReport, out: Path | None, output: Output) -> None:
    """Write and print the report; after Ctrl-C, SIGTERM or SIGHUP exit with 128 + the signal."""
    from restorecli import interrupts
    from restorecli.eval_report import write_report

    # the scores are shown first: a report folder that cannot be written must not lose them
    if output.json_output:
        output.data(report.summary())
    else:
        _print_summary(report, output)
    if out is not None:
        paths = write_report(report, out)
        output.note(f"report written: {', '.join(str(p) for p in paths)}")
    failed = report.meta.get("failed") or []
    for item in failed:
        output.note(item_error_line(item["name"], item["error"]))
    if report.stop_signal is not None:
        done, total = len(report.images), report.meta.get("images_total", len(report.images))
        output.note(f"Interrupted ({interrupts.signal_name(report.stop_signal)}) after {done} of {total} images")
        raise typer.Exit(interrupts.exit_code(report.stop_signal))
    if failed:
        total = report.meta.get("images_total", len(report.images) + len(failed))
        output.warning(f"{len(failed)} of {total} images could not be scored; the means cover the other {total - len(failed)}")
        raise typer.Exit(1)


@datasets_app.command("list")
def datasets_list(as_json: JsonOpt = False) -> None:
    """List the benchmark sets, their source and whether they are in the cache."""
    from restorecli import datasets

    rows = datasets.catalogue()
    output = Output(json_output=as_json)
    if as_json:
        output.data(rows)
        return
    from rich.table import Table

    table = Table()
    for column in ("name", "task", "images", "LR", "source", "size", "cached"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["name"],
            "/".join(r["tasks"]) + (" (grey)" if r["grey"] else ""),
            str(r["images"]),
            ",".join(f"x{s}" for s in r["lr_scales"]) or "-",
            r["source"] or "none: use --data-dir",
            f"{r['bytes'] / 1e6:.1f} MB" if r["bytes"] else "-",
            "yes" if r["cached"] else "no",
        )
    output.show(table)


@datasets_app.command("download")
def datasets_download(
    name: Annotated[str, typer.Argument(help="Set name, e.g. Set5.")],
    dest: Annotated[Path | None, typer.Option("--dest", help="Parent folder (default: the cache).")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Download a set from its pinned public source, verifying every file; prints the set folder.

    Ctrl-C, SIGTERM or SIGHUP keeps the verified files (and the partial one, to resume) and
    exits with 128 + the signal; running the command again fetches the rest.
    """
    from restorecli import datasets, interrupts

    files_done = [0, len(datasets.load_pins().get(datasets.get_dataset(name).name, {}).get("files", []))]

    output = Output(quiet=quiet)
    with output.progress() as bars:
        progress = _ItemBar(bars, f"downloading {name}")

        def count(done: int, total: int, path: str) -> None:
            files_done[:] = [done, total]
            progress(done, total, path)

        try:
            folder = datasets.download_dataset(name, dest, progress=count)
        except KeyboardInterrupt as error:
            exit_stopped(
                output,
                interrupts.handled(error),
                f"after {files_done[0]} of {files_done[1]} files of {name}; verified files are kept, "
                f"and `restore datasets download {name}` fetches the rest",
            )
    output.line(str(folder))


def register(app: typer.Typer) -> None:
    """Add `eval` and the `datasets` group to the app."""
    app.command("eval")(eval_command)
    app.add_typer(datasets_app, name="datasets")
