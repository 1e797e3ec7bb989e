"""Memory of a simulation without running it: a pass on the meta device that counts allocations.

:class:`AllocationTracker` follows every tensor storage the operations under it create (on any
device, the meta device included, where nothing is allocated) until its last tensor is garbage
collected, and keeps the high-water mark: the bytes a run of the same code on a real device
would hold at its peak, counting tensors only (allocator caches and library scratch buffers are
not seen). :func:`meta_copy` makes a copy of a module whose parameters and buffers live on the
meta device (no data is copied), so a model of any size can be run through the tracker in
milliseconds on any input shape.
"""

from __future__ import annotations

import copy
import weakref

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class AllocationTracker(TorchDispatchMode):
    """Counts the bytes of the storages created inside ``with AllocationTracker() as t:``.

    ``t.current`` is what is still alive, ``t.peak`` the largest ``current`` seen. A storage is
    counted once however many views share it, and released when the last of them is collected.
    Storages created before the block (parameters, the input) are not counted.
    """

    def __init__(self):
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, list[int]] = {}  # storage id -> [nbytes, tensors alive]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        key = t.untyped_storage()._cdata
        entry = self._live.get(key)
        if entry is None:
            entry = self._live[key] = [t.untyped_storage().nbytes(), 0]
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self._live[key]


def meta_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with its parameters and buffers on the meta device (nothing copied).

    Its modules have no hooks (the originals' are not copied), and every module with a
    ``for_estimates()`` method is switched by it to the code that runs on shapes alone and
    allocates what the real one does at its peak (neurons: one step of their T-step loop with all
    its buffers; int8 synapses: the float convolution).
    """
    memo: dict[int, object] = {}
    for t in [*module.parameters(), *module.buffers()]:
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    copied = copy.deepcopy(module, memo).to("meta")
    for m in copied.modules():
        for hooks in _HOOK_DICTS:  # the originals' observers (e.g. spike statistics) must not see this copy
            getattr(m, hooks).clear()
        if callable(getattr(type(m), "for_estimates", None)):
            m.for_estimates()
    return copied


_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def meta_like(obj):
    """``obj`` (a tensor, or tuples / lists / dicts of them) as empty meta tensors of the same shapes."""
    if isinstance(obj, torch.Tensor):
        return torch.empty_like(obj, device="meta")
    if isinstance(obj, (list, tuple)):
        return type(obj)(meta_like(o) for o in obj)
    if isinstance(obj, dict):
        return {k: meta_like(v) for k, v in obj.items()}
    return obj
