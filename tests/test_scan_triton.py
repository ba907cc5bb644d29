"""The Triton scan backend against the ``ref`` scan: values and gradients of the plain scan
(N = 1 and 16, G = 1 and 4, odd L, with and without D, Δ bias and softplus), float16/bfloat16
inputs, the fused-order variant on real NSS orders, a network, and backend resolution/labels.

Without CUDA the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set by
``conftest.py``); tests pass a ``chunk`` of 16 steps so every sequence spans several chunks and the
carried state and gradient are exercised; the whole file takes about 20 s on one CPU core.
Tolerances: float32 results agree with the float64 reference to 2e-6 (values) and 1e-5
(gradients), relative Frobenius error.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from restorecli import models  # noqa: E402
from restorecli.errors import BackendUnavailableError  # noqa: E402
from restorecli.models import blocks  # noqa: E402
from restorecli.ops import scan_cuda, scan_ref, scan_triton, selective_scan  # noqa: E402
from restorecli.ops.ordered_scan import ordered_scan_reference, ordered_selective_scan, prepare_ordered_inputs  # noqa: E402
from restorecli.ops.scan_order import mair_scan_order  # noqa: E402
from restorecli.ops.scan_ref import OrderedScanInputs  # noqa: E402
from restorecli.ops.selective_scan import implementation_label, prepare_inputs, resolve_backend  # noqa: E402

if scan_triton.unavailable_reason() is not None:
    pytest.skip(f"triton backend unusable here: {scan_triton.unavailable_reason()}", allow_module_level=True)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")
# Low-precision inputs against the float32 reference on the unrounded inputs: the error is the
# rounding of the inputs (bfloat16 keeps 8 bits, float16 11), carried through the recurrence.
LOW_PRECISION_TOL = {torch.bfloat16: 3e-2, torch.float16: 4e-3}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-300)).item()


def plain_inputs(batch: int, dim: int, length: int, n_state: int, groups: int | None, *, skip: bool = True,
                 bias: bool = True, softplus: bool = True, seed: int = 0) -> dict:
    """Float64 inputs in Mamba's regime; ``groups=None`` gives B/C as (batch, N, L)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    bc_shape = (batch, n_state, length) if groups is None else (batch, groups, n_state, length)
    dt0 = torch.empty(dim, dtype=torch.float64).uniform_(-6.9, -2.3, generator=gen).exp()
    delta = 0.5 * randn(batch, dim, length) if softplus else 0.3 * torch.rand(batch, dim, length, generator=gen, dtype=torch.float64)
    log_a = torch.log(torch.arange(1, n_state + 1, dtype=torch.float64)).repeat(dim, 1) + 0.1 * randn(dim, n_state)
    return {
        "u": randn(batch, dim, length), "delta": delta, "A": -torch.exp(log_a), "B": randn(*bc_shape), "C": randn(*bc_shape),
        "D": randn(dim) if skip else None,
        "delta_bias": (dt0 + torch.log(-torch.expm1(-dt0)) if softplus else dt0) if bias else None,
        "delta_softplus": softplus,
    }  # fmt: skip


def scan_and_grads(inputs: dict, backend: str, grad_out: torch.Tensor, chunk: int | None = 16) -> list[torch.Tensor]:
    """y and the gradients of <y, grad_out> for every tensor input (None-free)."""
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    args = {**inputs, **leaves}
    if backend == "triton":
        prepared = prepare_inputs(*(args[k] for k in GRAD_NAMES), args["delta_softplus"], keep_low_precision=True)
        y = scan_triton.selective_scan_triton(prepared, chunk=chunk)
    else:
        y = scan_ref.scan_sequential(prepare_inputs(*(args[k] for k in GRAD_NAMES), args["delta_softplus"]))
    grads = torch.autograd.grad(y, list(leaves.values()), grad_out.to(y.dtype))
    return [y.detach(), *grads]


def on_device(inputs: dict, dtype: torch.dtype = torch.float32) -> dict:
    """Inputs on the test device; u, delta, B and C in ``dtype``, the parameters in float32."""
    return {
        k: v.to(DEVICE, dtype if k in ("u", "delta", "B", "C") else torch.float32) if isinstance(v, torch.Tensor) else v
        for k, v in inputs.items()
    }


PLAIN_CASES = [  # batch, dim, L, N, G, D, bias, softplus
    (2, 8, 37, 1, 1, True, True, True),
    (1, 12, 29, 16, 4, True, True, True),
    (1, 8, 33, 16, 1, False, False, False),
    (1, 8, 19, 1, 4, True, False, True),
    (1, 6, 5, 3, None, False, True, False),
]


@pytest.mark.parametrize("case", PLAIN_CASES, ids=[f"b{c[0]}-d{c[1]}-L{c[2]}-N{c[3]}-G{c[4]}" for c in PLAIN_CASES])
def test_plain_scan_matches_ref(case: tuple) -> None:
    batch, dim, length, n_state, groups, skip, bias, softplus = case
    inputs = plain_inputs(batch, dim, length, n_state, groups, skip=skip, bias=bias, softplus=softplus)
    grad_out = torch.randn(batch, dim, length, dtype=torch.float64)
    got = scan_and_grads(on_device(inputs), "triton", grad_out.to(DEVICE))
    want = scan_and_grads(inputs, "ref", grad_out)
    assert got[0].dtype == torch.float32 and got[0].device.type == DEVICE.type
    names = ["y", *(k for k in GRAD_NAMES if inputs[k] is not None)]
    for name, g, w in zip(names, got, want):
        assert rel_err(g.cpu(), w) <= (2e-6 if name == "y" else 1e-5), name


def test_default_tiles_span_several_chunks() -> None:
    """The default chunk (64 steps for N = 1) on a sequence of three chunks, through the public entry."""
    inputs = plain_inputs(1, 6, 150, 1, 2)
    y = selective_scan(**on_device(inputs), backend="triton")
    want = scan_ref.scan_sequential(prepare_inputs(*(inputs[k] for k in GRAD_NAMES), True))
    assert scan_triton.tile_shape(1, 3).chunk == 64
    assert y.dtype == torch.float32 and rel_err(y.cpu(), want) <= 2e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype: torch.dtype) -> None:
    """Half inputs are read as they are: y and gradients equal the float32 scan of the same (rounded)
    values, and differ from the float32 scan of the unrounded inputs by the rounding only."""
    inputs = plain_inputs(1, 8, 41, 16, 4)
    grad_out = torch.randn(1, 8, 41, dtype=torch.float64)
    low = on_device(inputs, dtype)
    got = scan_and_grads(low, "triton", grad_out.to(DEVICE))
    rounded = {k: v.cpu().double() if isinstance(v, torch.Tensor) else v for k, v in low.items()}
    want = scan_and_grads(rounded, "ref", grad_out)
    assert got[0].dtype == torch.float32
    leaves = [k for k in GRAD_NAMES if inputs[k] is not None]
    for name, g in zip(leaves, got[1:]):
        assert g.dtype == low[name].dtype, name
    assert rel_err(got[0].cpu(), want[0]) <= 2e-6
    for name, g, w in zip(leaves, got[1:], want[1:]):
        assert rel_err(g.cpu(), w) <= (1e-5 if g.dtype == torch.float32 else 2 * LOW_PRECISION_TOL[dtype]), name
    exact = scan_ref.scan_sequential(prepare_inputs(*(inputs[k] for k in GRAD_NAMES), True))
    assert rel_err(got[0].cpu(), exact) <= LOW_PRECISION_TOL[dtype]


def ordered_inputs(batch: int, height: int, width: int, inner: int, rank: int, n_state: int, *, shift: int,
                   per_image: bool = False, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Float64 ordered-scan inputs on real NSS orders (stripes of 4, ``shift`` as MaIR's odd blocks)."""
    gen = torch.Generator().manual_seed(seed)
    directions, length = 4, height * width

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    dt0 = torch.empty(directions * inner, dtype=torch.float64).uniform_(-6.9, -2.3, generator=gen).exp()
    log_a = torch.log(torch.arange(1, n_state + 1, dtype=torch.float64)).repeat(directions * inner, 1)
    tensors = [
        randn(batch, length, inner),
        0.5 * randn(batch, length, directions * (rank + 2 * n_state) + 3),  # extra columns are ignored
        randn(directions, inner, rank) / rank**0.5,
        dt0 + torch.log(-torch.expm1(-dt0)),
        -torch.exp(log_a + 0.1 * randn(directions * inner, n_state)),
        randn(directions * inner),
    ]
    if per_image:
        order = torch.stack([torch.stack([torch.randperm(length, generator=gen) for _ in range(directions)]) for _ in range(batch)])
        return tensors, order, torch.argsort(order, dim=-1)
    nss = mair_scan_order(height, width, 4, shift, "cpu")
    return tensors, nss.scan, nss.inverse


def ordered_and_grads(tensors: list, order: torch.Tensor, inverse: torch.Tensor, fused: bool, dtype: torch.dtype = torch.float32) -> list:
    leaves = [(t.to(DEVICE, dtype if i < 2 else torch.float32) if fused else t).clone().requires_grad_() for i, t in enumerate(tensors)]
    order, inverse = (order.to(DEVICE), inverse.to(DEVICE)) if fused else (order, inverse)
    if fused:
        prepared = prepare_ordered_inputs(OrderedScanInputs(*leaves, order, inverse), keep_low_precision=True)
        y, mean = scan_triton.ordered_scan_triton(prepared, chunk=16)
    else:
        y, mean = ordered_scan_reference(prepare_ordered_inputs(OrderedScanInputs(*leaves, order, inverse)), backend="ref")
    gen = torch.Generator().manual_seed(1)
    outs = (torch.randn(y.shape, generator=gen, dtype=torch.float64), torch.randn(mean.shape, generator=gen, dtype=torch.float64))
    grads = torch.autograd.grad((y, mean), leaves, tuple(o.to(y.device, y.dtype) for o in outs))
    return [y.detach(), mean.detach(), *grads]


ORDERED_CASES = [  # batch, H, W, inner, R, N, shift, per-image orders
    (1, 5, 7, 6, 2, 1, 0, False),
    (1, 5, 5, 5, 3, 16, 2, False),
    (2, 9, 6, 4, 2, 1, 2, False),
    (2, 3, 5, 4, 3, 2, 0, True),
    (1, 1, 1, 3, 1, 1, 2, False),
]


@pytest.mark.parametrize("case", ORDERED_CASES, ids=[f"b{c[0]}-{c[1]}x{c[2]}-Di{c[3]}-N{c[5]}-s{c[6]}{'-perimage' if c[7] else ''}" for c in ORDERED_CASES])
def test_ordered_scan_matches_reference(case: tuple) -> None:
    batch, height, width, inner, rank, n_state, shift, per_image = case
    tensors, order, inverse = ordered_inputs(batch, height, width, inner, rank, n_state, shift=shift, per_image=per_image)
    fused = ordered_and_grads(tensors, order, inverse, fused=True)
    reference = ordered_and_grads(tensors, order, inverse, fused=False)
    assert fused[0].dtype == torch.float32 and fused[0].shape == (batch, height * width, 4, inner)
    for label, got, want in zip(("y", "mean", "x", "proj", "dt_weight", "dt_bias", "A", "D"), fused, reference):
        assert rel_err(got.cpu(), want) <= (2e-6 if label in ("y", "mean") else 1e-5), label


def test_ordered_scan_bfloat16_map() -> None:
    """bfloat16 x and proj (as under autocast) are read as they are; gradients come back in bfloat16."""
    tensors, order, inverse = ordered_inputs(1, 5, 5, 6, 2, 4, shift=2)
    fused = ordered_and_grads(tensors, order, inverse, fused=True, dtype=torch.bfloat16)
    rounded = [t.to(torch.bfloat16).double() if i < 2 else t.float().double() for i, t in enumerate(tensors)]
    reference = ordered_and_grads(rounded, order, inverse, fused=False)
    assert fused[2].dtype == torch.bfloat16 and fused[3].dtype == torch.bfloat16
    assert rel_err(fused[0].cpu(), reference[0]) <= 2e-6
    for got, want in zip(fused[4:], reference[4:]):  # parameter gradients stay float32
        assert rel_err(got.cpu(), want) <= 1e-5


def test_ordered_dispatch_uses_the_fused_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    tensors, order, inverse = ordered_inputs(1, 4, 5, 4, 2, 1, shift=0)
    calls = []
    fused = scan_triton.ordered_scan_triton
    monkeypatch.setattr(scan_triton, "ordered_scan_triton", lambda inputs: calls.append(1) or fused(inputs))
    y, _ = ordered_selective_scan(*(t.float().to(DEVICE) for t in tensors), order.to(DEVICE), inverse.to(DEVICE), backend="triton")
    want, _ = ordered_scan_reference(prepare_ordered_inputs(OrderedScanInputs(*tensors, order, inverse)))
    assert calls == [1] and rel_err(y.cpu(), want) <= 2e-6


def test_network_on_triton_matches_ref(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny MaIR (shifted and unshifted blocks, odd sizes): forward and a gradient."""
    default_tiles = scan_triton.tile_shape
    # 16-step chunks: the interpreter's cost grows with the chunk, and 35 steps then span 3 chunks
    monkeypatch.setattr(scan_triton, "tile_shape", lambda n_state, per_group, chunk=None: default_tiles(n_state, per_group, 16))
    config = {
        "upscale": 2, "in_chans": 3, "img_range": 1.0, "embed_dim": 12, "depths": [2], "d_state": 1,
        "ssm_ratio": 1.5, "mlp_ratio": 1.5, "upsampler": "pixelshuffledirect", "resi_connection": "1conv", "scan_len": 4,
    }  # fmt: skip
    net = models.build_arch("mair", config).to(DEVICE)
    x = torch.rand(1, 3, 5, 7, device=DEVICE)
    outputs = []
    for backend in ("triton", "ref"):
        blocks.set_scan_backend(net, backend)
        net.zero_grad()
        y = net(x)
        y.square().mean().backward()
        outputs.append((y.detach().cpu(), net.conv_first.weight.grad.detach().cpu()))
    assert rel_err(outputs[0][0], outputs[1][0]) <= 1e-5
    assert rel_err(outputs[0][1], outputs[1][1]) <= 1e-4


# --- resolution and labels ----------------------------------------------------------------


def test_explicit_triton_resolves_on_the_kernels_device() -> None:
    assert resolve_backend("triton", DEVICE) == "triton"
    assert implementation_label("triton", DEVICE) == f"{DEVICE.type}:triton"


def test_auto_never_picks_triton_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RESTORECLI_SCAN_BACKEND", raising=False)
    assert resolve_backend(None, "cpu") == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_explicit_triton_without_gpu_or_interpreter_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(scan_triton.ENV_INTERPRET, raising=False)
    with pytest.raises(BackendUnavailableError, match="no CUDA device") as caught:
        resolve_backend("triton", "cpu")
    assert "\n" not in str(caught.value) and "TRITON_INTERPRET=1" in str(caught.value)
    monkeypatch.setenv("RESTORECLI_SCAN_BACKEND", "triton")
    with pytest.raises(BackendUnavailableError, match="RESTORECLI_SCAN_BACKEND"):
        selective_scan(**plain_inputs(1, 4, 5, 1, 1))


def test_triton_import_failure_is_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan_triton, "_kernels", (None, "triton is not importable (ImportError: x)"))
    assert "not importable" in scan_triton.unavailable_reason()
    with pytest.raises(BackendUnavailableError, match="not importable"):
        resolve_backend("triton", DEVICE)


@pytest.mark.parametrize(
    ("mamba", "triton_reason", "expected"),
    [(True, None, "mamba_ssm"), (False, None, "triton"), (False, "triton needs a CUDA device", "torch")],
)
def test_cuda_backend_prefers_mamba_then_triton_then_torch(
    monkeypatch: pytest.MonkeyPatch, mamba: bool, triton_reason: str | None, expected: str
) -> None:
    from restorecli.inference import scan_label

    monkeypatch.delenv(scan_cuda.ENV_IMPL, raising=False)
    monkeypatch.delenv("RESTORECLI_SCAN_BACKEND", raising=False)
    monkeypatch.setattr(scan_cuda, "_mamba", (lambda *a, **k: None, "fake") if mamba else (None, "mamba_ssm absent"))
    monkeypatch.setattr(scan_cuda, "triton_unavailable_reason", lambda: triton_reason)
    assert scan_cuda.cuda_kernel_status().implementation == expected
    # auto on CUDA tensors resolves to the cuda backend without touching a device
    assert implementation_label(None, "cuda") == f"cuda:{expected}"
    assert scan_label(None, "cuda:0") == f"cuda:{expected}"
    if expected != "mamba_ssm":  # an explicit cuda still means mamba_ssm, never a silent substitute
        with pytest.raises(BackendUnavailableError, match="backend 'triton'"):
            implementation_label("cuda", "cuda") if torch.cuda.is_available() else _explicit_cuda_label()


def _explicit_cuda_label() -> str:
    # Without a GPU resolve_backend refuses an explicit cuda before the label is made; exercise
    # the label's own check by resolving as a GPU machine would.
    from unittest import mock

    with mock.patch.object(scan_cuda, "unavailable_reason", lambda: None):
        return implementation_label("cuda", "cuda")
