"""Full-network CPU forward timings and a per-block breakdown (scan vs gathers vs dense layers).

Usage:
    python benchmarks/bench_models.py [--models mair-light-t-x4 mair-sr-x4] [--sizes 64 128 256]
        [--threads 2] [--repeats 3] [--backend cpu] [--json]

Weights are random (speed does not depend on them). Times are the minimum over ``--repeats``
runs after one warm-up; the breakdown comes from torch.profiler self-CPU times grouped into
the selective scan, the index gathers of the scan orders, and everything else (dense layers).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from restorecli import models

SCAN_OP_MARKERS = ("kernelscan", "selective_scan", "scan_sequential", "scan_torch")
GATHER_OPS = ("aten::index_select", "aten::gather", "aten::index")


def time_forward(net: torch.nn.Module, size: int, repeats: int) -> float:
    x = torch.rand(1, 3, size, size)
    with torch.inference_mode():
        net(x)  # warm-up: builds scan orders, JIT kernels, allocator pools
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            net(x)
            best = min(best, time.perf_counter() - start)
    return best


def breakdown(net: torch.nn.Module, size: int) -> dict[str, float]:
    """Self CPU time (ms) per category for one forward."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.rand(1, 3, size, size)
    with torch.inference_mode():
        net(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            net(x)
    totals = {"scan": 0.0, "gathers": 0.0, "dense_and_other": 0.0}
    for event in prof.key_averages():
        ms = event.self_cpu_time_total / 1000.0
        name = event.key.lower()
        if any(marker in name for marker in SCAN_OP_MARKERS):
            totals["scan"] += ms
        elif event.key in GATHER_OPS:
            totals["gathers"] += ms
        else:
            totals["dense_and_other"] += ms
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mair-light-t-x4", "mair-sr-x4"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128, 256])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="cpu", help="selective-scan backend (ref, cpu)")
    parser.add_argument("--skip-slower-than", type=float, default=120.0, help="skip larger sizes of a model once a run exceeds this many seconds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        net = models.build(name)
        models.set_scan_backend(net, args.backend)
        for size in args.sizes:
            seconds = time_forward(net, size, args.repeats)
            parts = breakdown(net, size)
            rows.append({"model": name, "size": size, "seconds": seconds, **{f"{k}_ms": v for k, v in parts.items()}})
            sys.stderr.write(f"{name} {size}x{size}: {seconds:.3f} s\n")
            if seconds > args.skip_slower_than:
                break
    meta = {"threads": args.threads, "backend": args.backend, "torch": torch.__version__, "machine": platform.processor() or platform.machine()}
    if args.json:
        sys.stdout.write(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        return 0
    sys.stdout.write(f"threads={args.threads} backend={args.backend} torch={torch.__version__}\n\n")
    sys.stdout.write("| model | input | forward (s) | scan (ms) | gathers (ms) | dense+other (ms) |\n|---|---|---|---|---|---|\n")
    for r in rows:
        sys.stdout.write(
            f"| {r['model']} | {r['size']}² | {r['seconds']:.3f} | {r['scan_ms']:.0f} | {r['gathers_ms']:.0f} | {r['dense_and_other_ms']:.0f} |\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
