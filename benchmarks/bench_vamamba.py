"""VAMamba CPU forward timings: cross vs GPS vs both scans, and the GPS planner's share.

Usage:
    python benchmarks/bench_vamamba.py [--models vamamba-light vamamba-base] [--sizes 64 128]
        [--scans cross gps both] [--threads 1] [--repeats 2] [--warmup 1] [--json]

Weights are random (speed does not depend on them; the greedy walk's length does not either,
since it always visits every patch once). Times are the minimum over ``--repeats`` runs after one
warm-up (``--warmup``). The planner share is the host time spent in ``gps_pixel_orders`` (the greedy walk plus
the pixel-order construction, including the one device-to-host transfer of the scores) divided by
the forward time; the ViT share is the time of the score ViTs (forward hooks).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace

import torch

from restorecli import models
from restorecli.models import vamamba


class Timer:
    """Accumulates wall time of wrapped calls."""

    def __init__(self) -> None:
        self.total = 0.0

    def wrap(self, fn):  # noqa: ANN001, ANN201 - a thin test harness wrapper
        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total += time.perf_counter() - start

        return timed


def measure(name: str, scan: str, size: int, repeats: int, warmup: int) -> dict[str, float | str | int]:
    entry = models.spec(name)
    torch.manual_seed(0)
    net = models.build_arch("vamamba", replace(entry.config, scan=scan))
    planner, vit = Timer(), Timer()
    original = vamamba.gps_pixel_orders
    vamamba.gps_pixel_orders = planner.wrap(original)
    vit_starts: dict[int, float] = {}
    hooks = []
    for module in net.modules():
        if isinstance(module, vamamba.ScoreViT):
            hooks.append(module.register_forward_pre_hook(lambda m, _: vit_starts.__setitem__(id(m), time.perf_counter())))
            hooks.append(module.register_forward_hook(
                lambda m, _i, _o: setattr(vit, "total", vit.total + time.perf_counter() - vit_starts[id(m)])
            ))  # fmt: skip
    x = torch.rand(1, 3, size, size)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                net(x)
            best = None
            for _ in range(repeats):
                planner.total = vit.total = 0.0
                start = time.perf_counter()
                net(x)
                elapsed = time.perf_counter() - start
                if best is None or elapsed < best[0]:
                    best = (elapsed, planner.total, vit.total)
    finally:
        vamamba.gps_pixel_orders = original
        for hook in hooks:
            hook.remove()
    assert best is not None
    params = sum(p.numel() for p in net.parameters())
    return {"model": name, "scan": scan, "size": size, "params": params, "forward_s": best[0],
            "planner_s": best[1], "planner_share": best[1] / best[0], "vit_s": best[2]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vamamba-light", "vamamba-base"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--scans", nargs="+", default=["cross", "gps", "both"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (0 for the slow base model)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(n, s, size, args.repeats, args.warmup) for n in args.models for size in args.sizes for s in args.scans]
    if args.json:
        print(json.dumps({"torch": torch.__version__, "machine": platform.processor(), "rows": rows}, indent=1))
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s), min of {args.repeats} after {args.warmup} warm-up(s)")
    print("| model | scan | input | params | forward (s) | ViT (s) | planner (ms) | planner share |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['scan']} | {r['size']}² | {r['params'] / 1e6:.2f} M | {r['forward_s']:.3f} | "
              f"{r['vit_s']:.3f} | {1000 * r['planner_s']:.1f} | {100 * r['planner_share']:.2f} % |")  # fmt: skip


if __name__ == "__main__":
    main()
