"""The `restore` command. Thin Typer commands over the library; torch is imported lazily.

Each command module exposes ``register(app)``; the list below is the whole command table.
"""

from __future__ import annotations

import os
import sys

import typer

from restorecli.cli import bench_cmd, env_cmd, eval_cmd, models_cmds, restore_cmds, train_cmd
from restorecli import interrupts
from restorecli.console import error_document, one_line
from restorecli.errors import RestoreError
from restorecli.headers import lift_decoder_pixel_cap
from restorecli.heap import reuse_freed_memory
from restorecli.openmp import wait_passively

app = typer.Typer(
    name="restore",
    help="Image restoration (super-resolution, denoising, deblurring, dehazing) with MaIR networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Image restoration with Mamba-based networks. Run `restore COMMAND --help` for details."""


for _module in (restore_cmds, models_cmds, eval_cmd, train_cmd, bench_cmd, env_cmd):
    _module.register(app)


def _usage_error_line(error: Exception) -> str | None:
    """One-line text of a command-line parsing error (Typer's vendored Click exception), else None."""
    format_message = getattr(error, "format_message", None)
    if not callable(format_message) or not isinstance(getattr(error, "exit_code", None), int):
        return None
    context = getattr(error, "ctx", None)
    command = f" (see `{context.command_path} --help`)" if context is not None else ""
    return " ".join(str(format_message()).split()) + command


def main() -> None:
    """Console entry point.

    Library errors (RestoreError) and command-line usage errors are printed as one ``Error: ...``
    line on stderr with their exit code (usage: 2); set RESTORECLI_DEBUG=1 for the traceback.
    Ctrl-C, SIGTERM and SIGHUP stop a command alike (``restorecli.interrupts``): it cleans up,
    reports what it finished, and the exit code is 128 + the signal number (130, 143, 129).
    Freed memory is kept for reuse (``restorecli.heap``), OpenMP threads sleep while they wait
    (``restorecli.openmp``); the size limit of input images is the header check alone
    (``restorecli.headers.lift_decoder_pixel_cap``).
    """
    reuse_freed_memory()
    wait_passively()
    lift_decoder_pixel_cap()
    with interrupts.stop_signals() as stops:
        code = _run_app()
        # Typer turns a KeyboardInterrupt that no command reported into a bare exit code 130
        if code == 130 and stops.unreported is not None:
            sys.stderr.write(f"Interrupted ({interrupts.signal_name(stops.unreported.signum)}).\n")
            code = interrupts.exit_code(interrupts.handled(stops.unreported))
    sys.exit(code)


def _run_app() -> int:
    """Run the command; returns its exit code, or exits after printing an error line."""
    try:
        result = app(standalone_mode=False)
    except RestoreError as error:
        sys.stderr.write(f"Error: {one_line(str(error))}\n")  # a path in it may hold a newline
        if _json_requested():
            error_document(str(error), error.exit_code)
        if os.environ.get("RESTORECLI_DEBUG"):
            raise
        sys.exit(error.exit_code)
    except KeyboardInterrupt as error:
        signum = interrupts.handled(error)
        sys.stderr.write(f"Interrupted ({interrupts.signal_name(signum)}).\n")
        sys.exit(interrupts.exit_code(signum))
    except Exception as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # help was printed already
            sys.exit(2)
        if type(error).__name__ == "Abort":
            sys.stderr.write("Aborted.\n")
            sys.exit(130)
        line = _usage_error_line(error)
        if line is None:
            raise
        sys.stderr.write(f"Error: {one_line(line)}\n")
        if _json_requested():
            error_document(line, error.exit_code)  # type: ignore[attr-defined]
        sys.exit(error.exit_code)  # type: ignore[attr-defined]
    return result if isinstance(result, int) else 0


def _json_requested() -> bool:
    """Whether the command line asks for ``--json`` (an argument after ``--`` is a file name)."""
    args = sys.argv[1:]
    return "--json" in (args[: args.index("--")] if "--" in args else args)
