"""`restore bench`: speed of named networks on this machine (the measurements live in restorecli/bench.py)."""

from __future__ import annotations

import shlex
from typing import Annotated

import typer
from typer.core import TyperCommand

import restorecli.bench as bench_lib  # no torch at import time
from restorecli.cli.options import DeviceOpt, JsonOpt, QuietOpt
from restorecli.console import Output

DEFAULTS = bench_lib.BenchSettings()

# Options that take several values after one flag (``--sizes 64 128``), as in
# benchmarks/bench_models.py; Typer options otherwise take one value per flag.
LIST_OPTIONS = frozenset({"--models", "--sizes", "--size", "--threads"})


def spread_list_options(args: list[str], flags: frozenset[str] = LIST_OPTIONS) -> list[str]:
    """Rewrite ``--sizes 64 128`` as ``--sizes 64 --sizes 128``; other arguments are kept as they are.

    A value is any argument that does not start with ``-`` (or is a negative number) up to the
    next option; ``--`` ends the rewriting.
    """
    out: list[str] = []
    flag: str | None = None
    for position, arg in enumerate(args):
        if arg == "--":
            return out + args[position:]
        if arg.startswith("-") and not arg.lstrip("-").isdigit():
            name = arg.split("=", 1)[0]  # --sizes=64 128 takes 128 too
            flag = name if name in flags else None
        elif flag is not None and out[-1] != flag:
            out.append(flag)
        out.append(arg)
    return out


class _ListOptionsCommand(TyperCommand):
    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        ctx.meta["restorecli.bench.args"] = list(args)  # recorded in the report as the command line
        return super().parse_args(ctx, spread_list_options(list(args)))


def _list_option(*flags: str, metavar: str, what: str) -> typer.models.OptionInfo:
    """A several-values option (see ``spread_list_options``) whose help names its default."""
    default = getattr(DEFAULTS, flags[0].removeprefix("--"))
    return typer.Option(*flags, metavar=metavar, help=f"{what} Default: {' '.join(map(str, default))}.", show_default=False)


def register(app: typer.Typer) -> None:
    """Add the ``bench`` command to the app."""

    @app.command("bench", cls=_ListOptionsCommand)
    def bench(
        ctx: typer.Context,
        models_: Annotated[
            list[str] | None, typer.Argument(metavar="MODEL", help="Model names; same as --models.", show_default=False)
        ] = None,
        models_opt: Annotated[
            list[str] | None, _list_option("--models", metavar="NAME...", what="Official or bundled names (`restore models list`).")
        ] = None,
        sizes: Annotated[list[int] | None, _list_option("--sizes", "--size", metavar="N...", what="Square input sides.")] = None,
        threads: Annotated[
            list[int] | None, _list_option("--threads", metavar="N...", what="torch thread counts, each measured (0: torch default).")
        ] = None,
        train_batch: Annotated[int, typer.Option(help="Batch of the timed training step; 0 skips it.")] = DEFAULTS.train_batch,
        train_patch: Annotated[int, typer.Option(help="Side of the training step's LR patches.")] = DEFAULTS.train_patch,
        device: DeviceOpt = "cpu",
        backend: Annotated[str | None, typer.Option("--scan-backend", help="ref, cpu, cuda or triton (default: auto).")] = None,
        repeats: Annotated[int, typer.Option(help="Timed runs per case after a warm-up (the best is kept).")] = DEFAULTS.repeats,
        skip_slower_than: Annotated[
            float, typer.Option(metavar="SECONDS", help="Skip a network's larger sizes once one forward takes longer.")
        ] = DEFAULTS.skip_slower_than,
        breakdown: Annotated[
            bool, typer.Option("--breakdown/--no-breakdown", help="Profile one more forward per case for the time breakdown.")
        ] = True,
        as_json: JsonOpt = False,
        quiet: QuietOpt = False,
    ) -> None:
        """Time forwards and a training step of named networks (random weights) on this machine.

        Per network, thread count and size: forward seconds, GFLOP/s, share of the GEMM rate
        measured in the same run, cost per pixel, and where the time goes (profiler).

        List options take several values: `restore bench --sizes 64 128 --threads 1 2`.
        """
        settings = bench_lib.BenchSettings(
            models=tuple([*(models_ or []), *(models_opt or [])] or DEFAULTS.models),
            sizes=tuple(sizes or DEFAULTS.sizes),
            threads=tuple(threads or DEFAULTS.threads),
            device=device,
            backend=backend,
            repeats=repeats,
            train_batch=train_batch,
            train_patch=train_patch,
            skip_slower_than=skip_slower_than,
            breakdown=breakdown,
        )
        command = shlex.join(["restore", "bench", *ctx.meta.get("restorecli.bench.args", [])])
        output = Output(json_output=as_json, quiet=quiet)
        # one line per case on stderr, even under --json: a run takes minutes, and lines suit logs
        report = bench_lib.run_benchmark(settings, command=command, progress=None if quiet else output.note)
        if as_json:
            output.data(report.to_dict())
        else:
            output.line(bench_lib.format_markdown(report).removesuffix("\n"))
