"""scatter_to_scans / merge_scans: values and gradients equal plain autograd through torch.gather."""

from __future__ import annotations

import pytest
import torch

from restorecli.ops.scan_gather import merge_scans, scatter_to_scans
from restorecli.ops.scan_order import mair_scan_order


def plain_scatter(x, scan):
    batch, channels, length = x.shape
    shape = (batch, scan.shape[0], channels, length)
    return torch.gather(x.unsqueeze(1).expand(shape), 3, scan.view(1, -1, 1, length).expand(shape))


def plain_merge(sequences, weights, inverse):
    shape = sequences.shape
    raster = torch.gather(sequences, 3, inverse.view(1, -1, 1, shape[-1]).expand(shape))
    return (raster * weights.unsqueeze(-1)).sum(dim=1)


@pytest.mark.parametrize(("height", "width", "scan_len", "shift"), [(7, 5, 2, 0), (12, 16, 8, 4), (1, 9, 4, 2)])
def test_scatter_and_merge_match_plain_gather(height, width, scan_len, shift):
    order = mair_scan_order(height, width, scan_len, shift, "cpu")
    generator = torch.Generator().manual_seed(height * 100 + width)
    length = height * width
    x = torch.randn(2, 3, length, dtype=torch.float64, generator=generator, requires_grad=True)
    weights = torch.rand(2, 4, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    upstream_seq = torch.randn(2, 4, 3, length, dtype=torch.float64, generator=generator)
    upstream_out = torch.randn(2, 3, length, dtype=torch.float64, generator=generator)

    def run(scatter, merge):
        sequences = scatter(x)
        merged = merge(sequences * 1.5, weights)
        loss = (sequences * upstream_seq).sum() + (merged * upstream_out).sum()
        grads = torch.autograd.grad(loss, (x, weights))
        return sequences.detach(), merged.detach(), grads

    fast = run(lambda t: scatter_to_scans(t, order.scan, order.inverse), lambda s, w: merge_scans(s, w, order.scan, order.inverse))
    plain = run(lambda t: plain_scatter(t, order.scan), lambda s, w: plain_merge(s, w, order.inverse))
    torch.testing.assert_close(fast[0], plain[0], rtol=0, atol=0)
    torch.testing.assert_close(fast[1], plain[1], rtol=1e-12, atol=1e-12)
    for got, want in zip(fast[2], plain[2]):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_gradcheck():
    order = mair_scan_order(4, 6, 2, 1, "cpu")
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 24, dtype=torch.float64, generator=generator, requires_grad=True)
    weights = torch.rand(1, 4, 2, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: scatter_to_scans(t, order.scan, order.inverse), (x,))
    sequences = torch.randn(1, 4, 2, 24, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, w: merge_scans(s, w, order.scan, order.inverse), (sequences, weights))
