"""A literal, functional rendering of the MaIR / MaIRUNet networks (scan orders, SS2D, blocks) in float64.

Written independently of ``restorecli.models`` (it reads only a state dict and a config) and
deliberately naive: per-direction gathers, the sequential scan recurrence, the official SSA
channel shuffles with a grouped convolution. Tests compare the library's float32 networks with
it; agreement to float32 rounding is the closest available stand-in for the official code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from restorecli.ops.scan_order import inverse_orders, nss_four_directions

RGB_MEAN = (0.4488, 0.4371, 0.4040)


def scan_recurrence(u, delta, a, b, c, d):
    """h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t ; y_t = <C_t, h_t> + D u_t, B/C grouped by direction."""
    batch, dim, length = u.shape
    groups = b.shape[1]
    b = b.repeat_interleave(dim // groups, dim=1)
    c = c.repeat_interleave(dim // groups, dim=1)
    h = torch.zeros(batch, dim, a.shape[1], dtype=u.dtype)
    out = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * a) * h + (delta[:, :, t] * u[:, :, t])[..., None] * b[:, :, :, t]
        out.append((h * c[:, :, :, t]).sum(-1) + d * u[:, :, t])
    return torch.stack(out, -1)


def mixer(sd, prefix, x, scan_len, shift):
    """VMM of section 3.1 on channels-last x (B, H, W, C)."""
    p = lambda name: sd[prefix + name]  # noqa: E731
    batch, height, width, channels = x.shape
    inner = p("conv2d.weight").shape[0]
    rank = p("dt_projs_weight").shape[2]
    n = p("A_logs").shape[1]
    length = height * width
    xz = x @ p("in_proj.weight").t()
    xa, z = xz[..., :inner], xz[..., inner:]
    xc = F.silu(F.conv2d(xa.permute(0, 3, 1, 2), p("conv2d.weight"), p("conv2d.bias"), padding=1, groups=inner))
    xc = xc.reshape(batch, inner, length)
    seqs = torch.from_numpy(nss_four_directions(height, width, scan_len, shift))
    inv = torch.from_numpy(inverse_orders(seqs.numpy()))
    u = torch.cat([xc[:, :, seqs[k]] for k in range(4)], 1)
    dts, bs, cs = [], [], []
    for k in range(4):
        proj = torch.einsum("cd,bdl->bcl", p("x_proj_weight")[k], u[:, k * inner : (k + 1) * inner])
        dts.append(torch.einsum("dr,brl->bdl", p("dt_projs_weight")[k], proj[:, :rank]))
        bs.append(proj[:, rank : rank + n])
        cs.append(proj[:, rank + n :])
    delta = F.softplus(torch.cat(dts, 1) + p("dt_projs_bias").reshape(-1)[:, None])
    y = scan_recurrence(u, delta, -torch.exp(p("A_logs")), torch.stack(bs, 1), torch.stack(cs, 1), p("Ds"))
    y = torch.cat([y[:, k * inner : (k + 1) * inner][:, :, inv[k]] for k in range(4)], 1).view(batch, 4 * inner, height, width)
    shuffled = y.view(batch, 4, inner, height, width).transpose(1, 2).reshape(batch, 4 * inner, height, width)
    pooled = shuffled.mean(dim=(2, 3), keepdim=True)
    gate = torch.sigmoid(F.conv2d(pooled, p("gating.gating.1.weight"), p("gating.gating.1.bias"), groups=inner))
    gate = gate.view(batch, inner, 4, 1, 1).transpose(1, 2).reshape(batch, 4 * inner, 1, 1)
    fused = (y * gate).view(batch, 4, inner, height, width).sum(1).permute(0, 2, 3, 1)
    fused = F.layer_norm(fused, (inner,), p("out_norm.weight"), p("out_norm.bias"), eps=1e-5)
    return (fused * F.silu(z)) @ p("out_proj.weight").t()


def block(sd, prefix, x, scan_len, shift, mlp_name):
    """RMB / VSSBlock of section 3.2 (eval: no drop path)."""
    p = lambda name: sd[prefix + name]  # noqa: E731
    channels = x.shape[-1]
    ln = lambda t, i: F.layer_norm(t, (channels,), p(f"ln_{i}.weight"), p(f"ln_{i}.bias"), eps=1e-5)  # noqa: E731
    a = x * p("skip_scale") + mixer(sd, prefix + "self_attention.", ln(x, 1), scan_len, shift)
    hidden = F.gelu(ln(a, 2) @ p(f"{mlp_name}.fc1.weight").t() + p(f"{mlp_name}.fc1.bias"))
    return a * p("skip_scale2") + hidden @ p(f"{mlp_name}.fc2.weight").t() + p(f"{mlp_name}.fc2.bias")


def conv(sd, name, x, padding=1):
    return F.conv2d(x, sd[name + ".weight"], sd.get(name + ".bias"), padding=padding)


def mair_forward(sd, config, x):
    """Section 3.4. ``config`` is a MaIR config mapping; x (B, 3, H, W) float64."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    mean = torch.tensor(RGB_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    x = (x - mean) * config["img_range"]
    f = conv(sd, "conv_first", x)
    channels = f.shape[1]
    t = F.layer_norm(f.permute(0, 2, 3, 1), (channels,), sd["patch_embed.norm.weight"], sd["patch_embed.norm.bias"], eps=1e-5)
    for i, depth in enumerate(config["depths"]):
        start = t
        for j in range(depth):
            shift = 0 if j % 2 == 0 else config["scan_len"] // 2
            t = block(sd, f"layers.{i}.residual_group.blocks.{j}.", t, config["scan_len"], shift, "conv_blk")
        t = conv(sd, f"layers.{i}.conv", t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) + start
    t = F.layer_norm(t, (channels,), sd["norm.weight"], sd["norm.bias"], eps=1e-5).permute(0, 3, 1, 2)
    body = conv(sd, "conv_after_body", t) + f
    scale = config["upscale"]
    if config["upsampler"] == "pixelshuffle":
        y = F.leaky_relu(conv(sd, "conv_before_upsample.0", body), 0.01)
        if scale == 3:
            y = F.pixel_shuffle(conv(sd, "upsample.0", y), 3)
        else:
            for stage in range(int(math.log2(scale))):
                y = F.pixel_shuffle(conv(sd, f"upsample.{2 * stage}", y), 2)
        y = conv(sd, "conv_last", y)
    elif config["upsampler"] == "pixelshuffledirect":
        y = F.pixel_shuffle(conv(sd, "upsample.0", body), scale)
    else:
        y = x + conv(sd, "conv_last", body)
    return y / config["img_range"] + mean


def unet_forward(sd, config, x):
    """Section 4 plus the official test padding (reflect bottom/right to a multiple of 8)."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    height, width = x.shape[-2:]
    x = F.pad(x, (0, (-width) % 8, 0, (-height) % 8), mode="reflect")
    s = config["scan_len"]

    def stage(name, t, count):
        t = t.permute(0, 2, 3, 1)
        for j in range(count):
            t = block(sd, f"{name}.{j}.", t, s, 0, "mlp")
        return t.permute(0, 3, 1, 2)

    nb = config["num_blocks"]
    e1 = stage("encoder_level1", conv(sd, "patch_embed.proj", x), nb[0])
    e2 = stage("encoder_level2", F.pixel_unshuffle(conv(sd, "down1_2.body.0", e1), 2), nb[1])
    e3 = stage("encoder_level3", F.pixel_unshuffle(conv(sd, "down2_3.body.0", e2), 2), nb[2])
    lat = stage("latent", F.pixel_unshuffle(conv(sd, "down3_4.body.0", e3), 2), nb[3])
    d3 = conv(sd, "reduce_chan_level3", torch.cat([F.pixel_shuffle(conv(sd, "up4_3.body.0", lat), 2), e3], 1), padding=0)
    d3 = stage("decoder_level3", d3, nb[2])
    d2 = conv(sd, "reduce_chan_level2", torch.cat([F.pixel_shuffle(conv(sd, "up3_2.body.0", d3), 2), e2], 1), padding=0)
    d2 = stage("decoder_level2", d2, nb[1])
    d1 = stage("decoder_level1", torch.cat([F.pixel_shuffle(conv(sd, "up2_1.body.0", d2), 2), e1], 1), nb[0])
    d1 = stage("refinement", d1, config["num_refinement_blocks"])
    return (conv(sd, "output", d1) + x)[..., :height, :width]
