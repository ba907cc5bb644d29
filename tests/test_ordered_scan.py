"""The ordered (fused NSS) scan and the SSA merge: the compiled kernel against the reference
formulation (explicit gathers around the ``ref`` scan), values and gradients, on real NSS orders,
per-image orders, odd sizes, 1x1 maps, batch > 1 and one or two threads; and the networks built
on them against the reference path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from restorecli import models
from restorecli.models import blocks
from restorecli.models.zoo import OFFICIAL_MODELS
from restorecli.ops import scan_cpu
from restorecli.ops.ordered_scan import merge_directions, ordered_scan_reference, ordered_selective_scan, prepare_ordered_inputs
from restorecli.ops.scan_order import mair_scan_order
from restorecli.ops.scan_ref import OrderedScanInputs


def make_inputs(batch, height, width, inner, rank, n_state, *, per_image=False, dtype=torch.float64, seed=0):
    """Inputs in Mamba's regime: softplus⁻¹ of small steps as Δ bias, A = -exp(log(1..N))."""
    gen = torch.Generator().manual_seed(seed)
    directions, length = 4, height * width

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    dt0 = torch.exp(torch.empty(directions * inner, dtype=torch.float64).uniform_(np.log(1e-3), np.log(0.1), generator=gen))
    log_a = torch.log(torch.arange(1, n_state + 1, dtype=torch.float64)).repeat(directions * inner, 1) + 0.1 * randn(directions * inner, n_state)
    tensors = [
        randn(batch, length, inner),
        0.5 * randn(batch, length, directions * (rank + 2 * n_state) + 3),  # extra columns are ignored
        randn(directions, inner, rank) / rank**0.5,
        dt0 + torch.log(-torch.expm1(-dt0)),
        -torch.exp(log_a),
        randn(directions * inner),
    ]
    if per_image:
        order = torch.stack([torch.stack([torch.randperm(length, generator=gen) for _ in range(directions)]) for _ in range(batch)])
        inverse = torch.argsort(order, dim=-1)
    else:
        nss = mair_scan_order(height, width, 4, 2, "cpu")
        order, inverse = nss.scan, nss.inverse
    return [t.to(dtype) for t in tensors], order, inverse


def run_both(tensors, order, inverse, seed=1):
    """Outputs and gradients (for random output gradients) of the kernel and the reference."""
    results = []
    for fused in (True, False):
        leaves = [t.clone().requires_grad_() for t in tensors]
        if fused:
            y, mean = ordered_selective_scan(*leaves, order, inverse, backend="cpu")
        else:
            y, mean = ordered_scan_reference(prepare_ordered_inputs(OrderedScanInputs(*leaves, order, inverse)), backend="ref")
        gen = torch.Generator().manual_seed(seed)
        grads = torch.autograd.grad(
            (y, mean), leaves, (torch.randn(y.shape, generator=gen, dtype=y.dtype), torch.randn(mean.shape, generator=gen, dtype=y.dtype))
        )
        results.append([y.detach(), mean.detach(), *grads])
    return results


def run_with_threads(threads: int, tensors: list, order: torch.Tensor, inverse: torch.Tensor) -> list:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return run_both(tensors, order, inverse)
    finally:
        torch.set_num_threads(previous)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-300)).item()


CASES = [  # batch, H, W, inner, R, N, per-image orders
    (1, 1, 1, 5, 1, 1, False),
    (2, 5, 7, 20, 3, 1, False),
    (1, 9, 6, 37, 2, 16, False),
    (2, 4, 4, 16, 4, 3, True),
    (3, 13, 11, 66, 4, 1, False),
    (1, 17, 9, 33, 12, 16, False),  # several tiles (64 steps) and a partial channel block
    (2, 9, 10, 140, 3, 1, True),  # N = 1 with more channel blocks than one group of the row kernel
]


@pytest.mark.parametrize("case", CASES, ids=[f"b{c[0]}-{c[1]}x{c[2]}-Di{c[3]}-R{c[4]}-N{c[5]}{'-perimage' if c[6] else ''}" for c in CASES])
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_matches_reference_float64(compiled: None, case: tuple, threads: int) -> None:
    batch, height, width, inner, rank, n_state, per_image = case
    tensors, order, inverse = make_inputs(batch, height, width, inner, rank, n_state, per_image=per_image)
    fused, reference = run_with_threads(threads, tensors, order, inverse)
    for label, got, want in zip(("y", "mean", "x", "proj", "dt_weight", "dt_bias", "A", "D"), fused, reference):
        assert rel_err(got, want) < 1e-12, label


@pytest.mark.parametrize("case", CASES[1:3] + CASES[4:])
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_matches_reference_float32(compiled: None, case: tuple, threads: int) -> None:
    batch, height, width, inner, rank, n_state, per_image = case
    tensors, order, inverse = make_inputs(batch, height, width, inner, rank, n_state, per_image=per_image, dtype=torch.float32)
    fused, reference = run_with_threads(threads, tensors, order, inverse)
    assert (fused[0] - reference[0]).abs().max().item() < 1e-5
    for got, want in zip(fused, reference):
        assert rel_err(got, want) < 2e-6


def test_kernel_gradcheck(compiled: None) -> None:
    tensors, order, inverse = make_inputs(2, 3, 5, 18, 2, 2)
    leaves = [t.requires_grad_() for t in tensors]

    def fn(*args):
        y, mean = ordered_selective_scan(*args, order, inverse, backend="cpu")
        return y, mean

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7)


def test_torch_fallback_is_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(scan_cpu.ENV_IMPL, "torch")
    tensors, order, inverse = make_inputs(2, 6, 5, 12, 2, 1)
    y, mean = ordered_selective_scan(*tensors, order, inverse, backend="cpu")
    want, want_mean = ordered_scan_reference(prepare_ordered_inputs(OrderedScanInputs(*tensors, order, inverse)), backend="ref")
    assert rel_err(y, want) < 1e-12 and rel_err(mean, want_mean) < 1e-12


def test_shape_errors_name_the_argument() -> None:
    tensors, order, inverse = make_inputs(1, 3, 3, 8, 2, 1)
    with pytest.raises(ValueError, match="proj"):
        ordered_selective_scan(tensors[0], tensors[1][..., :5], *tensors[2:], order, inverse)
    with pytest.raises(ValueError, match="order"):
        ordered_selective_scan(*tensors, order.int(), inverse)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_merge_kernel_matches_torch(compiled: None, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    y = torch.randn(2, 37, 4, 21, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    gates = torch.rand(2, 4, 21, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    grad = torch.randn(2, 37, 21, generator=gen, dtype=torch.float64).to(dtype)
    out = merge_directions(y, gates, backend="cpu")
    want = (y * gates.unsqueeze(1)).sum(2)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert rel_err(out, want) < tol
    for got, ref in zip(torch.autograd.grad(out, (y, gates), grad), torch.autograd.grad(want, (y, gates), grad)):
        assert rel_err(got, ref) < tol


# ---------------------------------------------------------------------------------------------
# Whole networks: the fused path (kernel) against the reference path (gathers + scan_ref).


def _distinct_official_configs() -> list[str]:
    seen, names = set(), []
    for name, spec in OFFICIAL_MODELS.items():
        if spec.config not in seen:
            seen.add(spec.config)
            names.append(name)
    return names


def _forward(net: torch.nn.Module, x: torch.Tensor, backend: str) -> torch.Tensor:
    models.set_scan_backend(net, backend)
    with torch.no_grad():
        return net(x)


@pytest.mark.slow
@pytest.mark.parametrize("name", _distinct_official_configs())
def test_official_networks_fused_equals_reference(compiled: None, name: str) -> None:
    net = models.build(name)
    size = (19, 13) if OFFICIAL_MODELS[name].arch == "mair" else (16, 24)
    x = torch.rand(1, net.in_chans, *size, generator=torch.Generator().manual_seed(0))
    fused = _forward(net, x, "cpu")
    reference = _forward(net, x, "ref")
    assert (fused - reference).abs().max().item() < 1e-5


def assert_fused_equals_reference_training(net: torch.nn.Module, x: torch.Tensor) -> None:
    """One float64 training pass through ``net`` with the fused kernel and with the reference:
    outputs and every parameter gradient agree to 1e-10."""
    results = []
    for backend in ("cpu", "ref"):
        models.set_scan_backend(net, backend)
        net.zero_grad()
        out = net(x)
        out.square().mean().backward()
        results.append([out.detach()] + [p.grad.clone() for p in net.parameters() if p.grad is not None])
    assert len(results[0]) == len(results[1])
    for got, want in zip(*results):
        assert rel_err(got, want) < 1e-10


@pytest.mark.parametrize("size", [(1, 1), (3, 7), (9, 8)])
def test_tiny_network_fused_equals_reference_and_gradients(compiled: None, size: tuple[int, int]) -> None:
    net = models.build_arch("mair", models.config_from_mapping("mair", {
        "upscale": 2, "in_chans": 3, "img_range": 1.0, "embed_dim": 20, "depths": [2, 2], "d_state": 2,
        "ssm_ratio": 1.7, "mlp_ratio": 1.5, "upsampler": "pixelshuffledirect", "resi_connection": "1conv", "scan_len": 4,
    })).double().train()
    for module in net.modules():  # no stochastic depth: both passes must see the same network
        if isinstance(module, blocks.DropPath):
            module.rate = 0.0
    x = torch.rand(2, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert_fused_equals_reference_training(net, x)


def test_streamed_inference_equals_whole_map(compiled: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The block's streamed inference path (runs of positions) gives the whole-map result."""
    net = models.build("mair-light-t-x2")
    x = torch.rand(2, 3, 14, 11, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        monkeypatch.setattr(blocks, "STREAM_ROWS", 37)  # runs that cross rows and image boundaries
        streamed = net(x)
        monkeypatch.setattr(blocks, "STREAM_ROWS", 1 << 30)
        whole = net(x)
    assert (streamed - whole).abs().max().item() < 1e-5


def test_bf16_inference_on_maps_larger_than_a_run(compiled: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--precision bf16` on the CPU: maps of more positions than a streamed run used to stop
    with a dtype error in in_proj; the output stays close to float32."""
    net = models.build("mair-light-t-x2")
    x = torch.rand(1, 3, 14, 11, generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(blocks, "STREAM_ROWS", 37)
    with torch.no_grad():
        whole = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = net(x)
    assert (half.float() - whole).abs().max().item() < 0.05


@pytest.mark.parametrize("scan", ["cross", "gps", "both"])
@pytest.mark.parametrize("qclam", [True, False])
def test_vamamba_fused_equals_reference_and_gradients(compiled: None, scan: str, qclam: bool) -> None:
    base = vars(models.spec("vamamba-light-sr-x2").config)
    config = models.config_from_mapping("vamamba", {**base, "scan": scan, "qclam": qclam, "depths": (1, 1), "embed_dim": 16})
    net = models.build_arch("vamamba", config).double().train()
    with torch.no_grad():  # non-trivial weights everywhere (zero-initialised adapters hide paths)
        for parameter in net.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, dtype=parameter.dtype, generator=torch.Generator().manual_seed(parameter.numel())))
    for module in net.modules():
        if isinstance(module, blocks.DropPath):
            module.rate = 0.0
    x = torch.rand(2, 3, 13, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert_fused_equals_reference_training(net, x)


@pytest.mark.parametrize("d_state", [1, 3])
def test_training_node_equals_separate_scan_and_epilogue(compiled: None, monkeypatch: pytest.MonkeyPatch, d_state: int) -> None:
    """Training runs a mixer's scan, SSA gates and output side as one autograd node whose scan
    backward reads the merged gradient and the gates (float32: the AVX-512 row kernel for
    N = 1); it equals the scan and the epilogue as separate nodes, outputs and every gradient."""
    from restorecli.ops import scan_cpu

    config = {
        "upscale": 2, "in_chans": 3, "img_range": 1.0, "embed_dim": 24, "depths": [2], "d_state": d_state,
        "ssm_ratio": 1.4, "mlp_ratio": 1.5, "upsampler": "pixelshuffledirect", "resi_connection": "1conv", "scan_len": 4,
    }  # fmt: skip
    torch.manual_seed(0)
    net = models.build_arch("mair", models.config_from_mapping("mair", config)).train()
    for module in net.modules():
        if isinstance(module, blocks.DropPath):
            module.rate = 0.0
    x = torch.rand(2, 3, 23, 19, generator=torch.Generator().manual_seed(5))
    original, ran = scan_cpu.scan_merge_norm_gate_kernel, []

    def spy(*args: object) -> torch.Tensor | None:
        out = original(*args)  # type: ignore[arg-type]
        ran.append(out is not None)
        return out

    results = []
    for fused in (True, False):
        monkeypatch.setattr(scan_cpu, "scan_merge_norm_gate_kernel", spy if fused else lambda *args: None)
        net.zero_grad()
        out = net(x)
        out.square().mean().backward()
        results.append([out.detach()] + [p.grad.clone() for p in net.parameters()])
    assert ran == [True, True]  # both blocks ran the single node
    for got, want in zip(*results):
        assert rel_err(got, want) < 1e-5
