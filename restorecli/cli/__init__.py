"""The `restore` command. Thin Typer commands over the library; torch is imported lazily.

Each command module exposes ``register(app)``; the list below is the whole command table.
"""

from __future__ import annotations

import os
import sys

import typer

from restorecli.cli import env_cmd, eval_cmd, models_cmds, restore_cmds, train_cmd
from restorecli.errors import RestoreError

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


for _module in (restore_cmds, models_cmds, eval_cmd, env_cmd, train_cmd):
    _module.register(app)


def main() -> None:
    """Console entry point: run the app, print library errors as one line on stderr.

    Usage errors are handled by Typer (exit code 2); a RestoreError becomes ``Error: ...``
    with its exit code; set RESTORECLI_DEBUG=1 for the traceback.
    """
    try:
        app()
    except RestoreError as error:
        sys.stderr.write(f"Error: {error}\n")
        if os.environ.get("RESTORECLI_DEBUG"):
            raise
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        sys.exit(130)
