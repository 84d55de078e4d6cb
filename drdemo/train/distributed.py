"""Several training processes (torchrun): this process's rank and the epoch sampler that gives each
rank its share of a fixed per-epoch permutation, so an interrupted run resumes on the batches it had
not seen."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group torchrun set up (WORLD_SIZE > 1); a single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")))


class EpochSampler(Sampler[int]):
    """The epoch's permutation of (seed, epoch), this rank's share of it, from batch `start_batch` on.

    Every rank draws the same permutation and takes every world_size-th index, cut to a whole
    number of batches per rank so all ranks step together.
    """

    def __init__(self, size: int, batch_size: int, seed: int, dist_info: Distributed):
        self.size, self.batch_size, self.seed, self.dist = size, batch_size, seed, dist_info
        self.epoch, self.start_batch = 0, 0

    def batches_per_epoch(self) -> int:
        return (self.size // self.dist.world_size) // self.batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)[self.dist.rank::self.dist.world_size]
        order = order[:self.batches_per_epoch() * self.batch_size]
        return iter(order[self.start_batch * self.batch_size:].tolist())

    def __len__(self) -> int:
        return (self.batches_per_epoch() - self.start_batch) * self.batch_size

