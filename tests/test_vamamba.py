"""VAMamba: configs, determinism of the per-pass QCLAM memory, GPS-SS2D, heads, training (docs/models.md)."""

from __future__ import annotations

import inspect
from pathlib import Path
from dataclasses import asdict, fields, replace

import pytest
import torch

from restorecli import models
from restorecli.inference import restore_tensor
from restorecli.models.vamamba import VAMamba, VAMambaConfig
from restorecli.tiling import TilePlan

TINY = VAMambaConfig(
    upscale=1, in_chans=3, img_range=1.0, embed_dim=16, depths=(2, 2), d_state=4, mlp_ratio=1.5,
    upsampler="", resi_connection="1conv", scan="both", qclam=True, lora_rank=4, cache_size=2,
    gps_patch=4, vit_dim=16, vit_layers=1, vit_heads=2, drop_path_rate=0.0,
)  # fmt: skip
VAMAMBA_NAMES = [n for n in models.names() if models.spec(n).arch == "vamamba"]


def tiny(**changes: object) -> VAMamba:
    torch.manual_seed(0)
    return models.build_arch("vamamba", replace(TINY, **changes))


def test_config_fields_equal_constructor_parameters() -> None:
    params = inspect.signature(VAMamba.__init__).parameters
    assert [f.name for f in fields(VAMambaConfig)] == [p for p in params if p != "self"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for name, p in params.items() if name != "self")


def test_named_configs_are_the_papers_model() -> None:
    assert VAMAMBA_NAMES == sorted(VAMAMBA_NAMES) and models.names() == sorted(models.names())
    assert {"vamamba-base", "vamamba-light", "vamamba-base-sr-x4", "vamamba-light-sr-x3"} <= set(VAMAMBA_NAMES)
    for name in VAMAMBA_NAMES:
        entry = models.spec(name)
        assert entry.config.scan == "both" and entry.config.qclam, name
        assert entry.official_file == "" and entry.config.upscale == entry.scale
        net = models.build(name, device="meta")
        assert net.upscale == entry.scale and net.in_chans == 3
    base = models.spec("vamamba-base").config
    assert (base.embed_dim, base.depths, base.d_state, base.mlp_ratio, base.lora_rank, base.cache_size) == (
        180, (6,) * 6, 16, 1.2, 16, 5,
    )  # fmt: skip


def test_config_from_mapping_rejects_unknown_keys() -> None:
    mapping = asdict(TINY)
    mapping["scna"] = "gps"
    with pytest.raises(models.ConfigError, match="did you mean 'scan'"):
        models.config_from_mapping("vamamba", mapping)


def test_adapter_starts_at_zero_and_a_is_negative() -> None:
    net = tiny()
    for module in net.modules():
        if type(module).__name__ == "QCLAM":
            assert torch.count_nonzero(module.lora_up.weight) == 0
    # A long GPS sequence stays finite because A = -exp(A_log) decays.
    with torch.no_grad():
        out = tiny(scan="gps", depths=(1,))(torch.rand(1, 3, 48, 40))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("scan", ["cross", "gps", "both"])
def test_output_independent_of_batch_order_history_and_repeats(scan: str) -> None:
    net = tiny(scan=scan)
    images = torch.rand(3, 3, 13, 11)
    with torch.no_grad():
        alone = net(images[:1])
        net(images[1:])  # other images first: nothing may be remembered
        after_others = net(images[:1])
        batched = net(images[[2, 0, 1]])
        twice = net(images[:1])
    torch.testing.assert_close(after_others, alone, rtol=0, atol=0)
    torch.testing.assert_close(twice, alone, rtol=0, atol=0)
    torch.testing.assert_close(batched[1:2], alone, rtol=1e-5, atol=1e-5)


def test_tiled_inference_is_independent_of_tile_order(monkeypatch: pytest.MonkeyPatch) -> None:
    net = tiny()
    image = torch.rand(1, 3, 60, 52)
    forward = restore_tensor(net, image, tile=32, overlap=8, device="cpu")
    original = TilePlan.tiles
    monkeypatch.setattr(TilePlan, "tiles", lambda self: iter(list(original(self))[::-1]))
    backward = restore_tensor(net, image, tile=32, overlap=8, device="cpu")
    torch.testing.assert_close(backward, forward, rtol=1e-5, atol=1e-5)
    assert forward.shape == image.shape


def test_gradients_reach_vit_adapter_and_fusion() -> None:
    net = tiny().train()
    net(torch.rand(2, 3, 12, 10)).square().mean().backward()
    named = dict(net.named_parameters())
    groups = {
        "vit": [k for k in named if ".vit_score_map." in k],
        "adapter": [k for k in named if ".lora_down." in k or ".lora_up." in k],
        # The first block has no earlier features to read; every later block fuses.
        "fusion": [k for k in named if ("feature_fusion" in k or "cache_weight" in k or "log_sharpness" in k)
                   and not k.startswith("layers.0.residual_group.blocks.0.")],
    }  # fmt: skip
    for group, keys in groups.items():
        assert keys, group
        for key in keys:
            grad = named[key].grad
            assert grad is not None and torch.isfinite(grad).all(), key
        assert any(named[k].grad.abs().sum() > 0 for k in keys), group
    # The score head itself: scores enter the output differentiably through the patch gate.
    heads = [k for k in named if k.endswith("score_head.weight")]
    assert heads and all(named[k].grad.abs().sum() > 0 for k in heads)


@pytest.mark.parametrize("scan", ["cross", "gps", "both"])
@pytest.mark.parametrize(("upsampler", "scale"), [("", 1), ("pixelshuffle", 2), ("pixelshuffle", 3),
                                                  ("pixelshuffle", 4), ("pixelshuffledirect", 2),
                                                  ("pixelshuffledirect", 3), ("pixelshuffledirect", 4)])  # fmt: skip
def test_every_head_on_odd_sizes(scan: str, upsampler: str, scale: int) -> None:
    net = tiny(scan=scan, upsampler=upsampler, upscale=scale, depths=(1,), qclam=scan != "cross")
    with torch.no_grad():
        for height, width in ((7, 5), (1, 3)):
            out = net(torch.rand(1, 3, height, width))
            assert out.shape == (1, 3, height * scale, width * scale)
            assert torch.isfinite(out).all()


def test_tiny_vamamba_overfits_two_images() -> None:
    net = tiny().train()
    torch.manual_seed(1)
    noisy = torch.rand(2, 3, 12, 12)
    clean = (noisy + 0.3 * torch.sin(torch.arange(12.0))).clamp(0, 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(60):
        loss = (net(noisy) - clean).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses[::10]


def test_restore_train_runs_a_tiny_vamamba_from_the_preset(tmp_path: Path) -> None:
    import cv2
    import numpy as np

    from restorecli.train import load_config, train

    hq = tmp_path / "hq"
    hq.mkdir()
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    for i in range(2):
        img = np.stack([np.sin(3 * xx + i), np.cos(2 * yy - i), xx * yy], axis=2) * 0.4 + 0.5
        cv2.imwrite(str(hq / f"img{i}.png"), (img * 255).round().astype(np.uint8))
    cfg = load_config(
        "vamamba-light-x2-cpu",
        [f"data.hq=[{hq}]", "data.patch=16", "data.batch=2", "schedule.iterations=4", "schedule.warmup=0",
         f"output.dir={tmp_path / 'run'}", "model.config.embed_dim=8", "model.config.depths=[2]",
         "model.config.vit_dim=8", "model.config.gps_patch=4"],
    )  # fmt: skip
    assert cfg.model.arch == "vamamba"
    losses = train(cfg).losses
    assert len(losses) == 4 and all(np.isfinite(losses))


def test_qclam_matches_its_formula_with_a_full_memory() -> None:
    """QCLAM as documented (stack, per-channel cosine, softmax, weighted read), in float64."""
    import torch.nn.functional as F

    from restorecli.models.vamamba import QCLAM, FeatureMemory

    torch.manual_seed(0)
    module = QCLAM(channels=6, rank=2).double()
    torch.nn.init.normal_(module.lora_up.weight, std=0.3)
    memory = FeatureMemory(3)
    entries = [torch.randn(2, 20, 6, dtype=torch.float64) for _ in range(4)]
    for entry in entries:
        memory.push(entry)  # the oldest falls out
    x = torch.randn(2, 20, 6, dtype=torch.float64, requires_grad=True)
    out = module(x, memory)
    a = module.lora_down(x)
    v = x + module.lora_up(a)
    stacked = torch.stack(entries[1:], dim=1)
    sim = torch.einsum("bld,bmld->bm", F.normalize(v, dim=1), F.normalize(stacked, dim=2)) / 6
    weights = torch.softmax(module.log_sharpness.exp() * sim, dim=1)
    read = torch.einsum("bm,bmld->bld", weights, stacked)
    gate = torch.sigmoid(module.cache_weight) * 0.5 * (1.0 + (weights * sim).sum(dim=1))
    expected = v + gate.view(-1, 1, 1) * module.feature_fusion(torch.cat([read, a], dim=-1))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert memory.entries[-1] is out and len(memory.entries) == 3
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    (grad_expected,) = torch.autograd.grad(expected.square().sum(), x)
    torch.testing.assert_close(grad, grad_expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["cpu", "ref"])
@pytest.mark.parametrize("scan", ["cross", "gps", "both"])
def test_inference_epilogue_equals_the_training_formulation(backend: str, scan: str) -> None:
    """Without autograd, SS2D scales the GPS sequences by their score gate in place and merges,
    normalises and gates them in one pass; with autograd it sums them first. Both are the same
    maths (float64, every head, with the kernel and with the PyTorch formulation)."""
    net = tiny(scan=scan).double()
    with torch.no_grad():  # non-trivial weights everywhere (zero-initialised adapters hide paths)
        for parameter in net.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, dtype=parameter.dtype, generator=torch.Generator().manual_seed(parameter.numel())))
    models.set_scan_backend(net, backend)
    x = torch.rand(2, 3, 13, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        inference = net(x)
    with torch.enable_grad():
        training = net(x.requires_grad_())
    torch.testing.assert_close(inference, training.detach(), rtol=1e-10, atol=1e-12)


def test_light_cab_on_rows_equals_its_convolutions() -> None:
    """The light CAB runs its 1x1 convolutions as linear layers on channels-last rows: the same
    as its Sequential of convolutions on the NCHW map (parameters and names unchanged)."""
    from restorecli.models.vamamba import CAB

    torch.manual_seed(0)
    cab = CAB(12, light=True).double()
    rows = torch.randn(2, 9, 7, 12, dtype=torch.float64)
    expected = cab.cab(rows.permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1)
    torch.testing.assert_close(cab(rows), expected, rtol=1e-12, atol=1e-12)
    assert [name for name, _ in cab.named_parameters()][:2] == ["cab.0.weight", "cab.0.bias"]


def test_score_vit_on_rows_equals_its_convolutions() -> None:
    """ScoreViT reads channels-last rows and runs its 1x1 reduction as a linear layer: the same
    scores as the registered convolutions on the NCHW map (odd sizes: replicate padding runs)."""
    import torch.nn.functional as F

    from restorecli.models.vamamba import ScoreViT, sincos_position_embedding

    torch.manual_seed(0)
    vit = ScoreViT(channels=10, patch=4, dim=16, layers=1, heads=2).double().eval()
    rows = torch.randn(2, 9, 7, 10, dtype=torch.float64)
    with torch.no_grad():
        t = F.pad(vit.reduce(rows.permute(0, 3, 1, 2).contiguous()), (0, 1, 0, 3), mode="replicate")
        t = vit.proj(t)
        batch, dim, h, w = t.shape
        tokens = t.flatten(2).transpose(1, 2) + sincos_position_embedding(h, w, dim, t.device, t.dtype)
        for layer in vit.layers:
            tokens = layer(tokens)
        expected = torch.sigmoid(vit.score_head(vit.norm(tokens))).view(batch, h, w)
        scores = vit(rows)
    assert scores.shape == (2, 3, 2)
    torch.testing.assert_close(scores, expected, rtol=1e-12, atol=1e-12)
