"""Data-parallel fine-tuning: every process of the default process group tunes on its own shard.

Each process passes its own batches (the same number on every process, as a
``DistributedSampler`` gives); after every backward pass the tuned weights' gradients are
averaged over the processes, so one step equals a step on the union of the processes' batches
and the weights stay the same everywhere. The measured objectives are summed over the
processes, and a keep / undo decision is the first process's, so all take the same.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import distributed as dist


class Ranks:
    """The processes that fine-tune together (one, when ``distributed`` is false)."""

    def __init__(self, distributed: bool, device: torch.device):
        if distributed and not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "distributed fine-tuning needs the default process group: call "
                "torch.distributed.init_process_group() in every process first, or pass distributed=False"
            )
        self.enabled = distributed and dist.get_world_size() > 1
        self.size = dist.get_world_size() if self.enabled else 1
        self.rank = dist.get_rank() if self.enabled else 0
        self.device = device  # the tensors of a collective live here (NCCL: the process's GPU)

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])  # one call, on a contiguous buffer of its own
        dist.all_reduce(flat)
        flat.div_(self.size)
        for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            g.copy_(part.view_as(g))

    def sum(self, *values: float) -> list[float]:
        """Each value summed over the processes."""
        return self._reduce(values, "SUM")

    def max(self, *values: float) -> list[float]:
        """Each value's maximum over the processes."""
        return self._reduce(values, "MAX")

    def _reduce(self, values: tuple[float, ...], op: str) -> list[float]:
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
        return t.tolist()

    def first(self, flag: bool) -> bool:
        """The first process's ``flag``, on every process."""
        if not self.enabled:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.broadcast(t, src=0)
        return bool(t.item())

    def same_count(self, n: int, what: str) -> None:
        """Stop, on every process, when the processes do not all have ``n`` ``what``: a process
        with fewer would wait for the others' gradients for ever."""
        low, high = self.max(-n, n)
        if -low != high:
            raise ValueError(
                f"the fine-tuning processes have between {int(-low)} and {int(high)} {what}: every process "
                "needs the same number (a DistributedSampler pads each shard to the same length)"
            )
