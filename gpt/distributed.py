"""DistributedDataParallel under `torchrun`: joining the process group, this rank's device and
share of the data, and the collective operations `Trainer` needs."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler


@dataclass(frozen=True)
class Distributed:
    """This process's place in a process group of two or more."""

    rank: int
    world_size: int
    owns_group: bool  # fit initialised the process group, so it also destroys it

    def mean(self, value: Tensor) -> float:
        """`value` averaged over the ranks (every rank must call it)."""
        dist.all_reduce(value)
        value /= self.world_size
        return value.item()

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when `flag` is true on any (every rank must call it)."""
        value = torch.tensor(float(flag), device=device)
        dist.all_reduce(value)
        return bool(value.item())

    def main_decides(self, flag: bool, device: torch.device) -> bool:
        """Rank 0's `flag` on every rank (one broadcast; every rank must call it)."""
        value = torch.tensor(float(flag), device=device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    def barrier(self) -> None:
        dist.barrier()

    def leave(self) -> None:
        """Destroy the process group if `join_process_group` created it."""
        if self.owns_group:
            dist.destroy_process_group()


def join_process_group(device: torch.device) -> Distributed | None:
    """The process group `torchrun` describes (initialised here if needed); None for a single process."""
    owns_group = False
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) < 2:
            return None
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owns_group = True
    if dist.get_world_size() < 2:
        return None
    return Distributed(dist.get_rank(), dist.get_world_size(), owns_group)


def training_device(device: torch.device) -> torch.device:
    """The model's device; under `torchrun` on CUDA, this process's GPU (`LOCAL_RANK`)."""
    if device.type != "cuda" or "LOCAL_RANK" not in os.environ:
        return device
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    return device


def data_parallel(model: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    """`model` wrapped for DDP: its backward pass all-reduces the gradients."""
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def shard(loader: DataLoader, group: Distributed) -> DataLoader:
    """`loader` over this rank's share of its dataset, with the same batch size, shuffle and drop_last."""
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    if loader.batch_size is None:
        raise ValueError("distributed training needs a DataLoader built with batch_size")
    sampler = DistributedSampler(
        loader.dataset,
        num_replicas=group.world_size,
        rank=group.rank,
        shuffle=isinstance(loader.sampler, RandomSampler),
        seed=0 if loader.generator is None else loader.generator.initial_seed(),
        drop_last=loader.drop_last,
    )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        drop_last=loader.drop_last,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        generator=loader.generator,
    )
