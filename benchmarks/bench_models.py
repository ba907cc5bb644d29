"""Full-network speed on this machine: forward and training-step times, GFLOP/s, roofline share.

Usage:
    python benchmarks/bench_models.py [--models mair-light-t-x4 restorecli-light-x4]
        [--sizes 64 128 256 512] [--threads 1 2] [--train-batch 8] [--train-patch 64]
        [--repeats 3] [--backend cpu] [--skip-slower-than 120] [--no-breakdown] [--json]

Per network, thread count and size it reports the forward time (batch 1), the time of one
training step (forward + L1 loss + backward on ``--train-batch`` LR patches of ``--train-patch``²),
the achieved GFLOP/s and its share of this machine's fp32 GEMM rate measured in the same run,
the cost per pixel relative to the smallest size, and a torch.profiler breakdown of one forward.
The measurements are restorecli/bench.py's, the same as `restore bench`; weights are random
(speed does not depend on them). Markdown on stdout, or one JSON document with ``--json``;
progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from restorecli.bench import BenchSettings, format_markdown, run_benchmark
from restorecli.errors import RestoreError


def parse_settings(argv: list[str]) -> tuple[BenchSettings, bool]:
    """Settings and the --json flag from the command line."""
    defaults = BenchSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(defaults.models), help="official or bundled model names")
    parser.add_argument("--sizes", nargs="+", type=int, default=list(defaults.sizes), help="square input sides")
    parser.add_argument("--threads", nargs="+", type=int, default=list(defaults.threads), help="torch thread counts (0: default)")
    parser.add_argument("--train-batch", type=int, default=defaults.train_batch, help="training-step batch; 0 skips it")
    parser.add_argument("--train-patch", type=int, default=defaults.train_patch, help="training-step LR patch side")
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="timed runs per case; the best is kept")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--backend", "--scan-backend", default=None, help="selective-scan backend (ref, cpu, cuda, triton; default auto)")
    parser.add_argument(
        "--skip-slower-than",
        type=float,
        default=defaults.skip_slower_than,
        help="skip larger sizes of a network once one forward exceeds this many seconds",
    )
    parser.add_argument("--no-breakdown", action="store_true", help="do not profile the forwards")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    settings = BenchSettings(
        models=tuple(args.models),
        sizes=tuple(args.sizes),
        threads=tuple(args.threads),
        device=args.device,
        backend=args.backend,
        repeats=args.repeats,
        train_batch=args.train_batch,
        train_patch=args.train_patch,
        skip_slower_than=args.skip_slower_than,
        breakdown=not args.no_breakdown,
    )
    return settings, args.json


def main(argv: list[str]) -> int:
    settings, as_json = parse_settings(argv)
    command = shlex.join(["python", "benchmarks/bench_models.py", *argv])
    try:
        report = run_benchmark(settings, command=command, progress=lambda line: sys.stderr.write(line + "\n"))
    except RestoreError as error:  # unknown model, unusable backend, option out of range
        sys.stderr.write(f"Error: {error}\n")
        return error.exit_code
    sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n" if as_json else format_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
