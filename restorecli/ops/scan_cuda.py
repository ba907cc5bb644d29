"""The ``cuda`` scan backend: mamba_ssm's CUDA kernel, the Triton kernels, or a PyTorch GPU scan.

mamba_ssm is imported lazily on the first CUDA scan and guarded against every exception
(ImportError, and OSError from CUDA/ABI mismatches, its most common failure). When it is
missing the backend uses the Triton kernels (``scan_triton``; triton ships with CUDA builds
of torch and needs no compile step at install), and without triton the chunked torch scan.

Environment:
    RESTORECLI_CUDA_SCAN: ``auto`` (default: mamba_ssm if importable, else triton if importable,
        else torch) or ``torch`` (always the PyTorch scan, for comparisons).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from restorecli.ops import scan_ref, scan_triton
from restorecli.ops.scan_ref import ScanInputs

ENV_IMPL = "RESTORECLI_CUDA_SCAN"
INSTALL_HINT = (
    "on a machine with an NVIDIA GPU, install a CUDA build of torch, then "
    "`pip install restorecli[cuda]` for the fast mamba_ssm kernel"
)


@dataclass(frozen=True)
class CudaKernelStatus:
    """Which implementation the ``cuda`` backend uses, and why.

    Attributes:
        implementation: ``"mamba_ssm"``, ``"triton"`` or ``"torch"``.
        reason: Human-readable explanation.
    """

    implementation: str
    reason: str


# (selective_scan_fn or None, why not); None until the first attempt.
_mamba: tuple[Callable[..., torch.Tensor] | None, str] | None = None
_mamba_lock = threading.Lock()
_log = logging.getLogger(__name__)


def unavailable_reason() -> str | None:
    """Why the ``cuda`` backend cannot run here, or None when it can."""
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            return f"torch {torch.__version__} was built without CUDA; {INSTALL_HINT}"
        return (
            f"torch {torch.__version__} supports CUDA {torch.version.cuda} but no CUDA device is "
            "visible (check the driver and CUDA_VISIBLE_DEVICES)"
        )
    return None


def _import_selective_scan_fn() -> Callable[..., torch.Tensor]:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn


def _load_mamba() -> tuple[Callable[..., torch.Tensor] | None, str]:
    global _mamba
    with _mamba_lock:
        if _mamba is None:
            try:
                _mamba = (_import_selective_scan_fn(), "mamba_ssm selective_scan_fn")
            except Exception as error:  # noqa: BLE001 -- ABI/driver errors surface as anything
                _mamba = (None, f"mamba_ssm is not importable ({type(error).__name__}: {error})")
            _log.info("CUDA selective scan: %s", _mamba[1])
        return _mamba


def cuda_kernel_status() -> CudaKernelStatus:
    """Report the implementation the ``cuda`` backend would use (imports mamba_ssm, then triton, once)."""
    if os.environ.get(ENV_IMPL, "").strip().lower() == "torch":
        return CudaKernelStatus("torch", f"forced by {ENV_IMPL}=torch")
    fn, why = _load_mamba()
    if fn is not None:
        return CudaKernelStatus("mamba_ssm", why)
    triton_why = triton_unavailable_reason()
    if triton_why is None:
        return CudaKernelStatus("triton", f"Triton kernels; {why}")
    return CudaKernelStatus("torch", f"chunked torch scan; {why}; {triton_why}")


def triton_unavailable_reason() -> str | None:
    """Why the Triton kernels cannot serve the ``cuda`` backend (they need a CUDA device here,
    even where the interpreter would run them on the CPU), or None."""
    if not torch.cuda.is_available():
        return "triton needs a CUDA device"
    return scan_triton.unavailable_reason()


def selective_scan_cuda(x: ScanInputs) -> torch.Tensor:
    """Scan prepared CUDA inputs with mamba_ssm, else the Triton kernels, else the chunked torch scan.

    float64 inputs always take the torch scan (neither kernel computes in float64).

    Args:
        x: Prepared inputs (see ``scan_ref.ScanInputs``).

    Returns:
        (batch, dim, L) output in the inputs' dtype.
    """
    implementation = cuda_kernel_status().implementation if x.u.dtype != torch.float64 else "torch"
    if implementation == "triton":
        return scan_triton.selective_scan_triton(x)
    if implementation == "mamba_ssm":
        fn, _ = _load_mamba()
        assert fn is not None
        # The inputs are float32 already, so the kernel's output (in u's dtype) is float32.
        return fn(
            x.u, x.delta, x.A, x.B, x.C, D=x.D, z=None, delta_bias=x.delta_bias, delta_softplus=x.delta_softplus
        )
    return scan_ref.scan_chunked(x)
