"""``restore models ...``: list, download, import, verify, locate and remove model weights.

Thin commands over :mod:`restorecli.hub`; data goes to stdout (a table, or JSON with ``--json``),
messages to stderr. The hub (and torch, for ``import``) are imported inside the commands so that
``--help`` stays instant.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from restorecli.cli.options import AllowUnverifiedOpt, CacheDirOpt, JsonOpt, ManifestOpt, QuietOpt
from restorecli.cli.stopping import exit_stopped
from restorecli.console import Output

models_app = typer.Typer(
    name="models",
    help="List, download, import and verify model weights (bundled, cached or remote).",
    no_args_is_help=True,
)

NameArg = Annotated[str, typer.Argument(help="Model name, as listed by `restore models list`.", show_default=False)]


def _human_size(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # unreachable; keeps type checkers content


def _human_params(params: int | None) -> str:
    if params is None:
        return "?"
    return f"{params / 1e6:.2f}M" if params >= 1e6 else f"{params / 1e3:.0f}K"


def _setting(row: object) -> str:
    scale, sigma, variant = (getattr(row, key) for key in ("scale", "sigma", "variant"))
    parts = []
    if scale and scale != 1:
        parts.append(f"x{scale}")
    if sigma is not None:
        parts.append(f"s{sigma}")
    if variant:
        parts.append(variant)
    return " ".join(parts) or "-"


@models_app.command("list")
def list_models(
    json_output: JsonOpt = False,
    task: Annotated[
        str | None, typer.Option("--task", help="Only models of this task (sr, denoise, deblur, dehaze).")
    ] = None,
    manifest: ManifestOpt = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """List known models and where their weights are: bundled, cached, remote, drive or manual."""
    from restorecli import hub

    output = Output(json_output=json_output)
    rows = [row for row in hub.model_status(manifest, cache_dir) if task is None or row.task == task]
    if json_output:
        output.data([asdict(row) for row in rows])
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("name", "task", "setting", "params", "source", "where", "size"):
        table.add_column(column, justify="right" if column in ("params", "size") else "left")
    for row in rows:
        table.add_row(
            row.name, row.task, _setting(row), _human_params(row.params), row.source, row.where, _human_size(row.size)
        )
    output.show(table, soft_wrap=True)
    if any(row.where == "drive" for row in rows):
        output.note("'drive': `restore models download NAME` fetches it from the authors' Google Drive folder.")
    if any(row.where == "manual" for row in rows):
        output.note("'manual': download the file from its download page, then `restore models import FILE`.")


@models_app.command("download")
def download_model(
    name: NameArg,
    allow_unverified: AllowUnverifiedOpt = False,
    sha256: Annotated[
        str | None,
        typer.Option(
            "--sha256",
            metavar="HEX",
            help="The sha256 the file must have (the file as published); checked before it is stored.",
        ),
    ] = None,
    quiet: QuietOpt = False,
    manifest: ManifestOpt = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Make a model's weights available locally (bundled, cached, or downloaded and verified); print the path.

    The official MaIR checkpoints come from the authors' Google Drive folder. No checksum is
    published for them, so a file is kept only when it loads strictly into its network; its
    sha256 is then recorded and checked on every later use (trust on first use).

    Ctrl-C, SIGTERM or SIGHUP stores nothing under the model's name, keeps the bytes received for
    the next run to resume, and exits with 128 + the signal.
    """
    from restorecli import hub, interrupts

    output = Output(quiet=quiet)
    loaded = hub.load_manifest(manifest)
    entry = loaded.get(name)
    try:
        resolved = hub.fetch(
            name,
            allow_unverified=allow_unverified,
            sha256=sha256,
            manifest=loaded,
            cache_dir=cache_dir,
            progress=output.bars_enabled,
        )
    except KeyboardInterrupt as error:
        exit_stopped(
            output,
            interrupts.handled(error),
            f"before {name} was stored; `restore models download {name}` resumes the download",
        )
    output.note(f"{name}: {resolved.source} ({resolved.path})")
    if entry.weights.sha256 is None and sha256 is None and resolved.source == "download":
        if resolved.published_sha256 is not None:
            output.note(
                f"first download of {entry.weights.filename}: sha256 {resolved.published_sha256}, recorded and checked "
                "on every use (the authors publish no checksum; compare it with a colleague's or pass it to --sha256)"
            )
        else:
            output.note(f"unverified: sha256 {resolved.sha256}; pin it in a manifest to verify future downloads")
    output.line(str(resolved.path))


@models_app.command("import")
def import_model(
    file: Annotated[
        Path,
        typer.Argument(
            help="Checkpoint (.pth, .ckpt or .safetensors), e.g. an official MaIR file.",
            exists=True,
            dir_okay=False,
            show_default=False,
        ),
    ],
    name: Annotated[
        str | None, typer.Option("--name", help="Model name; needed when several models share the file's layout.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a different file cached under that name.")] = False,
    quiet: QuietOpt = False,
    manifest: ManifestOpt = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Recognise a checkpoint by its exact keys and shapes, check that it loads, and store it in the cache."""
    from restorecli import hub

    output = Output(quiet=quiet)
    result = hub.import_checkpoint(file, name=name, manifest=manifest, cache_dir=cache_dir, force=force)
    verb = "replaced" if result.replaced else "imported"
    output.note(f"{verb} {file.name} as {result.name} (sha256 of {file.name}: {result.original_sha256})")
    output.line(str(result.path))


@models_app.command("verify")
def verify_models(
    names: Annotated[
        list[str] | None, typer.Argument(help="Only these models (default: everything stored).", show_default=False)
    ] = None,
    json_output: JsonOpt = False,
    manifest: ManifestOpt = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Re-hash every cached and bundled weights file; exit code 1 if any is corrupt or missing."""
    from restorecli import hub

    output = Output(json_output=json_output)
    results = hub.verify_cache(names or (), manifest=manifest, cache_dir=cache_dir)
    if json_output:
        output.data([asdict(result) for result in results])
    elif not results:
        output.note("nothing to verify: no cached or bundled weights.")
    else:
        for result in results:
            output.line(f"{'ok' if result.ok else 'FAILED':6} {result.name}  {result.path}")
            if not result.ok:
                output.note(f"{result.name}: {result.detail}")
    bad = [result.name for result in results if not result.ok]
    if bad:
        output.note(f"Error: {len(bad)} of {len(results)} files failed verification: {', '.join(bad)}")
        raise typer.Exit(1)


@models_app.command("path")
def model_path(name: NameArg, manifest: ManifestOpt = None, cache_dir: CacheDirOpt = None) -> None:
    """Print the local file of a model (bundled or cached); never downloads."""
    from restorecli import hub

    Output().line(str(hub.local_path(name, manifest=manifest, cache_dir=cache_dir)))


@models_app.command("remove")
def remove_model(name: NameArg, cache_dir: CacheDirOpt = None) -> None:
    """Delete a model's weights from the cache (bundled weights stay)."""
    from restorecli import hub

    folder = hub.remove_cached(name, cache_dir=cache_dir)
    Output().note(f"removed {folder}")


def register(app: typer.Typer) -> None:
    """Add the ``models`` command group to the app."""
    app.add_typer(models_app, name="models")
