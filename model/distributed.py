"""Data-parallel training across processes, as ``torchrun`` launches them (one process per GPU).

``torchrun --nproc_per_node N -m model.cli train ...`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``;
:func:`init_distributed` starts the process group (NCCL on GPUs, Gloo on CPUs) and gives each process its GPU.
Every process draws its own videos; after each backward pass :meth:`DistributedContext.average_gradients`
averages the trainable parameters' gradients (one flat all-reduce), so all processes take the same optimizer
step from the same weights (rank 0's, broadcast at the start). Rank 0 alone logs and saves. Per-process state
that is not synchronised: the contrastive loss's ``[SEG]`` bank and, for models trained with the from-scratch
aids, BatchNorm statistics of the ``[SEG]`` state (as ``DistributedDataParallel`` without SyncBatchNorm).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Make every process start from rank 0's weights and buffers."""
        if not self.enabled:
            return
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Replace each gradient by its mean over the processes (a missing gradient counts as zero)."""
        if not self.enabled:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str) -> tuple[DistributedContext, str]:
    """The context from torchrun's environment (a single process without it) and the device this process uses."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    logger.info("process %d of %d on %s", rank, world_size, device)
    return DistributedContext(rank, world_size, local_rank), device
