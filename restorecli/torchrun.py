"""This process's place in a ``torchrun`` job, read from the variables torchrun sets.

``torchrun --nproc_per_node=N -m restorecli ...`` starts N processes with ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK`` set; without them (or with ``WORLD_SIZE=1``) everything runs in one process.
The restore commands split their inputs by rank, training joins a process group, and device
selection takes the rank's GPU; all of them read the variables here (standard library only, so
any layer may import it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from restorecli.errors import ConfigError

__all__ = ["DistInfo", "from_environment"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job; ``rank == 0`` writes the files and reports.

    Attributes:
        rank: Global rank, 0 to ``world - 1``.
        world: Number of processes (1 outside torchrun).
        local_rank: Rank on this machine: the index of its GPU.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether there are several processes (and so a process group to use)."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and reports progress."""
        return self.rank == 0


def from_environment() -> DistInfo:
    """Read torchrun's variables; a single process when ``WORLD_SIZE`` is unset or 1.

    Raises:
        ConfigError: A variable that is not a whole number, or a rank outside the world.
    """
    world = _integer("WORLD_SIZE", "1")
    if world <= 1:
        return DistInfo()
    rank, local_rank = _integer("RANK", None), _integer("LOCAL_RANK", "0")
    if not 0 <= rank < world or local_rank < 0:
        raise ConfigError(
            f"torchrun environment: expected 0 <= RANK < WORLD_SIZE={world} and LOCAL_RANK >= 0, "
            f"got RANK={rank}, LOCAL_RANK={local_rank}"
        )
    return DistInfo(rank=rank, world=world, local_rank=local_rank)


def _integer(name: str, default: str | None) -> int:
    text = os.environ.get(name, default)
    if text is None:
        raise ConfigError(f"torchrun environment: WORLD_SIZE is set but {name} is not; start the command with torchrun")
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"torchrun environment: expected a whole number in {name}, got {text!r}") from None
