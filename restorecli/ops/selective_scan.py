"""Public selective-scan entry point: input checks, backend resolution and dispatch.

Backends (all compute in float32, or float64 for float64 inputs, and support autograd):

* ``ref``    -- the plain sequential recurrence in PyTorch; any device; the test oracle.
* ``cpu``    -- compiled C++ kernel with a pure-PyTorch fallback (``scan_cpu``).
* ``cuda``   -- the best GPU implementation here: mamba_ssm's kernel if it imports, else the
  Triton kernels if triton imports, else a pure-PyTorch GPU scan (``scan_cuda``).
* ``triton`` -- the Triton kernels (``scan_triton``); CUDA tensors, or CPU tensors in Triton's
  interpreter (``TRITON_INTERPRET=1``, tests only).

Resolution order: explicit ``backend`` argument, then ``RESTORECLI_SCAN_BACKEND``, then
auto (CUDA tensors -> ``cuda``, CPU tensors -> ``cpu``, other devices -> ``ref``). An
explicit request for a backend that cannot run raises; there is no silent fallback.
:func:`implementation_label` names what actually runs (``cuda:triton``, ``cpu:compiled``, ...).
"""

from __future__ import annotations

import os

import torch

from restorecli.errors import BackendUnavailableError
from restorecli.ops import scan_cpu, scan_cuda, scan_ref, scan_triton
from restorecli.ops.scan_ref import ScanInputs

BACKENDS = ("ref", "cpu", "cuda", "triton")
ENV_BACKEND = "RESTORECLI_SCAN_BACKEND"
LOW_PRECISION_DTYPES = (torch.float16, torch.bfloat16)


def _device_of_backend(name: str) -> str | None:
    """The device type a backend's tensors must be on (None: any; ref runs anywhere)."""
    return {"cpu": "cpu", "cuda": "cuda", "triton": scan_triton.device_type()}.get(name)


def available_backends() -> dict[str, str | None]:
    """Usability of each backend on this machine.

    Returns:
        ``{"ref": None, "cpu": None, "cuda": None or "why not", "triton": None or "why not"}``;
        None means usable. ``cpu`` is always usable (it falls back to pure PyTorch; see
        ``scan_cpu.cpu_kernel_status()`` for which implementation is active). Asking imports
        triton once.
    """
    return {name: unavailable_reason(name) for name in BACKENDS}


def unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` cannot run here, or None (only ``cuda`` and ``triton`` can be unusable)."""
    if name == "cuda":
        return scan_cuda.unavailable_reason()
    if name == "triton":
        return scan_triton.unavailable_reason()
    return None


def resolve_backend(backend: str | None, device: torch.device | str) -> str:
    """Pick the backend for tensors on ``device``.

    Args:
        backend: ``"ref"``, ``"cpu"``, ``"cuda"``, ``"triton"``, ``"auto"`` or None. None defers to the
            ``RESTORECLI_SCAN_BACKEND`` environment variable, then to auto.
        device: Device of the scan inputs.

    Returns:
        The backend name.

    Raises:
        BackendUnavailableError: Unknown name, a backend that is not usable here, or one
            that cannot run on ``device``.
    """
    device = torch.device(device)
    source = "backend argument"
    if backend is None:
        backend = os.environ.get(ENV_BACKEND, "").strip() or None
        source = ENV_BACKEND
    name = (backend or "auto").lower()
    if name == "auto":
        return {"cuda": "cuda", "cpu": "cpu"}.get(device.type, "ref")
    if name not in BACKENDS:
        raise BackendUnavailableError(
            f"unknown scan backend {backend!r} (from {source}); valid: auto, {', '.join(BACKENDS)}"
        )
    reason = unavailable_reason(name)
    if reason is not None:
        raise BackendUnavailableError(f"scan backend {name!r} (from {source}) is not usable: {reason}")
    needed = _device_of_backend(name)
    if needed is not None and device.type != needed:
        raise BackendUnavailableError(
            f"scan backend {name!r} (from {source}) needs {needed} tensors, got tensors on {device}; "
            "use backend 'auto' or 'ref'"
        )
    return name


def implementation_label(backend: str | None, device: torch.device | str) -> str:
    """What a requested backend runs on ``device``, as every report names it.

    ``cpu:compiled`` or ``cpu:torch`` (the compiled kernel or its PyTorch fallback),
    ``cuda:mamba_ssm``, ``cuda:triton`` or ``cuda:torch`` (what the ``cuda`` backend picked),
    ``cuda:triton`` for the ``triton`` backend (``cpu:triton`` in Triton's interpreter), or ``ref``.
    Asking loads the CPU kernel (compiling it the first time) or imports mamba_ssm and triton, as
    the first scan would.

    Args:
        backend: As for :func:`resolve_backend` (None: the environment's, else auto).
        device: Where the scans run.

    Raises:
        BackendUnavailableError: See :func:`resolve_backend`; also a backend named explicitly
            whose own implementation cannot run here (an explicit ``cuda`` without mamba_ssm, an
            explicit ``cpu`` whose kernel does not build): its fallback is never substituted
            silently.
    """
    resolved = resolve_backend(backend, device)
    requested = (backend or os.environ.get(ENV_BACKEND, "")).strip().lower()
    explicit = requested not in ("", "auto")
    if resolved == "cpu":
        cpu = scan_cpu.cpu_kernel_status()
        if explicit and cpu.implementation != "compiled" and scan_cpu.requested_implementation() == "auto":
            raise BackendUnavailableError(
                f"scan backend 'cpu' was requested, but its compiled kernel cannot run here: {cpu.reason}; "
                f"set {scan_cpu.ENV_IMPL}=torch to run its PyTorch fallback, or use backend 'auto'"
            )
        return f"cpu:{cpu.implementation}"
    if resolved == "cuda":
        cuda = scan_cuda.cuda_kernel_status()
        forced_torch = os.environ.get(scan_cuda.ENV_IMPL, "").strip().lower() == "torch"
        if explicit and cuda.implementation != "mamba_ssm" and not forced_torch:
            raise BackendUnavailableError(
                f"scan backend 'cuda' was requested, but mamba_ssm cannot run here: {cuda.reason}; "
                f"{scan_cuda.INSTALL_HINT} (or use backend 'triton' for the Triton kernels, set "
                f"{scan_cuda.ENV_IMPL}=torch to run the PyTorch scan on CUDA, or use backend 'auto')"
            )
        return f"cuda:{cuda.implementation}"
    if resolved == "triton":
        return f"{scan_triton.device_type()}:triton"
    return resolved


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,  # noqa: N803
    B: torch.Tensor,  # noqa: N803
    C: torch.Tensor,  # noqa: N803
    D: torch.Tensor | None = None,  # noqa: N803
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Selective scan (mamba_ssm's ``selective_scan_fn`` without z).

    ``dt = softplus(delta + delta_bias)`` (softplus only if ``delta_softplus``; threshold 20),
    ``h_t = exp(dt_t A) * h_{t-1} + dt_t u_t B_t`` with ``h_{-1} = 0``,
    ``y_t = <C_t, h_t> + D u_t``. Channel d uses B/C group ``d // (dim // G)``.

    Args:
        u: (batch, dim, L) input.
        delta: (batch, dim, L) raw step sizes.
        A: (dim, N) diagonal state matrix.
        B: (batch, G, N, L) with G dividing dim, or (batch, N, L) (G = 1).
        C: same form as ``B``.
        D: (dim,) skip weight, or None.
        delta_bias: (dim,) added to ``delta``, or None.
        delta_softplus: Apply softplus to ``delta + delta_bias``.
        backend: ``"ref"``, ``"cpu"``, ``"cuda"``, ``"triton"``, ``"auto"`` or None (see
            :func:`resolve_backend`).

    Returns:
        (batch, dim, L) float32 output (float64 if ``u`` is float64). Half-precision inputs
        are upcast (the ``triton`` kernels read them as they are); the math is float32 either way.

    Raises:
        ValueError: Inconsistent shapes or devices.
        BackendUnavailableError: See :func:`resolve_backend`.
    """
    name = resolve_backend(backend, u.device)
    inputs = prepare_inputs(u, delta, A, B, C, D, delta_bias, delta_softplus, keep_low_precision=name == "triton")
    if name == "triton":
        return scan_triton.selective_scan_triton(inputs)
    if name == "cpu":
        return scan_cpu.selective_scan_cpu(inputs)
    if name == "cuda":
        return scan_cuda.selective_scan_cuda(inputs)
    return scan_ref.scan_sequential(inputs)


def prepare_inputs(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,  # noqa: N803
    B: torch.Tensor,  # noqa: N803
    C: torch.Tensor,  # noqa: N803
    D: torch.Tensor | None,  # noqa: N803
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    *,
    keep_low_precision: bool = False,
) -> ScanInputs:
    """Check shapes and devices; cast to the compute dtype; give B and C a group axis.

    Args:
        keep_low_precision: Leave float16/bfloat16 u, delta, B and C as they are (for kernels
            that read them directly); the parameters A, D and delta_bias are cast regardless.

    Returns:
        The inputs in float32 (float64 if ``u`` is float64), B and C as (batch, G, N, L).

    Raises:
        ValueError: On any inconsistency; the message names the argument and both shapes.
    """
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim={dim}, N), got shape {tuple(A.shape)}")
    n_state = A.shape[1]
    grouped = []
    for label, given in (("B", B), ("C", C)):
        x = given.unsqueeze(1) if given.dim() == 3 else given
        if x.dim() != 4 or x.shape[0] != batch or x.shape[2:] != (n_state, length):
            raise ValueError(
                f"{label} must be (batch={batch}, G, N={n_state}, L={length}) or (batch, N, L), "
                f"got shape {tuple(given.shape)}"
            )
        if dim % x.shape[1]:
            raise ValueError(f"{label} has {x.shape[1]} groups, which does not divide dim={dim}")
        grouped.append(x)
    if grouped[0].shape[1] != grouped[1].shape[1]:
        raise ValueError(f"B and C must have the same number of groups, got {grouped[0].shape[1]} and {grouped[1].shape[1]}")
    for label, x in (("D", D), ("delta_bias", delta_bias)):
        if x is not None and tuple(x.shape) != (dim,):
            raise ValueError(f"{label} must be (dim={dim},), got shape {tuple(x.shape)}")
    tensors = [u, delta, A, *grouped, D, delta_bias]
    for label, x in zip(("delta", "A", "B", "C", "D", "delta_bias"), tensors[1:]):
        if x is not None and x.device != u.device:
            raise ValueError(f"{label} is on {x.device} but u is on {u.device}")
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32

    def activation(x: torch.Tensor) -> torch.Tensor:
        return x if keep_low_precision and x.dtype in LOW_PRECISION_DTYPES else x.to(dtype)

    u, delta, b_grouped, c_grouped = (activation(x) for x in (u, delta, *grouped))
    A, D, delta_bias = (None if x is None else x.to(dtype) for x in (A, D, delta_bias))  # noqa: N806
    return ScanInputs(u, delta, A, b_grouped, c_grouped, D, delta_bias, bool(delta_softplus))
