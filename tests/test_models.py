"""Networks: official layouts, parameter counts, config/constructor agreement, forward shapes,
checkpoint reading, and agreement of the fast mixer with a literal rendering of the networks (spec_reference.py)."""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import spec_reference
from restorecli import models
from restorecli.errors import CheckpointError, ConfigError, UnknownModelError
from restorecli.models.blocks import MambaMixer2D

KEYS_DIR = Path(__file__).parent / "data" / "official_keys"
KEY_FILES = {
    "mair-sr-x4": "mair_SR_x4.txt",
    "mair-light-t-x4": "mair_lightSR_T_x4.txt",
    "mair-light-s-x4": "mair_lightSR_S_x4.txt",
    "mair-dn-s25": "mair_CDN_s25.txt",
    "mair-realdn": "mair_RealDN.txt",
    "mair-deblur": "mair_MotionDeblur.txt",
    "mair-dehaze-its": "mair_Dehaze.txt",
    "mair-dehaze-ots": "mair_Dehaze.txt",
    "mair-dehaze-r6k": "mair_Dehaze.txt",
}
PARAM_COUNTS = {  # measured on the official modules
    "mair-sr-x2": 19_444_247, "mair-sr-x3": 19_628_887, "mair-sr-x4": 19_591_959,
    "mair-light-s-x2": 1_354_680, "mair-light-s-x3": 1_362_795, "mair-light-s-x4": 1_374_156,
    "mair-light-t-x2": 877_752, "mair-light-t-x3": 885_867, "mair-light-t-x4": 897_228,
    "mair-dn-s15": 14_089_035, "mair-dn-s25": 14_089_035, "mair-dn-s50": 14_089_035,
    "mair-realdn": 26_293_296, "mair-deblur": 26_293_296,
    "mair-dehaze-its": 3_404_376, "mair-dehaze-ots": 3_404_376, "mair-dehaze-r6k": 3_404_376,
}
TINY_MAIR = {
    "upscale": 2, "in_chans": 3, "img_range": 1.0, "embed_dim": 12, "depths": [2, 1], "d_state": 2,
    "ssm_ratio": 1.5, "mlp_ratio": 1.5, "upsampler": "pixelshuffledirect", "resi_connection": "1conv", "scan_len": 4,
}
TINY_UNET = {
    "inp_channels": 3, "out_channels": 3, "dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1,
    "ssm_ratio": 1.2, "mlp_ratio": 1.0, "flp_ratio": 2.0, "bias": False, "scan_len": 4,
}


def _read_key_file(path: Path) -> list[tuple[str, list[int]]]:
    entries = []
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split()
        entries.append((key, [int(v) for v in shape.strip("[]").split(",") if v]))
    return entries


def test_names_cover_all_official_variants() -> None:
    assert [n for n in models.names() if models.spec(n).official_file] == sorted(PARAM_COUNTS)


@pytest.mark.parametrize("name", sorted(KEY_FILES))
def test_state_dict_layout_equals_official_key_file(name: str) -> None:
    expected = _read_key_file(KEYS_DIR / KEY_FILES[name])
    built = [(key, list(value.shape)) for key, value in models.build(name, device="meta").state_dict().items()]
    assert built == expected  # same keys, same shapes, same order


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_parameter_counts_equal_specification(name: str) -> None:
    module = models.build(name, device="meta")
    assert sum(p.numel() for p in module.parameters()) == PARAM_COUNTS[name]
    assert not any(True for _ in module.buffers(recurse=True) if False)  # buffers exist but none persist
    assert all(not key.endswith("mean") for key in module.state_dict())


def test_other_scales_follow_the_x4_layout_rules() -> None:
    x3 = models.build("mair-sr-x3", device="meta").state_dict()
    assert list(x3["upsample.0.weight"].shape) == [576, 64, 3, 3] and "upsample.2.weight" not in x3
    light_x2 = models.build("mair-light-t-x2", device="meta").state_dict()
    assert list(light_x2["upsample.0.weight"].shape) == [12, 60, 3, 3]


@pytest.mark.parametrize(("arch", "config_type"), [("mair", models.MaIRConfig), ("mairunet", models.MaIRUNetConfig)])
def test_config_fields_equal_constructor_parameters(arch: str, config_type: type) -> None:
    module_type = models.ARCHS[arch].module
    parameters = [p for p in inspect.signature(module_type.__init__).parameters.values() if p.name != "self"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters)
    assert [p.name for p in parameters] == [f.name for f in fields(config_type)]


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="embed_dims.*embed_dim"):
        models.build_arch("mair", {**TINY_MAIR, "embed_dims": 12})
    missing = dict(TINY_MAIR)
    del missing["scan_len"]
    with pytest.raises(ConfigError, match="missing.*scan_len"):
        models.build_arch("mair", missing)
    with pytest.raises(ConfigError, match="unknown architecture"):
        models.build_arch("mairr", TINY_MAIR)
    with pytest.raises(UnknownModelError, match="mair-sr-x4"):
        models.spec("mair-sr-x5")


@pytest.mark.parametrize(("height", "width"), [(1, 1), (3, 5), (8, 8), (13, 7)])
def test_tiny_mair_forward_shapes(height: int, width: int) -> None:
    net = models.build_arch("mair", TINY_MAIR)
    with torch.no_grad():
        out = net(torch.rand(2, 3, height, width))
    assert out.shape == (2, 3, 2 * height, 2 * width)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("upsampler,scale", [("pixelshuffle", 2), ("pixelshuffle", 3), ("pixelshuffle", 4), ("", 1)])
def test_tiny_mair_heads(upsampler: str, scale: int) -> None:
    net = models.build_arch("mair", {**TINY_MAIR, "upsampler": upsampler, "upscale": scale, "depths": [1]})
    with torch.no_grad():
        out = net(torch.rand(1, 3, 6, 5))
    assert out.shape == (1, 3, 6 * scale, 5 * scale)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (8, 8), (13, 21)])
def test_tiny_unet_forward_any_size(height: int, width: int) -> None:
    net = models.build_arch("mairunet", TINY_UNET)
    with torch.no_grad():
        out = net(torch.rand(1, 3, height, width))
    assert out.shape == (1, 3, height, width)
    assert torch.isfinite(out).all()


def test_unet_padding_is_reflection_for_normal_sizes() -> None:
    # A multiple-of-8 crop of a reflect-padded input gives the same result as the model's own padding.
    net = models.build_arch("mairunet", TINY_UNET)
    x = torch.rand(1, 3, 13, 21)
    padded = F.pad(x, (0, 3, 0, 3), mode="reflect")
    with torch.no_grad():
        assert torch.allclose(net(x), net(padded)[..., :13, :21], atol=1e-6)


def test_mair_training_step_backpropagates() -> None:
    net = models.build_arch("mair", TINY_MAIR).train()
    out = net(torch.rand(2, 3, 6, 6))
    out.mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert net.layers[0].residual_group.blocks[0].self_attention.A_logs.grad.abs().sum() > 0


@pytest.mark.parametrize(("d_state", "shift", "height", "width"), [(1, 0, 5, 7), (4, 2, 6, 9), (16, 4, 8, 8), (2, 4, 3, 2)])
def test_fast_mixer_equals_literal_specification(d_state: int, shift: int, height: int, width: int) -> None:
    mixer = MambaMixer2D(channels=20, d_state=d_state, ssm_ratio=1.3, scan_len=8 if shift == 4 else 4, shift=shift)
    with torch.no_grad():
        for p in mixer.parameters():  # non-trivial gate and projections
            p.add_(0.1 * torch.randn_like(p))
        x = torch.randn(2, height, width, 20)
        fast = mixer(x)
        state = {k: v.double() for k, v in mixer.state_dict().items()}
        literal = spec_reference.mixer(state, "", x.double(), mixer.scan_len, mixer.shift)
    assert (fast.double() - literal).abs().max().item() < 1e-5 * max(1.0, literal.abs().max().item())


def test_checkpoint_roundtrip_and_official_wrappers(tmp_path: Path) -> None:
    net = models.build_arch("mair", TINY_MAIR)
    state = net.state_dict()
    official = tmp_path / "official.pth"
    torch.save({"params": {f"module.{k}": v for k, v in state.items()}}, official)
    fresh = models.build_arch("mair", TINY_MAIR)
    models.load_checkpoint(fresh, official)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())

    ours = tmp_path / "ours.safetensors"
    models.save_checkpoint(ours, net, "mair", TINY_MAIR, name="tiny")
    checkpoint = models.read_checkpoint(ours)
    assert checkpoint.arch == "mair" and checkpoint.name == "tiny"
    assert asdict(models.config_from_mapping("mair", checkpoint.config)) == asdict(models.config_from_mapping("mair", TINY_MAIR))
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_checkpoint_errors_are_typed_and_short(tmp_path: Path) -> None:
    net = models.build_arch("mair", TINY_MAIR)
    wrong = models.build_arch("mair", {**TINY_MAIR, "embed_dim": 16}).state_dict()
    with pytest.raises(CheckpointError, match="mis-shaped") as info:
        models.load_checkpoint(net, wrong)
    assert "\n" not in str(info.value)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        models.read_checkpoint(tmp_path / "empty.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch or safetensors checkpoint"):
        models.read_checkpoint(tmp_path / "text.pth")
    with pytest.raises(CheckpointError, match="not found"):
        models.read_checkpoint(tmp_path / "missing.pth")


def test_identify_recognises_official_layouts() -> None:
    light = {k: torch.empty(v.shape) for k, v in models.build("mair-light-t-x3", device="meta").state_dict().items()}
    assert models.identify(light) == ["mair-light-t-x3"]
    dehaze = {k: torch.empty(v.shape) for k, v in models.build("mair-dehaze-ots", device="meta").state_dict().items()}
    assert models.identify(dehaze) == ["mair-dehaze-its", "mair-dehaze-ots", "mair-dehaze-r6k"]
    assert models.identify(models.build_arch("mair", TINY_MAIR).state_dict()) == []


def test_stats_params_and_flops() -> None:
    result = models.stats("mair-light-t-x4", 16, 16)
    assert result.params == 897_228
    # Scan cost: 24 mixers, each 4 directions * 66 channels * 256 positions * (9 * N + 1) with N = 1.
    assert result.scan_flops == 24 * 4 * 66 * 256 * 10
    assert result.dense_flops > 2 * 256 * 897_228 * 0.5  # at least about 2 FLOPs per weight per pixel
    assert result.flops == result.dense_flops + result.scan_flops


def test_stats_count_every_scanning_layer() -> None:
    """VAMamba's SS2D layers are counted too: 16 blocks, 6 directions (cross + GPS), Di = 57, N = 8."""
    result = models.stats("vamamba-light-sr-x2", 16, 16)
    assert result.scan_flops == 16 * 6 * 57 * 256 * (9 * 8 + 1)
    spec = models.spec("mair-light-t-x4")
    assert models.arch_stats(spec.arch, asdict(spec.config), 16, 24) == models.stats(spec.name, 16, 24)


def test_module_moves_with_to_and_keeps_no_state_between_calls() -> None:
    net = models.build_arch("mair", TINY_MAIR)
    x = torch.rand(1, 3, 5, 6)
    with torch.no_grad():
        first = net(x)
        net(torch.rand(1, 3, 9, 4))  # a different size in between
        again = net.to(torch.float64).to(torch.float32)(x)
    assert torch.equal(first, again)
    assert math.isclose(float(net.mean.sum()), 0.4488 + 0.4371 + 0.4040, rel_tol=1e-6)


@pytest.mark.gpu
def test_model_built_on_cuda_moves_to_cpu_and_runs() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    net = models.build_arch("mair", TINY_MAIR, device="cuda")
    x = torch.rand(1, 3, 9, 7)
    with torch.no_grad():
        on_gpu = net(x.cuda()).cpu()
        net = net.cpu()
        on_cpu = net(x)
    assert on_cpu.device.type == "cpu"
    assert torch.allclose(on_gpu, on_cpu, atol=1e-4)


@pytest.mark.parametrize(
    ("arch", "base", "change", "needle"),
    [
        ("mair", "mair-light-t-x4", {"embed_dim": 0}, "embed_dim must be positive, got 0"),
        ("mair", "mair-light-t-x4", {"depths": ()}, "depths must list one or more block counts >= 1, got []"),
        ("mair", "mair-light-t-x4", {"depths": (2, 0)}, "got [2, 0]"),
        ("mair", "mair-light-t-x4", {"ssm_ratio": float("nan")}, "ssm_ratio must be positive"),
        ("mair", "mair-light-t-x4", {"drop_path_rate": 1.0}, "drop_path_rate must be in [0, 1)"),
        ("vamamba", "restorecli-vamamba-light-x4", {"d_state": -1}, "d_state must be positive"),
    ],
)
def test_sizes_no_network_can_have_are_config_errors(arch: str, base: str, change: dict, needle: str) -> None:
    """A zero width or no blocks (e.g. from `restore train --set model.config.embed_dim=0`): one line."""
    import dataclasses

    config = dataclasses.replace(models.spec(base).config, **change)
    with pytest.raises(ConfigError) as info:
        models.build_arch(arch, config, device="meta")
    assert needle in str(info.value) and "\n" not in str(info.value)
