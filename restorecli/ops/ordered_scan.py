"""Selective scan along scan orders of a channels-last map, with the Δ projection fused.

A MaIR or VAMamba mixer scans one feature map in K orders (directions). Written out, that is
"gather K permuted copies, project, scan, un-permute": four (B, Di, L) copies in and out per
block. :func:`ordered_selective_scan` states the same computation on the map itself:

* ``x`` (B, L, Di): the scan input u of every direction, positions in raster order;
* ``proj`` (B, L, P): per position, direction k's block ``[dt_low (R) | B (N) | C (N)]`` at
  column ``k * (R + 2N)`` -- the output of one x_proj GEMM over the map, which commutes with
  the permutation because it acts on each position alone;
* direction k visits raster position ``order[k, t]`` at step t, and its step size is
  ``softplus(dt_weight[k] @ dt_low + dt_bias)`` (Mamba's dt_proj, fused);
* the output ``y`` (B, L, K, Di) is written back in raster order.

The compiled CPU kernel (``scan_cpu``) and the Triton kernels (``scan_triton``: the ``triton``
backend, and the ``cuda`` backend when it runs on triton) read through the orders and write back
in place, so no permuted copy exists, forward or backward. Every other case (other devices, the
torch fallbacks, mamba_ssm, the ``ref`` backend) runs :func:`ordered_scan_reference`: explicit
gathers around ``selective_scan``, which is also the oracle of the kernels' tests.
"""

from __future__ import annotations

import torch

from restorecli.ops.scan_ref import OrderedScanInputs, ScanInputs, ordered_scan_gathered
from restorecli.ops.selective_scan import LOW_PRECISION_DTYPES, resolve_backend, selective_scan


def ordered_selective_scan(
    x: torch.Tensor,
    proj: torch.Tensor,
    dt_weight: torch.Tensor,
    dt_bias: torch.Tensor,
    A: torch.Tensor,  # noqa: N803
    D: torch.Tensor,  # noqa: N803
    order: torch.Tensor,
    inverse: torch.Tensor,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """K-direction selective scan (softplus Δ, D skip) of a channels-last map.

    Args:
        x: (B, L, Di) scan input in raster order.
        proj: (B, L, P), P >= K * (R + 2N): direction k's ``dt_low | B | C`` at ``k * (R + 2N)``.
        dt_weight: (K, Di, R) Δ projection.
        dt_bias: (K * Di,) Δ bias, k-major.
        A: (K * Di, N) state matrix (negative for a decaying state).
        D: (K * Di,) skip weight.
        order: (K, L) or (B, K, L) int64: raster position visited at step t of direction k.
        inverse: the inverse permutations of ``order``, same shape.
        backend: selective-scan backend (see ``restorecli.ops.resolve_backend``); ``cpu`` uses
            the fused kernel when it is built, ``triton`` (and ``cuda`` when it runs on triton)
            the fused Triton kernels, everything else the reference.

    Returns:
        ``(y, mean)``: y (B, L, K, Di), y[b, p, k] is direction k's output at raster position
        p (float32, or float64 for float64 inputs); mean (B, K, Di) is y's mean over the
        positions (SSA's pooled input, summed by the kernel on the way).

    Raises:
        ValueError: Inconsistent shapes or devices.
        BackendUnavailableError: See ``restorecli.ops.resolve_backend``.
    """
    given = OrderedScanInputs(x, proj, dt_weight, dt_bias, A, D, order, inverse)
    name = resolve_backend(backend, x.device)
    if name == "triton" or (name == "cuda" and x.dtype != torch.float64 and _cuda_runs_triton()):
        from restorecli.ops import scan_triton

        return scan_triton.ordered_scan_triton(prepare_ordered_inputs(given, keep_low_precision=True))
    inputs = prepare_ordered_inputs(given)
    if name == "cpu":
        from restorecli.ops import scan_cpu

        fused = scan_cpu.ordered_scan_kernel(inputs)
        if fused is not None:
            return fused
    return ordered_scan_reference(inputs, backend=name)


def _cuda_runs_triton() -> bool:
    from restorecli.ops.scan_cuda import cuda_kernel_status

    return cuda_kernel_status().implementation == "triton"


def ordered_scan_reference(inputs: OrderedScanInputs, *, backend: str | None = "ref") -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`ordered_selective_scan` as explicit gathers around ``selective_scan(backend)``."""

    def plain(x: ScanInputs) -> torch.Tensor:
        return selective_scan(
            x.u, x.delta, x.A, x.B, x.C, D=x.D, delta_bias=x.delta_bias, delta_softplus=x.delta_softplus, backend=backend
        )

    return ordered_scan_gathered(inputs, plain)


def merge_directions(y: torch.Tensor, gates: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Weighted sum of the directions of an ordered scan's output (MaIR's SSA merge).

    Args:
        y: (B, L, K, Di), as returned by :func:`ordered_selective_scan`.
        gates: (B, K, Di) per-direction, per-channel weights.
        backend: as for :func:`ordered_selective_scan` (``cpu`` uses the compiled kernel).

    Returns:
        (B, L, Di): out[b, l, d] = sum_k gates[b, k, d] * y[b, l, k, d].
    """
    if resolve_backend(backend, y.device) == "cpu":
        from restorecli.ops import scan_cpu

        merged = scan_cpu.merge_kernel(y, gates)
        if merged is not None:
            return merged
    return (y * gates.unsqueeze(1)).sum(2)


def prepare_ordered_inputs(inputs: OrderedScanInputs, *, keep_low_precision: bool = False) -> OrderedScanInputs:
    """Check shapes, dtypes and devices; cast the float inputs to the compute dtype.

    Args:
        inputs: As given to :func:`ordered_selective_scan`.
        keep_low_precision: Leave float16/bfloat16 x and proj as they are (for kernels that read
            them directly); the parameters are cast regardless.

    Raises:
        ValueError: On any inconsistency; the message names the argument and the shapes.
    """
    x, proj, dt_weight, dt_bias, A, D, order, inverse = inputs  # noqa: N806
    if x.dim() != 3:
        raise ValueError(f"x must be (batch, L, inner), got shape {tuple(x.shape)}")
    batch, length, inner = x.shape
    if dt_weight.dim() != 3 or dt_weight.shape[1] != inner:
        raise ValueError(f"dt_weight must be (K, inner={inner}, R), got shape {tuple(dt_weight.shape)}")
    directions, _, rank = dt_weight.shape
    dim = directions * inner
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (K * inner = {dim}, N), got shape {tuple(A.shape)}")
    need = directions * (rank + 2 * A.shape[1])
    if proj.dim() != 3 or proj.shape[:2] != (batch, length) or proj.shape[2] < need:
        raise ValueError(f"proj must be (batch={batch}, L={length}, >= {need}), got shape {tuple(proj.shape)}")
    for label, vector in (("dt_bias", dt_bias), ("D", D)):
        if tuple(vector.shape) != (dim,):
            raise ValueError(f"{label} must be ({dim},), got shape {tuple(vector.shape)}")
    for label, index in (("order", order), ("inverse", inverse)):
        if index.dtype != torch.int64 or index.shape[-2:] != (directions, length) or index.dim() not in (2, 3) or (
            index.dim() == 3 and index.shape[0] != batch
        ):
            raise ValueError(
                f"{label} must be int64 (K={directions}, L={length}) or (batch, K, L), "
                f"got {index.dtype} {tuple(index.shape)}"
            )
    for label, tensor in (("proj", proj), ("dt_weight", dt_weight), ("dt_bias", dt_bias), ("A", A), ("D", D),
                          ("order", order), ("inverse", inverse)):
        if tensor.device != x.device:
            raise ValueError(f"{label} is on {tensor.device} but x is on {x.device}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, proj = (t if keep_low_precision and t.dtype in LOW_PRECISION_DTYPES else t.to(dtype) for t in (x, proj))
    return OrderedScanInputs(x, proj, *(t.to(dtype) for t in (dt_weight, dt_bias, A, D)), order, inverse)
