"""Forward-pass timing of named networks (random weights: speed does not depend on them)."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class ForwardTiming:
    """One measurement: best wall time over ``repeats`` forwards after one warm-up.

    Attributes:
        model: model name.
        size: input side (square input, batch 1, 3 channels).
        seconds: minimum forward time.
        device: where it ran.
        backend: selective-scan backend resolved for the run.
        threads: torch intra-op threads.
    """

    model: str
    size: int
    seconds: float
    device: str
    backend: str
    threads: int


def time_forward(name: str, size: int, *, device: str = "cpu", backend: str | None = None, repeats: int = 3) -> ForwardTiming:
    """Time the forward pass of model ``name`` on a random (1, 3, size, size) input.

    Raises:
        UnknownModelError: unknown model name.
        BackendUnavailableError: an explicitly requested scan backend that is not usable here.
    """
    import torch

    from restorecli import models
    from restorecli.ops import resolve_backend

    target = torch.device(device)
    resolved = resolve_backend(backend, target)
    net = models.build(name, device=target)
    models.set_scan_backend(net, resolved)
    x = torch.rand(1, net.in_chans, size, size, device=target)
    best = float("inf")
    with torch.inference_mode():
        net(x)  # warm-up: scan orders, compiled kernel, allocator
        for _ in range(max(1, repeats)):
            if target.type == "cuda":
                torch.cuda.synchronize(target)
            start = time.perf_counter()
            net(x)
            if target.type == "cuda":
                torch.cuda.synchronize(target)
            best = min(best, time.perf_counter() - start)
    return ForwardTiming(name, size, best, str(target), resolved, torch.get_num_threads())
