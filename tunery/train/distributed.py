"""Data parallelism across processes (torchrun): every rank takes a slice of each batch; LoRA gradients are summed.

Launch: `torchrun --nproc_per_node N -m tunery.cli tune --local ...` (one process per GPU; on CPU, gloo).
The loss is normalised by the global count of supervised tokens and gradients are summed with one flat
all_reduce, so N processes compute exactly the single-process gradient. Rank 0 writes the run directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This rank's share of a batch (or dataset)."""
        return items[self.rank::self.world]

    def sum(self, *values: float) -> list[float]:
        """Sum scalars over all ranks."""
        if self.world == 1:
            return list(values)
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=_device(self))
        dist.all_reduce(t)
        return t.tolist()

    def sum_grads(self, params) -> None:
        """Replace each gradient by its sum over ranks (one flat all_reduce: LoRA gradients are small)."""
        if self.world == 1:
            return
        import torch
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset: offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def _device(d: Dist) -> str:
    import torch

    return f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu"


def init() -> Dist:
    """Join the process group torchrun set up (WORLD_SIZE > 1); a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local)


def shutdown(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
