"""The restoration commands: ``restore sr|denoise|deblur|dehaze INPUT...``.

Thin commands over ``restorecli.batch`` and ``restorecli.inference``; torch, numpy and OpenCV are
imported inside the command bodies so that ``--help`` stays instant. Data (the summary table or
``--json``) goes to stdout; progress, notes and per-file errors go to stderr (``restorecli.console``).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from restorecli.cli.options import RestoreOptions, with_restore_options
from restorecli.console import Bars, Output, cell, item_error_line
from restorecli.errors import UsageError

if TYPE_CHECKING:
    from restorecli.batch import BatchReport, FileResult, InputFile
    from restorecli.inference import ImageRestorer
    from restorecli.models.descriptor import LoadedModel

SCALES = (2, 3, 4)
SIGMAS = (15, 25, 50)
DEHAZE_VARIANTS = ("indoor", "outdoor", "mix")


def register(app: typer.Typer) -> None:
    """Add ``sr``, ``denoise``, ``deblur`` and ``dehaze`` to the app."""
    app.command("sr")(sr)
    app.command("denoise")(denoise)
    app.command("deblur")(deblur)
    app.command("dehaze")(dehaze)


@with_restore_options
def sr(
    scale: Annotated[
        int | None,
        typer.Option("--scale", "-s", metavar="2|3|4", help="Upscaling factor. Default: the model's, else 4.", show_default=False),
    ] = None,
    *,
    options: RestoreOptions,
) -> None:
    """Super-resolution: upscale images 2x, 3x or 4x."""
    if scale is not None and scale not in SCALES:
        raise UsageError(f"--scale: expected 2, 3 or 4, got {scale}")
    _restore("sr", options, scale=scale)


@with_restore_options
def denoise(
    sigma: Annotated[
        int | None,
        typer.Option(metavar="15|25|50", help="Gaussian noise level (0-255 scale) of the synthetic-noise models.", show_default=False),
    ] = None,
    real: Annotated[bool, typer.Option("--real", help="Real camera noise model (SIDD), instead of --sigma.")] = False,
    *,
    options: RestoreOptions,
) -> None:
    """Denoising: Gaussian noise (--sigma) or real camera noise (--real)."""
    if sigma is not None and sigma not in SIGMAS:
        raise UsageError(f"--sigma: expected 15, 25 or 50, got {sigma}")
    if sigma is not None and real:
        raise UsageError(f"--sigma {sigma} and --real exclude each other: expected one of them")
    _restore("denoise", options, sigma=sigma, real=real)


@with_restore_options
def deblur(*, options: RestoreOptions) -> None:
    """Motion deblurring."""
    _restore("deblur", options)


@with_restore_options
def dehaze(
    variant: Annotated[
        str | None,
        typer.Option(metavar="indoor|outdoor|mix", help="Model trained on indoor (ITS), outdoor (OTS) or mixed (RESIDE-6K) haze.", show_default=False),
    ] = None,
    *,
    options: RestoreOptions,
) -> None:
    """Dehazing."""
    if variant is not None and variant not in DEHAZE_VARIANTS:
        raise UsageError(f"--variant: expected indoor, outdoor or mix, got {variant!r}")
    _restore("dehaze", options, variant=variant)


# ---------------------------------------------------------------------------------------------


def _restore(
    task: str,
    options: RestoreOptions,
    *,
    scale: int | None = None,
    sigma: int | None = None,
    variant: str | None = None,
    real: bool = False,
) -> None:
    """Discover inputs, load the network, run the batch, report; exits with the batch's code."""
    from restorecli import batch, torchrun
    from restorecli.inference import ImageRestorer, resolve_device, resolve_precision
    from restorecli.loading import load_model
    from restorecli.tiling import check_tile

    started = time.perf_counter()
    place = torchrun.from_environment()
    rank, world = place.rank, place.world
    output = Output(json_output=options.json_output, quiet=options.quiet or rank != 0)
    # cheap checks first: a typo should not wait for a download or a model build
    check_tile(options.tile, options.tile_overlap)  # the model's own side rule is checked once it is known
    batch.OutputRule(options.output_path, options.suffix or "", options.ext)
    output_file = batch.output_file(
        options.output_path, suffix=options.suffix, ext=options.ext, names_folder=options.output_names_folder
    )
    max_pixels = _max_pixels(options.max_pixels)
    resolve_precision(options.precision, resolve_device(options.device))

    images, skips = batch.discover_inputs(options.inputs, recursive=options.recursive)
    _require_images(images, skips, options.inputs)
    if output_file is not None:
        batch.require_one_named_input(output_file, options.inputs, images)
    network = load_model(
        options.model,
        weights=options.weights,
        task=task,
        scale=scale,
        sigma=sigma,
        variant=variant,
        real=real,
        device=options.device,
        precision=options.precision,
        allow_unverified=options.allow_unverified,
        manifest=options.manifest,
        cache_dir=options.cache_dir,
        progress=output.bars_enabled,
    )
    suffix = batch.default_suffix(task, network.scale) if options.suffix is None else options.suffix
    images, earlier_outputs = batch.drop_earlier_outputs(images, suffix)
    skips = sorted(skips + earlier_outputs, key=lambda skip: str(skip.path))
    for skip in skips:
        output.note(f"Skipped {skip.path}: {skip.reason}")
    _require_images(images, skips, options.inputs)

    restorer = ImageRestorer(
        network,
        device=options.device,
        precision=options.precision,
        tile=options.tile,
        overlap=options.tile_overlap,
        ensemble=options.ensemble,
    )
    rule = batch.OutputRule(None if output_file else options.output_path, suffix, options.ext, file=output_file)
    if options.report is not None:
        batch.check_report_path(options.report, images, rule)
    collisions = batch.output_collisions(images, rule)
    collisions += batch.unwritable_outputs(images, rule, skip={collision.index for collision in collisions})
    for collision in collisions:
        output.note(_error_line(collision))
    left_out = {collision.index for collision in collisions}
    mine = [(index, item) for index, item in batch.share_of_rank(images, rank, world) if index not in left_out]
    batch.wait_for_ranks(world)
    with output.progress() as bars:
        run = batch.run_batch(
            mine,
            restorer,
            rule,
            protected={item.path.resolve() for item in images},
            overwrite=options.overwrite,
            events=_BatchDisplay(output, bars, total_files=len(mine)),
            rank=rank,
            max_pixels=max_pixels,
        )
    results = sorted(batch.gather_results(run.results, world) + collisions, key=lambda result: result.index)
    settings = {
        "task": task,
        "scale": network.scale,
        "sigma": sigma,
        "variant": "real" if real else variant,
        **_network_settings(network, restorer),
        "tile": "auto" if options.tile is None else options.tile,
        "tile_overlap": restorer.overlap,
        "max_pixels": max_pixels,
        "world_size": world,
    }
    report = batch.BatchReport(
        command=task,
        settings=settings,
        files=batch.skipped_results(skips) + results,
        seconds=time.perf_counter() - started,
        interrupted=run.interrupted,
        not_started=run.not_started,
        stop_signal=run.stop_signal,
    )
    if rank == 0:
        _publish(report, options, output)
    raise typer.Exit(report.exit_code)


def _network_settings(network: LoadedModel, restorer: ImageRestorer) -> dict[str, Any]:
    """What the report says about the network and where it ran."""
    return {
        "model": network.name,
        "arch": network.arch,
        "weights": network.weights.path,
        "weights_sha256": network.weights.sha256,
        "weights_source": network.weights.source,
        "device": str(restorer.device),
        "backend": restorer.scan_backend,
        "precision": restorer.precision,
        "ensemble": restorer.ensemble,
    }


def _max_pixels(text: str | None) -> int:
    """The pixel limit of ``--max-pixels``, else of the environment (``io.max_pixels_from_env``)."""
    from restorecli import io

    if text is None:
        return io.max_pixels_from_env()
    try:
        return io.parse_pixel_count(text)
    except ValueError as error:
        raise UsageError(f"--max-pixels: {error}") from None


def _require_images(images: list[InputFile], skips: list[Any], inputs: list[str]) -> None:
    from restorecli.io import FORMAT_NAMES

    if not images:
        if len(skips) == 1:  # say why the one candidate was left out
            raise UsageError(f"no images found in {', '.join(inputs)}; {skips[0].path}: {skips[0].reason}")
        detail = f" ({len(skips)} other paths skipped)" if skips else ""
        raise UsageError(f"no images found in {', '.join(inputs)}{detail}; expected {FORMAT_NAMES} files")


def _publish(report: BatchReport, options: RestoreOptions, output: Output) -> None:
    """Summary table or JSON on stdout, and the ``--report`` file."""
    document = report.to_dict()
    # shown first: a report file that cannot be written must not hide what the batch did
    if options.json_output:
        output.data(document)
    else:
        output.show(_summary_table(report))
    if options.report is not None:
        from restorecli.io import write_bytes_atomic

        write_bytes_atomic(options.report, (json.dumps(document, indent=2) + "\n").encode(), overwrite=True)


def _summary_table(report: BatchReport) -> Any:
    from rich.table import Table

    counts = report.to_dict()["summary"]
    several = f", {counts['multi_frame']} with several pages or frames (the first processed)" if counts["multi_frame"] else ""
    caption = (
        f"{counts['ok']} restored, {counts['failed']} failed, {counts['skipped']} skipped{several}"
        + (f", interrupted by {counts['stopped_by']} ({counts['not_started']} not started)" if report.interrupted else "")
        + f" in {counts['seconds']:.1f} s"
    )
    table = Table(title=f"restore {report.command}", caption=caption, title_justify="left", caption_justify="left")
    for column in ("input", "output", "status", "seconds", "details"):
        table.add_column(column, overflow="fold", justify="right" if column == "seconds" else "left")
    styles = {"ok": "green", "failed": "bold red", "skipped": "yellow", "interrupted": "magenta"}
    for result in report.files:
        details = result.error or "; ".join(result.notes)
        table.add_row(
            cell(result.input),
            cell(result.output or ""),
            f"[{styles.get(result.status, '')}]{result.status}[/]",
            f"{result.seconds:.2f}" if result.status != "skipped" else "",
            cell(details),
        )
    return table


def _error_line(result: FileResult) -> str:
    return item_error_line(result.input, result.error or "failed")


class _BatchDisplay:
    """The batch's events on stderr: per-file notes and errors, and bars for files and tiles."""

    def __init__(self, output: Output, bars: Bars, *, total_files: int) -> None:
        self.output, self.bars = output, bars
        self.files = bars.add("files", total=total_files)
        self.tiles = bars.add("tiles")

    def file_started(self, position: int, total: int, item: InputFile) -> None:
        self.bars.update(self.files, description=item.path.name)
        self.bars.reset(self.tiles, total=None, description="tiles")

    def tiles_done(self, done: int, total: int) -> None:
        self.bars.update(self.tiles, completed=done, total=total)

    def file_finished(self, result: FileResult) -> None:
        if result.status == "failed":
            self.output.note(_error_line(result))
        elif result.status == "skipped":
            self.output.note(f"Skipped {result.input}: {'; '.join(result.notes)}")
        elif result.status == "interrupted":
            self.output.note(f"Interrupted at {result.input}; finished outputs are kept")
        self.bars.advance(self.files)
