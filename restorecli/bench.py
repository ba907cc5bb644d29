"""Speed of named networks on this machine, shared by `restore bench` and benchmarks/bench_models.py.

One run measures, per network, thread count and input size:

* the forward time (batch 1, best of ``repeats`` after one warm-up);
* the time of one training step (forward, L1 loss against a random target, backward);
* the achieved GFLOP/s, and its share of this machine's fp32 GEMM rate measured in the same run
  (the "roofline share");
* the cost per pixel relative to the smallest size measured;
* where one forward spends its self-CPU time (torch.profiler), grouped by ``BREAKDOWN``.

Weights are random: speed does not depend on them. Torch is imported inside the functions so
that importing this module (and `restore bench --help`) stays instant.

The module is longer than most on purpose: the timings, the GEMM peak they are compared with and
the profiler breakdown must be measured in one run under the same threads and sizes, and the
benchmarks script reads the same rows; kept together, the measuring conditions cannot drift apart.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from restorecli.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

GEMM_SIDE = 1024
GEMM_REPEATS = 10
TRAIN_FLOPS_CONVENTION = "training step FLOPs = 3 x forward FLOPs at the patch size x batch (backward counted as 2 forwards)"
BREAKDOWN_CONVENTION = "self CPU time of one profiled forward (torch.profiler), by category (restorecli/bench.py BREAKDOWN)"


@dataclass(frozen=True, kw_only=True)
class OpCategory:
    """Which profiler events belong to one breakdown category (names compared lower-cased).

    Attributes:
        name: category key in reports.
        aten: ``aten::`` op names without the namespace; each also matches its in-place form (``x_``).
        prefixes: ``aten::`` op name prefixes without the namespace (``scatter`` covers scatter_add ...).
        contains: substrings of any event name, for autograd Functions such as ``_KernelScan``.
    """

    name: str
    aten: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    contains: tuple[str, ...] = ()

    def matches(self, event: str) -> bool:
        """Whether a profiler event name (lower-cased) falls in this category."""
        if any(marker in event for marker in self.contains):
            return True
        if not event.startswith("aten::"):
            return False
        op = event[len("aten::") :]
        return op in self.aten or op.removesuffix("_") in self.aten or op.startswith(self.prefixes)


# The whole category table; the first matching category wins and unmatched events are "other".
# Views (permute, transpose, view, select, as_strided ...) cost only dispatch time and stay in
# "other". The scan's autograd Functions are restorecli/ops/scan_cpu.py's _KernelScan and
# _OrderedKernelScan (the latter reads its inputs through the scan order itself); the compiled
# block epilogues (restorecli/ops/block_epilogue.py) appear as named profiler ranges.
BREAKDOWN: tuple[OpCategory, ...] = (
    OpCategory(name="scan", contains=("orderedkernelscan", "kernelscan", "selective_scan", "scan_sequential", "scan_torch")),
    # gathers/scatters that build the scan sequences and put them back in raster order
    OpCategory(name="order", aten=frozenset({"gather", "index_select", "index", "index_put", "take_along_dim"}),
               prefixes=("scatter",), contains=("scattertoscans", "mergescans")),
    OpCategory(name="linear_conv", aten=frozenset({
        "mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "mkldnn_linear",
        "convolution", "_convolution", "conv2d", "mkldnn_convolution", "cudnn_convolution", "_slow_conv2d_forward", "thnn_conv2d",
    })),
    OpCategory(name="norm_elementwise", aten=frozenset({
        "layer_norm", "native_layer_norm", "group_norm", "native_group_norm", "batch_norm",
        "silu", "gelu", "relu", "leaky_relu", "sigmoid", "softplus", "softmax", "_softmax", "tanh",
        "mul", "add", "sub", "div", "neg", "exp", "log", "log1p", "pow", "sqrt", "rsqrt", "abs", "clamp",
        "sum", "mean", "cumsum", "einsum", "addcmul", "addcdiv", "where", "fill", "zero",
    }), contains=("restorecli::merge_norm_gate", "restorecli::residual_norm")),
    OpCategory(name="copy", aten=frozenset({
        "copy", "clone", "contiguous", "permute", "transpose", "_to_copy", "to", "cat", "stack",
        "constant_pad_nd", "reflection_pad2d", "pixel_shuffle", "roll", "flip",
    })),
)  # fmt: skip
OTHER = "other"
CATEGORIES = (*(category.name for category in BREAKDOWN), OTHER)


def categorize(event: str) -> str:
    """The breakdown category of a profiler event name."""
    lowered = event.lower()
    for category in BREAKDOWN:
        if category.matches(lowered):
            return category.name
    return OTHER


@dataclass(frozen=True, kw_only=True)
class BenchSettings:
    """What one benchmark run measures.

    Attributes:
        models: official names (``restore models list``) or manifest names such as the bundled
            ``restorecli-light-x4``.
        sizes: square input sides of the forward timings; measured smallest first.
        threads: torch intra-op thread counts; 0 means torch's default.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        backend: selective-scan backend; None defers to ``RESTORECLI_SCAN_BACKEND``, then auto.
        repeats: timed runs per case after one warm-up; the best is kept.
        train_batch: batch of the training step; 0 skips the training step.
        train_patch: side of the training step's low-resolution patches.
        skip_slower_than: once one forward of a network takes longer (seconds), its larger sizes
            are skipped at that thread count.
        breakdown: profile one more forward per case for the per-category breakdown.
    """

    models: tuple[str, ...] = ("mair-light-t-x4", "restorecli-light-x4")
    sizes: tuple[int, ...] = (64, 128, 256, 512)
    threads: tuple[int, ...] = (1, 2)
    device: str = "cpu"
    backend: str | None = None
    repeats: int = 3
    train_batch: int = 8
    train_patch: int = 64
    skip_slower_than: float = 120.0
    breakdown: bool = True

    def check(self) -> None:
        """Raises UsageError naming the first option out of range."""
        checks = (
            (bool(self.models), "--models", "at least one model name", list(self.models)),
            (bool(self.sizes) and min(self.sizes) >= 1, "--sizes", "positive sides", list(self.sizes)),
            (bool(self.threads) and min(self.threads) >= 0, "--threads", "0 (torch default) or positive counts", list(self.threads)),
            (self.repeats >= 1, "--repeats", "a positive count", self.repeats),
            (self.train_batch >= 0, "--train-batch", "0 (no training step) or a positive batch", self.train_batch),
            (self.train_patch >= 1, "--train-patch", "a positive side", self.train_patch),
            (self.skip_slower_than > 0, "--skip-slower-than", "a positive number of seconds", self.skip_slower_than),
        )
        for ok, option, expected, got in checks:
            if not ok:
                raise UsageError(f"{option}: expected {expected}, got {got}")


@dataclass(frozen=True, kw_only=True)
class GemmRate:
    """This machine's fp32 matrix-multiply rate: best of ``GEMM_REPEATS`` (side x side) @ (side x side)."""

    threads: int
    side: int
    seconds: float
    gflops: float


@dataclass(frozen=True, kw_only=True)
class ForwardRow:
    """One forward timing (batch 1, square input).

    Attributes:
        flops: one forward, as ``restorecli.models.stats`` counts them (dense + scan).
        gflops: achieved rate, flops / seconds / 1e9.
        roofline_share: gflops / the GEMM rate at the same thread count.
        pixel_cost: (seconds / pixels) over the same for the smallest size of this network and
            thread count (1.0 for that size).
        breakdown_ms: self-CPU milliseconds per category of one profiled forward (``CATEGORIES``),
            None without ``breakdown``.
    """

    model: str
    threads: int
    size: int
    seconds: float
    flops: int
    gflops: float
    roofline_share: float
    pixel_cost: float
    breakdown_ms: dict[str, float] | None


@dataclass(frozen=True, kw_only=True)
class TrainRow:
    """One training step: forward, L1 loss, backward, on a (batch, C, patch, patch) input.

    Attributes:
        flops: ``TRAIN_FLOPS_CONVENTION``.
    """

    model: str
    threads: int
    batch: int
    patch: int
    seconds: float
    flops: int
    gflops: float
    roofline_share: float


@dataclass(frozen=True, kw_only=True)
class SkippedSizes:
    """Sizes not measured because a smaller one was slower than ``skip_slower_than``."""

    model: str
    threads: int
    sizes: tuple[int, ...]
    reason: str


@dataclass(frozen=True, kw_only=True)
class BenchReport:
    """Everything one run measured, with the machine and settings it ran under."""

    meta: dict[str, Any]
    gemm: tuple[GemmRate, ...]
    forward: tuple[ForwardRow, ...]
    train: tuple[TrainRow, ...]
    skipped: tuple[SkippedSizes, ...]

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: meta, gemm, rows (forward then train, each with ``kind``), skipped."""
        rows = [{"kind": "forward", **asdict(row)} for row in self.forward]
        rows += [{"kind": "train", **asdict(row)} for row in self.train]
        return {
            "meta": self.meta,
            "gemm": [asdict(rate) for rate in self.gemm],
            "rows": rows,
            "skipped": [asdict(skip) for skip in self.skipped],
        }


@dataclass(frozen=True, kw_only=True)
class Network:
    """A model name resolved to what builds it.

    ``official`` when the name has an official MaIR checkpoint; otherwise it is one of restorecli's
    own networks (such as the bundled ``restorecli-light-x4``), a VAMamba config or a user
    manifest's model.
    """

    name: str
    arch: str
    config: Any
    official: bool


def resolve_network(name: str) -> Network:
    """Architecture and config of a model name (the registry's lookup: the model table, then the manifest).

    Raises:
        UnknownModelError: an unknown name (with the closest names).
    """
    from restorecli.hub.manifest import load_manifest

    spec = load_manifest().spec(name)
    return Network(name=spec.name, arch=spec.arch, config=spec.config, official=bool(spec.official_file))


def forward_flops(network: Network, height: int, width: int) -> int:
    """FLOPs of one forward on a (1, C, height, width) input (``restorecli.models.arch_stats``:
    torch's flop counter on the meta device plus 9·L·D·N + L·D per selective scan)."""
    from restorecli import models

    return models.arch_stats(network.arch, network.config, height, width).flops


def _synchronize(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(step: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Minimum wall time of ``repeats`` calls (the caller has warmed ``step`` up)."""
    best = math.inf
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        step()
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def gemm_rate(device: torch.device, side: int = GEMM_SIDE, repeats: int = GEMM_REPEATS) -> GemmRate:
    """Best fp32 ``torch.mm`` rate of two (side x side) matrices at the current thread count."""
    import torch

    a = torch.rand(side, side, device=device)
    b = torch.rand(side, side, device=device)
    out = torch.empty(side, side, device=device)
    torch.mm(a, b, out=out)  # warm-up: BLAS thread pool, page faults of the output
    seconds = _best_seconds(lambda: torch.mm(a, b, out=out), repeats, device)
    return GemmRate(threads=torch.get_num_threads(), side=side, seconds=seconds, gflops=2 * side**3 / seconds / 1e9)


def time_forward(net: nn.Module, size: int, repeats: int, device: torch.device) -> float:
    """Best forward time of a (1, C, size, size) input after one warm-up."""
    import torch

    x = torch.rand(1, net.in_chans, size, size, device=device)
    # no_grad like restorecli/inference.py; inference_mode would also make the scan orders that
    # restorecli/ops/scan_order.py caches inference tensors, which a later training step cannot use.
    with torch.no_grad():
        net(x)  # warm-up: scan orders, compiled kernel, allocator pools
        return _best_seconds(lambda: net(x), repeats, device)


def time_train_step(net: nn.Module, batch: int, patch: int, repeats: int, device: torch.device) -> float:
    """Best time of forward + L1 loss against a random target + backward, after one warm-up.

    No optimizer step; gradients are dropped before each repeat (``zero_grad``), as an optimizer
    loop does. The network is left in eval mode without gradients.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    x = torch.rand(batch, net.in_chans, patch, patch, device=device)
    net.train()
    try:
        with torch.enable_grad():
            target = torch.rand_like(net(x).detach())  # the shape of the output (scale x patch for SR)

            def step() -> None:
                net.zero_grad(set_to_none=True)
                F.l1_loss(net(x), target).backward()

            step()  # warm-up: backward buffers, scan checkpoints
            return _best_seconds(step, repeats, device)
    finally:
        net.zero_grad(set_to_none=True)
        net.eval()


def profile_forward(net: nn.Module, size: int, device: torch.device) -> dict[str, float]:
    """Self-CPU milliseconds per category (``CATEGORIES``) of one (already warmed-up) forward."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    x = torch.rand(1, net.in_chans, size, size, device=device)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        net(x)
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for event in prof.key_averages():
        totals[categorize(event.key)] += event.self_cpu_time_total / 1000.0
    return totals


def _cpu_model() -> str:
    """The CPU's marketing name from the kernel's cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _meta(settings: BenchSettings, device: torch.device, backend: str, label: str | None, command: str) -> dict[str, Any]:
    import torch

    from restorecli.ops import cpu_cache

    return {
        "machine": {
            "platform": platform.platform(),
            "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(),
            # sizes the streamed runs of inference (restorecli/models/blocks.py)
            "last_level_cache_per_cpu": cpu_cache.last_level_share(),
        },
        "torch": torch.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "device": str(device),
        "scan_backend": backend,
        "backend": label,
        "repeats": settings.repeats,
        "gemm": f"fp32 torch.mm {GEMM_SIDE}x{GEMM_SIDE} @ {GEMM_SIDE}x{GEMM_SIDE}, best of {GEMM_REPEATS}",
        "train_flops": TRAIN_FLOPS_CONVENTION,
        "breakdown": BREAKDOWN_CONVENTION if settings.breakdown else None,
    }


def run_benchmark(settings: BenchSettings, *, command: str = "", progress: Callable[[str], None] | None = None) -> BenchReport:
    """Measure every network x thread count x size of ``settings``.

    Args:
        settings: what to measure.
        command: the command line, recorded in the report's meta.
        progress: called with one line per finished measurement (no newline).

    Raises:
        UsageError: a setting out of range.
        UnknownModelError: an unknown model name.
        BackendUnavailableError: an unusable device or explicitly requested scan backend.
    """
    import torch

    from restorecli import models
    from restorecli.inference import resolve_device, scan_backend_label
    from restorecli.loading import load_model
    from restorecli.ops import resolve_backend

    settings.check()
    say = progress or (lambda _line: None)
    device = resolve_device(settings.device)
    backend = resolve_backend(settings.backend, device)
    networks = [resolve_network(name) for name in dict.fromkeys(settings.models)]  # fail before measuring
    sizes = sorted(set(settings.sizes))
    default_threads = torch.get_num_threads()
    thread_counts = list(dict.fromkeys(count or default_threads for count in settings.threads))
    gemm: dict[int, GemmRate] = {}
    forward: list[ForwardRow] = []
    train: list[TrainRow] = []
    skipped: list[SkippedSizes] = []
    flops_cache: dict[tuple[str, int], int] = {}
    labels: set[str] = set()

    def flops(network: Network, side: int) -> int:
        if (network.name, side) not in flops_cache:
            flops_cache[network.name, side] = forward_flops(network, side, side)
        return flops_cache[network.name, side]

    try:
        for count in thread_counts:
            torch.set_num_threads(count)
            gemm[count] = gemm_rate(device)
            say(f"gemm threads={count}: {gemm[count].gflops:.1f} GFLOP/s")
        for network in networks:
            net = load_model(network.name, pretrained=False, device=str(device)).module  # speed only: random weights
            # the request, not its resolution: an automatic choice may fall back, an explicit one may not
            models.set_scan_backend(net, settings.backend)
            labels.add(scan_backend_label(net, device) or "none")
            for count in thread_counts:
                torch.set_num_threads(count)
                peak = gemm[count].gflops
                if settings.train_batch:
                    seconds = time_train_step(net, settings.train_batch, settings.train_patch, settings.repeats, device)
                    work = 3 * flops(network, settings.train_patch) * settings.train_batch
                    rate = work / seconds / 1e9
                    row = TrainRow(
                        model=network.name,
                        threads=count,
                        batch=settings.train_batch,
                        patch=settings.train_patch,
                        seconds=seconds,
                        flops=work,
                        gflops=rate,
                        roofline_share=rate / peak,
                    )
                    train.append(row)
                    say(f"{network.name} threads={count} train {settings.train_batch}x{settings.train_patch}²: {seconds:.3f} s")
                base: float | None = None  # seconds per pixel of the smallest size
                for index, side in enumerate(sizes):
                    seconds = time_forward(net, side, settings.repeats, device)
                    per_pixel = seconds / side**2
                    base = base or per_pixel
                    work = flops(network, side)
                    rate = work / seconds / 1e9
                    forward.append(
                        ForwardRow(
                            model=network.name,
                            threads=count,
                            size=side,
                            seconds=seconds,
                            flops=work,
                            gflops=rate,
                            roofline_share=rate / peak,
                            pixel_cost=per_pixel / base,
                            breakdown_ms=profile_forward(net, side, device) if settings.breakdown else None,
                        )
                    )
                    say(f"{network.name} threads={count} {side}²: {seconds:.3f} s, {rate:.2f} GFLOP/s")
                    if seconds > settings.skip_slower_than and index + 1 < len(sizes):
                        rest = tuple(sizes[index + 1 :])
                        reason = f"{side}² took {seconds:.1f} s > --skip-slower-than {settings.skip_slower_than:g} s"
                        skipped.append(SkippedSizes(model=network.name, threads=count, sizes=rest, reason=reason))
                        say(f"{network.name} threads={count}: skipping {', '.join(f'{s}²' for s in rest)} ({reason})")
                        break
            del net
    finally:
        torch.set_num_threads(default_threads)
    return BenchReport(
        meta=_meta(settings, device, backend, "+".join(sorted(labels)) or None, command),
        gemm=tuple(gemm.values()),
        forward=tuple(forward),
        train=tuple(train),
        skipped=tuple(skipped),
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f} %" if whole > 0 else "-"


def _shares(breakdown_ms: Mapping[str, float] | None) -> list[str]:
    if breakdown_ms is None:
        return ["-"] * len(CATEGORIES)
    total = sum(breakdown_ms.values())
    return [_percent(breakdown_ms[name], total) for name in CATEGORIES]


def _cells(row: ForwardRow | TrainRow, shape: str) -> list[str]:
    """The columns forward and training rows share; ``shape`` describes the input."""
    seconds, gflop, rate = f"{row.seconds:.4f}", f"{row.flops / 1e9:.3f}", f"{row.gflops:.2f}"
    return [row.model, str(row.threads), shape, seconds, gflop, rate, _percent(row.roofline_share, 1.0)]


def format_markdown(report: BenchReport) -> str:
    """The report as readable markdown tables (one string, ending in a newline)."""
    meta = report.meta
    machine = meta["machine"]
    lines = [
        f"{meta['date']} · {machine['cpu']} ({machine['cpu_count']} CPUs) · {machine['platform']} · torch {meta['torch']}",
        f"device {meta['device']} · scan {meta.get('backend') or meta['scan_backend']} · best of {meta['repeats']} after a warm-up",
        f"command: `{meta['command']}`",
        "",
        f"GEMM ({meta['gemm']}):",
        "",
        *_table(["threads", "GFLOP/s"], [[str(g.threads), f"{g.gflops:.1f}"] for g in report.gemm]),
    ]
    if report.forward:
        header = ["model", "threads", "input", "forward s", "GFLOP", "GFLOP/s", "roofline", "px cost", *CATEGORIES]
        lines += [
            "",
            "Forward, batch 1. roofline = GFLOP/s ÷ GEMM GFLOP/s at the same thread count; "
            "px cost = time per pixel ÷ that of the smallest size.",
            f"Breakdown columns: share of the {meta['breakdown']}." if meta["breakdown"] else "No breakdown (not profiled).",
            "",
            *_table(header, [[*_cells(r, f"{r.size}²"), f"{r.pixel_cost:.2f}", *_shares(r.breakdown_ms)] for r in report.forward]),
        ]
    if report.train:
        header = ["model", "threads", "batch × LR patch", "step s", "GFLOP", "GFLOP/s", "roofline"]
        lines += [
            "",
            f"Training step: forward + L1 loss + backward, no optimizer; {meta['train_flops']}.",
            "",
            *_table(header, [_cells(r, f"{r.batch} × {r.patch}²") for r in report.train]),
        ]
    for skip in report.skipped:
        sizes = ", ".join(f"{side}²" for side in skip.sizes)
        lines += ["", f"Skipped {skip.model} at {skip.threads} threads: {sizes} ({skip.reason})."]
    return "\n".join(lines) + "\n"
