"""Position-wise epilogues of the residual Mamba block, each in one pass over a run of positions.

* :func:`merge_norm_gate`: the mixer's output side, ``LayerNorm(SSA merge of y) * silu(z)``;
* :func:`residual_norm`: the block's residual and the norm after it, ``a = x * skip + mixed``
  and ``LayerNorm(a)``;
* :func:`ordered_scan_merge_norm_gate`: in training, the mixer's ordered scan, SSA gates and
  :func:`merge_norm_gate` as one step (one autograd node on the compiled kernel).

Each has two formulations of the same maths: PyTorch operations (the reference; any device,
autograd) and the compiled CPU kernel (``rcs_merge_norm_gate_*``, ``rcs_residual_norm_*`` and
their ``_bwd`` backwards in the library of ``scan_cpu``). In PyTorch each step reads and writes
the whole run: streamed inference (``restorecli.models.blocks.ResidualMambaBlock``) spent about
15 % of a forward in them, a training step more (their backwards are five to eight operators).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from restorecli.ops.ordered_scan import merge_directions, ordered_selective_scan, prepare_ordered_inputs
from restorecli.ops.scan_ref import OrderedScanInputs, ssa_gates
from restorecli.ops.selective_scan import resolve_backend


def merge_norm_gate(
    y: torch.Tensor, gates: torch.Tensor, z: torch.Tensor, norm: nn.LayerNorm, *, backend: str | None = None
) -> torch.Tensor:
    """``norm(sum_k gates[:, k] * y[:, :, k]) * silu(z)``.

    Args:
        y: (B, n, K, Di) scan outputs of n positions.
        gates: (B, K, Di) per-direction weights.
        z: (B, n, Di) gate input.
        norm: LayerNorm over Di.
        backend: selective-scan backend (``restorecli.ops.resolve_backend``); ``cpu`` uses the
            compiled kernel when no gradient is wanted.

    Returns:
        (B, n, Di) in z's dtype.
    """
    lib = _kernel_for(backend, y, gates, z, norm.weight, norm.bias)
    if lib is None or y.dtype != z.dtype:
        return merge_norm_gate_reference(y, gates, z, norm, backend=backend)
    from restorecli.ops.scan_cpu import merge_norm_gate_kernel

    with _profiled("restorecli::merge_norm_gate"):
        return merge_norm_gate_kernel(y, gates, z, norm.weight, norm.bias, norm.eps, lib)


def merge_norm_gate_reference(
    y: torch.Tensor, gates: torch.Tensor, z: torch.Tensor, norm: nn.LayerNorm, *, backend: str | None = None
) -> torch.Tensor:
    """:func:`merge_norm_gate` as PyTorch operations (the SSA merge on ``backend``)."""
    if y.device.type == "meta":
        merged = torch.einsum("blkd,bkd->bld", y, gates)  # counted by the flop counter
    else:
        merged = merge_directions(y, gates, backend=backend)
    return norm(merged.to(z.dtype)) * F.silu(z)


def ordered_scan_merge_norm_gate(
    inputs: OrderedScanInputs,
    gate_weight: torch.Tensor,
    gate_bias: torch.Tensor,
    z: torch.Tensor,
    norm: torch.nn.LayerNorm,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """A MaIR mixer's scan and output side: ``ordered_selective_scan``, the SSA gates from
    its mean (``scan_ref.ssa_gates``) and :func:`merge_norm_gate`.

    Args:
        inputs: As given to ``ordered_selective_scan`` (x, proj, dt_weight, dt_bias, A, D,
            order, inverse).
        gate_weight: (Di, K, K) and gate_bias (Di, K): the SSA gate's parameters.
        z: (B, L, Di) gate input; norm: out_norm over Di.
        backend: as for ``ordered_selective_scan``.

    Returns:
        (B, L, Di) in z's dtype. On the compiled CPU kernel this is one autograd node whose
        backward never forms the (B, L, K, Di) gradient of the scan output
        (``scan_cpu.scan_merge_norm_gate_kernel``); elsewhere the three steps run in turn.
    """
    if resolve_backend(backend, inputs.x.device) == "cpu" and inputs.x.dtype in (torch.float32, torch.float64):
        from restorecli.ops import scan_cpu

        prepared = prepare_ordered_inputs(inputs)
        fused = scan_cpu.scan_merge_norm_gate_kernel(prepared, gate_weight, gate_bias, z, norm.weight, norm.bias, norm.eps)
        if fused is not None:
            return fused
    y, pooled = ordered_selective_scan(*inputs, backend=backend)
    gates = ssa_gates(pooled, gate_weight.to(pooled.dtype), gate_bias.to(pooled.dtype))
    return merge_norm_gate(y, gates, z, norm, backend=backend)


def residual_norm(
    x: torch.Tensor, skip: torch.Tensor, mixed: torch.Tensor, norm: nn.LayerNorm, *, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``a = x * skip + mixed`` and ``norm(a)``.

    Args:
        x, mixed: (..., C) of one shape; skip: (C,) per-channel scale.
        norm: LayerNorm over C.
        backend: as for :func:`merge_norm_gate`.

    Returns:
        ``(a, norm(a))``.
    """
    lib = _kernel_for(backend, x, skip, mixed, norm.weight, norm.bias)
    if lib is None or x.shape != mixed.shape or x.dtype != mixed.dtype:
        a = x * skip + mixed
        return a, norm(a)
    from restorecli.ops.scan_cpu import residual_norm_kernel

    with _profiled("restorecli::residual_norm"):
        return residual_norm_kernel(x, skip, mixed, norm.weight, norm.bias, norm.eps, lib)


def _profiled(name: str) -> contextlib.AbstractContextManager[object]:
    """A profiler range around a library call (the profiler sees no torch op in it), only
    while a profiler runs: ``restore bench`` counts these under norm_elementwise."""
    if torch.autograd._profiler_enabled():
        return torch.profiler.record_function(name)
    return contextlib.nullcontext()


def _kernel_for(backend: str | None, *tensors: torch.Tensor) -> object | None:
    """The compiled library where it applies: CPU float32/float64 tensors, the ``cpu`` backend
    and a built kernel; else None (the PyTorch formulation runs)."""
    first = tensors[0]
    if first.device.type != "cpu" or first.dtype not in (torch.float32, torch.float64) or first.numel() == 0:
        return None
    if resolve_backend(backend, first.device) != "cpu":
        return None
    from restorecli.ops import scan_cpu

    return scan_cpu.usable_kernel()
