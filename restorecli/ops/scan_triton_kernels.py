"""Triton kernels of the selective scan: one forward and one backward kernel for every layout.

Imported only by ``restorecli.ops.scan_triton`` (lazily: importing triton takes time and it is
an optional dependency). Whether the kernels run compiled on a GPU or in Triton's CPU interpreter
is decided when this module is imported, by ``TRITON_INTERPRET``.

Layout: a program owns ``BLOCK_D`` channels of one (batch, group) and walks the sequence in chunks
of ``CHUNK`` steps. Inside a chunk the recurrence ``h_t = a_t h_{t-1} + b_t`` is one
``tl.associative_scan`` over a (BLOCK_D, BLOCK_N, CHUNK) tile; the state at the chunk end is
carried in registers to the next chunk, so the state never goes to global memory except as one
checkpoint per chunk (what the backward pass recomputes from).

Every operand is addressed as ``base + batch * s_b + group * s_g + channel * s_d + position * s_l``
(B and C: ``state * s_n`` instead of the channel term). With ``HAS_ORDER`` the position of step t
is ``order[batch, group, t]``: the kernels then read a channels-last map through a scan order and
write y back in raster order (``restorecli.ops.ordered_scan``); without it the position is t.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _compose(a_left, b_left, a_right, b_right):  # noqa: ANN001, ANN202
    # Two affine steps h -> a h + b, the left one first.
    return a_left * a_right, a_right * b_left + b_right


@triton.jit
def _softplus(x):  # noqa: ANN001, ANN202
    # max(x, 0) + log1p(exp(-|x|)), with log1p by Kahan's trick: log(1 + z) loses z < 1e-7.
    z = tl.exp(-tl.abs(x))
    w = 1.0 + z
    log1p = tl.where(w == 1.0, z, tl.log(w) * z / (w - 1.0))
    return tl.maximum(x, 0.0) + log1p


@triton.jit
def _positions(order_ptr, batch, group, so_b, so_g, t, tmask, HAS_ORDER: tl.constexpr):  # noqa: ANN001, ANN202, N803
    if HAS_ORDER:
        return tl.load(order_ptr + batch * so_b + group * so_g + t, mask=tmask, other=0)
    return t


@triton.jit
def _channel_vector(ptr, chans, dmask, PRESENT: tl.constexpr, BLOCK_D: tl.constexpr):  # noqa: ANN001, ANN202, N803
    if PRESENT:
        return tl.load(ptr + chans, mask=dmask, other=0.0).to(tl.float32)
    return tl.zeros([BLOCK_D], tl.float32)


@triton.jit
def _tile(ptr, batch, group, rows, pos, mask, s_b, s_g, s_r, s_l):  # noqa: ANN001, ANN202
    # (rows, CHUNK) tile of an operand at the chunk's positions, as float32
    return tl.load(ptr + batch * s_b + group * s_g + rows[:, None] * s_r + pos[None, :] * s_l, mask=mask, other=0.0).to(
        tl.float32
    )


@triton.jit
def _program_block(a_ptr, skip_ptr, bias_ptr, groups, per_group, n_state, n_chunks,  # noqa: ANN001, ANN202
                   HAS_SKIP: tl.constexpr, HAS_BIAS: tl.constexpr,  # noqa: N803
                   BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):  # noqa: N803
    # The program's (batch, group, channel block) and its per-channel parameters.
    pid = tl.program_id(0)
    batch = (pid // groups).to(tl.int64)  # 64-bit offsets: batch * stride may pass 2**31
    group = pid % groups
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < per_group
    chans = group * per_group + d  # channel index into A, D and the bias
    n = tl.arange(0, BLOCK_N)
    dn_mask = dmask[:, None] & (n < n_state)[None, :]
    a_mat = tl.load(a_ptr + chans[:, None] * n_state + n[None, :], mask=dn_mask, other=0.0)
    skip = _channel_vector(skip_ptr, chans, dmask, HAS_SKIP, BLOCK_D)
    bias = _channel_vector(bias_ptr, chans, dmask, HAS_BIAS, BLOCK_D)
    ckpt_rows = ((batch * groups * per_group + chans) * n_chunks)[:, None] * n_state + n[None, :]
    return batch, group, d, dmask, chans, n, dn_mask, a_mat, skip, bias, ckpt_rows


@triton.jit
def _step_sizes(delta_ptr, bias, batch, group, d, pos, mask, sd_b, sd_g, sd_d, sd_l,  # noqa: ANN001, ANN202
                HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):  # noqa: N803
    raw = _tile(delta_ptr, batch, group, d, pos, mask, sd_b, sd_g, sd_d, sd_l)
    if HAS_BIAS:
        raw = raw + bias[:, None]
    dt = raw
    if SOFTPLUS:
        dt = _softplus(raw)
    return raw, tl.where(mask, dt, 0.0)


@triton.jit
def _chunk_inputs(u_ptr, delta_ptr, b_ptr, c_ptr, order_ptr, bias, batch, group, d, dmask, n, t, length,  # noqa: ANN001, ANN202
                  su_b, su_g, su_d, su_l, sd_b, sd_g, sd_d, sd_l, sb_b, sb_g, sb_n, sb_l,  # noqa: ANN001
                  sc_b, sc_g, sc_n, sc_l, so_b, so_g, n_state,  # noqa: ANN001
                  HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_ORDER: tl.constexpr):  # noqa: N803
    # Positions, masks and the float32 inputs of the chunk at steps t.
    tmask = t < length
    pos = _positions(order_ptr, batch, group, so_b, so_g, t, tmask, HAS_ORDER)
    mask = dmask[:, None] & tmask[None, :]
    nt_mask = (n < n_state)[:, None] & tmask[None, :]
    u = _tile(u_ptr, batch, group, d, pos, mask, su_b, su_g, su_d, su_l)
    raw, dt = _step_sizes(delta_ptr, bias, batch, group, d, pos, mask, sd_b, sd_g, sd_d, sd_l, HAS_BIAS, SOFTPLUS)
    b_in = _tile(b_ptr, batch, group, n, pos, nt_mask, sb_b, sb_g, sb_n, sb_l)
    c_out = _tile(c_ptr, batch, group, n, pos, nt_mask, sc_b, sc_g, sc_n, sc_l)
    return pos, mask, nt_mask, u, raw, dt, b_in, c_out


@triton.jit
def scan_forward_kernel(
    u_ptr, delta_ptr, b_ptr, c_ptr, a_ptr, skip_ptr, bias_ptr, order_ptr, y_ptr, ckpt_ptr,  # noqa: ANN001
    length, groups, per_group, n_state, n_chunks,  # noqa: ANN001
    su_b, su_g, su_d, su_l, sd_b, sd_g, sd_d, sd_l,  # noqa: ANN001
    sb_b, sb_g, sb_n, sb_l, sc_b, sc_g, sc_n, sc_l,  # noqa: ANN001
    sy_b, sy_g, sy_d, sy_l, so_b, so_g,  # noqa: ANN001
    HAS_SKIP: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,  # noqa: N803
    HAS_ORDER: tl.constexpr, SAVE_CKPT: tl.constexpr,  # noqa: N803
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,  # noqa: N803
) -> None:
    """y = scan(u, delta, A, B, C) + D u for BLOCK_D channels; optional per-chunk state checkpoints.

    ``ckpt`` is (batch, dim, n_chunks, N) float32: the state before each chunk.
    """
    batch, group, d, dmask, chans, n, dn_mask, a_mat, skip, bias, ckpt_rows = _program_block(
        a_ptr, skip_ptr, bias_ptr, groups, per_group, n_state, n_chunks, HAS_SKIP, HAS_BIAS, BLOCK_D, BLOCK_N
    )
    lane = tl.arange(0, CHUNK)
    h = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    for chunk in range(0, n_chunks):
        t = chunk * CHUNK + lane
        pos, mask, nt_mask, u, raw, dt, b_in, c_out = _chunk_inputs(
            u_ptr, delta_ptr, b_ptr, c_ptr, order_ptr, bias, batch, group, d, dmask, n, t, length,
            su_b, su_g, su_d, su_l, sd_b, sd_g, sd_d, sd_l, sb_b, sb_g, sb_n, sb_l, sc_b, sc_g, sc_n, sc_l,
            so_b, so_g, n_state, HAS_BIAS, SOFTPLUS, HAS_ORDER,
        )  # fmt: skip
        if SAVE_CKPT:
            tl.store(ckpt_ptr + ckpt_rows + chunk * n_state, h, mask=dn_mask)
        decay = tl.exp(dt[:, None, :] * a_mat[:, :, None])
        drive = (dt * u)[:, None, :] * b_in[None, :, :]
        decay_prefix, local = tl.associative_scan((decay, drive), 2, _compose)
        states = local + decay_prefix * h[:, :, None]
        y = tl.sum(states * c_out[None, :, :], axis=1)
        if HAS_SKIP:
            y += skip[:, None] * u
        tl.store(y_ptr + batch * sy_b + group * sy_g + d[:, None] * sy_d + pos[None, :] * sy_l, y, mask=mask)
        # padded steps (t >= length) have dt = 0, so the last lane holds the state at the chunk end
        h = tl.sum(tl.where((lane == CHUNK - 1)[None, None, :], states, 0.0), axis=2)


@triton.jit
def scan_backward_kernel(
    u_ptr, delta_ptr, b_ptr, c_ptr, a_ptr, skip_ptr, bias_ptr, order_ptr, ckpt_ptr, dy_ptr,  # noqa: ANN001
    du_ptr, ddelta_ptr, db_ptr, dc_ptr, da_ptr, dskip_ptr, dbias_ptr,  # noqa: ANN001
    length, groups, per_group, n_state, n_chunks,  # noqa: ANN001
    su_b, su_g, su_d, su_l, sd_b, sd_g, sd_d, sd_l,  # noqa: ANN001
    sb_b, sb_g, sb_n, sb_l, sc_b, sc_g, sc_n, sc_l,  # noqa: ANN001
    sy_b, sy_g, sy_d, sy_l, so_b, so_g,  # noqa: ANN001
    sgu_b, sgu_g, sgu_d, sgu_l, sgd_b, sgd_g, sgd_d, sgd_l,  # noqa: ANN001
    sgb_b, sgb_g, sgb_k, sgb_n, sgb_l,  # noqa: ANN001
    HAS_SKIP: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,  # noqa: N803
    HAS_ORDER: tl.constexpr,  # noqa: N803
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,  # noqa: N803
) -> None:
    """Gradients of :func:`scan_forward_kernel`, chunks in reverse, states recomputed per chunk.

    With ``g_t = dL/dh_t = dy_t C_t + a_{t+1} g_{t+1}`` (a reverse scan, carried across chunks):
    ``dB_t = sum_d g_t dt_t u_t``, ``dC_t = sum_d dy_t h_t``, ``d dt_t = sum_n g_t (B_t u_t + A a_t h_{t-1})``,
    ``du_t = sum_n g_t dt_t B_t + D dy_t``, ``dA = sum_t g_t a_t h_{t-1} dt_t``, where
    ``a_t h_{t-1} = h_t - b_t`` keeps every term in lane t. dB/dC are written per channel block
    (``db``, ``dc``: (batch, G, blocks, N, positions)) and dA, dD, d bias per batch (summed by the
    caller), so no two programs write the same element.
    """
    batch, group, d, dmask, chans, n, dn_mask, a_mat, skip, bias, ckpt_rows = _program_block(
        a_ptr, skip_ptr, bias_ptr, groups, per_group, n_state, n_chunks, HAS_SKIP, HAS_BIAS, BLOCK_D, BLOCK_N
    )
    block = tl.program_id(1)
    lane = tl.arange(0, CHUNK)
    g_next = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)  # g at the first step of the chunk after
    da_acc = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dskip_acc = tl.zeros([BLOCK_D], tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], tl.float32)
    for step in range(0, n_chunks):
        chunk = n_chunks - 1 - step
        t = chunk * CHUNK + lane
        pos, mask, nt_mask, u, raw, dt, b_in, c_out = _chunk_inputs(
            u_ptr, delta_ptr, b_ptr, c_ptr, order_ptr, bias, batch, group, d, dmask, n, t, length,
            su_b, su_g, su_d, su_l, sd_b, sd_g, sd_d, sd_l, sb_b, sb_g, sb_n, sb_l, sc_b, sc_g, sc_n, sc_l,
            so_b, so_g, n_state, HAS_BIAS, SOFTPLUS, HAS_ORDER,
        )  # fmt: skip
        # a_{t+1}: the decay of the next step, which the reverse scan multiplies into lane t
        nxt_mask = (t + 1) < length
        pos_next = _positions(order_ptr, batch, group, so_b, so_g, t + 1, nxt_mask, HAS_ORDER)
        _, dt_next = _step_sizes(delta_ptr, bias, batch, group, d, pos_next, dmask[:, None] & nxt_mask[None, :],
                                 sd_b, sd_g, sd_d, sd_l, HAS_BIAS, SOFTPLUS)
        dy = _tile(dy_ptr, batch, group, d, pos, mask, sy_b, sy_g, sy_d, sy_l)
        h_start = tl.load(ckpt_ptr + ckpt_rows + chunk * n_state, mask=dn_mask, other=0.0)
        decay = tl.exp(dt[:, None, :] * a_mat[:, :, None])
        dtu = dt * u
        drive = dtu[:, None, :] * b_in[None, :, :]
        decay_prefix, local = tl.associative_scan((decay, drive), 2, _compose)
        states = local + decay_prefix * h_start[:, :, None]
        decay_next = tl.exp(dt_next[:, None, :] * a_mat[:, :, None])
        decay_suffix, g_local = tl.associative_scan(
            (decay_next, dy[:, None, :] * c_out[None, :, :]), 2, _compose, reverse=True
        )
        grad_h = g_local + decay_suffix * g_next[:, :, None]
        g_next = tl.sum(tl.where((lane == 0)[None, None, :], grad_h, 0.0), axis=2)
        carried = grad_h * (states - drive)  # g_t a_t h_{t-1}
        part_rows = ((batch * sgb_b + group * sgb_g + block * sgb_k) + n[:, None] * sgb_n) + pos[None, :] * sgb_l
        tl.store(dc_ptr + part_rows, tl.sum(dy[:, None, :] * states, axis=0), mask=nt_mask)
        tl.store(db_ptr + part_rows, tl.sum(grad_h * dtu[:, None, :], axis=0), mask=nt_mask)
        grad_hb = tl.sum(grad_h * b_in[None, :, :], axis=1)
        ddt = grad_hb * u + tl.sum(carried * a_mat[:, :, None], axis=1)
        du = grad_hb * dt
        if HAS_SKIP:
            du += skip[:, None] * dy
            dskip_acc += tl.sum(dy * u, axis=1)
        da_acc += tl.sum(carried * dt[:, None, :], axis=2)
        ddelta = ddt
        if SOFTPLUS:
            ddelta = ddt * tl.sigmoid(raw)
        ddelta = tl.where(mask, ddelta, 0.0)
        dbias_acc += tl.sum(ddelta, axis=1)
        tl.store(du_ptr + batch * sgu_b + group * sgu_g + d[:, None] * sgu_d + pos[None, :] * sgu_l, du, mask=mask)
        tl.store(ddelta_ptr + batch * sgd_b + group * sgd_g + d[:, None] * sgd_d + pos[None, :] * sgd_l, ddelta,
                 mask=mask)
    dim = groups * per_group
    tl.store(da_ptr + (batch * dim + chans)[:, None] * n_state + n[None, :], da_acc, mask=dn_mask)
    tl.store(dskip_ptr + batch * dim + chans, dskip_acc, mask=dmask)
    tl.store(dbias_ptr + batch * dim + chans, dbias_acc, mask=dmask)
