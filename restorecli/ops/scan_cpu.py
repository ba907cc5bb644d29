"""The ``cpu`` scan backend: a compiled C++ kernel with a pure-PyTorch fallback.

The kernel (``csrc/selective_scan_cpu.cpp``) is plain C++17 with a C ABI, loaded with
ctypes. It is compiled on first use with the system C++ compiler (``$CXX``, else ``c++``,
``g++`` or ``clang++``) for the host CPU and cached in :func:`extensions_dir`, under a
name that hashes the source, compiler, flags and CPU features, so a stale or foreign
binary is never loaded. Nothing is built at import.

Any failure (no compiler, compile error, load error, failed self-test) is recorded and
the backend falls back to pure PyTorch; it never raises because of the kernel. The
active implementation and the reason are reported by :func:`cpu_kernel_status`.

Environment:
    RESTORECLI_CPU_SCAN: ``auto`` (default: kernel if it builds, else torch), ``torch``
        (always the fallback) or ``compiled`` (raise if the kernel is unavailable).
    RESTORECLI_EXTENSIONS_DIR: cache directory for compiled kernels.
    CXX: C++ compiler to use.

The module is longer than most on purpose: building, caching and self-testing the kernel, and
the autograd wrappers of its three entry points (plain scan, ordered scan, SSA merge), share the
one loaded library and its argument conventions, which would otherwise be split across modules
that all reach into each other.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.resources
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from restorecli.errors import BackendUnavailableError
from restorecli.filelock import exclusive_lock
from restorecli.ops import scan_ref
from restorecli.ops.scan_ref import OrderedScanInputs, ScanInputs

ENV_IMPL = "RESTORECLI_CPU_SCAN"
ENV_EXTENSIONS_DIR = "RESTORECLI_EXTENSIONS_DIR"
IMPLEMENTATIONS = ("auto", "torch", "compiled")

_SOURCE = "selective_scan_cpu.cpp"
_ABI_VERSION = 5
# Bump when _self_test checks something new, so libraries verified by the old test are retested.
_SELF_TEST_REVISION = 3
_BUILD_TIMEOUT_S = 300
_LOCK_WAIT_S = 300
# Above this state size the chunked torch scan's (batch, dim, L, N) temporaries cost
# more than its vectorisation saves. Measured (dim 264, L 4096, 1 thread): chunked vs
# stepwise 27 vs 85 ms at N = 1, 80 vs 96 at N = 2, 115 vs 99 at N = 4, 917 vs 113 at N = 16.
_CHUNKED_MAX_N = 2


@dataclass(frozen=True)
class CpuKernelStatus:
    """Which implementation the ``cpu`` backend uses, and why.

    Attributes:
        implementation: ``"compiled"`` or ``"torch"``.
        reason: Human-readable explanation (build failure, environment override, ...).
        library: Path of the loaded shared library, or None.
    """

    implementation: str
    reason: str
    library: str | None = None


@dataclass(frozen=True)
class _Kernel:
    lib: ctypes.CDLL | None
    path: Path | None
    detail: str  # how it was obtained, or why it is unavailable


_kernel: _Kernel | None = None
_kernel_lock = threading.Lock()
_log = logging.getLogger(__name__)


def extensions_dir() -> Path:
    """Where compiled kernels are cached: ``RESTORECLI_EXTENSIONS_DIR``, else ``extensions/``
    in the tool's cache folder (``RESTORECLI_CACHE``, else the platform's user cache)."""
    override = os.environ.get(ENV_EXTENSIONS_DIR)
    if override:
        return Path(override).expanduser()
    from restorecli.paths import cache_dir

    return cache_dir() / "extensions"


def requested_implementation() -> str:
    """The value of ``RESTORECLI_CPU_SCAN`` (``auto`` when unset).

    Raises:
        BackendUnavailableError: For a value other than auto, torch or compiled.
    """
    value = os.environ.get(ENV_IMPL, "").strip().lower() or "auto"
    if value not in IMPLEMENTATIONS:
        raise BackendUnavailableError(
            f"{ENV_IMPL} must be one of {', '.join(IMPLEMENTATIONS)}; got {value!r}"
        )
    return value


def cpu_kernel_status() -> CpuKernelStatus:
    """Report the implementation the ``cpu`` backend uses now (builds the kernel if needed)."""
    requested = requested_implementation()
    if requested == "torch":
        return CpuKernelStatus("torch", f"forced by {ENV_IMPL}=torch")
    kernel = _load_kernel()
    if kernel.lib is not None:
        return CpuKernelStatus("compiled", kernel.detail, str(kernel.path))
    return CpuKernelStatus("torch", f"compiled kernel unavailable: {kernel.detail}")


def selective_scan_cpu(x: ScanInputs) -> torch.Tensor:
    """Scan prepared CPU inputs with the compiled kernel, or the torch fallback.

    Args:
        x: Prepared inputs (see ``scan_ref.ScanInputs``).

    Returns:
        (batch, dim, L) output in the inputs' dtype.

    Raises:
        BackendUnavailableError: ``RESTORECLI_CPU_SCAN=compiled`` and no kernel.
    """
    lib = usable_kernel(x.u.numel() > 0)
    return scan_torch(x) if lib is None else _KernelScan.apply(*x, lib)


def usable_kernel(has_work: bool = True) -> ctypes.CDLL | None:
    """The loaded kernel, or None where the torch formulation runs instead: the fallback is
    requested, the input is empty (nothing for the kernel to do), or the kernel is unavailable.

    Raises:
        BackendUnavailableError: ``RESTORECLI_CPU_SCAN=compiled`` and no kernel.
    """
    requested = requested_implementation()
    if requested == "torch" or not has_work:
        return None
    kernel = _load_kernel()
    if kernel.lib is None and requested == "compiled":
        raise BackendUnavailableError(
            f"{ENV_IMPL}=compiled but the CPU scan kernel is unavailable: {kernel.detail}. "
            "Install a C++ compiler (g++ or clang++, or set CXX) or unset the variable."
        )
    return kernel.lib


def scan_torch(x: ScanInputs) -> torch.Tensor:
    """The pure-PyTorch fallback: chunked scan for small N, stepwise loop otherwise."""
    return scan_ref.scan_chunked(x) if x.A.shape[1] <= _CHUNKED_MAX_N else scan_ref.scan_stepwise(x)


# ---------------------------------------------------------------------------------------
# Autograd wrapper around the kernel


def _tile_steps(n_state: int) -> int:
    # The backward keeps a tile's states and decays (2 * tile * N * 16 values per thread)
    # in cache; checkpoints cost batch * dim * N per tile.
    return max(8, min(64, 1024 // n_state))


def pointer(x: torch.Tensor | None) -> int | None:
    return None if x is None else x.data_ptr()


def call_library(lib: ctypes.CDLL, name: str, dtype: torch.dtype, *args: object) -> None:
    """Call ``rcs_<name>_f32`` or ``rcs_<name>_f64`` of the kernel library; raise on failure."""
    suffix = "f64" if dtype == torch.float64 else "f32"
    status = getattr(lib, f"rcs_{name}_{suffix}")(*args)
    if status != 0:
        # 1: a worker thread failed (allocation); 2: sizes the caller should have rejected.
        raise RuntimeError(f"CPU kernel rcs_{name} failed with status {status}")


def _backward_threads(u: torch.Tensor, b_t: torch.Tensor) -> int:
    """Threads for the backward: each needs its own dB and dC buffers, so cap their total at
    max(256 MiB, twice the size of u) -- a many-core machine must not multiply a large B."""
    per_thread = 2 * b_t.numel() * b_t.element_size()
    budget = max(1 << 28, 2 * u.numel() * u.element_size())
    return max(1, min(torch.get_num_threads(), budget // max(per_thread, 1)))


class _KernelScan(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,  # noqa: N803
        B: torch.Tensor,  # noqa: N803
        C: torch.Tensor,  # noqa: N803
        D: torch.Tensor | None,  # noqa: N803
        delta_bias: torch.Tensor | None,
        delta_softplus: bool,
        lib: ctypes.CDLL,
    ) -> torch.Tensor:
        batch, dim, length = u.shape
        groups, n_state = B.shape[1], A.shape[1]
        tile = _tile_steps(n_state)
        u, delta, A = u.contiguous(), delta.contiguous(), A.contiguous()  # noqa: N806
        D = None if D is None else D.contiguous()  # noqa: N806
        delta_bias = None if delta_bias is None else delta_bias.contiguous()
        b_t = B.transpose(-1, -2).contiguous()  # (batch, G, L, N): one step = N floats
        c_t = C.transpose(-1, -2).contiguous()
        y = torch.empty_like(u)
        needs_grad = any(ctx.needs_input_grad[:7])  # type: ignore[attr-defined]
        tiles = -(-length // tile)
        ckpt = u.new_empty(batch, dim, tiles, n_state) if needs_grad else None
        call_library(
            lib, "scan_fwd", u.dtype, pointer(u), pointer(delta), pointer(A), pointer(b_t), pointer(c_t), pointer(D),
            pointer(delta_bias), int(delta_softplus), batch, dim, length, n_state, groups, tile,
            pointer(y), pointer(ckpt), torch.get_num_threads(),
        )  # fmt: skip
        if needs_grad:
            ctx.save_for_backward(u, delta, A, b_t, c_t, D, delta_bias, ckpt)
            ctx.meta = (delta_softplus, tile, lib)  # type: ignore[attr-defined]
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        u, delta, A, b_t, c_t, D, delta_bias, ckpt = ctx.saved_tensors  # type: ignore[attr-defined]  # noqa: N806
        delta_softplus, tile, lib = ctx.meta  # type: ignore[attr-defined]
        batch, dim, length = u.shape
        groups, n_state = b_t.shape[1], A.shape[1]
        threads = _backward_threads(u, b_t)
        dy = dy.to(u.dtype).contiguous()
        du, ddelta = torch.empty_like(u), torch.empty_like(u)
        # Per-batch (dA, dD, dbias) and per-thread (dB, dC) partial sums: no two workers
        # ever write the same element, the sums below do the reduction.
        da_part = u.new_empty(batch, dim, n_state)
        db_part = u.new_zeros(threads, batch, groups, length, n_state)
        dc_part = u.new_zeros(threads, batch, groups, length, n_state)
        dd_part = None if D is None else u.new_empty(batch, dim)
        dbias_part = None if delta_bias is None else u.new_empty(batch, dim)
        call_library(
            lib, "scan_bwd", u.dtype, pointer(u), pointer(delta), pointer(A), pointer(b_t), pointer(c_t), pointer(D),
            pointer(delta_bias), int(delta_softplus), batch, dim, length, n_state, groups, tile,
            pointer(ckpt), pointer(dy), pointer(du), pointer(ddelta), pointer(da_part), pointer(db_part),
            pointer(dc_part), pointer(dd_part), pointer(dbias_part), threads,
        )  # fmt: skip
        d_b = db_part.sum(0).transpose(-1, -2)
        d_c = dc_part.sum(0).transpose(-1, -2)
        d_d = None if dd_part is None else dd_part.sum(0)
        d_bias = None if dbias_part is None else dbias_part.sum(0)
        return du, ddelta, da_part.sum(0), d_b, d_c, d_d, d_bias, None, None


def ordered_scan_kernel(inputs: OrderedScanInputs) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``ordered_selective_scan`` on the compiled kernel (inputs checked and cast there).

    Returns:
        The (B, L, K, Di) output and its mean over L (B, K, Di), or None where the kernel does
        not run (see :func:`usable_kernel`): the caller then runs the reference formulation.

    Raises:
        BackendUnavailableError: ``RESTORECLI_CPU_SCAN=compiled`` and no kernel.
    """
    lib = usable_kernel(inputs.x.numel() > 0)
    if lib is None:
        return None
    return _OrderedKernelScan.apply(*inputs[:7], lib)


def _oscan_forward(
    x: torch.Tensor,
    proj: torch.Tensor,
    dt_weight: torch.Tensor,
    dt_bias: torch.Tensor,
    A: torch.Tensor,  # noqa: N803
    D: torch.Tensor,  # noqa: N803
    order: torch.Tensor,
    lib: ctypes.CDLL,
    *,
    keep: bool,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """``rcs_oscan_fwd``: y (B, L, K, Di), its sum over L (B, K * Di) and, with ``keep``, the
    tensors the backward needs (:func:`_oscan_backward`)."""
    batch, length, inner = x.shape
    directions, _, rank = dt_weight.shape
    n_state = A.shape[1]
    tile = _tile_steps(n_state)
    x, proj, dt_weight, A = x.contiguous(), proj.contiguous(), dt_weight.contiguous(), A.contiguous()  # noqa: N806
    dt_bias, D, order = dt_bias.contiguous(), D.contiguous(), order.contiguous()  # noqa: N806
    order_stride = 0 if order.dim() == 2 else directions * length
    y = x.new_empty(batch, length, directions, inner)
    y_sum = x.new_empty(batch, directions * inner)
    ckpt = x.new_empty(batch, directions * inner, -(-length // tile), n_state) if keep else None
    call_library(
        lib, "oscan_fwd", x.dtype, pointer(order), order_stride, pointer(x), pointer(proj), proj.shape[2], rank,
        pointer(dt_weight), pointer(A), pointer(D), pointer(dt_bias), 1, batch, inner, length, n_state,
        directions, tile, pointer(y), pointer(y_sum), pointer(ckpt), torch.get_num_threads(),
    )  # fmt: skip
    return y, y_sum, ((x, proj, dt_weight, dt_bias, A, D, order, ckpt) if keep else None)


def _oscan_backward(
    saved: tuple[torch.Tensor, ...],
    lib: ctypes.CDLL,
    dy: torch.Tensor,
    dmean: torch.Tensor | None,
    dy_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """``rcs_oscan_bwd`` from :func:`_oscan_forward`'s saved tensors.

    Args:
        dy: (B, L, K, Di) gradient of y; or, with ``dy_scale`` (B, K, Di), the (B, L, Di)
            gradient of the gated sum of the directions (direction k's gradient is then
            ``dy * dy_scale[:, k]``, formed inside the kernel).
        dmean: gradient of y's mean over L (B, K, Di), or None.

    Returns:
        Gradients of x, proj, dt_weight, dt_bias, A and D.
    """
    x, proj, dt_weight, dt_bias, A, D, order, ckpt = saved  # noqa: N806
    batch, length, inner = x.shape
    directions, _, rank = dt_weight.shape
    n_state = A.shape[1]
    dim = directions * inner
    order_stride = 0 if order.dim() == 2 else directions * length
    # Each thread adds into its own proj-shaped buffer (gradients of dt_low, B, C are shared
    # by a direction's channels); cap their total like the plain backward's dB/dC buffers.
    threads = _backward_threads(x, proj)
    dy = dy.to(x.dtype).contiguous()
    dy_shift = None if dmean is None else (dmean.to(x.dtype) / length).reshape(batch, dim).contiguous()
    if dy_scale is not None:
        dy_scale = dy_scale.to(x.dtype).reshape(batch, dim).contiguous()
    dx = x.new_empty(batch, length, inner)  # summed over the directions by the kernel
    dproj_part = x.new_zeros(threads, *proj.shape)
    da_part = x.new_empty(batch, dim, n_state)
    dd_part = x.new_empty(batch, dim)
    dbias_part = x.new_empty(batch, dim)
    ddtw_part = x.new_empty(batch, dim, rank)
    call_library(
        lib, "oscan_bwd", x.dtype, pointer(order), order_stride, pointer(x), pointer(proj), proj.shape[2], rank,
        pointer(dt_weight), pointer(A), pointer(D), pointer(dt_bias), 1, batch, inner, length, n_state,
        directions, _tile_steps(n_state), pointer(ckpt), pointer(dy), pointer(dy_shift), pointer(dy_scale), pointer(dx),
        pointer(dproj_part), pointer(da_part), pointer(dd_part), pointer(dbias_part), pointer(ddtw_part), threads,
    )  # fmt: skip
    return (
        dx,
        dproj_part.sum(0) if threads > 1 else dproj_part[0],
        ddtw_part.sum(0).view(directions, inner, rank),
        dbias_part.sum(0),
        da_part.sum(0),
        dd_part.sum(0),
    )


class _OrderedKernelScan(torch.autograd.Function):
    """The fused kernel (``rcs_oscan_*``): inputs read through the orders, y written in place.

    The mean of y over the positions is a second output summed by the kernel as it goes, and
    its gradient is added to every step's dy inside the backward kernel: no full-size pass
    for the mean, forward or backward.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        proj: torch.Tensor,
        dt_weight: torch.Tensor,
        dt_bias: torch.Tensor,
        A: torch.Tensor,  # noqa: N803
        D: torch.Tensor,  # noqa: N803
        order: torch.Tensor,
        lib: ctypes.CDLL,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keep = any(ctx.needs_input_grad[:6])  # type: ignore[attr-defined]
        y, y_sum, saved = _oscan_forward(x, proj, dt_weight, dt_bias, A, D, order, lib, keep=keep)
        if saved is not None:
            ctx.save_for_backward(*saved)
            ctx.lib = lib  # type: ignore[attr-defined]
        batch, length, directions, inner = y.shape
        return y, y_sum.view(batch, directions, inner) / length

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, dy: torch.Tensor, dmean: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        grads = _oscan_backward(ctx.saved_tensors, ctx.lib, dy, dmean)  # type: ignore[attr-defined]
        return (*grads, None, None)


def merge_kernel(y: torch.Tensor, gates: torch.Tensor) -> torch.Tensor | None:
    """``merge_directions`` on the compiled kernel, or None where the kernel does not run."""
    lib = usable_kernel(y.numel() > 0)
    if lib is None:
        return None
    dtype = torch.float64 if y.dtype == torch.float64 else torch.float32
    return _MergeKernel.apply(y.to(dtype), gates.to(dtype), lib)


class _MergeKernel(torch.autograd.Function):
    """out = sum_k gates[:, k] * y[:, :, k] (``rcs_merge_*``), one pass over y each way."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, y: torch.Tensor, gates: torch.Tensor, lib: ctypes.CDLL) -> torch.Tensor:  # type: ignore[override]
        y, gates = y.contiguous(), gates.contiguous()
        batch, length, directions, inner = y.shape
        out = y.new_empty(batch, length, inner)
        call_library(lib, "merge_fwd", y.dtype, pointer(y), pointer(gates), batch, length, directions, inner, pointer(out), torch.get_num_threads())
        ctx.save_for_backward(y, gates)
        ctx.lib = lib  # type: ignore[attr-defined]
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, dout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        y, gates = ctx.saved_tensors  # type: ignore[attr-defined]
        batch, length, directions, inner = y.shape
        threads = torch.get_num_threads()
        dout = dout.to(y.dtype).contiguous()
        dy = torch.empty_like(y)
        dg_part = y.new_zeros(threads, batch, directions, inner)
        call_library(ctx.lib, "merge_bwd", y.dtype, pointer(y), pointer(gates), pointer(dout), batch, length, directions, inner, pointer(dy), pointer(dg_part), threads)  # type: ignore[attr-defined]
        return dy, dg_part.sum(0), None


def _merge_norm_gate_forward(
    y: torch.Tensor, gates: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, lib: ctypes.CDLL
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """``rcs_merge_norm_gate``: the output and the tensors its backward reads."""
    y, gates, z = y.contiguous(), gates.to(y.dtype).contiguous(), z.contiguous()
    weight, bias = weight.to(y.dtype).contiguous(), bias.to(y.dtype).contiguous()
    batch, length, directions, inner = y.shape
    out = torch.empty_like(z)
    for image in range(batch):
        call_library(
            lib, "merge_norm_gate", y.dtype, pointer(y[image]), pointer(gates[image]), pointer(z[image]),
            pointer(weight), pointer(bias), eps, length, directions, inner, pointer(out[image]),
            torch.get_num_threads(),
        )  # fmt: skip
    return out, (y, gates, z, weight, bias)


def _merge_norm_gate_backward(
    saved: tuple[torch.Tensor, ...], eps: float, lib: ctypes.CDLL, dout: torch.Tensor, *, merged_grad: bool
) -> tuple[torch.Tensor, ...]:
    """``rcs_merge_norm_gate_bwd``: gradients of y (or, with ``merged_grad``, of the gated sum
    of the directions, (B, L, Di): see :func:`_oscan_backward`), gates, z, weight and bias."""
    y, gates, z, weight, bias = saved
    batch, length, directions, inner = y.shape
    threads = torch.get_num_threads()
    dout = dout.to(y.dtype).contiguous()
    dy = None if merged_grad else torch.empty_like(y)
    dm = torch.empty_like(z, dtype=y.dtype) if merged_grad else None
    dz = torch.empty_like(z)
    # Per-thread sums of the gradients that rows share; summed below.
    dg_part = y.new_zeros(threads, batch, directions, inner)
    dw_part, db_part = y.new_zeros(threads, inner), y.new_zeros(threads, inner)
    call_library(
        lib, "merge_norm_gate_bwd", y.dtype, pointer(y), pointer(gates), pointer(z), pointer(weight),
        pointer(bias), eps, batch, length, directions, inner, pointer(dout), pointer(dy), pointer(dm), pointer(dz),
        pointer(dg_part), pointer(dw_part), pointer(db_part), threads,
    )  # fmt: skip
    return (dm if merged_grad else dy), dg_part.sum(0), dz, dw_part.sum(0), db_part.sum(0)


class _MergeNormGateKernel(torch.autograd.Function):
    """``norm(sum_k gates[:, k] * y[:, :, k]) * silu(z)`` (``rcs_merge_norm_gate_*``): one pass
    per position each way; the backward recomputes the merged row and its statistics from y
    instead of keeping them. ``restorecli.ops.block_epilogue`` holds the PyTorch formulation."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        y: torch.Tensor,
        gates: torch.Tensor,
        z: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        eps: float,
        lib: ctypes.CDLL,
    ) -> torch.Tensor:
        out, saved = _merge_norm_gate_forward(y, gates, z, weight, bias, eps, lib)
        ctx.save_for_backward(*saved)
        ctx.meta = (eps, lib)  # type: ignore[attr-defined]
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, dout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        eps, lib = ctx.meta  # type: ignore[attr-defined]
        grads = _merge_norm_gate_backward(ctx.saved_tensors, eps, lib, dout, merged_grad=False)  # type: ignore[attr-defined]
        return (*grads, None, None)


def scan_merge_norm_gate_kernel(
    inputs: OrderedScanInputs,
    gate_weight: torch.Tensor,
    gate_bias: torch.Tensor,
    z: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    eps: float,
) -> torch.Tensor | None:
    """``restorecli.ops.block_epilogue.ordered_scan_merge_norm_gate`` on the compiled kernel, or
    None where it does not run (see :func:`usable_kernel`; z of another dtype than x).

    Args:
        inputs: Checked and cast (``ordered_scan.prepare_ordered_inputs``).
        gate_weight, gate_bias: ``scan_ref.ssa_gates``'s parameters.
        z: (B, L, Di) gate input; norm_weight, norm_bias, eps: out_norm's.
    """
    lib = usable_kernel(inputs.x.numel() > 0)
    if lib is None or z.dtype != inputs.x.dtype:
        return None
    return _ScanMergeNormGateKernel.apply(*inputs[:7], gate_weight, gate_bias, z, norm_weight, norm_bias, eps, lib)


class _ScanMergeNormGateKernel(torch.autograd.Function):
    """The ordered scan, the SSA gates from its mean and ``merge_norm_gate`` as one autograd
    node: the backward hands the scan the gradient of the merged rows (B, L, Di) and the
    gates, and the scan kernel forms each direction's gradient as it reads them, so the
    (B, L, K, Di) gradient of y is never written or read (a quarter of the memory traffic
    between the two kernels)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        proj: torch.Tensor,
        dt_weight: torch.Tensor,
        dt_bias: torch.Tensor,
        A: torch.Tensor,  # noqa: N803
        D: torch.Tensor,  # noqa: N803
        order: torch.Tensor,
        gate_weight: torch.Tensor,
        gate_bias: torch.Tensor,
        z: torch.Tensor,
        norm_weight: torch.Tensor,
        norm_bias: torch.Tensor,
        eps: float,
        lib: ctypes.CDLL,
    ) -> torch.Tensor:
        y, y_sum, scan_saved = _oscan_forward(x, proj, dt_weight, dt_bias, A, D, order, lib, keep=True)
        batch, length, directions, inner = y.shape
        pooled = y_sum.view(batch, directions, inner) / length
        gate_weight, gate_bias = gate_weight.to(y.dtype), gate_bias.to(y.dtype)
        gates = scan_ref.ssa_gates(pooled, gate_weight, gate_bias)
        out, merge_saved = _merge_norm_gate_forward(y, gates, z, norm_weight, norm_bias, eps, lib)
        assert scan_saved is not None
        ctx.save_for_backward(*scan_saved, *merge_saved, pooled, gate_weight)
        ctx.meta = (eps, lib, len(scan_saved))  # type: ignore[attr-defined]
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, dout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        eps, lib, n_scan = ctx.meta  # type: ignore[attr-defined]
        saved = ctx.saved_tensors  # type: ignore[attr-defined]
        scan_saved, merge_saved, (pooled, gate_weight) = saved[:n_scan], saved[n_scan:-2], saved[-2:]
        gates = merge_saved[1]
        dmerged, dgates, dz, dnorm_w, dnorm_b = _merge_norm_gate_backward(merge_saved, eps, lib, dout, merged_grad=True)
        # scan_ref.ssa_gates by hand: logits' gradient, then the weight's, the bias's and the mean's.
        dlogits = dgates * gates * (1.0 - gates)  # (B, K, Di) [b, j, d]
        dgate_weight = torch.einsum("bjd,bkd->djk", dlogits, pooled)
        dgate_bias = dlogits.sum(0).t()
        dpooled = torch.einsum("djk,bjd->bkd", gate_weight, dlogits)
        scan_grads = _oscan_backward(scan_saved, lib, dmerged, dpooled, dy_scale=gates)
        return (*scan_grads, None, dgate_weight, dgate_bias, dz, dnorm_w, dnorm_b, None, None)


def merge_norm_gate_kernel(
    y: torch.Tensor, gates: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, lib: ctypes.CDLL
) -> torch.Tensor:
    """``restorecli.ops.block_epilogue.merge_norm_gate`` on the compiled kernel, with autograd.

    Args:
        y: (B, n, K, Di); gates: (B, K, Di); z: (B, n, Di), float32 or float64 like y.
        weight, bias: the LayerNorm's (Di,) parameters; eps: its epsilon.
        lib: the loaded library (:func:`usable_kernel`).
    """
    return _MergeNormGateKernel.apply(y, gates, z, weight, bias, eps, lib)


class _ResidualNormKernel(torch.autograd.Function):
    """``a = x * skip + mixed`` and ``LayerNorm(a)`` (``rcs_residual_norm_*``), one pass per
    position each way; the backward recomputes the statistics from the saved ``a``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        skip: torch.Tensor,
        mixed: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        eps: float,
        lib: ctypes.CDLL,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, mixed = x.contiguous(), mixed.contiguous()
        skip, weight, bias = (t.to(x.dtype).contiguous() for t in (skip, weight, bias))
        channels = x.shape[-1]
        a, normed = torch.empty_like(x), torch.empty_like(x)
        call_library(
            lib, "residual_norm", x.dtype, pointer(x), pointer(skip), pointer(mixed), pointer(weight), pointer(bias),
            eps, x.numel() // channels, channels, pointer(a), pointer(normed), torch.get_num_threads(),
        )  # fmt: skip
        ctx.save_for_backward(x, skip, a, weight)
        ctx.meta = (eps, lib)  # type: ignore[attr-defined]
        # An output that gets no gradient arrives as None, not as zeros the kernel would read.
        ctx.set_materialize_grads(False)
        return a, normed

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, da: torch.Tensor | None, dnormed: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, skip, a, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        eps, lib = ctx.meta  # type: ignore[attr-defined]
        channels = x.shape[-1]
        threads = torch.get_num_threads()
        da = None if da is None else da.to(x.dtype).contiguous()
        dnormed = torch.zeros_like(x) if dnormed is None else dnormed.to(x.dtype).contiguous()
        dx, dmixed = torch.empty_like(x), torch.empty_like(x)
        # Per-thread sums of the gradients that rows share; summed below.
        dskip_part, dw_part, db_part = (x.new_zeros(threads, channels) for _ in range(3))
        call_library(
            lib, "residual_norm_bwd", x.dtype, pointer(x), pointer(skip), pointer(a), pointer(weight), eps,
            x.numel() // channels, channels, pointer(da), pointer(dnormed), pointer(dx), pointer(dmixed),
            pointer(dskip_part), pointer(dw_part), pointer(db_part), threads,
        )  # fmt: skip
        return dx, dskip_part.sum(0), dmixed, dw_part.sum(0), db_part.sum(0), None, None


def residual_norm_kernel(
    x: torch.Tensor, skip: torch.Tensor, mixed: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, lib: ctypes.CDLL
) -> tuple[torch.Tensor, torch.Tensor]:
    """``restorecli.ops.block_epilogue.residual_norm`` on the compiled kernel, with autograd.

    Args:
        x, mixed: (..., C) of one shape and dtype (float32 or float64); skip: (C,).
        weight, bias: the LayerNorm's (C,) parameters; eps: its epsilon.
        lib: the loaded library (:func:`usable_kernel`).
    """
    return _ResidualNormKernel.apply(x, skip, mixed, weight, bias, eps, lib)


# ---------------------------------------------------------------------------------------
# Building and loading the kernel


def _load_kernel() -> _Kernel:
    """Build (once per process) and load the kernel; never raises."""
    global _kernel
    with _kernel_lock:
        if _kernel is None:
            try:
                _kernel = _build_and_load()
                _log.info("CPU selective-scan kernel: %s (%s)", _kernel.path, _kernel.detail)
            except Exception as error:  # noqa: BLE001 -- any failure means "use the fallback"
                _kernel = _Kernel(None, None, f"{type(error).__name__}: {error}")
                _log.warning("CPU selective-scan kernel unavailable, using the slower torch scan: %s", _kernel.detail)
        return _kernel


def _build_and_load() -> _Kernel:
    source = importlib.resources.files("restorecli.ops").joinpath("csrc", _SOURCE).read_text()
    errors = []
    for flags in compiler_flag_sets():
        started = time.perf_counter()
        try:
            path, built = compile_library(source, "selective_scan_cpu", flags)
        except RuntimeError as error:
            errors.append(str(error))
            continue
        try:
            lib = _open(path)
        except OSError:
            path.unlink(missing_ok=True)  # unloadable (truncated, foreign): rebuild next time
            raise
        tested = _verify(lib, path)
        how = f"built in {time.perf_counter() - started:.1f} s" if built else "loaded from cache"
        if not tested:
            how += ", self-test passed before"
        return _Kernel(lib, path, f"{how}; flags {' '.join(flags)}")
    raise RuntimeError("; ".join(errors))


def _verify(lib: ctypes.CDLL, path: Path) -> bool:
    """Run :func:`_self_test` unless it already passed for this very library file with this
    torch; return whether it ran.

    The test costs about a second of every process start (much of it importing torch's
    symbolic-shape machinery for ``autograd.grad``), which a user running ``restore`` once per
    file pays each time. Its verdict depends only on the library's bytes (the file name already
    pins source, compiler, flags and CPU features) and on the torch reference, so it is kept
    beside the library as ``<library>.verified``, holding the file's sha256 and the torch
    version; a rebuilt or replaced file, another torch or a new test revision tests again.
    """
    marker = path.with_name(path.name + ".verified")
    verdict = f"sha256 {hashlib.sha256(path.read_bytes()).hexdigest()} torch {torch.__version__} test {_SELF_TEST_REVISION}\n"
    try:
        if marker.read_text() == verdict:
            return False
    except OSError:
        pass
    _self_test(lib)
    temporary = path.with_name(f".{marker.name}-{os.getpid()}")
    try:  # written aside and renamed: a reader never sees half a verdict
        temporary.write_text(verdict)
        os.replace(temporary, marker)
    except OSError:  # read-only cache: the test simply runs again next time
        temporary.unlink(missing_ok=True)
    return True


def compile_library(source: str, stem: str, flags: list[str]) -> tuple[Path, bool]:
    """Compile C++ ``source`` into a shared library cached in :func:`extensions_dir`.

    The file name hashes the source, compiler, flags and CPU features, so a changed input
    never reuses a stale library.

    Args:
        source: C++ source text.
        stem: File name prefix.
        flags: Compiler flags (see :func:`compiler_flag_sets`).

    Returns:
        ``(path, built)``: the library and whether this call compiled it.

    Raises:
        RuntimeError: No compiler, or the compiler failed (its message is included).
    """
    compiler = _find_compiler()
    identity = [source, _compiler_version(compiler), " ".join(flags), _cpu_signature(), str(_ABI_VERSION)]
    key = hashlib.sha256("\0".join(identity).encode()).hexdigest()[:16]
    path = extensions_dir() / f"{stem}-{key}{_library_suffix()}"
    return path, _ensure_built(path, source, compiler, flags)


def _find_compiler() -> str:
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(f"no C++ compiler found (tried {', '.join(candidates)}; set CXX)")


def _compiler_version(compiler: str) -> str:
    done = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60, check=False)
    first_line = (done.stdout or done.stderr).splitlines()[:1]
    return f"{compiler} {first_line[0] if first_line else '?'}"


def compiler_flag_sets() -> list[list[str]]:
    """Compiler flags to try in order: tuned for this CPU first, then portable."""
    common = ["-O3", "-std=c++17", "-shared", "-fPIC", "-pthread"]
    # Our exp/log1p are branch-free so these two are enough for the vectoriser; unlike
    # -ffast-math they change no results.
    common += ["-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math"]
    tuned = ["-march=native"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        tuned.append("-mprefer-vector-width=512")  # 16 lanes = one AVX-512 register
    return [common + tuned, common]


def _cpu_signature() -> str:
    """CPU features the -march=native build depends on (a shared cache may span machines)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _library_suffix() -> str:
    if sys.platform == "win32":
        return ".dll"
    return ".dylib" if sys.platform == "darwin" else ".so"


def _ensure_built(path: Path, source: str, compiler: str, flags: list[str]) -> bool:
    """Compile ``source`` to ``path`` unless it exists; return whether it was compiled.

    Concurrent builders are serialised by a lock file, and the library is written to a
    temporary name and renamed, so a reader never sees a partial file even without the lock.
    """
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(path.with_suffix(".lock"), timeout_s=_LOCK_WAIT_S):  # then build anyway
        if path.exists():  # another process built it while we waited
            return False
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".build-") as tmp:
            src = Path(tmp) / f"{path.stem}.cpp"
            src.write_text(source)
            out = Path(tmp) / path.name
            cmd = [compiler, *flags, str(src), "-o", str(out)]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S, check=False)
            except subprocess.TimeoutExpired as error:
                raise RuntimeError(f"compiler timed out after {_BUILD_TIMEOUT_S} s") from error
            if done.returncode != 0 or not out.exists():
                tail = " ".join((done.stderr or done.stdout).split())[-400:]
                raise RuntimeError(f"compile failed ({' '.join(flags)}): {tail}")
            os.replace(out, path)
    return True


def _open(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    if lib.rcs_abi_version() != _ABI_VERSION:
        raise RuntimeError(f"{path} has ABI {lib.rcs_abi_version()}, expected {_ABI_VERSION}")
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    sizes = [ctypes.c_int, i64, i64, i64, i64, i64, i64]  # softplus, batch, dim, L, N, G, tile
    for suffix in ("f32", "f64"):
        fwd = getattr(lib, f"rcs_scan_fwd_{suffix}")
        fwd.argtypes = [ptr] * 7 + sizes + [ptr, ptr, ctypes.c_int]
        fwd.restype = ctypes.c_int
        bwd = getattr(lib, f"rcs_scan_bwd_{suffix}")
        bwd.argtypes = [ptr] * 7 + sizes + [ptr] * 9 + [ctypes.c_int]
        bwd.restype = ctypes.c_int
        # order, order stride, x, proj, P, R, dt_w, A, D, bias, softplus, batch, inner, L, N, G, tile
        head = [ptr, i64, ptr, ptr, i64, i64, ptr, ptr, ptr, ptr, ctypes.c_int] + [i64] * 6
        ofwd = getattr(lib, f"rcs_oscan_fwd_{suffix}")
        ofwd.argtypes = head + [ptr, ptr, ptr, ctypes.c_int]
        ofwd.restype = ctypes.c_int
        obwd = getattr(lib, f"rcs_oscan_bwd_{suffix}")
        obwd.argtypes = head + [ptr] * 10 + [ctypes.c_int]
        obwd.restype = ctypes.c_int
        mfwd = getattr(lib, f"rcs_merge_fwd_{suffix}")
        mfwd.argtypes = [ptr, ptr, i64, i64, i64, i64, ptr, ctypes.c_int]
        mfwd.restype = ctypes.c_int
        mbwd = getattr(lib, f"rcs_merge_bwd_{suffix}")
        mbwd.argtypes = [ptr, ptr, ptr, i64, i64, i64, i64, ptr, ptr, ctypes.c_int]
        mbwd.restype = ctypes.c_int
        gate = getattr(lib, f"rcs_merge_norm_gate_{suffix}")
        gate.argtypes = [ptr] * 5 + [ctypes.c_double, i64, i64, i64, ptr, ctypes.c_int]
        gate.restype = ctypes.c_int
        gate_bwd = getattr(lib, f"rcs_merge_norm_gate_bwd_{suffix}")
        gate_bwd.argtypes = [ptr] * 5 + [ctypes.c_double] + [i64] * 4 + [ptr] * 7 + [ctypes.c_int]
        gate_bwd.restype = ctypes.c_int
        resid = getattr(lib, f"rcs_residual_norm_{suffix}")
        resid.argtypes = [ptr] * 5 + [ctypes.c_double, i64, i64, ptr, ptr, ctypes.c_int]
        resid.restype = ctypes.c_int
        resid_bwd = getattr(lib, f"rcs_residual_norm_bwd_{suffix}")
        resid_bwd.argtypes = [ptr] * 4 + [ctypes.c_double, i64, i64] + [ptr] * 7 + [ctypes.c_int]
        resid_bwd.restype = ctypes.c_int
    return lib


def _self_test(lib: ctypes.CDLL) -> None:
    """Compare a small scan and its gradients with the reference; a miscompiled kernel
    (wrong flags, compiler bug) must not be used."""
    # The first scan of a process may run under no_grad/inference_mode, which the test's
    # autograd needs off, or under autocast (--precision bf16), which would compute its
    # torch reference in bfloat16 and fail a correct kernel.
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
        _self_test_with_grad(lib)


def _self_test_with_grad(lib: ctypes.CDLL) -> None:
    _self_test_plain(lib)
    _self_test_ordered(lib)
    _self_test_epilogues(lib)
    _self_test_scan_merge(lib)


def _assert_close(results: list[list[torch.Tensor]], tol: float, what: str) -> None:
    for got, want in zip(*results):
        err = ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30)).item()
        if not err <= tol:
            raise RuntimeError(f"kernel self-test failed ({what}): relative error {err:.2e}")


def _self_test_plain(lib: ctypes.CDLL) -> None:
    gen = torch.Generator().manual_seed(0)
    batch, dim, length, groups = 2, 40, 37, 2  # 20 channels a group: one full 16-lane block
    for n_state in (1, 16, 3):

        def rand(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen, dtype=torch.float64)

        args = [
            rand(batch, dim, length),
            rand(batch, dim, length) * 0.5,
            -torch.rand(dim, n_state, generator=gen, dtype=torch.float64) - 0.1,
            rand(batch, groups, n_state, length),
            rand(batch, groups, n_state, length),
            rand(dim),
            rand(dim) * 0.1,
        ]
        grad_out = rand(batch, dim, length)
        for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-10)):
            results = []
            for use_kernel in (True, False):
                inputs = [v.to(dtype).requires_grad_() for v in args]
                if use_kernel:
                    out = _KernelScan.apply(*inputs, True, lib)
                else:
                    out = scan_ref.scan_sequential(ScanInputs(*inputs, True))
                grads = torch.autograd.grad(out, inputs, grad_out.to(dtype))
                results.append([out.detach(), *grads])
            _assert_close(results, tol, f"N={n_state}, {dtype}")


def _self_test_scan_merge(lib: ctypes.CDLL) -> None:
    """The training node of a MaIR mixer (ordered scan, SSA gates, merge + LayerNorm + SiLU
    gate; its scan backward reads the merged gradient and the gates) against the torch
    formulation, N = 1 and 3."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(3)
    batch, length, inner, directions, rank, eps = 2, 29, 20, 4, 2, 1e-5
    order = torch.stack([torch.stack([torch.randperm(length, generator=gen) for _ in range(directions)]) for _ in range(batch)])
    inverse = torch.argsort(order, dim=-1)
    for n_state in (1, 3):
        args = [
            torch.randn(batch, length, inner, generator=gen, dtype=torch.float64),
            torch.randn(batch, length, directions * (rank + 2 * n_state), generator=gen, dtype=torch.float64) * 0.5,
            torch.randn(directions, inner, rank, generator=gen, dtype=torch.float64) * 0.5,
            torch.randn(directions * inner, generator=gen, dtype=torch.float64) * 0.5 - 1,
            -torch.rand(directions * inner, n_state, generator=gen, dtype=torch.float64) - 0.1,
            torch.randn(directions * inner, generator=gen, dtype=torch.float64),
            torch.randn(inner, directions, directions, generator=gen, dtype=torch.float64),
            torch.randn(inner, directions, generator=gen, dtype=torch.float64),
            torch.randn(batch, length, inner, generator=gen, dtype=torch.float64),
            torch.randn(inner, generator=gen, dtype=torch.float64) * 0.5 + 1,
            torch.randn(inner, generator=gen, dtype=torch.float64) * 0.1,
        ]
        grad_out = torch.randn(batch, length, inner, generator=gen, dtype=torch.float64)
        for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-10)):
            results = []
            for use_kernel in (True, False):
                inputs = [v.to(dtype).requires_grad_() for v in args]
                scan_inputs, (gate_w, gate_b, z, norm_w, norm_b) = inputs[:6], inputs[6:]
                if use_kernel:
                    out = _ScanMergeNormGateKernel.apply(*scan_inputs, order, gate_w, gate_b, z, norm_w, norm_b, eps, lib)
                else:
                    y, mean = scan_ref.ordered_scan_gathered(OrderedScanInputs(*scan_inputs, order, inverse), scan_ref.scan_sequential)
                    merged = (y * scan_ref.ssa_gates(mean, gate_w, gate_b).unsqueeze(1)).sum(2)
                    out = F.layer_norm(merged, (inner,), norm_w, norm_b, eps) * F.silu(z)
                grads = torch.autograd.grad(out, inputs, grad_out.to(dtype))
                results.append([out.detach(), *grads])
            _assert_close(results, tol, f"scan + merge node, N={n_state}, {dtype}")


def _self_test_epilogues(lib: ctypes.CDLL) -> None:
    """The block epilogues (merge + LayerNorm + SiLU gate; residual + LayerNorm) and their
    backwards, which compute the training gradients, against their torch formulations."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(2)
    batch, length, directions, inner, eps = 2, 13, 4, 20, 1e-5
    args = [
        torch.randn(batch, length, directions, inner, generator=gen, dtype=torch.float64),
        torch.rand(batch, directions, inner, generator=gen, dtype=torch.float64),
        torch.randn(batch, length, inner, generator=gen, dtype=torch.float64),
        torch.randn(inner, generator=gen, dtype=torch.float64) * 0.5 + 1,
        torch.randn(inner, generator=gen, dtype=torch.float64) * 0.1,
    ]
    grads_out = [torch.randn(batch, length, inner, generator=gen, dtype=torch.float64) for _ in range(2)]
    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-10)):
        results = []
        for use_kernel in (True, False):
            y, gates, z, weight, bias = inputs = [v.to(dtype).requires_grad_() for v in args]
            if use_kernel:
                out = _MergeNormGateKernel.apply(y, gates, z, weight, bias, eps, lib)
                a, normed = _ResidualNormKernel.apply(z, weight, out, weight, bias, eps, lib)
            else:
                merged = (y * gates.unsqueeze(1)).sum(2)
                out = F.layer_norm(merged, (inner,), weight, bias, eps) * F.silu(z)
                a = z * weight + out
                normed = F.layer_norm(a, (inner,), weight, bias, eps)
            grads = torch.autograd.grad((a, normed), inputs, [g.to(dtype) for g in grads_out])
            results.append([out.detach(), a.detach(), normed.detach(), *grads])
        _assert_close(results, tol, f"epilogues, {dtype}")


def _self_test_ordered(lib: ctypes.CDLL) -> None:
    """The ordered scan (per-image orders, a full and a partial channel block, N = 1 and 3) and
    the SSA merge against their torch formulations."""
    gen = torch.Generator().manual_seed(1)
    batch, length, inner, directions, rank = 2, 35, 20, 4, 2
    order = torch.stack([torch.stack([torch.randperm(length, generator=gen) for _ in range(directions)]) for _ in range(batch)])
    inverse = torch.argsort(order, dim=-1)
    for n_state in (1, 3):
        args = [
            torch.randn(batch, length, inner, generator=gen, dtype=torch.float64),
            torch.randn(batch, length, directions * (rank + 2 * n_state), generator=gen, dtype=torch.float64) * 0.5,
            torch.randn(directions, inner, rank, generator=gen, dtype=torch.float64) * 0.5,
            torch.randn(directions * inner, generator=gen, dtype=torch.float64) * 0.5 - 1,
            -torch.rand(directions * inner, n_state, generator=gen, dtype=torch.float64) - 0.1,
            torch.randn(directions * inner, generator=gen, dtype=torch.float64),
        ]
        gates = torch.rand(batch, directions, inner, generator=gen, dtype=torch.float64)
        grad_out = torch.randn(batch, length, inner, generator=gen, dtype=torch.float64)
        for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-10)):
            results = []
            for use_kernel in (True, False):
                inputs = [v.to(dtype).requires_grad_() for v in [*args, gates]]
                scan_inputs = OrderedScanInputs(*inputs[:6], order, inverse)
                if use_kernel:
                    y, mean = _OrderedKernelScan.apply(*scan_inputs[:7], lib)
                    out = _MergeKernel.apply(y, inputs[6], lib)
                else:
                    y, mean = scan_ref.ordered_scan_gathered(scan_inputs, scan_ref.scan_sequential)
                    out = (y * inputs[6].unsqueeze(1)).sum(2)
                out = out + mean.sum(1, keepdim=True)  # the mean's gradient path too
                grads = torch.autograd.grad(out, inputs, grad_out.to(dtype))
                results.append([out.detach(), *grads])
            _assert_close(results, tol, f"ordered, N={n_state}, {dtype}")
