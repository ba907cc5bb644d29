"""Every option used by more than one command, defined once as an ``Annotated`` alias.

A command module declares only the options that are particular to it. The restoration commands
share most of theirs: ``with_restore_options`` appends those to a command's own parameters, so
the command receives them as one ``RestoreOptions``. ``--json`` and ``--quiet`` mean the same
everywhere (see ``restorecli.console``).
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer

from restorecli.tiling import MIN_TILE

FILES_PANEL = "Inputs and outputs"
MODEL_PANEL = "Model and weights"
RUN_PANEL = "Inference"

InputsArg = Annotated[
    list[str],
    typer.Argument(metavar="INPUT", help="Image files, folders or glob patterns (quote globs).", show_default=False),
]
RecursiveOpt = Annotated[
    bool, typer.Option("--recursive", "-r", help="Include subfolders of input folders.", rich_help_panel=FILES_PANEL)
]
# A string, not a Path: Path drops the trailing separator that makes `-o out.png/` a folder.
OutputOpt = Annotated[
    str | None,
    typer.Option(
        "--output",
        "-o",
        metavar="PATH",
        help="Output folder (input folder trees are mirrored below it); for one input file, a name like out.jpg that "
        "is not an existing folder and does not end in a slash is the output file, in its extension's format (an "
        "alpha channel needs .png/.webp/.tif/.bmp, else it is refused). Default: next to each input.",
        show_default=False,
        rich_help_panel=FILES_PANEL,
    ),
]
SuffixOpt = Annotated[
    str | None,
    typer.Option(
        help="Added to output names (not to an --output file). Default: _x2/_x3/_x4, _denoised, _deblurred, _dehazed.",
        show_default=False,
        rich_help_panel=FILES_PANEL,
    ),
]
ExtOpt = Annotated[
    str,
    typer.Option(
        metavar="same|png|jpg|webp|tif",
        help="Output format; 'same' keeps the input's (an --output file's extension sets it). 16-bit stays 16-bit in PNG/TIFF.",
        rich_help_panel=FILES_PANEL,
    ),
]
OverwriteOpt = Annotated[
    bool,
    typer.Option("--overwrite", help="Replace existing outputs (otherwise they are skipped and reported).", rich_help_panel=FILES_PANEL),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of a table or text.")]
QuietOpt = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="Nothing on stderr: no progress, notes or per-file errors (a fatal error is still printed)."),
]
ReportOpt = Annotated[
    Path | None,
    typer.Option(metavar="FILE", help="Also write the JSON report to FILE.", show_default=False, rich_help_panel=FILES_PANEL),
]
MaxPixelsOpt = Annotated[
    str | None,
    typer.Option(
        metavar="N",
        help="Refuse inputs whose header declares more pixels (width x height), checked before decoding; "
        "e.g. 50000000, 50M, 2G. Default: $RESTORECLI_MAX_PIXELS, else 1G.",
        show_default=False,
        rich_help_panel=FILES_PANEL,
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(metavar="NAME", help="Model name (see `restore models list`). Default: the task's.", show_default=False, rich_help_panel=MODEL_PANEL),
]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        metavar="PATH|URL",
        help="Checkpoint file or URL: official MaIR .pth/.ckpt (architecture from --model or its keys) or a restorecli checkpoint.",
        show_default=False,
        rich_help_panel=MODEL_PANEL,
    ),
]
ManifestOpt = Annotated[
    Path | None,
    typer.Option(
        "--manifest",
        metavar="FILE",
        help="Extra weights manifest whose entries add to or override the shipped ones (default: $RESTORECLI_MANIFEST).",
        dir_okay=False,
        show_default=False,
        rich_help_panel=MODEL_PANEL,
    ),
]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        metavar="DIR",
        help="Weights cache folder (default: $RESTORECLI_CACHE, else the platform cache folder).",
        file_okay=False,
        show_default=False,
        rich_help_panel=MODEL_PANEL,
    ),
]
AllowUnverifiedOpt = Annotated[
    bool,
    typer.Option(
        "--allow-unverified",
        help="Download weights that have no pinned sha256; the computed sha256 is printed.",
        rich_help_panel=MODEL_PANEL,
    ),
]
TileOpt = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        help=f"Tile side in input pixels: 0 = whole image, else at least {MIN_TILE} (a multiple of 8 for MaIRUNet "
        "models: mair-realdn, mair-deblur, mair-dehaze-*) and more than twice --tile-overlap. "
        "Default: from free GPU memory or available RAM.",
        show_default=False,
        rich_help_panel=RUN_PANEL,
    ),
]
TileOverlapOpt = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        help="Minimum overlap between tiles, input pixels: 0 to just under half of --tile. "
        "Default: 32, or just under half of a smaller --tile.",
        show_default=False,
        rich_help_panel=RUN_PANEL,
    ),
]
DeviceOpt = Annotated[str, typer.Option(metavar="auto|cpu|cuda|cuda:N", help="Compute device.", rich_help_panel=RUN_PANEL)]
PrecisionOpt = Annotated[
    str,
    typer.Option(metavar="fp32|bf16|fp16", help="Compute precision (fp16 needs CUDA).", rich_help_panel=RUN_PANEL),
]
EnsembleOpt = Annotated[
    bool,
    typer.Option("--ensemble", help="MaIR+ self-ensemble: average the 8 flips/transposes (8x slower).", rich_help_panel=RUN_PANEL),
]


@dataclass(frozen=True)
class RestoreOptions:
    """Values of the shared options (see the aliases above for their meaning)."""

    inputs: InputsArg
    recursive: RecursiveOpt = False
    output: OutputOpt = None
    suffix: SuffixOpt = None
    ext: ExtOpt = "same"
    overwrite: OverwriteOpt = False
    json_output: JsonOpt = False
    quiet: QuietOpt = False
    report: ReportOpt = None
    max_pixels: MaxPixelsOpt = None
    model: ModelOpt = None
    weights: WeightsOpt = None
    manifest: ManifestOpt = None
    cache_dir: CacheDirOpt = None
    allow_unverified: AllowUnverifiedOpt = False
    tile: TileOpt = None
    tile_overlap: TileOverlapOpt = None
    device: DeviceOpt = "auto"
    precision: PrecisionOpt = "fp32"
    ensemble: EnsembleOpt = False

    @property
    def output_path(self) -> Path | None:
        """``--output`` as a path (None when not given)."""
        return None if self.output is None else Path(self.output)

    @property
    def output_names_folder(self) -> bool:
        """Whether ``--output`` ends in a path separator, which makes it a folder whatever its name."""
        return self.output is not None and self.output.endswith(("/", os.sep))


def with_restore_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Append the shared options to a command; it receives them as its ``options`` parameter.

    Typer reads the returned function's signature: the command's own parameters first, then
    every field of ``RestoreOptions`` with its ``Annotated`` alias and default.
    """
    own_hints = get_type_hints(command, include_extras=True)
    option_hints = get_type_hints(RestoreOptions, include_extras=True)
    own = [
        parameter.replace(annotation=own_hints[parameter.name], kind=inspect.Parameter.KEYWORD_ONLY)
        for parameter in inspect.signature(command).parameters.values()
        if parameter.name != "options"
    ]
    shared = [
        inspect.Parameter(
            option.name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=option_hints[option.name],
            default=inspect.Parameter.empty if option.default is MISSING else option.default,
        )
        for option in fields(RestoreOptions)
    ]

    @functools.wraps(command)
    def wrapper(**values: Any) -> Any:
        shared_values = {option.name: values.pop(option.name) for option in fields(RestoreOptions)}
        return command(**values, options=RestoreOptions(**shared_values))

    parameters = own + shared
    wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    return wrapper
