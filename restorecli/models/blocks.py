"""Building blocks shared by MaIR and MaIRUNet: the 4-direction Mamba mixer with Sequence Shuffle
Attention, and the residual Mamba block around it.

Attribute names and parameter layouts are those of the official checkpoints, so official files
load with ``strict=True``; class names are ours.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from restorecli.ops import cpu_cache
from restorecli.ops.block_epilogue import merge_norm_gate, ordered_scan_merge_norm_gate, residual_norm
from restorecli.ops.scan_order import ScanOrder, mair_scan_order
from restorecli.ops.scan_ref import OrderedScanInputs, ssa_gates

DIRECTIONS = 4
# Positions per thread in a run of the position-wise layers in streamed inference
# (ResidualMambaBlock): the run's activations stay in the thread's share of the last-level cache,
# and each operator still gets enough rows to amortise its parallel region. Rule and bounds from
# docs/benchmarks.md, "Streamed runs sized from the cache and the threads": 1,024 suited the
# first 2-core machine; on the second (large shared L3) 1,024 ran the bundled network 1.3x
# (1 thread) to 2.5x (2 threads) slower than 16,384 per thread.
STREAM_ROWS_MIN = 1024
STREAM_ROWS_MAX = 16384
# A fixed run length in positions (tests); None: chosen by stream_rows.
STREAM_ROWS: int | None = None


def stream_rows(position_bytes: int, threads: int) -> int:
    """Positions per run of streamed inference for ``threads`` threads whose run activations take
    ``position_bytes`` per position: half of each thread's share of the last-level cache (the
    rest holds weights and the scan's maps), a power of two within the bounds above.
    """
    if STREAM_ROWS is not None:
        return STREAM_ROWS
    share = cpu_cache.last_level_share()
    per_thread = STREAM_ROWS_MIN
    if share is not None:
        fitting = max(1, share // 2 // max(1, position_bytes))
        per_thread = min(STREAM_ROWS_MAX, max(STREAM_ROWS_MIN, 1 << (fitting.bit_length() - 1)))
    return per_thread * max(1, threads)


def inner_width(channels: int, ssm_ratio: float) -> int:
    """SSM inner width Di = int(ssm_ratio * C): float product then truncation, as the official code."""
    return int(ssm_ratio * channels)


def dt_rank(channels: int) -> int:
    """Rank of the Δ projection: ceil(C / 16), computed from C (not Di)."""
    return math.ceil(channels / 16)


def mlp_width(channels: int, mlp_ratio: float) -> int:
    """Hidden width of the channel MLP: int(C * mlp_ratio)."""
    return int(channels * mlp_ratio)


class SelectiveScanLayer(nn.Module):
    """Parameters of a K-direction selective scan under the official names, their Mamba
    initialisation, and the projection + scan shared by every scanning layer.

    ``x_proj_weight`` (K, R+2N, Di) holds Δ, B and C rows; ``dt_projs_weight`` (K, Di, R);
    ``dt_projs_bias`` (K, Di); ``A_logs`` (K*Di, N) and ``Ds`` (K*Di) are k-major; ``in_proj`` maps C
    to the scan input and the gate (2 Di), registered after them as in the official files.
    """

    def __init__(self, *, channels: int, directions: int, inner: int, rank: int, d_state: int) -> None:
        super().__init__()
        self.directions, self.inner, self.rank, self.d_state = directions, inner, rank, d_state
        self.scan_backend: str | None = None  # None: resolved per call (explicit > env > auto)
        # Registered first so the state_dict order matches the official files.
        self.x_proj_weight = nn.Parameter(torch.empty(directions, rank + 2 * d_state, inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(directions, inner, rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(directions, inner))
        self.A_logs = nn.Parameter(torch.empty(directions * inner, d_state))
        self.Ds = nn.Parameter(torch.empty(directions * inner))
        self.in_proj = nn.Linear(channels, 2 * inner, bias=False)  # x -> (scan input, gate)

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba initialisation: x_proj U(±1/sqrt(Di)), dt_proj U(±R^-0.5),
        Δ bias = softplus⁻¹(dt) with dt log-uniform in [1e-3, 0.1], A_log = log(1..N), D = 1."""
        if self.x_proj_weight.device.type == "meta":
            return
        bound = 1.0 / math.sqrt(self.inner)  # nn.Linear's default kaiming-uniform bound
        self.x_proj_weight.uniform_(-bound, bound)
        self.dt_projs_weight.uniform_(-(self.rank**-0.5), self.rank**-0.5)
        dt = torch.exp(torch.rand(self.directions, self.inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        dt = dt.clamp(min=1e-4)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        log_a = torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32))
        self.A_logs.copy_(log_a.repeat(self.directions * self.inner, 1))
        self.Ds.fill_(1.0)

    def scan_ordered(self, xs: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_proj and the K ordered selective scans of a channels-last map.

        Args:
            xs: (B, L, Di) scan input, positions in raster order.
            order, inverse: (K, L) or (B, K, L) scan orders and their inverses (see
                ``restorecli.ops.ordered_scan``).

        Returns:
            y (B, L, K, Di) in raster order (float32) and its mean over the positions (B, K, Di).
        """
        batch, length, inner = xs.shape
        inputs = self.ordered_inputs(xs, order, inverse)
        if xs.device.type == "meta":
            # Shape-only runs (parameter/FLOP accounting): the Δ projection the scan fuses is
            # still issued so the flop counter sees it; the scan's own cost is added by
            # ``restorecli.models.stats``.
            torch.matmul(self.dt_projs_weight, inputs.proj.new_empty(batch, self.directions, self.rank, length))
            y = xs.new_empty(batch, length, self.directions, inner, dtype=torch.float32)
            return y, y.mean(dim=1)
        from restorecli.ops.ordered_scan import ordered_selective_scan

        return ordered_selective_scan(*inputs, backend=self.scan_backend)

    def ordered_inputs(self, xs: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> OrderedScanInputs:
        """The ordered scan's inputs for a (B, L, Di) scan input: x_proj (it acts on each
        position alone, so it runs once on the map, before any ordering) and the parameters."""
        proj = F.linear(xs, self.x_proj_weight.view(-1, xs.shape[-1]))  # (B, L, K * (R + 2N))
        # A is cast with the other inputs to the scan's compute dtype.
        a = -torch.exp(self.A_logs)
        return OrderedScanInputs(xs, proj, self.dt_projs_weight, self.dt_projs_bias.reshape(-1), a, self.Ds, order, inverse)

    def project_in(
        self, x: torch.Tensor, *, out: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """in_proj: (..., C) -> scan input xa and gate z, each (..., Di) and contiguous.

        Two GEMMs instead of one and a split: a contiguous xa's NCHW view is channels-last, so
        the depthwise conv runs without a layout copy (2x faster measured). ``out``: (n, Di)
        row blocks that x (n, C) is projected into, without autograd (streamed inference).
        """
        weight = self.in_proj.weight
        if out is not None:
            torch.mm(x, weight[: self.inner].t(), out=out[0])
            torch.mm(x, weight[self.inner :].t(), out=out[1])
            return out
        return F.linear(x, weight[: self.inner]), F.linear(x, weight[self.inner :])


class ShuffleGate(nn.Module):
    """Holder of the SSA gate parameters under the official names ``gating.gating.1.*``.

    The official module is Sequential(AvgPool, grouped Conv 1x1, Sigmoid) on channel-shuffled
    features; the mixer evaluates the same maths directly on pooled sequences (see ``gate``).
    """

    def __init__(self, inner: int) -> None:
        super().__init__()
        self.gating = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(DIRECTIONS * inner, DIRECTIONS * inner, kernel_size=1, groups=inner),
            nn.Sigmoid(),
        )
        self.inner = inner

    def gate(self, pooled: torch.Tensor) -> torch.Tensor:
        """Direction weights from pooled direction outputs.

        Args:
            pooled: (B, 4, Di), mean over all positions of each direction's output.

        Returns:
            (B, 4, Di): g[b, j, d] = sigmoid(sum_k W[4d+j, k] * pooled[b, k, d] + bias[4d+j]).
        """
        weight, bias = self.parameters_dj()
        return ssa_gates(pooled, weight.to(pooled.dtype), bias.to(pooled.dtype))

    def parameters_dj(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The grouped 1x1 convolution's weight as (Di, 4, 4) ``[d, j, k]`` and bias as (Di, 4)
        ``[d, j]`` (views: gradients reach the registered parameters)."""
        conv = self.gating[1]
        return conv.weight.view(self.inner, DIRECTIONS, DIRECTIONS), conv.bias.view(self.inner, DIRECTIONS)


class MambaMixer2D(SelectiveScanLayer):
    """The VMM / "self_attention" module: 4-direction NSS selective scan fused by SSA.

    Input and output are channels-last (B, H, W, C). ``shift`` selects the shifted NSS variant.
    """

    def __init__(self, *, channels: int, d_state: int, ssm_ratio: float, scan_len: int, shift: int) -> None:
        inner = inner_width(channels, ssm_ratio)
        super().__init__(channels=channels, directions=DIRECTIONS, inner=inner, rank=dt_rank(channels), d_state=d_state)
        self.channels, self.scan_len, self.shift = channels, scan_len, shift
        self.conv2d = nn.Conv2d(inner, inner, kernel_size=3, padding=1, groups=inner, bias=True)
        self.out_norm = nn.LayerNorm(inner, eps=1e-5)
        self.out_proj = nn.Linear(inner, channels, bias=False)
        self.gating = ShuffleGate(inner)
        self.reset_ssm_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, H, W, C). Returns: (B, H, W, C).

        Activations stay channels-last from in_proj to out_proj: the x_proj GEMM runs on the map
        itself (it acts on each position alone, so it commutes with the scan orders) and the
        ordered scan reads and writes raster positions (``restorecli.ops.ordered_scan``).
        """
        batch, height, width, _ = x.shape
        xa, z = self.project_in(x)
        z = z.view(batch, height * width, self.inner)
        if torch.is_grad_enabled() and x.device.type != "meta":
            # Training: scan, SSA gates and output side as one step, which on the compiled
            # kernel is one autograd node (restorecli.ops.block_epilogue.ordered_scan_merge_norm_gate).
            xs, order = self.scan_input(xa)
            inputs = self.ordered_inputs(xs, order.scan, order.inverse)
            out = ordered_scan_merge_norm_gate(inputs, *self.gating.parameters_dj(), z, self.out_norm, backend=self.scan_backend)
            return self.out_proj(out).view(batch, height, width, -1)
        y, gates = self.scan_and_gate(xa)
        return self.project_out(y, gates, z).view(batch, height, width, -1)

    def scan_input(self, xa: torch.Tensor) -> tuple[torch.Tensor, ScanOrder]:
        """Depthwise conv and SiLU of xa (B, H, W, Di): the scan input (B, L, Di) and the NSS orders."""
        batch, height, width, inner = xa.shape
        xs = F.silu(self.conv2d(xa.permute(0, 3, 1, 2))).permute(0, 2, 3, 1).reshape(batch, height * width, inner)
        return xs, mair_scan_order(height, width, self.scan_len, self.shift, xs.device)

    def scan_and_gate(self, xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Depthwise conv, SiLU, x_proj, the K ordered scans and the SSA gates.

        Args:
            xa: (B, H, W, Di) contiguous.

        Returns:
            y (B, L, K, Di) in raster order and gates (B, K, Di).
        """
        xs, order = self.scan_input(xa)
        y, pooled = self.scan_ordered(xs, order.scan, order.inverse)
        # SSA: the pooled mean is order-independent, so the scan takes it on the way.
        return y, self.gating.gate(pooled)

    def project_out(self, y: torch.Tensor, gates: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """SSA merge, out_norm, SiLU gate and out_proj on any run of positions.

        Args:
            y: (B, n, K, Di) scan outputs of n positions; gates: (B, K, Di); z: (B, n, Di).

        Returns:
            (B, n, C).
        """
        return self.out_proj(merge_norm_gate(y, gates, z, self.out_norm, backend=self.scan_backend))


class ChannelMLP(nn.Module):
    """Linear C -> M, exact GELU, Linear M -> C (``fc1``/``fc2``)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth per sample (training only)."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class ResidualMambaBlock(nn.Module):
    """RMB (MaIR) / VSSBlock (MaIRUNet) on channels-last maps (B, H, W, C).

    ``a = x * skip_scale + DropPath(mixer(ln_1(x)))``; ``out = a * skip_scale2 + mlp(ln_2(a))``.
    ``mlp_name`` is ``conv_blk`` in MaIR and ``mlp`` in MaIRUNet (checkpoint names).
    """

    def __init__(
        self,
        *,
        channels: int,
        d_state: int,
        ssm_ratio: float,
        mlp_ratio: float,
        scan_len: int,
        shift: int,
        drop_path: float,
        mlp_name: str,
    ) -> None:
        super().__init__()
        self.skip_scale = nn.Parameter(torch.ones(channels))
        self.skip_scale2 = nn.Parameter(torch.ones(channels))
        self.ln_1 = nn.LayerNorm(channels, eps=1e-5)
        self.self_attention = MambaMixer2D(
            channels=channels, d_state=d_state, ssm_ratio=ssm_ratio, scan_len=scan_len, shift=shift
        )
        self.drop_path = DropPath(drop_path)
        self.mlp_name = mlp_name
        self.add_module(mlp_name, ChannelMLP(channels, mlp_width(channels, mlp_ratio)))
        self.ln_2 = nn.LayerNorm(channels, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        # Not in training mode, where DropPath acts even without autograd; not under autocast
        # (--precision bf16), whose casts the streamed path's preallocated float32 buffers skip.
        if (
            not (torch.is_grad_enabled() or self.training)
            and x.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu")
        ):
            rows = stream_rows(self.position_bytes, torch.get_num_threads())
            if height * width > rows:
                return self._forward_streamed(x, rows)
        mixed = self.drop_path(self.self_attention(self.ln_1(x)))
        a, normed = residual_norm(x, self.skip_scale, mixed, self.ln_2, backend=self.self_attention.scan_backend)
        return a * self.skip_scale2 + getattr(self, self.mlp_name)(normed)

    @property
    def position_bytes(self) -> int:
        """Bytes per position of a streamed run's float32 activations: input, ln_1, z, the
        mixer's output, a, ln_2, the MLP's hidden layer and output."""
        mixer = self.self_attention
        return 4 * (6 * mixer.channels + mixer.inner + getattr(self, self.mlp_name).fc1.out_features)

    def _forward_streamed(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        """Inference on the CPU: the position-wise layers run on runs of ``rows`` positions whose
        activations stay in cache, instead of on whole-map tensors that may not (on a 256² map
        a GEMM ran at half the speed it reaches in cache on the first development machine);
        the same maths as ``forward``.
        """
        batch, height, width, channels = x.shape
        length = height * width
        mixer = self.self_attention
        inner = mixer.inner
        rows_in = x.reshape(batch * length, channels)
        xa = x.new_empty(batch, height, width, inner)
        z = x.new_empty(batch * length, inner)
        xa_rows = xa.view(batch * length, inner)
        for start in range(0, batch * length, rows):
            run = slice(start, start + rows)
            mixer.project_in(self.ln_1(rows_in[run]), out=(xa_rows[run], z[run]))
        y, gates = mixer.scan_and_gate(xa)
        out = torch.empty_like(rows_in)
        mlp = getattr(self, self.mlp_name)
        for image in range(batch):
            for start in range(image * length, (image + 1) * length, rows):
                run = slice(start, min(start + rows, (image + 1) * length))
                local = slice(run.start - image * length, run.stop - image * length)
                mixed = mixer.project_out(y[image : image + 1, local], gates[image : image + 1], z[run].unsqueeze(0))[0]
                a, normed = residual_norm(rows_in[run], self.skip_scale, mixed, self.ln_2, backend=mixer.scan_backend)
                torch.addcmul(mlp(normed), a, self.skip_scale2, out=out[run])
        return out.view(batch, height, width, channels)


def set_scan_backend(module: nn.Module, backend: str | None) -> None:
    """Pin the selective-scan backend of every scanning layer in ``module`` (None: resolve per call).

    Scanning layers of every architecture declare a ``scan_backend`` attribute.
    """
    for sub in module.modules():
        if hasattr(sub, "scan_backend"):
            sub.scan_backend = backend
