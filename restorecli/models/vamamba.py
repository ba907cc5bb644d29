"""VAMamba: residual groups of RAM blocks (SS2D + channel attention) with QCLAM and GPS-SS2D.

Written from the VAMamba paper's description, not from the official code.
The layout outside the two new modules follows the official network: RAMBlock =
SS2D branch + CAB branch with per-channel skip scales, ResidualGroups with a 3x3 conv, and the
same-size / pixelshuffle / pixelshuffledirect heads. Parameter names follow the official ones
where a counterpart exists. What differs from the official code, and why:

* **QCLAM** (``lora_cache``) is a residual low-rank adapter ``v = x + B(A x)`` with ``B = 0`` at
  init, followed by a soft read of a memory that lives for ONE forward pass: the fused features of
  the earlier blocks of the same image (or tile). The read is a softmax over per-channel cosine
  similarities, the fusion is gated by a learned gate times the read's similarity, and the fused
  features are what the next blocks remember. No state survives a call, so an image's output never
  depends on other images, batch neighbours, call order or earlier tiles, and gradients flow
  through the memory.
* **GPS-SS2D** scans pixels (not pooled patches) along a greedy patch path planned from a small,
  trained ViT's patch scores, S-shaped inside each patch, forward and reversed (K = 2) with a
  correct inverse, and with a decaying ``A = -exp(A_log)``. The scores also gate the scanned
  features of their patch, so the ViT receives gradients.
* ``scan`` selects the fixed 4-direction cross scan (``cross``), GPS (``gps``) or both; both run in
  one selective-scan call.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from restorecli.models.blocks import DropPath, SelectiveScanLayer, dt_rank, inner_width
from restorecli.models.heads import add_neck_and_head, add_stem, drop_path_rates, init_linear_and_norm, reconstruct
from restorecli.ops.block_epilogue import merge_norm_gate, residual_norm
from restorecli.ops.gps_order import gps_pixel_orders, inverse_permutation
from restorecli.ops.scan_order import cross_scan_order

SCANS = ("cross", "gps", "both")
CROSS_DIRECTIONS = 4
GPS_DIRECTIONS = 2
VIT_REDUCE = 8  # channels fed to the patch embedding: keeps the p x p kernel small at D = 216


@dataclass(frozen=True)
class VAMambaConfig:
    """Everything that shapes a VAMamba network or its numerics.

    ``mlp_ratio`` is the SS2D expansion (official name): D = int(mlp_ratio * embed_dim).
    ``scan`` is ``cross``, ``gps`` or ``both``; ``qclam`` switches the adapter + memory module.
    ``cache_size`` is the number of earlier blocks' features one block can read (one forward pass).
    ``gps_patch`` is the patch side p of the score map; ``vit_dim``/``vit_layers``/``vit_heads``
    size the score ViT. ``upsampler`` as in MaIR: ``pixelshuffle``, ``pixelshuffledirect`` or ``""``.
    """

    upscale: int
    in_chans: int
    img_range: float
    embed_dim: int
    depths: tuple[int, ...]
    d_state: int
    mlp_ratio: float
    upsampler: str
    resi_connection: str
    scan: str
    qclam: bool
    lora_rank: int
    cache_size: int
    gps_patch: int
    vit_dim: int
    vit_layers: int
    vit_heads: int
    drop_path_rate: float = 0.1


# ---------------------------------------------------------------------------------------------
# QCLAM


class FeatureMemory:
    """FIFO of the most recent fused features of ONE forward pass (created per call, never kept).

    Entries are (B, L, D) tensors that stay in the autograd graph. Their per-channel norms over
    the positions, which later blocks' cosine similarities divide by, are computed once, on the
    first read, rather than by every reader.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: list[torch.Tensor] = []
        self._norms: list[torch.Tensor | None] = []

    def push(self, features: torch.Tensor) -> None:
        self.entries.append(features)
        self._norms.append(None)
        if len(self.entries) > self.capacity:
            self.entries.pop(0)
            self._norms.pop(0)

    def norms(self) -> list[torch.Tensor]:
        """Per-channel norms over the positions (B, D) of each entry, oldest first, clamped
        below at ``NORM_EPS`` as ``F.normalize`` does."""
        for index, norm in enumerate(self._norms):
            if norm is None:
                self._norms[index] = channel_norms(self.entries[index])
        return [norm for norm in self._norms if norm is not None]


NORM_EPS = 1e-12  # F.normalize's default


def channel_norms(features: torch.Tensor) -> torch.Tensor:
    """``max(||features[b, :, d]||, NORM_EPS)``: (B, L, D) -> (B, D)."""
    return torch.linalg.vector_norm(features, dim=1).clamp_min(NORM_EPS)


class QCLAM(nn.Module):
    """Residual low-rank adapter + soft, gated fusion with the pass's feature memory.

    ``a = A x``; ``v = x + B a`` (B zero at init); with memory entries e_m:
    ``sim_m = mean_c cos(v[:, c], e_m[:, c])`` (per-channel cosine over positions, per sample);
    ``w = softmax(exp(log_sharpness) * sim)``; ``r = sum_m w_m e_m``;
    ``g = sigmoid(cache_weight) * (1 + sum_m w_m sim_m) / 2``; ``out = v + g * fusion([r; a])``.
    Every step is smooth, so there is no threshold discontinuity and all parameters train.
    """

    def __init__(self, *, channels: int, rank: int) -> None:
        super().__init__()
        self.lora_down = nn.Linear(channels, rank, bias=False)
        self.lora_up = nn.Linear(rank, channels, bias=False)
        self.feature_fusion = nn.Sequential(nn.Linear(channels + rank, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.cache_weight = nn.Parameter(torch.tensor(0.5))
        self.log_sharpness = nn.Parameter(torch.tensor(math.log(10.0)))

    def reset_adapter(self) -> None:
        """Zero the up-projection so the block starts as plain SS2D."""
        if self.lora_up.weight.device.type != "meta":
            nn.init.zeros_(self.lora_up.weight)

    def forward(self, x: torch.Tensor, memory: FeatureMemory) -> torch.Tensor:
        """Args: x (B, L, D); memory: this pass's memory (read, then the output is pushed).

        Returns: (B, L, D).
        """
        a = self.lora_down(x)
        v = x + self.lora_up(a)
        if memory.entries:
            # sum_l (v / |v|)(e / |e|) per channel is sum_l v e / (|v| |e|): one dot product and
            # a (B, D) division per entry, no normalised (B, L, D) copies of v or the entries.
            norm_v = channel_norms(v)
            sim = torch.stack(
                [(torch.linalg.vecdot(v, entry, dim=1) / (norm_v * norm)).mean(dim=1) for entry, norm in zip(memory.entries, memory.norms())],
                dim=1,
            )
            weights = torch.softmax(self.log_sharpness.exp() * sim, dim=1)
            read = weights[:, 0, None, None] * memory.entries[0]
            for m in range(1, len(memory.entries)):
                read = torch.addcmul(read, weights[:, m, None, None], memory.entries[m])
            relevance = (weights * sim).sum(dim=1)
            gate = torch.sigmoid(self.cache_weight) * 0.5 * (1.0 + relevance)
            v = torch.addcmul(v, gate.view(-1, 1, 1), self.feature_fusion(torch.cat([read, a], dim=-1)))
        memory.push(v)
        return v


# ---------------------------------------------------------------------------------------------
# GPS score map


def sincos_position_embedding(height: int, width: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Fixed 2-D sine/cosine embedding of an h x w grid (any size): (h*w, dim), dim % 4 == 0."""
    quarter = dim // 4
    freq = 1.0 / (10000.0 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    rows = torch.arange(height, device=device, dtype=torch.float32)[:, None] * freq
    cols = torch.arange(width, device=device, dtype=torch.float32)[:, None] * freq
    emb_r = torch.cat([rows.sin(), rows.cos()], dim=1)[:, None, :].expand(height, width, 2 * quarter)
    emb_c = torch.cat([cols.sin(), cols.cos()], dim=1)[None, :, :].expand(height, width, 2 * quarter)
    return torch.cat([emb_r, emb_c], dim=-1).reshape(height * width, dim).to(dtype)


class ScoreViT(nn.Module):
    """Patch importance scores in (0, 1): patch embedding, sin-cos positions, transformer, sigmoid.

    The patch embedding (1x1 reduction then a p x p stride-p conv) is registered and trained; the
    position embedding is computed for the actual grid, so any image size works. Inputs whose
    size is not a multiple of p are replicate-padded for scoring only.
    """

    def __init__(self, *, channels: int, patch: int, dim: int, layers: int, heads: int) -> None:
        super().__init__()
        if dim % 4 != 0 or dim % heads != 0:
            raise ValueError(f"vit_dim must be a multiple of 4 and of vit_heads, got {dim} and {heads}")
        self.patch = patch
        self.reduce = nn.Conv2d(channels, VIT_REDUCE, 1)
        self.proj = nn.Conv2d(VIT_REDUCE, dim, patch, stride=patch)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim, heads, dim_feedforward=2 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.score_head = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, H, W, D) channels-last. Returns: (B, ceil(H/p), ceil(W/p)) scores in (0, 1)."""
        p = self.patch
        # The 1x1 reduction as a linear layer on the rows: oneDNN's 1x1 convolution to 8
        # channels of a channels-last map ran about 4x slower than this GEMM.
        t = _pointwise(self.reduce, x).permute(0, 3, 1, 2)
        pad_h, pad_w = -t.shape[2] % p, -t.shape[3] % p
        if pad_h or pad_w:
            t = F.pad(t, (0, pad_w, 0, pad_h), mode="replicate")
        t = self.proj(t)
        batch, dim, h, w = t.shape
        tokens = t.flatten(2).transpose(1, 2) + sincos_position_embedding(h, w, dim, t.device, t.dtype)
        for layer in self.layers:
            tokens = layer(tokens)
        return torch.sigmoid(self.score_head(self.norm(tokens))).view(batch, h, w)


# ---------------------------------------------------------------------------------------------
# SS2D


class SS2D(SelectiveScanLayer):
    """VAMamba's SS2D (``self_attention``): conv, QCLAM, cross and/or GPS selective scans, gate.

    Sequences k = 0..3 are the cross scan (row-major, column-major, their reverses) when enabled,
    followed by the GPS forward and reversed sequences; all go through one selective scan.
    Input and output are channels-last (B, H, W, C).
    """

    def __init__(
        self,
        *,
        channels: int,
        d_state: int,
        mlp_ratio: float,
        scan: str,
        qclam: bool,
        lora_rank: int,
        gps_patch: int,
        vit_dim: int,
        vit_layers: int,
        vit_heads: int,
    ) -> None:
        if scan not in SCANS:
            raise ValueError(f"scan must be one of {SCANS}, got {scan!r}")
        inner = inner_width(channels, mlp_ratio)
        cross, gps = scan in ("cross", "both"), scan in ("gps", "both")
        directions = CROSS_DIRECTIONS * cross + GPS_DIRECTIONS * gps
        # official: dt rank = ceil(D / 16) from d_inner
        super().__init__(channels=channels, directions=directions, inner=inner, rank=dt_rank(inner), d_state=d_state)
        self.scan, self.cross, self.gps, self.gps_patch = scan, cross, gps, gps_patch
        self.conv2d = nn.Conv2d(inner, inner, kernel_size=3, padding=1, groups=inner, bias=True)
        self.lora_cache = QCLAM(channels=inner, rank=lora_rank) if qclam else None
        self.vit_score_map = (
            ScoreViT(channels=inner, patch=gps_patch, dim=vit_dim, layers=vit_layers, heads=vit_heads) if self.gps else None
        )
        self.out_norm = nn.LayerNorm(inner, eps=1e-5)
        self.out_proj = nn.Linear(inner, channels, bias=False)

    def _orders(self, scores: torch.Tensor | None, batch: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scan orders and inverses: (K, L) for the cross scan alone, else (B, K, L) with the
        cross rows (if any) followed by each image's GPS order and its reverse."""
        device = self.in_proj.weight.device
        length = height * width
        cross = cross_scan_order(height, width, device) if self.cross else None
        if scores is None:
            assert cross is not None
            return cross.scan, cross.inverse
        if device.type == "meta":  # shape-only runs (parameter/FLOP accounting)
            order = torch.arange(length, device="meta").expand(batch, self.directions, length)
            return order, order
        steps = gps_pixel_orders(scores.detach().float().cpu().numpy(), height, width, self.gps_patch)
        gps = np.stack([steps, steps[:, ::-1]], axis=1)  # (B, 2, L)
        orders = torch.from_numpy(np.ascontiguousarray(gps)).to(device)
        inverses = torch.from_numpy(inverse_permutation(gps)).to(device)
        if cross is not None:
            orders = torch.cat([cross.scan.expand(batch, -1, -1), orders], dim=1)
            inverses = torch.cat([cross.inverse.expand(batch, -1, -1), inverses], dim=1)
        return orders.contiguous(), inverses.contiguous()

    def forward(self, x: torch.Tensor, memory: FeatureMemory | None) -> torch.Tensor:
        """Args: x (B, H, W, C); memory: the pass's QCLAM memory (None without QCLAM).

        Returns: (B, H, W, C).

        Activations stay channels-last: every direction (cross and GPS) is one order of an
        ordered scan that reads and writes raster positions (``restorecli.ops.ordered_scan``), so
        the official "flip, transpose, gather, un-gather" of each sequence is the order itself.
        """
        batch, height, width, _ = x.shape
        length = height * width
        inner = self.inner
        xa, z = self.project_in(x)
        xs = F.silu(self.conv2d(xa.permute(0, 3, 1, 2))).permute(0, 2, 3, 1).reshape(batch, length, inner)
        if self.lora_cache is not None:
            assert memory is not None
            xs = self.lora_cache(xs, memory)
        scores = None
        if self.gps:
            assert self.vit_score_map is not None
            scores = self.vit_score_map(xs.view(batch, height, width, inner))
        order, inverse = self._orders(scores, batch, height, width)
        y, _ = self.scan_ordered(xs.contiguous(), order, inverse)  # (B, L, K, Di), raster order

        # The directions are summed with unit gates by merge_norm_gate, which also runs the norm
        # and the SiLU gate in one pass; the GPS sequences are first scaled by their score gate.
        gates = y.new_ones(batch, 1, inner).expand(batch, self.directions, inner)
        if self.gps:
            assert scores is not None
            p = self.gps_patch
            gate = 2.0 * scores.repeat_interleave(p, dim=1).repeat_interleave(p, dim=2)[:, :height, :width]
            gate = gate.reshape(batch, length, 1, 1).to(y.dtype)
            if torch.is_grad_enabled():
                # unbind, not slices: a slice's backward zero-fills a whole (B, L, K, Di) gradient per slice
                parts = y.unbind(dim=2)
                merged = functools.reduce(torch.add, parts[-GPS_DIRECTIONS:]) * gate[..., 0]
                if self.cross:
                    merged = functools.reduce(torch.add, parts[:CROSS_DIRECTIONS]) + merged
                y, gates = merged.unsqueeze(2), gates[:, :1]
            else:  # no autograd: scale in place instead of writing the sums out
                y[:, :, self.directions - GPS_DIRECTIONS :].mul_(gate)
        out = merge_norm_gate(y, gates, z.view(batch, length, inner), self.out_norm, backend=self.scan_backend)
        return self.out_proj(out).view(batch, height, width, -1)


# ---------------------------------------------------------------------------------------------
# CAB, RAMBlock, ResidualGroup


class ChannelAttention(nn.Module):
    """Squeeze-excitation: avg-pool, 1x1 C -> C/s, ReLU, 1x1 -> C, sigmoid, multiply."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        hidden = max(channels // squeeze, 1)
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class CAB(nn.Module):
    """Channel attention block (``cab``); ``light`` is the pixelshuffledirect variant (spec 1.6)."""

    def __init__(self, channels: int, *, light: bool) -> None:
        super().__init__()
        self.light = light
        if light:
            half = max(channels // 2, 1)
            self.cab = nn.Sequential(
                nn.Conv2d(channels, half, 1),
                nn.Conv2d(half, half, 3, 1, 1, groups=half),
                nn.GELU(),
                nn.Conv2d(half, channels, 1),
                nn.Conv2d(channels, channels, 3, 1, 2, dilation=2, groups=channels),
                ChannelAttention(channels, 30),
            )
        else:
            hidden = max(channels // 3, 1)
            self.cab = nn.Sequential(
                nn.Conv2d(channels, hidden, 3, 1, 1), nn.GELU(), nn.Conv2d(hidden, channels, 3, 1, 1), ChannelAttention(channels, 30)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, H, W, C) channels-last. Returns the same shape.

        The light variant's 1x1 convolutions run as linear layers on the rows (oneDNN's 1x1
        convolutions of channels-last maps ran several times slower); the others on NCHW views.
        """
        if not self.light:
            return self.cab(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        reduce, depthwise, gelu, expand, dilated, attention = self.cab
        t = gelu(depthwise(_pointwise(reduce, x).permute(0, 3, 1, 2)))
        t = dilated(_pointwise(expand, t.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        return attention(t).permute(0, 2, 3, 1)


def _pointwise(conv: nn.Conv2d, rows: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution applied to channels-last rows (..., C_in) -> (..., C_out)."""
    return F.linear(rows, conv.weight.view(conv.out_channels, -1), conv.bias)


class RAMBlock(nn.Module):
    """``x1 = x * skip_scale + DropPath(SS2D(ln_1 x))``; ``out = x1 * skip_scale2 + CAB(ln_2 x1)``."""

    def __init__(self, *, channels: int, drop_path: float, light_cab: bool, ss2d: dict) -> None:
        super().__init__()
        self.skip_scale = nn.Parameter(torch.ones(channels))
        self.skip_scale2 = nn.Parameter(torch.ones(channels))
        self.ln_1 = nn.LayerNorm(channels, eps=1e-5)
        self.self_attention = SS2D(channels=channels, **ss2d)
        self.drop_path = DropPath(drop_path)
        self.ln_2 = nn.LayerNorm(channels, eps=1e-5)
        self.conv_blk = CAB(channels, light=light_cab)

    def forward(self, x: torch.Tensor, memory: FeatureMemory | None) -> torch.Tensor:
        """Args: x (B, H, W, C). Returns the same shape."""
        mixed = self.drop_path(self.self_attention(self.ln_1(x), memory))
        x, normed = residual_norm(x, self.skip_scale, mixed, self.ln_2, backend=self.self_attention.scan_backend)
        return torch.addcmul(self.conv_blk(normed), x, self.skip_scale2)


class ResidualGroup(nn.Module):
    """RAMG: RAM blocks, a 3x3 conv and a residual connection."""

    def __init__(self, *, channels: int, drop_paths: list[float], light_cab: bool, ss2d: dict) -> None:
        super().__init__()
        self.residual_group = nn.Module()
        self.residual_group.blocks = nn.ModuleList(
            RAMBlock(channels=channels, drop_path=rate, light_cab=light_cab, ss2d=ss2d) for rate in drop_paths
        )
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor, memory: FeatureMemory | None) -> torch.Tensor:
        """Args: x (B, H, W, C) channels-last. Returns the same shape."""
        t = x
        for block in self.residual_group.blocks:
            t = block(t, memory)
        return self.conv(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) + x


# ---------------------------------------------------------------------------------------------
# network


class VAMamba(nn.Module):
    """VAMamba network. Input: float (B, in_chans, H, W) in [0, 1], any H, W >= 1.

    Output: (B, in_chans, H * upscale, W * upscale), not clamped. ``forward`` keeps no state
    between calls: the QCLAM memory is created and dropped inside each call.
    """

    def __init__(
        self,
        *,
        upscale: int,
        in_chans: int,
        img_range: float,
        embed_dim: int,
        depths: tuple[int, ...],
        d_state: int,
        mlp_ratio: float,
        upsampler: str,
        resi_connection: str,
        scan: str,
        qclam: bool,
        lora_rank: int,
        cache_size: int,
        gps_patch: int,
        vit_dim: int,
        vit_layers: int,
        vit_heads: int,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__()
        if cache_size < 1 or lora_rank < 1 or gps_patch < 1:
            raise ValueError(f"cache_size, lora_rank and gps_patch must be >= 1, got {cache_size}, {lora_rank}, {gps_patch}")
        self.qclam = qclam
        self.cache_size = cache_size
        add_stem(
            self, upscale=upscale, in_chans=in_chans, img_range=img_range, upsampler=upsampler,
            resi_connection=resi_connection, embed_dim=embed_dim,
        )  # fmt: skip
        ss2d = {
            "d_state": d_state, "mlp_ratio": mlp_ratio, "scan": scan, "qclam": qclam, "lora_rank": lora_rank,
            "gps_patch": gps_patch, "vit_dim": vit_dim, "vit_layers": vit_layers, "vit_heads": vit_heads,
        }  # fmt: skip
        light_cab = upsampler == "pixelshuffledirect"
        self.layers = nn.ModuleList(
            ResidualGroup(channels=embed_dim, drop_paths=rates, light_cab=light_cab, ss2d=ss2d)
            for rates in drop_path_rates(drop_path_rate, depths)
        )
        add_neck_and_head(self, upsampler=upsampler, upscale=upscale, embed_dim=embed_dim, in_chans=in_chans)
        self._init_weights()

    def _init_weights(self) -> None:
        """trunc_normal(0.02) Linear weights, zero biases, LayerNorm (1, 0), then the SSM and
        adapter initialisations (after the global pass, so the adapter really starts at zero)."""
        if self.conv_first.weight.device.type == "meta":
            return
        init_linear_and_norm(self)
        for module in self.modules():
            if isinstance(module, SS2D):
                module.reset_ssm_parameters()
            elif isinstance(module, QCLAM):
                module.reset_adapter()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Deep features: (B, C, H, W) -> (B, C, H, W); one QCLAM memory for the whole pass."""
        memory = FeatureMemory(self.cache_size) if self.qclam else None
        t = self.patch_embed.norm(x.permute(0, 2, 3, 1))
        for layer in self.layers:
            t = layer(t, memory)
        return self.norm(t).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reconstruct(self, x)
