"""Batches of image files: input discovery, output paths, per-file processing, the report.

Inputs are processed in sorted order; a failing file is recorded and the batch goes on; existing
outputs are skipped unless overwriting is asked for; an input is never overwritten. Under
``torchrun`` (``WORLD_SIZE`` > 1) each rank takes every WORLD_SIZE-th input and the results are
gathered so that rank 0 can report the whole batch.

The module is longer than most on purpose: discovery, output naming (collisions included), the
per-file loop and its report are one contract about which file goes where, and splitting them
would scatter the rules that a batch never overwrites an input or writes one output twice.
"""

from __future__ import annotations

import datetime
import glob
import os
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from restorecli import interrupts, io
from restorecli.errors import ImageWriteError, RestoreError, UsageError

if TYPE_CHECKING:
    from restorecli.inference import ImageRestorer

OUTPUT_EXTENSIONS = ("same", "png", "jpg", "webp", "tif")
STATUS_OK, STATUS_FAILED, STATUS_SKIPPED, STATUS_INTERRUPTED = "ok", "failed", "skipped", "interrupted"


def default_suffix(task: str, scale: int) -> str:
    """Suffix added to output names: ``_x4`` for sr, ``_denoised``, ``_deblurred``, ``_dehazed``."""
    return {"sr": f"_x{scale}", "denoise": "_denoised", "deblur": "_deblurred", "dehaze": "_dehazed"}[task]


# ---------------------------------------------------------------------------------------------
# discovery


@dataclass(frozen=True)
class InputFile:
    """One image to process.

    Attributes:
        path: The file, as found.
        base: Folder whose tree is mirrored under the output folder (the folder or glob base it
            was found in; its own folder for a file named directly).
        sniffed_format: Format read from the content when the extension names none, else None.
        named: Named on the command line (not found in a folder or by a pattern).
    """

    path: Path
    base: Path
    sniffed_format: str | None = None
    named: bool = False


@dataclass(frozen=True)
class Skip:
    """A path that was looked at and left out, and why."""

    path: Path
    reason: str


def discover_inputs(specs: Sequence[str], *, recursive: bool = False) -> tuple[list[InputFile], list[Skip]]:
    """Expand files, folders and glob patterns into a sorted list of image files.

    A file counts as an image by its extension, or, without a known image extension, by its first
    bytes. Hidden files are ignored; other files and (without ``recursive``) subfolders are
    reported as skipped.

    Args:
        specs: Command-line inputs.
        recursive: Descend into subfolders (and let ``**`` in patterns match folders).

    Returns:
        The images (sorted by path, each once) and the skipped paths.

    Raises:
        UsageError: An input that does not exist or a pattern that matches nothing.
    """
    found: dict[Path, InputFile] = {}
    skipped: list[Skip] = []

    def consider(path: Path, base: Path, *, named: bool) -> None:
        if path.name.startswith(".") and not named:
            return
        fmt = None
        if path.suffix.lower() not in io.FORMAT_BY_EXTENSION:
            fmt = _sniff(path)
            if fmt is None:
                skipped.append(Skip(path, "not an image (expected " + io.FORMAT_NAMES + ")"))
                return
        found.setdefault(path.resolve(), InputFile(path, base, fmt, named))

    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_file():
            consider(path, path.parent, named=True)
        elif path.is_dir():
            for child, kind in _walk(path, recursive):
                if kind == "file":
                    consider(child, path, named=False)
                elif child.name.startswith("."):
                    continue
                elif kind == "folder":
                    skipped.append(Skip(child, "folder (pass --recursive to include subfolders)"))
                else:
                    skipped.append(Skip(child, _NOT_A_FILE.get(kind, kind)))
        elif glob.has_magic(spec):
            matches = sorted(glob.glob(os.path.expanduser(spec), recursive=recursive))
            files = [Path(m) for m in matches if Path(m).is_file()]
            skipped += [Skip(Path(m), _NOT_A_FILE["broken"]) for m in matches if _is_broken_link(Path(m))]
            if not recursive:  # with --recursive, ** walks into the folders it matches
                skipped += [Skip(Path(m), "folder matched by the pattern (pass the folder itself, or --recursive with **)")
                            for m in matches if Path(m).is_dir()]  # fmt: skip
            if not files:
                raise UsageError(f"pattern {spec!r} matches no files; expected image files, folders or a glob")
            base = _glob_base(spec)
            for file in files:
                consider(file, base, named=False)
        elif _is_broken_link(path):
            raise UsageError(f"input {spec!r} is a {_NOT_A_FILE['broken']}; expected an image file, a folder or a glob")
        elif path.exists():
            raise UsageError(f"input {spec!r} is neither a file nor a folder")
        else:
            raise UsageError(f"input {spec!r} does not exist; expected an image file, a folder or a glob")
    images = sorted(found.values(), key=lambda item: str(item.path))
    return images, sorted(skipped, key=lambda skip: str(skip.path))


def drop_earlier_outputs(items: Sequence[InputFile], suffix: str) -> tuple[list[InputFile], list[Skip]]:
    """Leave out files found in folders or by patterns whose name ends with the output suffix.

    Running a command twice on a folder would otherwise restore its own outputs again
    (``a_x4.png`` -> ``a_x4_x4.png``). Files named on the command line are always kept.
    """
    if not suffix:
        return list(items), []
    kept = [item for item in items if item.named or not item.path.stem.endswith(suffix)]
    dropped = [
        Skip(item.path, f"looks like an output of this command (name ends with {suffix})")
        for item in items
        if not item.named and item.path.stem.endswith(suffix)
    ]
    return kept, dropped


_NOT_A_FILE = {
    "broken": "symbolic link whose target is missing (or a loop of links)",
    "special": "not a regular file (a pipe, socket or device)",
}


def _is_broken_link(path: Path) -> bool:
    """A symbolic link whose target is missing, or a loop of links."""
    return path.is_symlink() and not path.exists()


def _walk(folder: Path, recursive: bool, seen: set[Path] | None = None) -> Iterable[tuple[Path, str]]:
    """(path, "file" | "folder" | "broken" | "special") below a folder, sorted; ``seen`` breaks
    folder loops. Broken links, special files and subfolders that cannot be listed (kind: the
    reason, "cannot list this folder: ...") are yielded so that the batch reports them instead of
    passing over them in silence; only the named folder itself must be listable."""
    top = seen is None
    seen = set() if seen is None else seen
    seen.add(folder.resolve())
    try:
        entries = sorted(folder.iterdir())
    except OSError as error:
        if top:
            raise UsageError(f"cannot list folder {folder}: {error.strerror or error}") from None
        # one locked subfolder (lost+found, another user's) must not stop the rest of the tree
        yield folder, f"cannot list this folder: {error.strerror or error}"
        return
    for entry in entries:
        if entry.is_dir():
            if not recursive:
                yield entry, "folder"
            elif not entry.name.startswith(".") and entry.resolve() not in seen:
                yield from _walk(entry, recursive, seen)
        elif entry.is_file():
            yield entry, "file"
        elif _is_broken_link(entry):
            yield entry, "broken"
        else:
            yield entry, "special"


def _sniff(path: Path) -> str | None:
    try:
        with path.open("rb") as handle:
            return io.sniff_format(handle.read(16))
    except OSError:
        return None


def _glob_base(pattern: str) -> Path:
    """The folder part of a glob pattern before its first wildcard."""
    parts = Path(os.path.expanduser(pattern)).parts
    base: list[str] = []
    for part in parts:
        if glob.has_magic(part):
            break
        base.append(part)
    return Path(*base) if base else Path(".")


# ---------------------------------------------------------------------------------------------
# output paths


@dataclass(frozen=True)
class OutputRule:
    """Where an input's output goes.

    Attributes:
        folder: Output folder (the input's folder tree is mirrored below it), or None for the
            input's own folder.
        suffix: Added to the file stem.
        ext: ``same`` or one of ``png|jpg|webp|tif``.
        file: The output file of a batch of one input (see ``output_file``); when set, it is the
            output path and ``folder``, ``suffix`` and ``ext`` play no part.
    """

    folder: Path | None
    suffix: str
    ext: str = "same"
    file: Path | None = None

    def __post_init__(self) -> None:
        if self.ext not in OUTPUT_EXTENSIONS:
            raise UsageError(f"--ext: expected one of {', '.join(OUTPUT_EXTENSIONS)}, got {self.ext!r}")
        if os.sep in self.suffix or (os.altsep and os.altsep in self.suffix):
            raise UsageError(f"--suffix: expected a name part without path separators, got {self.suffix!r}")

    def path_for(self, item: InputFile) -> Path:
        """Output path of an input."""
        if self.file is not None:
            return self.file
        read_as = item.sniffed_format or io.FORMAT_BY_EXTENSION.get(item.path.suffix.lower())
        if self.ext != "same":
            extension = "." + self.ext
        elif read_as not in io.EXTENSION_BY_FORMAT:  # read, not written (GIF)
            extension = ".png"
        elif item.sniffed_format is None:
            extension = item.path.suffix
        else:
            extension = io.EXTENSION_BY_FORMAT[item.sniffed_format]
        name = item.path.stem + self.suffix + extension
        if self.folder is None:
            return item.path.parent / name
        # textual, not resolved: a symlinked subfolder keeps its place in the mirrored tree
        relative = item.path.parent.relative_to(item.base)
        return self.folder / relative / name


def output_file(output: Path | None, *, suffix: str | None, ext: str, names_folder: bool = False) -> Path | None:
    """The file that ``--output`` names, or None when it names a folder (or is not given).

    ``--output`` names a file when its extension is an image extension (``io.FORMAT_BY_EXTENSION``,
    in any case), it is not an existing folder and it was not written with a trailing separator:
    a folder that exists keeps working as one, even when it is called ``x.png``, and so does
    ``out.png/``. The file's name and extension are used as given, so ``--suffix`` has nothing to
    add to and ``--ext`` may only agree with the extension.

    Args:
        output: ``--output``.
        suffix: ``--suffix`` as given, None when it was not.
        ext: ``--ext`` (``same`` leaves the format to the file's extension).
        names_folder: ``--output`` ended in a path separator.

    Raises:
        UsageError: An extension of a format that is read but not written (GIF), a ``--suffix``,
            an ``--ext`` of another format than the file's, or a folder whose name a file holds.
    """
    if names_folder or output is None or output.suffix.lower() not in io.FORMAT_BY_EXTENSION or output.is_dir():
        # a folder, then: refused now if a file holds its name, not once per input after the model loaded
        if output is not None and output.exists() and not output.is_dir():
            raise UsageError(f"--output: expected a folder, got the existing file {output}")
        return None
    try:
        fmt = io.output_format(output)
    except ImageWriteError as error:
        raise UsageError(f"--output: {error}") from None
    if suffix is not None:
        raise UsageError(f"--suffix: expected none with the output file {output} (its name is used as given), got {suffix!r}")
    if ext != "same" and io.FORMAT_BY_EXTENSION["." + ext] != fmt:
        raise UsageError(f"--ext: expected none or the format of the output file {output} ({fmt.upper()}), got {ext!r}")
    return output


def require_one_named_input(file: Path, specs: Sequence[str], items: Sequence[InputFile]) -> None:
    """Refuse an output file for anything but one image file named on the command line.

    Checked after discovery, before any work: a folder or a pattern may find any number of images,
    and several inputs cannot share one output file.

    Args:
        file: The output file (``output_file``).
        specs: Command-line inputs.
        items: The images they found (``discover_inputs``).

    Raises:
        UsageError: Several inputs, a folder or a glob pattern.
    """
    if len(specs) == 1 and len(items) == 1 and items[0].named:
        return
    found = f"{len(items)} image" + ("" if len(items) == 1 else "s")
    if len(specs) > 1:
        inputs = f"{len(specs)} inputs"
    elif Path(specs[0]).expanduser().is_dir():
        inputs = f"the input folder {specs[0]} ({found})"
    else:
        inputs = f"the pattern {specs[0]!r} ({found})"
    raise UsageError(f"--output: expected a folder for {inputs}, got the file name {file} (give a folder, or one input file)")


def output_collisions(items: Sequence[InputFile], rule: OutputRule) -> list[FileResult]:
    """Inputs whose output path is an earlier input's too, found before any work starts.

    ``d/a.png`` and ``d/a.bmp`` with ``--ext png`` both name ``a.png``: the first keeps it, the
    later one fails (with or without overwriting; a batch never writes one path twice).

    Returns:
        A failed result per later input; ``index`` is its position in ``items``.
    """
    first: dict[str, Path] = {}
    failed = []
    for index, item in enumerate(items):
        output = rule.path_for(item)
        earlier = first.setdefault(_output_key(output), item.path)
        if earlier != item.path:
            error = _collision_message(earlier, output)
            failed.append(FileResult(index=index, input=str(item.path), output=str(output), status=STATUS_FAILED, error=error))
    return failed


def unwritable_outputs(items: Sequence[InputFile], rule: OutputRule, *, skip: set[int] | None = None) -> list[FileResult]:
    """Inputs whose output folder this process may not write (read-only folder or file system),
    found before any work: without this each of them was restored first and failed at its write.

    The folder is checked with ``os.access``, or the nearest existing folder above one that
    ``--output`` will create. ``skip``: positions already failed (collisions).

    Returns:
        A failed result per such input; ``index`` is its position in ``items``.
    """
    verdicts: dict[Path, str | None] = {}
    failed = []
    for index, item in enumerate(items):
        if skip and index in skip:
            continue
        output = rule.path_for(item)
        if output.parent not in verdicts:
            verdicts[output.parent] = _unwritable_reason(output.parent)
        reason = verdicts[output.parent]
        if reason is not None:
            failed.append(FileResult(index=index, input=str(item.path), output=str(output), status=STATUS_FAILED, error=reason))
    return failed


def _unwritable_reason(folder: Path) -> str | None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write to the folder {existing}: permission denied or read-only (expected a writable output folder)"
    return None


def check_report_path(report: Path, items: Sequence[InputFile], rule: OutputRule) -> None:
    """Refuse a ``--report`` file that is a folder, an input or an output of the batch, before any work.

    The report is written over whatever has its name once the batch is done: an input or a
    restored image would be replaced by JSON.

    Raises:
        UsageError: The path is an existing folder, an input or an input's output path.
    """
    if report.is_dir():
        raise UsageError(f"--report: expected a file name, got the folder {report}")
    key = _output_key(report)
    for item in items:
        if key == _output_key(item.path) or (report.exists() and os.path.samefile(report, item.path)):
            raise UsageError(f"--report: expected a file that is not an input, got the input {item.path}")
        if key == _output_key(rule.path_for(item)):
            raise UsageError(f"--report: expected a file that is not an output, got the output of {item.path}")


def _output_key(path: Path) -> str:
    """Compare output paths as the file system would (normalised, case-folded on Windows)."""
    return os.path.normcase(str(path.resolve()))


def _collision_message(earlier: Path, output: Path) -> str:
    return f"same output as {earlier} ({output}); use --suffix or distinct names"


# ---------------------------------------------------------------------------------------------
# processing


@dataclass
class FileResult:
    """What happened to one input (one entry of the report)."""

    index: int
    input: str
    output: str | None
    status: str
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    width: int | None = None
    height: int | None = None
    out_width: int | None = None
    out_height: int | None = None
    tile: dict[str, Any] | None = None
    rank: int = 0
    frames: int | None = None
    """Pages or frames of the input (only the first is processed)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-ready)."""
        return asdict(self)


class BatchEvents(Protocol):
    """Progress callbacks of ``run_batch`` (the CLI draws them; a library caller may ignore them)."""

    def file_started(self, position: int, total: int, item: InputFile) -> None:
        """A file is about to be processed (position counts from 0)."""

    def tiles_done(self, done: int, total: int) -> None:
        """Tiles of the current file finished so far."""

    def file_finished(self, result: FileResult) -> None:
        """A file was restored, skipped or failed."""


class _NoEvents:
    def file_started(self, position: int, total: int, item: InputFile) -> None:
        pass

    def tiles_done(self, done: int, total: int) -> None:
        pass

    def file_finished(self, result: FileResult) -> None:
        pass


@dataclass
class BatchRun:
    """Results of ``run_batch``.

    Attributes:
        results: One per attempted file.
        interrupted: Stopped by Ctrl-C, SIGTERM or SIGHUP (``restorecli.interrupts``).
        not_started: Files left after the interruption.
        stop_signal: The signal that stopped it (SIGINT for a plain KeyboardInterrupt).
    """

    results: list[FileResult]
    interrupted: bool = False
    not_started: int = 0
    stop_signal: int | None = None


def run_batch(
    items: Sequence[tuple[int, InputFile]],
    restorer: ImageRestorer,
    rule: OutputRule,
    *,
    protected: set[Path],
    overwrite: bool = False,
    events: BatchEvents | None = None,
    rank: int = 0,
    max_pixels: int | None = None,
) -> BatchRun:
    """Restore files one by one.

    A file that fails (unreadable, unwritable, out of memory) is recorded and the batch goes on.
    Ctrl-C, SIGTERM and SIGHUP (``restorecli.interrupts``) stop after cleaning up the file in
    progress; finished outputs stay.

    Args:
        items: (position in the whole batch, input) pairs, in processing order.
        restorer: The network on its device.
        rule: Output path rule.
        protected: Resolved paths of every input of the batch; never written to.
        overwrite: Replace existing outputs instead of skipping them.
        events: Progress callbacks.
        rank: This process's rank (recorded in the results).
        max_pixels: Pixel limit of an input (see ``io.read_image``).

    Returns:
        A result per attempted file, and whether the run was interrupted.
    """
    events = events or _NoEvents()
    claimed: dict[str, Path] = {}
    run = BatchRun(results=[])
    result, started = None, time.perf_counter()
    try:
        for position, (index, item) in enumerate(items):
            result = None
            events.file_started(position, len(items), item)
            started = time.perf_counter()
            result = FileResult(index=index, input=str(item.path), output=None, status=STATUS_FAILED, rank=rank)
            try:
                _process(
                    item, restorer, rule, result,
                    protected=protected, overwrite=overwrite, claimed=claimed, events=events, max_pixels=max_pixels,
                )  # fmt: skip
            except RestoreError as error:
                result.status, result.error = STATUS_FAILED, str(error)
            except MemoryError:
                result.status, result.error = STATUS_FAILED, "out of host memory; use a smaller --tile or free memory"
            result.seconds = round(time.perf_counter() - started, 4)
            run.results.append(result)
            events.file_finished(result)
    except KeyboardInterrupt as error:
        # Ctrl-C, SIGTERM or SIGHUP: the file in progress left no output (io writes atomically)
        run.interrupted, run.stop_signal = True, interrupts.handled(error)
        if result is not None and (not run.results or run.results[-1] is not result):
            if result.status != STATUS_OK:  # OK: written in full before the signal was taken
                result.status = STATUS_INTERRUPTED
                result.error = f"interrupted ({interrupts.signal_name(run.stop_signal)}); no output written"
            result.seconds = round(time.perf_counter() - started, 4)
            run.results.append(result)
            events.file_finished(result)
        run.not_started = len(items) - len(run.results)
    return run


def _process(
    item: InputFile,
    restorer: ImageRestorer,
    rule: OutputRule,
    result: FileResult,
    *,
    protected: set[Path],
    overwrite: bool,
    claimed: dict[str, Path],
    events: BatchEvents,
    max_pixels: int | None,
) -> None:
    planned = rule.path_for(item)
    if not _take_target(planned, item, result, rule=rule, protected=protected, overwrite=overwrite):
        return
    image = io.read_image(item.path, max_pixels=max_pixels)
    result.width, result.height, result.frames = image.width, image.height, image.frames
    if image.frames > 1:
        result.notes.append(f"{image.frame_unit} 1 of {image.frames} processed")
    result.notes += image.decoder_notes
    if image.orientation != 1:
        result.notes.append(f"EXIF orientation {image.orientation} applied")
    if rule.file is None and rule.ext == "same" and image.source_format not in io.EXTENSION_BY_FORMAT:
        result.notes.append(f"written as PNG ({image.source_format.upper()} is read, not written)")
    target = planned
    if image.alpha is not None and io.output_format(planned) not in io.FORMATS_WITH_ALPHA:
        if rule.file is not None:  # a named file is written there or not at all, never renamed
            raise ImageWriteError(
                f"{planned}: {item.path} has an alpha channel, which {planned.suffix} files cannot keep; "
                "expected an output name ending .png, .webp, .tif or .bmp"
            )
        target = planned.with_suffix(".png")
        result.notes.append(f"written as PNG to keep the alpha channel ({planned.suffix} has none)")
        if not _take_target(target, item, result, rule=rule, protected=protected, overwrite=overwrite):
            return
    key = _output_key(target)
    if key in claimed:  # the alpha switch to PNG above can meet another input's output
        raise ImageWriteError(_collision_message(claimed[key], target))
    claimed[key] = item.path

    restored = restorer.restore(io.image_to_tensor(image), on_progress=events.tiles_done)
    result.tile = {
        "requested": "auto" if restorer.requested_tile is None else restorer.requested_tile,
        "size": restored.tile,
        "overlap": restored.overlap,
        "tiles": restored.num_tiles,
    }
    output = io.tensor_to_image(restored.output, like=image)
    del restored
    result.out_width, result.out_height = output.width, output.height
    with interrupts.deferred():  # a stop signal waits until the output is whole and recorded
        result.notes += io.write_image(target, output, overwrite=overwrite)
        result.status = STATUS_OK


def _take_target(
    path: Path, item: InputFile, result: FileResult, *, rule: OutputRule, protected: set[Path], overwrite: bool
) -> bool:
    """Make ``path`` the file's output; False (file skipped) when it exists and may not be replaced."""
    result.output = str(path)
    if rule.file is None:
        shorter, other = "choose a shorter --suffix or rename the input", "choose another --output folder or a --suffix"
    else:
        shorter, other = "choose a shorter --output name", "choose another --output name"
    # first: the checks below would stat the path, and the system refuses names over its limit
    io.check_name_length(path, hint=shorter)
    _refuse_input_as_output(path, item, protected, hint=other)
    if path.is_dir():  # not an output to skip: --overwrite would not replace it either
        raise ImageWriteError(f"{path}: is a folder, expected an output file path; {other}")
    if path.exists() and not overwrite:
        result.status = STATUS_SKIPPED
        result.notes.append("output exists (pass --overwrite to replace it)")
        return False
    return True


def _refuse_input_as_output(output: Path, item: InputFile, protected: set[Path], *, hint: str) -> None:
    resolved = output.resolve()
    same_file = output.exists() and os.path.samefile(output, item.path)
    if resolved in protected or same_file:
        raise ImageWriteError(f"output {output} would overwrite an input; {hint}")


# ---------------------------------------------------------------------------------------------
# report


@dataclass
class BatchReport:
    """The whole batch: settings, one entry per input, and the totals."""

    command: str
    settings: dict[str, Any]
    files: list[FileResult]
    seconds: float
    interrupted: bool = False
    not_started: int = 0
    stop_signal: int | None = None

    def count(self, status: str) -> int:
        """Number of files with a status."""
        return sum(1 for result in self.files if result.status == status)

    @property
    def exit_code(self) -> int:
        """0 when every file succeeded or was skipped, 1 when any failed; after an interruption
        128 + the signal number (Ctrl-C 130, SIGTERM 143, SIGHUP 129)."""
        if self.interrupted:
            return interrupts.exit_code(self.stop_signal or signal.SIGINT)
        return 1 if self.count(STATUS_FAILED) else 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``--json`` and ``--report``."""
        summary = {
            "total": len(self.files) + self.not_started,
            "ok": self.count(STATUS_OK),
            "failed": self.count(STATUS_FAILED),
            "skipped": self.count(STATUS_SKIPPED),
            "interrupted": self.count(STATUS_INTERRUPTED),
            "not_started": self.not_started,
            "multi_frame": sum(1 for result in self.files if (result.frames or 1) > 1),
            "stopped_by": interrupts.signal_name(self.stop_signal or signal.SIGINT) if self.interrupted else None,
            "seconds": round(self.seconds, 3),
        }
        files = []
        for result in self.files:
            entry = result.to_dict()
            entry.update({key: self.settings.get(key) for key in ("model", "weights_sha256", "device", "backend")})
            files.append(entry)
        return {"command": self.command, **self.settings, "summary": summary, "files": files}


def skipped_results(skips: Iterable[Skip]) -> list[FileResult]:
    """Report entries for paths left out during discovery (index -1: not part of the batch)."""
    return [FileResult(index=-1, input=str(s.path), output=None, status=STATUS_SKIPPED, notes=[s.reason]) for s in skips]


# ---------------------------------------------------------------------------------------------
# torchrun (the ranks and world size come from restorecli.torchrun)


def share_of_rank(items: Sequence[InputFile], rank: int, world: int) -> list[tuple[int, InputFile]]:
    """Every ``world``-th input starting at ``rank``, with its position in the whole batch."""
    return [(index, item) for index, item in enumerate(items) if index % world == rank]


def wait_for_ranks(world: int) -> None:
    """Return once every rank got here: called after the inputs are listed and before any
    output is written, so no rank lists another rank's outputs among the inputs (they would
    be reported as skipped earlier outputs by one rank only)."""
    if world > 1:
        _process_group().barrier()


def _process_group() -> Any:
    """torch.distributed with its gloo process group from torchrun's environment, made once."""
    import torch.distributed as dist

    if not dist.is_initialized():
        # ranks finish at different times; the default 30-minute wait is too short for big batches
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=1))
    return dist


def gather_results(results: list[FileResult], world: int) -> list[FileResult]:
    """All ranks' results, ordered as the inputs were (every rank receives everything).

    Uses a gloo process group from torchrun's environment (works on CPU and across machines).
    """
    if world == 1:
        return sorted(results, key=lambda result: result.index)
    dist = _process_group()
    parts: list[list[dict[str, Any]] | None] = [None] * world
    dist.all_gather_object(parts, [result.to_dict() for result in results])
    dist.destroy_process_group()
    merged = [FileResult(**entry) for part in parts for entry in part or []]
    return sorted(merged, key=lambda result: result.index)


__all__ = [
    "OUTPUT_EXTENSIONS",
    "BatchEvents",
    "BatchReport",
    "BatchRun",
    "FileResult",
    "InputFile",
    "OutputRule",
    "Skip",
    "check_report_path",
    "default_suffix",
    "discover_inputs",
    "drop_earlier_outputs",
    "gather_results",
    "output_collisions",
    "output_file",
    "require_one_named_input",
    "run_batch",
    "share_of_rank",
    "wait_for_ranks",
    "skipped_results",
]

