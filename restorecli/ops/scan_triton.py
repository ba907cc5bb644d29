"""The ``triton`` scan backend: Triton kernels for CUDA GPUs, no compile step at install.

Two entry points with the semantics of the other backends, forward and backward
(``torch.autograd.Function``; the backward recomputes states from one checkpoint per chunk):

* :func:`selective_scan_triton` -- mamba_ssm's ``selective_scan_fn`` without z, on
  (batch, dim, L) sequences (``restorecli.ops.selective_scan``);
* :func:`ordered_scan_triton` -- the ordered scan of ``restorecli.ops.ordered_scan``: reads the
  channels-last map through the scan orders and writes y back in raster order, so the K
  permuted copies never exist. The Δ projection (a GEMM with R columns) runs in PyTorch on the
  map first; it acts on each position alone, so it commutes with the orders.

The kernels (``scan_triton_kernels``) read float32, bfloat16 or float16 activations as they
are and compute in float32 with a float32 state; y is float32, as on every backend. Gradients
come back in each input's dtype.

Without a GPU the kernels run in Triton's interpreter on CPU tensors when ``TRITON_INTERPRET=1``
is set before the first use. That is for tests only (it is slow); without it, the backend
needs a CUDA device.
"""

from __future__ import annotations

import logging
import os
import threading
from types import ModuleType
from typing import NamedTuple

import torch

from restorecli.ops.scan_ref import OrderedScanInputs, ScanInputs

ENV_INTERPRET = "TRITON_INTERPRET"
INSTALL_HINT = "install a CUDA build of torch (it ships triton), or `pip install triton`"
TILE_ELEMENTS = 2048
"""Elements of the (channels, states, steps) tile a program scans at once: bounds registers per
program. Not tuned on a GPU yet (docs/benchmarks.md, "GPU check")."""

_kernels: tuple[ModuleType | None, str] | None = None
_kernels_lock = threading.Lock()
_log = logging.getLogger(__name__)


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get(ENV_INTERPRET, "").strip().lower() in ("1", "true", "on", "yes")


def device_type() -> str:
    """The device type the kernels take tensors on: ``cpu`` in the interpreter, else ``cuda``."""
    return "cpu" if interpreting() else "cuda"


def _load_kernels() -> tuple[ModuleType | None, str]:
    global _kernels
    with _kernels_lock:
        if _kernels is None:
            try:
                from restorecli.ops import scan_triton_kernels

                import triton

                _kernels = (scan_triton_kernels, f"triton {triton.__version__}")
            except Exception as error:  # noqa: BLE001 -- a broken triton install surfaces as anything
                _kernels = (None, f"triton is not importable ({type(error).__name__}: {error}); {INSTALL_HINT}")
            _log.info("Triton selective scan: %s", _kernels[1])
        return _kernels


def unavailable_reason() -> str | None:
    """Why the ``triton`` backend cannot run here, or None when it can (imports triton once)."""
    module, why = _load_kernels()
    if module is None:
        return why
    if not interpreting() and not torch.cuda.is_available():
        return f"no CUDA device is visible (set {ENV_INTERPRET}=1 to run Triton's CPU interpreter, for tests)"
    return None


class TileShape(NamedTuple):
    """How a program's tile is cut: channels, states (N padded to a power of two), steps per chunk."""

    block_d: int
    block_n: int
    chunk: int


def tile_shape(n_state: int, per_group: int, chunk: int | None = None) -> TileShape:
    """Tile of one program: all N states, ``chunk`` steps (default 64 for N <= 2, else 16), and
    as many channels as fit :data:`TILE_ELEMENTS` (at most the group's, at least one).

    Args:
        n_state: N.
        per_group: Channels per B/C group.
        chunk: Steps per chunk (a power of two); None for the default.
    """
    block_n = _next_power_of_two(n_state)
    steps = chunk or (64 if block_n <= 2 else 16)
    if steps & (steps - 1):
        raise ValueError(f"chunk must be a power of two, got {steps}")
    block_d = max(1, min(_next_power_of_two(per_group), TILE_ELEMENTS // (block_n * steps)))
    return TileShape(block_d, block_n, steps)


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class _Operand(NamedTuple):
    """A tensor as the kernels address it: base + batch, group, channel (or state), position strides."""

    tensor: torch.Tensor
    strides: tuple[int, int, int, int]


class _Problem(NamedTuple):
    """One scan as the kernels see it (plain or ordered), with sizes and flags."""

    u: _Operand
    delta: _Operand
    B: _Operand
    C: _Operand
    A: torch.Tensor  # (dim, N) float32, contiguous
    D: torch.Tensor | None
    delta_bias: torch.Tensor | None
    softplus: bool
    order: torch.Tensor | None  # (K, L) or (batch, K, L) int64, contiguous
    batch: int
    groups: int
    per_group: int
    length: int
    n_state: int
    tiles: TileShape

    @property
    def n_chunks(self) -> int:
        return -(-self.length // self.tiles.chunk)

    @property
    def n_blocks(self) -> int:
        return -(-self.per_group // self.tiles.block_d)

    def grid(self) -> tuple[int, int]:
        return (self.batch * self.groups, self.n_blocks)

    def order_strides(self) -> tuple[int, int]:
        if self.order is None:
            return (0, 0)
        return (self.order.stride(0), self.order.stride(1)) if self.order.dim() == 3 else (0, self.order.stride(0))

    def common_args(self) -> list[object]:
        """Sizes and input strides, in the kernels' argument order."""
        return [
            self.length, self.groups, self.per_group, self.n_state, self.n_chunks,
            *self.u.strides, *self.delta.strides, *self.B.strides, *self.C.strides,
        ]  # fmt: skip

    def flags(self) -> dict[str, object]:
        return {
            "HAS_SKIP": self.D is not None,
            "HAS_BIAS": self.delta_bias is not None,
            "SOFTPLUS": self.softplus,
            "HAS_ORDER": self.order is not None,
            "BLOCK_D": self.tiles.block_d,
            "BLOCK_N": self.tiles.block_n,
            "CHUNK": self.tiles.chunk,
        }

    def pointers(self, placeholder: torch.Tensor) -> list[torch.Tensor]:
        """u, delta, B, C, A, D, bias, order (absent ones replaced by ``placeholder``)."""
        return [
            self.u.tensor, self.delta.tensor, self.B.tensor, self.C.tensor, self.A,
            *(placeholder if x is None else x for x in (self.D, self.delta_bias, self.order)),
        ]  # fmt: skip


def _run_forward(problem: _Problem, y: _Operand, save_checkpoints: bool) -> torch.Tensor | None:
    """Launch the forward kernel into ``y``; returns the chunk checkpoints when asked for them."""
    module, why = _load_kernels()
    if module is None:
        raise RuntimeError(why)
    dim = problem.groups * problem.per_group
    ckpt = (
        y.tensor.new_empty(problem.batch, dim, problem.n_chunks, problem.n_state, dtype=torch.float32)
        if save_checkpoints
        else None
    )
    module.scan_forward_kernel[problem.grid()](
        *problem.pointers(y.tensor), y.tensor, y.tensor if ckpt is None else ckpt,
        *problem.common_args(), *y.strides, *problem.order_strides(),
        SAVE_CKPT=save_checkpoints, **problem.flags(),
    )  # fmt: skip
    return ckpt


class _Gradients(NamedTuple):
    du: torch.Tensor
    ddelta: torch.Tensor
    dB: torch.Tensor  # (batch, G, N, positions)
    dC: torch.Tensor
    dA: torch.Tensor
    dD: torch.Tensor
    dbias: torch.Tensor


def _run_backward(
    problem: _Problem, ckpt: torch.Tensor, dy: _Operand, du: _Operand, ddelta: _Operand, positions: int
) -> _Gradients:
    """Launch the backward kernel; ``du`` and ``ddelta`` are written in place, the rest is reduced here."""
    module, why = _load_kernels()
    if module is None:
        raise RuntimeError(why)
    batch, groups, n_state = problem.batch, problem.groups, problem.n_state
    dim = groups * problem.per_group
    new = ckpt.new_empty
    parts_b = new(batch, groups, problem.n_blocks, n_state, positions)
    parts_c = new(batch, groups, problem.n_blocks, n_state, positions)
    da, dskip, dbias = new(batch, dim, n_state), new(batch, dim), new(batch, dim)
    module.scan_backward_kernel[problem.grid()](
        *problem.pointers(ckpt), ckpt, dy.tensor,
        du.tensor, ddelta.tensor, parts_b, parts_c, da, dskip, dbias,
        *problem.common_args(), *dy.strides, *problem.order_strides(),
        *du.strides, *ddelta.strides, *parts_b.stride(),
        **problem.flags(),
    )  # fmt: skip
    return _Gradients(du.tensor, ddelta.tensor, parts_b.sum(2), parts_c.sum(2), da.sum(0), dskip.sum(0), dbias.sum(0))


def _grouped(x: torch.Tensor, groups: int) -> _Operand:
    """(batch, G * n, L) -> operand with strides (batch, group, channel, position)."""
    view = x.unflatten(1, (groups, x.shape[1] // groups))
    return _Operand(x, (view.stride(0), view.stride(1), view.stride(2), view.stride(3)))


def _parameters(A: torch.Tensor, D: torch.Tensor | None, bias: torch.Tensor | None) -> list[torch.Tensor | None]:  # noqa: N803
    return [None if x is None else x.detach().float().contiguous() for x in (A, D, bias)]


class _PlainScan(torch.autograd.Function):
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
        softplus: bool,
        chunk: int | None,
    ) -> torch.Tensor:
        batch, dim, length = u.shape
        groups, n_state = B.shape[1], A.shape[1]
        per_group = dim // groups
        a32, d32, bias32 = _parameters(A, D, delta_bias)
        problem = _Problem(
            _grouped(u, groups), _grouped(delta, groups),
            _Operand(B, tuple(B.stride())), _Operand(C, tuple(C.stride())),  # type: ignore[arg-type]
            a32, d32, bias32, softplus, None, batch, groups, per_group, length, n_state,
            tile_shape(n_state, per_group, chunk),
        )  # fmt: skip
        y = u.new_empty(batch, dim, length, dtype=torch.float32)
        ckpt = _run_forward(problem, _grouped(y, groups), save_checkpoints=any(ctx.needs_input_grad))
        if ckpt is not None:
            ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, ckpt)
            ctx.problem = problem._replace(u=None, delta=None, B=None, C=None)  # tensors live in saved_tensors
        return y

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        u, delta, A, B, C, D, delta_bias, ckpt = ctx.saved_tensors  # noqa: N806
        groups = B.shape[1]
        problem = ctx.problem._replace(
            u=_grouped(u, groups), delta=_grouped(delta, groups),
            B=_Operand(B, tuple(B.stride())), C=_Operand(C, tuple(C.stride())),
        )  # fmt: skip
        dy = dy.float().contiguous()
        du, ddelta = torch.empty_like(dy), torch.empty_like(dy)
        grads = _run_backward(
            problem, ckpt, _grouped(dy, groups), _grouped(du, groups), _grouped(ddelta, groups), u.shape[2]
        )
        return (
            grads.du.to(u.dtype), grads.ddelta.to(delta.dtype), grads.dA.to(A.dtype), grads.dB.to(B.dtype),
            grads.dC.to(C.dtype), None if D is None else grads.dD.to(D.dtype),
            None if delta_bias is None else grads.dbias.to(delta_bias.dtype), None, None,
        )  # fmt: skip


def selective_scan_triton(x: ScanInputs, *, chunk: int | None = None) -> torch.Tensor:
    """Selective scan of prepared inputs with the Triton kernels.

    Args:
        x: Inputs from ``restorecli.ops.selective_scan.prepare_inputs``; u, delta, B and C may be
            float32, bfloat16 or float16, the parameters float32.
        chunk: Steps per chunk (power of two); None for :func:`tile_shape`'s default.

    Returns:
        (batch, dim, L) float32 output.
    """
    if x.u.dtype == torch.float64:
        raise ValueError("the triton backend computes in float32; use backend 'ref' for float64")
    batch, dim, length = x.u.shape
    if batch == 0 or dim == 0 or length == 0:
        return x.u.new_zeros(batch, dim, length, dtype=torch.float32)
    u, delta, B, C = (t.contiguous() for t in (x.u, x.delta, x.B, x.C))  # noqa: N806
    return _PlainScan.apply(u, delta, x.A, B, C, x.D, x.delta_bias, x.delta_softplus, chunk)


class _OrderedScan(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        delta: torch.Tensor,
        proj: torch.Tensor,
        A: torch.Tensor,  # noqa: N803
        D: torch.Tensor,  # noqa: N803
        dt_bias: torch.Tensor,
        order: torch.Tensor,
        rank: int,
        chunk: int | None,
    ) -> torch.Tensor:
        ctx.rank, ctx.chunk = rank, chunk
        batch, length, inner = x.shape
        directions = delta.shape[2] // inner
        y = x.new_empty(batch, length, directions, inner, dtype=torch.float32)
        problem = _ordered_problem((x, delta, proj, A, D, dt_bias, order), rank, chunk)
        ckpt = _run_forward(problem, _Operand(y, _channels_last_strides(y)), save_checkpoints=any(ctx.needs_input_grad))
        if ckpt is not None:
            ctx.save_for_backward(x, delta, proj, A, D, dt_bias, order, ckpt)
        return y

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, delta, proj, A, D, dt_bias, order, ckpt = ctx.saved_tensors  # noqa: N806
        batch, length, inner = x.shape
        directions, n_state, rank = delta.shape[2] // inner, A.shape[1], ctx.rank
        problem = _ordered_problem((x, delta, proj, A, D, dt_bias, order), rank, ctx.chunk)
        dy = dy.float().contiguous()
        du_per_direction = dy.new_empty(batch, directions, length, inner)  # summed over the directions below
        ddelta = dy.new_empty(batch, length, directions * inner)
        du_strides = tuple(du_per_direction.stride())
        grads = _run_backward(
            problem, ckpt, _Operand(dy, _channels_last_strides(dy)),
            _Operand(du_per_direction, (du_strides[0], du_strides[1], du_strides[3], du_strides[2])),
            _Operand(ddelta, _channels_last_strides(ddelta.view(batch, length, directions, inner))), length,
        )  # fmt: skip
        width = rank + 2 * n_state
        dproj = torch.zeros(proj.shape, dtype=torch.float32, device=proj.device)
        blocks = dproj[..., : directions * width].unflatten(2, (directions, width))
        blocks[..., rank : rank + n_state] = grads.dB.permute(0, 3, 1, 2)
        blocks[..., rank + n_state :] = grads.dC.permute(0, 3, 1, 2)
        return (
            grads.du.sum(1).to(x.dtype), grads.ddelta.to(delta.dtype), dproj.to(proj.dtype), grads.dA.to(A.dtype),
            grads.dD.to(D.dtype), grads.dbias.to(dt_bias.dtype), None, None, None,
        )  # fmt: skip


def _channels_last_strides(y: torch.Tensor) -> tuple[int, int, int, int]:
    """(batch, L, K, Di) -> strides (batch, direction, channel, position)."""
    return (y.stride(0), y.stride(2), y.stride(3), y.stride(1))


def _ordered_problem(tensors: tuple[torch.Tensor, ...], rank: int, chunk: int | None) -> _Problem:
    """The ordered scan as a :class:`_Problem`; ``tensors``: x, delta, proj, A, D, dt_bias, order."""
    x, delta, proj, A, D, dt_bias, order = tensors  # noqa: N806
    batch, length, inner = x.shape
    n_state = A.shape[1]
    directions = delta.shape[2] // inner
    width = rank + 2 * n_state
    blocks = proj[..., : directions * width].unflatten(2, (directions, width))  # (batch, L, K, R + 2N)
    a32, d32, bias32 = _parameters(A, D, dt_bias)

    def columns(start: int) -> _Operand:
        view = blocks[..., start : start + n_state]  # (batch, L, K, N), offset into proj
        return _Operand(view, _channels_last_strides(view))

    return _Problem(
        _Operand(x, (x.stride(0), 0, x.stride(2), x.stride(1))),  # every direction scans the same map
        _Operand(delta, _channels_last_strides(delta.view(batch, length, directions, inner))),
        columns(rank), columns(rank + n_state), a32, d32, bias32, True, order,
        batch, directions, inner, length, n_state, tile_shape(n_state, inner, chunk),
    )  # fmt: skip


def ordered_scan_triton(inputs: OrderedScanInputs, *, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``restorecli.ops.ordered_scan.ordered_selective_scan`` with the Triton kernels.

    Args:
        inputs: From ``prepare_ordered_inputs``; x and proj may be float32, bfloat16 or float16.
        chunk: Steps per chunk (power of two); None for :func:`tile_shape`'s default.

    Returns:
        y (B, L, K, Di) float32 in raster order and its mean over the positions (B, K, Di).
    """
    x, proj, dt_weight, dt_bias, A, D, order, _ = inputs  # noqa: N806
    if x.dtype == torch.float64:
        raise ValueError("the triton backend computes in float32; use backend 'ref' for float64")
    batch, length, inner = x.shape
    directions, _, rank = dt_weight.shape
    if batch == 0 or length == 0 or inner == 0:
        y = x.new_zeros(batch, length, directions, inner, dtype=torch.float32)
        return y, y.mean(dim=1)
    width = rank + 2 * A.shape[1]
    dt_low = proj[..., : directions * width].unflatten(2, (directions, width))[..., :rank]
    # Δ projection on the map, in float32 (the scan's step sizes), outside any autocast region.
    with torch.autocast(x.device.type, enabled=False):
        delta = torch.einsum("blkr,kdr->blkd", dt_low.float(), dt_weight.float()).reshape(batch, length, -1)
    y = _OrderedScan.apply(x.contiguous(), delta, proj.contiguous(), A, D, dt_bias, order.contiguous(), rank, chunk)
    return y, y.mean(dim=1)
