"""Multi-process training under ``torchrun``: process group, device per rank, DDP wrapping.

``torchrun --nproc_per_node=N -m restorecli train --config ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` (read by ``restorecli.torchrun``); NCCL is used when the ranks train on CUDA, Gloo
on CPUs. Without those variables everything runs in one process and nothing here touches
``torch.distributed``.
"""

from __future__ import annotations

import torch
from torch import nn

from restorecli.torchrun import DistInfo, from_environment

__all__ = ["DistInfo", "barrier", "broadcast_flag", "cleanup", "from_environment", "rank_device", "setup", "wrap"]


def setup(info: DistInfo, device: torch.device) -> None:
    """Join the process group (NCCL for CUDA devices, Gloo otherwise); no-op for one process."""
    import torch.distributed as dist

    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world)


def rank_device(info: DistInfo, requested: torch.device) -> torch.device:
    """One GPU per local rank when training on CUDA; CPU ranks share the CPU."""
    if requested.type == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank)
    return requested


def wrap(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """Wrap in DistributedDataParallel when there are several processes."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def barrier(info: DistInfo) -> None:
    """Wait for all ranks (no-op for one process)."""
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def broadcast_flag(info: DistInfo, flag: bool, device: torch.device) -> bool:
    """Rank 0's value of ``flag`` on every rank (so all ranks stop at the same iteration)."""
    if not info.enabled:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def cleanup(info: DistInfo) -> None:
    """Leave the process group.

    The DDP wrapper's reducer holds Gloo work objects and may sit in a reference cycle after
    training returns; collected here, while the interpreter is whole. Left to the interpreter's
    shutdown, Gloo's threads can be torn down first and the process aborts ("terminate called
    without an active exception"), after a run that otherwise succeeded.
    """
    if info.enabled:
        import gc

        import torch.distributed as dist

        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()
        gc.collect()
