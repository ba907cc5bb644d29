"""Benchmark the CPU selective-scan implementations at MaIR shapes.

Compares, in one process and on the same inputs:

* ``ref``           -- ``selective_scan(backend="ref")``, the sequential PyTorch recurrence;
* ``cpu compiled``  -- the ``cpu`` backend with its C++ kernel;
* ``cpu torch``     -- the ``cpu`` backend forced to its pure-PyTorch fallback;
* ``plain loop``    -- a plain C++ sequential loop (one channel at a time, the recurrence as
  written, libm ``exp``/``log1p``, threads over channels), built with the kernel's flags;
* ``plain loop fm`` -- the same loop with ``-ffast-math`` (lets gcc vectorise ``exp``).

Forward for all; forward+backward for the ``cpu`` paths. Shapes follow MaIR's SS2D
(B = 1, G = 4 scan directions, float32, Mamba's initialisation regime). Prints markdown
tables (or one JSON document with ``--json``).

Example::

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python benchmarks/bench_scan.py --threads 1 2
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from restorecli.ops import scan_cpu, selective_scan

SHAPES = {  # name: (dim, N, G, L)
    "light-tiny 64²": (264, 1, 4, 64 * 64),
    "light-tiny 128²": (264, 1, 4, 128 * 128),
    "light-tiny 256²": (264, 1, 4, 256 * 256),
    "classic 64²": (1440, 16, 4, 64 * 64),
}

PLAIN_LOOP_SOURCE = r"""
// Baseline: the recurrence as written, one channel at a time, libm exp/log1p.
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

extern "C" void plain_scan(const float* u, const float* delta, const float* A, const float* B,
                           const float* C, const float* D, const float* bias, int64_t batch,
                           int64_t dim, int64_t L, int64_t N, int64_t G, float* y, int threads) {
  auto rows = [&](int64_t first, int64_t last) {
    std::vector<float> h(N);
    for (int64_t row = first; row < last; ++row) {
      const int64_t b = row / dim, d = row % dim, g = d / (dim / G);
      const float* Bg = B + (b * G + g) * N * L;  // (batch, G, N, L) as given
      const float* Cg = C + (b * G + g) * N * L;
      for (auto& v : h) v = 0.0f;
      for (int64_t t = 0; t < L; ++t) {
        const float x = delta[row * L + t] + bias[d];
        const float dt = x > 20.0f ? x : std::log1p(std::exp(x));
        const float du = dt * u[row * L + t];
        float acc = 0.0f;
        for (int64_t n = 0; n < N; ++n) {
          h[n] = std::exp(dt * A[d * N + n]) * h[n] + du * Bg[n * L + t];
          acc += Cg[n * L + t] * h[n];
        }
        y[row * L + t] = acc + D[d] * u[row * L + t];
      }
    }
  };
  const int64_t total = batch * dim;
  std::vector<std::thread> pool;
  for (int k = 1; k < threads; ++k) pool.emplace_back(rows, total * k / threads, total * (k + 1) / threads);
  rows(0, total / threads);
  for (auto& th : pool) th.join();
}
"""


def make_inputs(dim: int, n_state: int, groups: int, length: int, seed: int = 0) -> dict[str, Any]:
    """Inputs in Mamba's regime: delta_bias = softplus^-1(dt0), dt0 log-uniform in [1e-3, 0.1]."""
    gen = torch.Generator().manual_seed(seed)
    dt0 = torch.exp(torch.empty(dim).uniform_(math.log(1e-3), math.log(0.1), generator=gen))
    log_a = torch.log(torch.arange(1, n_state + 1, dtype=torch.float32)).repeat(dim, 1)
    return {
        "u": torch.randn(1, dim, length, generator=gen),
        "delta": 0.5 * torch.randn(1, dim, length, generator=gen),
        "A": -torch.exp(log_a + 0.1 * torch.randn(dim, n_state, generator=gen)),
        "B": torch.randn(1, groups, n_state, length, generator=gen),
        "C": torch.randn(1, groups, n_state, length, generator=gen),
        "D": torch.randn(dim, generator=gen),
        "delta_bias": dt0 + torch.log(-torch.expm1(-dt0)),
        "delta_softplus": True,
    }


def timed(fn: Callable[[], Any], repeats: int, budget_s: float) -> dict[str, Any]:
    """Run ``fn`` once to warm up, then up to ``repeats`` times within ``budget_s`` seconds.

    Records wall time and process CPU time: on a shared machine a descheduled run inflates
    the wall time but hardly its CPU time (with one thread, CPU time is the work done).
    """
    started = time.perf_counter()
    result = fn()
    first = time.perf_counter() - started
    times, cpu_times = [], []
    while len(times) < repeats and (not times or sum(times) + first <= budget_s):
        started, cpu_started = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu_started)
    return {
        "min_ms": 1e3 * min(times),
        "median_ms": 1e3 * statistics.median(times),
        "cpu_min_ms": 1e3 * min(cpu_times),
        "runs": len(times),
        "result": result,
    }


class PlainLoop:
    """The baseline C++ loop, compiled with the kernel's tuned flags (plus ``extra``)."""

    def __init__(self, extra: list[str]) -> None:
        flags = scan_cpu.compiler_flag_sets()[0] + extra
        path, _ = scan_cpu.compile_library(PLAIN_LOOP_SOURCE, "bench_plain_loop", flags)
        self.flags = " ".join(flags)
        self.fn = ctypes.CDLL(str(path)).plain_scan
        self.fn.argtypes = [ctypes.c_void_p] * 7 + [ctypes.c_int64] * 5 + [ctypes.c_void_p, ctypes.c_int]

    def __call__(self, x: dict[str, Any]) -> torch.Tensor:
        y = torch.empty_like(x["u"])
        batch, dim, length = x["u"].shape
        n_state, groups = x["A"].shape[1], x["B"].shape[1]
        tensors = [x[k].contiguous() for k in ("u", "delta", "A", "B", "C", "D", "delta_bias")]
        self.fn(*[t.data_ptr() for t in tensors], batch, dim, length, n_state, groups, y.data_ptr(), torch.get_num_threads())
        return y


def forward_backward(x: dict[str, Any], grad_out: torch.Tensor) -> torch.Tensor:
    leaves = {k: x[k].detach().requires_grad_() for k in ("u", "delta", "A", "B", "C", "D", "delta_bias")}
    y = selective_scan(**{**x, **leaves}, backend="cpu")
    grads = torch.autograd.grad(y, list(leaves.values()), grad_out)
    return grads[0]


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def with_cpu_impl(impl: str, fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        saved = os.environ.get(scan_cpu.ENV_IMPL)
        os.environ[scan_cpu.ENV_IMPL] = impl
        try:
            return fn()
        finally:
            if saved is None:
                del os.environ[scan_cpu.ENV_IMPL]
            else:
                os.environ[scan_cpu.ENV_IMPL] = saved

    return run


def bench_shape(name: str, threads: int, args: argparse.Namespace, loops: dict[str, PlainLoop]) -> list[dict[str, Any]]:
    dim, n_state, groups, length = SHAPES[name]
    torch.set_num_threads(threads)
    x = make_inputs(dim, n_state, groups, length)
    grad_out = torch.randn(1, dim, length, generator=torch.Generator().manual_seed(1))
    rows: list[dict[str, Any]] = []

    def record(impl: str, kind: str, result: dict[str, Any], **extra: Any) -> None:
        result = dict(result)
        result.pop("result", None)
        rows.append({"shape": name, "L": length, "threads": threads, "impl": impl, "pass": kind, **result, **extra})

    # ref: time a short prefix first and extrapolate when the full run would be too slow.
    short = min(length, args.ref_probe_length)
    probe = make_inputs(dim, n_state, groups, short)
    probe_t = timed(lambda: selective_scan(**probe, backend="ref"), 1, args.budget)
    estimate = probe_t["min_ms"] * length / short / 1e3
    reference = None
    if estimate > args.ref_max_seconds:
        scaled = {k: v * length / short for k, v in probe_t.items() if k.endswith("_ms")}  # incl. CPU time
        record("ref", "fwd", {**scaled, "runs": probe_t["runs"]}, extrapolated_from_L=short)
    else:
        res = timed(lambda: selective_scan(**x, backend="ref"), args.repeats, args.budget)
        reference = res["result"]
        record("ref", "fwd", res)

    for impl in ("compiled", "torch"):
        label = f"cpu {impl}"
        res = timed(with_cpu_impl(impl, lambda: selective_scan(**x, backend="cpu")), args.repeats, args.budget)
        record(label, "fwd", res, rel_err_vs_ref=None if reference is None else rel_err(res["result"], reference))
        if not args.no_backward:
            res = timed(with_cpu_impl(impl, lambda: forward_backward(x, grad_out)), args.repeats, args.budget)
            record(label, "fwd+bwd", res)
    for label, loop in loops.items():
        res = timed(lambda loop=loop: loop(x), args.repeats, args.budget)
        record(label, "fwd", res, rel_err_vs_ref=None if reference is None else rel_err(res["result"], reference))
    return rows


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), model)
    except OSError:
        pass
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
    }


def _cell(rows: list[dict[str, Any]], impl: str, kind: str) -> str:
    row = next((r for r in rows if r["impl"] == impl and r["pass"] == kind), None)
    if row is None:
        return "–"
    if row.get("extrapolated_from_L"):
        return f"≈{row['min_ms']:.0f} (extrap. from L={row['extrapolated_from_L']})"
    return f"{row['min_ms']:.1f} ({row['median_ms']:.1f})"


def _ratio(rows: list[dict[str, Any]], num: str, den: str, kind: str = "fwd", key: str = "min_ms") -> str:
    get = {r["impl"]: r.get(key) for r in rows if r["pass"] == kind}
    return f"{get[num] / get[den]:.1f}×" if get.get(num) and get.get(den) else "–"


def markdown(results: list[dict[str, Any]], loops: dict[str, PlainLoop]) -> str:
    out = []
    for threads in sorted({r["threads"] for r in results}):
        sub = [r for r in results if r["threads"] == threads]
        out.append(f"\n**{threads} thread{'s' if threads > 1 else ''}** — min (median) ms\n")
        loop_cols = list(loops)
        header = [
            "shape", "ref", "cpu compiled", "cpu torch", *loop_cols,
            "ref / cpu compiled", "same, CPU time", "plain loop / cpu compiled",
        ]  # fmt: skip
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + " --- |" * len(header))
        for shape in SHAPES:
            rows = [r for r in sub if r["shape"] == shape]
            if not rows:
                continue
            cells = [shape, *(_cell(rows, impl, "fwd") for impl in ["ref", "cpu compiled", "cpu torch", *loop_cols])]
            cells += [
                _ratio(rows, "ref", "cpu compiled"),
                _ratio(rows, "ref", "cpu compiled", key="cpu_min_ms"),
                _ratio(rows, "plain loop", "cpu compiled"),
            ]
            out.append("| " + " | ".join(cells) + " |")
        if any(r["pass"] == "fwd+bwd" for r in sub):
            out.append(f"\nForward + backward, {threads} thread{'s' if threads > 1 else ''} — min (median) ms\n")
            out.append("| shape | cpu compiled | cpu torch | torch / compiled |")
            out.append("| --- | --- | --- | --- |")
            for shape in SHAPES:
                rows = [r for r in sub if r["shape"] == shape]
                if rows:
                    cells = [shape, _cell(rows, "cpu compiled", "fwd+bwd"), _cell(rows, "cpu torch", "fwd+bwd")]
                    out.append("| " + " | ".join([*cells, _ratio(rows, "cpu torch", "cpu compiled", "fwd+bwd")]) + " |")
        errs = [f"{r['impl']} {r['shape']}: {r['rel_err_vs_ref']:.1e}" for r in sub if r.get("rel_err_vs_ref") is not None]
        if errs:
            out.append("\nRelative error of the forward vs ref (float32): " + "; ".join(errs))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts (default: 1 2)")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES), metavar="SHAPE", help=f"subset of: {'; '.join(SHAPES)}")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per measurement, after one warm-up (default 7)")
    parser.add_argument("--budget", type=float, default=30.0, help="stop repeating a measurement after this many seconds (default 30)")
    parser.add_argument("--ref-max-seconds", type=float, default=20.0, help="extrapolate ref from a shorter L when a run would take longer (default 20)")
    parser.add_argument("--ref-probe-length", type=int, default=4096, help="L of the ref probe used for that estimate (default 4096)")
    parser.add_argument("--no-backward", action="store_true", help="skip the forward+backward measurements")
    parser.add_argument("--no-plain-loop", action="store_true", help="skip the plain C++ loop baselines")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of markdown")
    args = parser.parse_args(argv)

    status = scan_cpu.cpu_kernel_status()
    loops = {} if args.no_plain_loop else {"plain loop": PlainLoop([]), "plain loop fm": PlainLoop(["-ffast-math"])}
    load_before = os.getloadavg()
    results = [row for threads in args.threads for shape in args.shapes for row in bench_shape(shape, threads, args, loops)]
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": machine(),
        "cpu_kernel": {"implementation": status.implementation, "reason": status.reason},
        "plain_loop_flags": {label: loop.flags for label, loop in loops.items()},
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "results": results,
    }
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    m = report["machine"]
    sys.stdout.write(
        f"{report['date']}, {m['cpu']} ({m['logical_cpus']} logical CPUs), python {m['python']}, torch {m['torch']}, "
        f"GLIBC_TUNABLES={m['glibc_tunables']}\ncpu kernel: {status.implementation} ({status.reason})\n"
        f"load average before/after: {load_before[0]:.2f} / {report['load_average']['after'][0]:.2f}\n"
        + markdown(results, loops)
        + "\n"
    )


if __name__ == "__main__":
    main()
