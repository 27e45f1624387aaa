"""Data-parallel feature extraction under ``torchrun`` / ``accelerate launch`` (docs/scale-out.md).

:func:`init_group` joins the process group the launcher describes; :meth:`FeatureCache.fill
<micro_rm.features.cache.FeatureCache.fill>` then has every rank encode every ``world_size``-th
batch into shards of its own.

>>> group = init_group("cpu")                     # None outside a launcher  # doctest: +SKIP
>>> stats = cache.fill(items, backbone, group=group)                       # doctest: +SKIP
>>> group.close()                                                          # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

from micro_rm.errors import MicroRMError
from micro_rm.features.base import check_device

__all__ = ["RankGroup", "init_group", "launch_env"]

# How long a rank waits for the others at a collective: the spread of balanced shares' finishing
# times, not the length of the job.
TIMEOUT = timedelta(hours=2)


def launch_env(environ: Optional[dict[str, str]] = None) -> Optional[tuple[int, int, int]]:
    """``(rank, world_size, local_rank)`` set by a launcher, or None for a single process.

    >>> launch_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    (1, 2, 1)
    >>> launch_env({}) is None
    True
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    try:
        world = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise MicroRMError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers, got "
                           f"{env.get('RANK')!r} / {env.get('WORLD_SIZE')!r} / "
                           f"{env.get('LOCAL_RANK')!r}; start the job with torchrun or "
                           "accelerate launch") from None
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise MicroRMError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    return rank, world, local


@dataclass
class RankGroup:
    """This process's place in a distributed job, and the few collectives the encode needs."""

    rank: int
    world_size: int
    local_rank: int
    owns: bool = False               # whether this process group was created here (close() ends it)
    cpu_group: Any = None            # gloo side group for Python objects when backend is nccl

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints and writes files meant once per job."""
        return self.rank == 0

    def device(self, device: str) -> str:
        """This rank's device: ``cuda`` becomes ``cuda:<LOCAL_RANK>``, one GPU per process."""
        return f"cuda:{self.local_rank}" if device == "cuda" else device

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        import torch.distributed as dist
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.cpu_group)
        return box[0]

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order."""
        import torch.distributed as dist
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value, group=self.cpu_group)
        return out

    def barrier(self) -> None:
        import torch.distributed as dist
        dist.barrier(group=self.cpu_group)

    def close(self) -> None:
        """Leave the process group if :func:`init_group` created it."""
        import torch.distributed as dist
        if self.owns and dist.is_initialized():
            dist.destroy_process_group()
            self.owns = False


def init_group(device: str = "cpu") -> Optional[RankGroup]:
    """Join the process group a launcher described (``gloo`` on CPU, ``nccl`` on GPU ``LOCAL_RANK``;
    an existing one is used as it is), or return None for a single process."""
    env = launch_env()
    if env is None:
        return None
    import torch
    import torch.distributed as dist
    rank, world, local = env
    if not dist.is_available():
        raise MicroRMError("this torch build has no torch.distributed; run a single process")
    cuda = check_device(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(local if device == "cuda" else torch.device(device))
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=TIMEOUT)
    cpu_group = dist.new_group(backend="gloo", timeout=TIMEOUT) if dist.get_backend() != "gloo" else None
    return RankGroup(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local,
                     owns=owns, cpu_group=cpu_group)
