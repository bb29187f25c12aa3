"""Which process this is under `accelerate launch`, and barriers between the phases of a round.

One process (plain `python`, or `accelerate launch` with one process) is rank 0 of 1 and every
barrier is a no-op. Under `--num_processes N` accelerate's `PartialState` sets up the process group
(gloo on CPU, NCCL on GPUs) and each rank takes every N-th piece of a round's work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

T = TypeVar("T")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    state: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()

    def most(self, n: int) -> int:
        """The largest n over all ranks (every rank must call this at the same point)."""
        if self.world == 1:
            return n
        from accelerate.utils import gather_object

        return max(gather_object([n]))

    def share(self, value: T) -> T:
        """The main process's value, on every rank (every rank must call this at the same point)."""
        if self.world == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value])[0]

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share: items rank, rank + world, ... (the same split on every rank)."""
        return list(items[self.rank::self.world])


def init_dist(cpu: bool, timeout_minutes: int = 180) -> Dist:
    """The process group accelerate launched, with an explicit collective timeout (accelerate passes it
    to torch.distributed.init_process_group; NCCL's default of 10 minutes is shorter than a rank may
    wait at a phase end)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    from datetime import timedelta

    from accelerate import PartialState

    state = PartialState(cpu=cpu, timeout=timedelta(minutes=timeout_minutes))
    return Dist(rank=state.process_index, world=state.num_processes, state=state)
