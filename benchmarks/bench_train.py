"""Training-step throughput (forward + L1 + backward + Adam) of MaIR networks on the CPU or a GPU.

Random weights and data (speed does not depend on them). Reports the median and minimum seconds per
iteration after ``--warmup`` untimed steps, and iterations/s from the median.

    python benchmarks/bench_train.py                                  # mair-light-t-x4, 64² LR, batch 8
    python benchmarks/bench_train.py --model mair-light-t-x4 --set embed_dim=48 --set depths=[2,2,2] \
        --patch 32 --batch 12 --threads 1 --iters 5 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time

import yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mair-light-t-x4", help="official model name whose config is the base")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="network config override (YAML value)")
    parser.add_argument("--patch", type=int, default=64, help="LR patch side")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default=None, help="scan backend (default: automatic)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    import torch

    from restorecli import models

    if args.threads:
        torch.set_num_threads(args.threads)
    entry = models.spec(args.model)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    config = models.config_from_mapping(entry.arch, {**dataclasses.asdict(entry.config), **overrides})
    device = torch.device(args.device)
    net = models.build_arch(entry.arch, config, device=device).train()
    if args.backend:
        models.set_scan_backend(net, args.backend)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.9, 0.99))
    scale = getattr(config, "upscale", 1)
    lq = torch.rand(args.batch, 3, args.patch, args.patch, device=device)
    hq = torch.rand(args.batch, 3, args.patch * scale, args.patch * scale, device=device)

    def step() -> float:
        start = time.perf_counter()
        loss = (net(lq) - hq).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(args.warmup):
        step()
    times = [step() for _ in range(args.iters)]
    median = statistics.median(times)
    result = {
        "model": args.model,
        "overrides": overrides,
        "params": sum(p.numel() for p in net.parameters()),
        "patch": args.patch,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "s_per_iter_median": round(median, 3),
        "s_per_iter_min": round(min(times), 3),
        "it_per_s": round(1.0 / median, 4),
        "iters": args.iters,
    }
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        for key, value in result.items():
            sys.stdout.write(f"{key:>18}: {value}\n")


if __name__ == "__main__":
    main()
