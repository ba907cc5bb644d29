"""The block epilogues' compiled kernel against their PyTorch formulation, float64 and float32,
runs longer than one work unit, batch > 1 and one or two threads; the merge's compiled backward
against autograd through the PyTorch formulation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from restorecli.ops.block_epilogue import merge_norm_gate, merge_norm_gate_reference, residual_norm


def make_norm(width: int, dtype: torch.dtype, gen: torch.Generator) -> nn.LayerNorm:
    norm = nn.LayerNorm(width, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(width, generator=gen, dtype=dtype))
        norm.bias.copy_(0.2 * torch.randn(width, generator=gen, dtype=dtype))
    return norm


def with_threads(threads: int, fn):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows, inner", [(1, 5), (130, 66), (67, 17)])
def test_merge_norm_gate_kernel_matches_torch(compiled: None, dtype: torch.dtype, threads: int, rows: int, inner: int) -> None:
    gen = torch.Generator().manual_seed(rows + inner)
    y = torch.randn(2, rows, 4, inner, generator=gen, dtype=dtype)
    gates = torch.rand(2, 4, inner, generator=gen, dtype=dtype)
    z = 3 * torch.randn(2, rows, inner, generator=gen, dtype=dtype)
    norm = make_norm(inner, dtype, gen)
    with torch.no_grad():
        got = with_threads(threads, lambda: merge_norm_gate(y, gates, z, norm, backend="cpu"))
        want = merge_norm_gate_reference(y, gates, z, norm, backend="ref")
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert got.dtype == dtype and got.shape == want.shape
    assert (got - want).abs().max().item() < tol


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("threads", [1, 2])
def test_residual_norm_kernel_matches_torch(compiled: None, dtype: torch.dtype, threads: int) -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(131, 60, generator=gen, dtype=dtype)
    mixed = torch.randn(131, 60, generator=gen, dtype=dtype)
    skip = 1 + 0.1 * torch.randn(60, generator=gen, dtype=dtype)
    norm = make_norm(60, dtype, gen)
    with torch.no_grad():
        a, normed = with_threads(threads, lambda: residual_norm(x, skip, mixed, norm, backend="cpu"))
        want_a = x * skip + mixed
        want = norm(want_a)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert (a - want_a).abs().max().item() < tol
    assert (normed - want).abs().max().item() < tol


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows, inner", [(1, 5), (130, 66), (67, 17), (9, 300)])
def test_merge_norm_gate_backward_matches_torch(compiled: None, dtype: torch.dtype, threads: int, rows: int, inner: int) -> None:
    """The compiled backward: gradients of y, the gates, z and the norm's weight and bias against
    autograd through the PyTorch formulation (rows wider than the registers hold: 300)."""
    gen = torch.Generator().manual_seed(rows * inner)
    y = torch.randn(2, rows, 4, inner, generator=gen, dtype=dtype)
    gates = torch.rand(2, 4, inner, generator=gen, dtype=dtype)
    z = 3 * torch.randn(2, rows, inner, generator=gen, dtype=dtype)
    grad = torch.randn(2, rows, inner, generator=gen, dtype=dtype)
    norm = make_norm(inner, dtype, gen)
    results = []
    for backend in ("cpu", "ref"):
        inputs = [t.clone().requires_grad_() for t in (y, gates, z)]
        norm.zero_grad()

        def run() -> torch.Tensor:
            out = merge_norm_gate(*inputs, norm, backend=backend)
            out.backward(grad)
            return out

        out = with_threads(threads, run)
        results.append([out.detach(), *(t.grad for t in inputs), norm.weight.grad.clone(), norm.bias.grad.clone()])
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for got, want in zip(*results):
        assert got.shape == want.shape
        assert ((got - want).norm() / want.norm()).item() < tol


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows, channels, use_a", [(1, 5, True), (131, 60, True), (67, 17, False), (9, 300, True)])
def test_residual_norm_backward_matches_torch(
    compiled: None, dtype: torch.dtype, threads: int, rows: int, channels: int, use_a: bool
) -> None:
    """The compiled backward: gradients of x, skip, mixed and the norm's weight and bias, with
    and without a gradient reaching ``a`` itself, against autograd through PyTorch."""
    gen = torch.Generator().manual_seed(rows * channels)
    x = torch.randn(2, rows, channels, generator=gen, dtype=dtype)
    mixed = torch.randn(2, rows, channels, generator=gen, dtype=dtype)
    skip = 1 + 0.1 * torch.randn(channels, generator=gen, dtype=dtype)
    grad_a, grad_n = (torch.randn(2, rows, channels, generator=gen, dtype=dtype) for _ in range(2))
    norm = make_norm(channels, dtype, gen)
    results = []
    for backend in ("cpu", "ref"):
        inputs = [t.clone().requires_grad_() for t in (x, skip, mixed)]
        norm.zero_grad()

        def run() -> list[torch.Tensor]:
            a, normed = residual_norm(*inputs, norm, backend=backend)
            loss = (normed * grad_n).sum()
            (loss + (a * grad_a).sum() if use_a else loss).backward()
            return [a.detach(), normed.detach()]

        outs = with_threads(threads, run)
        results.append([*outs, *(t.grad for t in inputs), norm.weight.grad.clone(), norm.bias.grad.clone()])
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for got, want in zip(*results):
        assert got.shape == want.shape
        assert ((got - want).norm() / want.norm()).item() < tol


def test_merge_norm_gate_gradcheck(compiled: None) -> None:
    gen = torch.Generator().manual_seed(4)
    y = torch.randn(2, 9, 4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    gates = torch.rand(2, 4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2, 9, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    norm = make_norm(6, torch.float64, gen)
    assert torch.autograd.gradcheck(
        lambda a, g, b, w, c: merge_norm_gate(a, g, b, _with_affine(norm, w, c), backend="cpu"),
        (y, gates, z, norm.weight.detach().clone().requires_grad_(), norm.bias.detach().clone().requires_grad_()),
    )


def _with_affine(norm: nn.LayerNorm, weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    """A LayerNorm-like holder whose weight and bias are the given tensors (for gradcheck)."""
    holder = nn.Module()
    holder.weight, holder.bias, holder.eps = weight, bias, norm.eps  # type: ignore[assignment]
    return holder  # type: ignore[return-value]
