"""`restore bench`: forward-pass timings of named networks on this machine."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``bench`` command to the app."""

    @app.command("bench")
    def bench(
        models_: Annotated[list[str], typer.Argument(metavar="MODEL...", help="Model names (see `restore models list`).")] = None,  # type: ignore[assignment]
        size: Annotated[list[int], typer.Option("--size", help="Square input side; repeat for several.")] = None,  # type: ignore[assignment]
        device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
        backend: Annotated[str | None, typer.Option("--scan-backend", help="ref, cpu or cuda (default: auto).")] = None,
        threads: Annotated[int, typer.Option(help="torch intra-op threads (0: torch default).")] = 0,
        repeats: Annotated[int, typer.Option(min=1, help="Timed forwards per case (the best is kept).")] = 3,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")] = False,
    ) -> None:
        """Time forward passes (random weights, batch 1). Full benchmarks live in benchmarks/."""
        import torch

        from restorecli.bench import time_forward
        from restorecli.errors import UsageError

        if threads < 0:
            raise UsageError(f"--threads: expected 0 or a positive count, got {threads}")
        if threads:
            torch.set_num_threads(threads)
        names = models_ or ["mair-light-t-x4"]
        sizes = size or [64]
        results = []
        for name in names:
            for side in sizes:
                if side < 1:
                    raise UsageError(f"--size: expected a positive side, got {side}")
                timing = time_forward(name, side, device=device, backend=backend, repeats=repeats)
                results.append(timing)
                if not as_json:
                    sys.stderr.write(f"{name} {side}x{side}: {timing.seconds:.3f} s\n")
        if as_json:
            sys.stdout.write(json.dumps([asdict(r) for r in results], indent=2) + "\n")
            return
        sys.stdout.write("model\tinput\tseconds\tdevice\tbackend\tthreads\n")
        for r in results:
            sys.stdout.write(f"{r.model}\t{r.size}x{r.size}\t{r.seconds:.4f}\t{r.device}\t{r.backend}\t{r.threads}\n")
