"""Pure-PyTorch selective scans: the sequential oracle and two faster formulations.

All functions take :class:`ScanInputs` (checked and cast by
``restorecli.ops.selective_scan.prepare_inputs``) and return ``y`` (batch, dim, L) in the
inputs' dtype; all support autograd.

* :func:`scan_sequential` -- the recurrence exactly as written, one time step per
  iteration. It is the reference the tests and the other backends are checked against.
* :func:`scan_chunked` -- two-level chunked scan (vectorised within chunks, then a short
  loop carrying the state across chunks). Best pure-torch form for N = 1 on CPU and the
  GPU fallback for any N.
* :func:`scan_stepwise` -- one step per iteration on a time-major copy of the inputs;
  best pure-torch form on CPU for N >= 2, where the chunked form's (batch, dim, L, N)
  temporaries cost more than they save.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812


class ScanInputs(NamedTuple):
    """Checked scan inputs, all in one float dtype (float32, or float64 for tests).

    Attributes:
        u: (batch, dim, L) input.
        delta: (batch, dim, L) raw step sizes.
        A: (dim, N) diagonal state matrix, one row per channel.
        B: (batch, G, N, L) input projection; channel d uses group ``d // (dim // G)``.
        C: (batch, G, N, L) output projection.
        D: (dim,) skip weight, or None.
        delta_bias: (dim,) added to ``delta``, or None.
        delta_softplus: Apply softplus (threshold 20) to ``delta + delta_bias``.
    """

    u: torch.Tensor
    delta: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor | None
    delta_bias: torch.Tensor | None
    delta_softplus: bool

    @property
    def sizes(self) -> tuple[int, int, int, int, int]:
        """``(batch, dim, L, G, N)``."""
        batch, dim, length = self.u.shape
        return batch, dim, length, self.B.shape[1], self.A.shape[1]

    def step_sizes(self) -> torch.Tensor:
        """``dt = softplus(delta + delta_bias)`` (softplus and bias optional), (batch, dim, L)."""
        delta = self.delta if self.delta_bias is None else self.delta + self.delta_bias[:, None]
        return F.softplus(delta) if self.delta_softplus else delta

    def add_skip(self, y: torch.Tensor) -> torch.Tensor:
        """``y + D u`` (or ``y`` without D)."""
        return y if self.D is None else y + self.D[:, None] * self.u


class OrderedScanInputs(NamedTuple):
    """Checked inputs of an ordered scan (``restorecli.ops.ordered_scan``), one float dtype.

    Attributes:
        x: (B, L, Di) scan input in raster order.
        proj: (B, L, P): direction k's ``dt_low (R) | B (N) | C (N)`` at column ``k * (R + 2N)``.
        dt_weight: (K, Di, R) Δ projection.
        dt_bias: (K * Di,) Δ bias, k-major.
        A: (K * Di, N) state matrix.
        D: (K * Di,) skip weight.
        order: (K, L) or (B, K, L) int64, raster position visited at step t of direction k.
        inverse: the inverse permutations of ``order``.
    """

    x: torch.Tensor
    proj: torch.Tensor
    dt_weight: torch.Tensor
    dt_bias: torch.Tensor
    A: torch.Tensor
    D: torch.Tensor
    order: torch.Tensor
    inverse: torch.Tensor


def scan_sequential(x: ScanInputs) -> torch.Tensor:
    """Reference scan: ``h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t``, ``y_t = <C_t, h_t> + D u_t``.

    Args:
        x: Prepared inputs.

    Returns:
        (batch, dim, L) output.
    """
    batch, dim, length, groups, n_state = x.sizes
    per_group = dim // groups
    dt = x.step_sizes().view(batch, groups, per_group, length, 1)
    uu = x.u.view(batch, groups, per_group, length, 1)
    a_g = x.A.view(groups, per_group, n_state)
    h = x.u.new_zeros(batch, groups, per_group, n_state)
    ys = []
    # unbind (not indexing) per step: its backward stacks the step gradients once instead of
    # scattering each into a zero tensor of the full length (quadratic in L).
    steps = zip(dt.unbind(3), uu.unbind(3), x.B[:, :, None].unbind(-1), x.C[:, :, None].unbind(-1))
    for dt_t, u_t, b_t, c_t in steps:
        h = torch.exp(dt_t * a_g) * h + (dt_t * u_t) * b_t
        ys.append((h * c_t).sum(-1))
    y = torch.stack(ys, dim=-1).reshape(batch, dim, length) if ys else torch.zeros_like(x.u)
    return x.add_skip(y)


def scan_chunked(x: ScanInputs, chunk: int = 64) -> torch.Tensor:
    """Two-level chunked scan; same result as :func:`scan_sequential`.

    Within each chunk of ``chunk`` steps the recurrence runs from a zero state for all
    chunks at once (``chunk`` vectorised steps); a loop over chunks then carries the
    true state, and each step adds ``C_t P_t h_carry`` with ``P_t`` the cumulative decay
    ``exp(cumsum(dt A))`` since the chunk start. Work is linear in L; memory holds a few
    (batch, dim, L, N) tensors.

    Args:
        x: Prepared inputs.
        chunk: Steps per chunk.

    Returns:
        (batch, dim, L) output.
    """
    batch, dim, length, groups, n_state = x.sizes
    if length == 0:
        return torch.zeros_like(x.u)
    steps = min(chunk, length)
    chunks = -(-length // steps)
    pad = chunks * steps - length
    # Padding at the end with dt = 0 keeps the state and adds nothing.
    dt, u, b, c = (F.pad(v, (0, pad)) for v in (x.step_sizes(), x.u, x.B, x.C))
    padded = chunks * steps

    def per_channel(v: torch.Tensor) -> torch.Tensor:
        # (batch, G, N, Lp) -> (batch, dim, Lp, N), channel d reading group d // (dim // G)
        v = v[:, :, None].expand(batch, groups, dim // groups, n_state, padded)
        return v.reshape(batch, dim, n_state, padded).transpose(-1, -2)

    def time_major(v: torch.Tensor) -> torch.Tensor:
        # (batch, dim, Lp, N) -> (steps, batch*dim*chunks[, N]); for N = 1 keep it 2-D,
        # because a trailing size-1 dimension makes every elementwise op much slower.
        if n_state == 1:
            return v.reshape(-1, steps).t().contiguous()
        return v.reshape(-1, steps, n_state).transpose(0, 1).contiguous()

    log_decay = time_major(dt[..., None] * x.A[:, None, :])
    decay = torch.exp(log_decay)
    inputs = time_major((dt * u)[..., None] * per_channel(b))
    inputs_t, decay_t = inputs.unbind(0), decay.unbind(0)  # unbind: see scan_sequential
    local = [inputs_t[0]]
    for t in range(1, steps):
        local.append(torch.addcmul(inputs_t[t], decay_t[t], local[-1]))
    h_local = torch.stack(local)
    cum_decay = torch.exp(torch.cumsum(log_decay, dim=0))

    # Carry the state across chunks: carry_{c+1} = h_local_end_c + P_end_c * carry_c.
    tail = (batch * dim, chunks) + ((n_state,) if n_state > 1 else ())
    end_state = h_local[-1].view(tail).unbind(1)
    end_decay = cum_decay[-1].view(tail).unbind(1)
    carries = [torch.zeros_like(end_state[0])]
    for k in range(chunks - 1):
        carries.append(torch.addcmul(end_state[k], end_decay[k], carries[-1]))
    carry = torch.stack(carries, dim=1).view(h_local.shape[1:])

    y = torch.addcmul(h_local, cum_decay, carry) * time_major(per_channel(c))
    if n_state > 1:
        y = y.sum(-1)
    return x.add_skip(y.t().reshape(batch, dim, padded)[..., :length])


def scan_stepwise(x: ScanInputs) -> torch.Tensor:
    """Step-by-step scan on time-major copies of the inputs; same result as :func:`scan_sequential`.

    The state (batch, G, dim/G, N) stays in cache; per step it costs one exp, one fused
    multiply-add and one small matmul for ``<C_t, h_t>``.

    Args:
        x: Prepared inputs.

    Returns:
        (batch, dim, L) output.
    """
    batch, dim, length, groups, n_state = x.sizes
    if length == 0:
        return torch.zeros_like(x.u)
    grouped = (batch, groups, dim // groups, length)
    dt = x.step_sizes()

    def time_major(v: torch.Tensor) -> torch.Tensor:
        return v.permute(-1, *range(v.dim() - 1)).contiguous()

    dt_t = time_major(dt.view(grouped))[..., None]
    dtu_t = time_major((dt * x.u).view(grouped))[..., None]
    b_t = time_major(x.B)[:, :, :, None, :]  # (L, batch, G, 1, N)
    c_t = time_major(x.C)[..., None]  # (L, batch, G, N, 1)
    a_g = x.A.view(groups, dim // groups, n_state)
    h = x.u.new_zeros(batch, groups, dim // groups, n_state)
    ys = []
    for dt_s, dtu_s, b_s, c_s in zip(dt_t.unbind(0), dtu_t.unbind(0), b_t.unbind(0), c_t.unbind(0)):
        h = torch.addcmul(dtu_s * b_s, torch.exp(dt_s * a_g), h)  # unbind: see scan_sequential
        ys.append(torch.matmul(h, c_s))
    return x.add_skip(torch.stack(ys, dim=-1).reshape(batch, dim, length))


def ordered_scan_gathered(
    inputs: OrderedScanInputs, scan: Callable[[ScanInputs], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """An ordered scan (``restorecli.ops.ordered_scan``) written out: gather each direction's
    permuted copy of the map, project Δ, run the plain selective scan ``scan`` on the
    (B, K * Di, L) sequences and scatter y back to raster order. The oracle of the fused kernels.

    Returns:
        y (B, L, K, Di) and its mean over the positions (B, K, Di).
    """
    x, proj, dt_weight, dt_bias, A, D, order, inverse = inputs  # noqa: N806
    batch, length, inner = x.shape
    directions, _, rank = dt_weight.shape
    n_state = A.shape[1]
    width = rank + 2 * n_state
    steps = _per_image(order, batch)  # (B, K, L)
    back = _per_image(inverse, batch)
    # (B, K, C, L) with column t of direction k taken from raster position order[k, t].
    u = torch.gather(x.transpose(1, 2).unsqueeze(1).expand(batch, directions, inner, length), 3,
                     steps.unsqueeze(2).expand(batch, directions, inner, length))
    blocks = proj[..., : directions * width].reshape(batch, length, directions, width).permute(0, 2, 3, 1)
    blocks = torch.gather(blocks, 3, steps.unsqueeze(2).expand(batch, directions, width, length))
    dt_low, b_ssm, c_ssm = torch.split(blocks, [rank, n_state, n_state], dim=2)
    delta = torch.matmul(dt_weight.to(x.dtype), dt_low)  # (B, K, Di, L)
    y = scan(ScanInputs(
        u.reshape(batch, directions * inner, length), delta.reshape(batch, directions * inner, length),
        A, b_ssm.contiguous(), c_ssm.contiguous(), D, dt_bias, True,
    )).view(batch, directions, inner, length)  # fmt: skip
    y = torch.gather(y, 3, back.unsqueeze(2).expand(batch, directions, inner, length))
    y = y.permute(0, 3, 1, 2).contiguous()  # (B, L, K, Di)
    return y, y.mean(dim=1)


def _per_image(order: torch.Tensor, batch: int) -> torch.Tensor:
    return order.unsqueeze(0).expand(batch, -1, -1) if order.dim() == 2 else order


def ssa_gates(pooled: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """MaIR's SSA gates from the pooled direction outputs.

    Args:
        pooled: (B, K, Di) mean over the positions of each direction's output.
        weight: (Di, K, K), ``[d, j, k]``: the grouped 1x1 convolution's weight.
        bias: (Di, K), ``[d, j]``.

    Returns:
        (B, K, Di): g[b, j, d] = sigmoid(sum_k weight[d, j, k] * pooled[b, k, d] + bias[d, j]).
    """
    return torch.sigmoid(torch.einsum("djk,bkd->bjd", weight, pooled) + bias.t().unsqueeze(0))
