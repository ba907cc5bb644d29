"""The GPU path's decisions, tested without a GPU: device strings (``cuda:N``, torchrun ranks),
tiles per batch from free GPU memory, out-of-memory back-off through ``ImageRestorer`` (with
``torch.cuda.OutOfMemoryError`` injected), and NCCL for training ranks on CUDA.

``torch.cuda`` queries are monkeypatched; nothing here touches a device.
"""

from __future__ import annotations

import pytest
import torch

from restorecli.errors import BackendUnavailableError
from restorecli.inference import CUDA_MEMORY_SHARE, ImageRestorer, resolve_device
from restorecli.tiling import tile_batch_from_budget
from restorecli.torchrun import DistInfo


class ConvToy(torch.nn.Module):
    """Convolution-only network with the restoration contract; tiled output equals whole-image output."""

    upscale = 1

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def test_device_strings_pick_the_gpu(two_gpus: None) -> None:
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("auto") == torch.device("cuda", 0)
    with pytest.raises(BackendUnavailableError, match="index below 2"):
        resolve_device("cuda:2")


def test_torchrun_ranks_take_their_local_gpu(two_gpus: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit index wins


def test_tile_batch_from_budget() -> None:
    per_pixel = 1000.0
    tile_bytes = per_pixel * 256 * 256
    assert tile_batch_from_budget(3.5 * tile_bytes, per_pixel, 256) == 3
    assert tile_batch_from_budget(0.5 * tile_bytes, per_pixel, 256) == 1  # never below one tile
    assert tile_batch_from_budget(1e15, per_pixel, 256) == 16
    assert tile_batch_from_budget(1e15, per_pixel, 256, cap=8) == 8


def test_given_tile_gets_its_batch_from_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA with a given tile and no batch size, the first larger image measures the batch."""
    restorer = ImageRestorer(ConvToy(), device="cpu", tile=32, overlap=8)
    restorer._batch_from_memory = True  # what a CUDA device sets
    probes = []
    per_pixel, free = 2000.0, 10.5 * 2000.0 * 32 * 32 / CUDA_MEMORY_SHARE  # room for 10 tiles

    def measure() -> tuple[float, int]:
        probes.append(1)
        return per_pixel, int(free)

    monkeypatch.setattr(restorer, "_measure_cuda", measure)
    image = torch.rand(1, 3, 80, 72)
    out = restorer.restore(image).output
    assert restorer.tile_batch == 10 and probes == [1]
    restorer.restore(image)
    assert probes == [1]  # measured once
    with torch.no_grad():
        assert torch.allclose(out, restorer.model(image), atol=1e-5)


def test_explicit_batch_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    restorer = ImageRestorer(ConvToy(), device="cpu", tile=32, overlap=8, tile_batch=3)
    assert restorer.tile_batch == 3 and not restorer._batch_from_memory


def test_gpu_out_of_memory_backs_off_and_is_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.cuda.OutOfMemoryError from batches of several 64² tiles: one tile at a time, then 32² tiles."""
    restorer = ImageRestorer(ConvToy(), device="cpu", tile=64, overlap=8, tile_batch=4)
    real_forward = restorer._forward
    seen = []

    def forward(tiles: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(tiles.shape))
        if tiles.shape[0] > 1 or max(tiles.shape[-2:]) > 40:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real_forward(tiles)

    monkeypatch.setattr(restorer, "_forward", forward)
    image = torch.rand(1, 3, 100, 90)
    result = restorer.restore(image)
    assert restorer.tile_batch == 1 and restorer.tile == 32 and result.tile == 32
    with torch.no_grad():
        assert torch.allclose(result.output, restorer.model(image), atol=1e-5)
    seen.clear()
    restorer.restore(image)  # the next image starts from what fitted
    assert all(shape[0] == 1 and max(shape[-2:]) <= 40 for shape in seen)


def test_training_ranks_on_cuda_use_nccl(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    from restorecli.train import distributed

    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append({"set_device": device}))
    info = DistInfo(rank=1, world=2, local_rank=1)
    device = distributed.rank_device(info, torch.device("cuda"))
    assert device == torch.device("cuda", 1)
    distributed.setup(info, device)
    assert calls == [{"set_device": device}, {"backend": "nccl", "rank": 1, "world_size": 2}]
    calls.clear()
    distributed.setup(info, torch.device("cpu"))
    assert calls == [{"backend": "gloo", "rank": 1, "world_size": 2}]
