"""Memory of a simulation without running it: a pass on the meta device that counts allocations.

:class:`AllocationTracker` follows every tensor storage the operations under it create (on any
device, the meta device included, where nothing is allocated) until its last tensor is garbage
collected, and keeps the high-water mark: the bytes a run of the same code on a real device
would hold at its peak, counting tensors only (allocator caches and library scratch buffers are
not seen). :func:`meta_copy` makes a copy of a module whose parameters and buffers live on the
meta device (no data is copied), so a model of any size can be run through the tracker in
milliseconds on any input shape. :func:`available_memory` is what ``memory_budget`` fractions
of :class:`~fastsnn.convert.SpikingModel` refer to.
"""

from __future__ import annotations

import copy
import types
import weakref
from pathlib import Path

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

    Its modules have no hooks (the originals' are not copied). For estimates: int8 synapses (``SpikeConv2d``) run their float convolution in the copy (the
    path that works on shapes alone), and neurons :func:`_one_step_multistep`, which allocates
    what their T-step loop allocates at its peak at the cost of one step.
    """
    from ..neuron import IFNeuron
    from .integer import SpikeConv2d

    memo: dict[int, object] = {}
    for t in [*module.parameters(), *module.buffers()]:
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    for m in module.modules():  # int8 weight caches: not needed on the meta device
        if isinstance(m, SpikeConv2d):
            for name in ("_int_cache",):
                value = getattr(m, name, None)
                if value is not None:
                    memo[id(value)] = None
    copied = copy.deepcopy(module, memo).to("meta")
    for m in copied.modules():
        for hooks in _HOOK_DICTS:  # the originals' observers (e.g. spike statistics) must not see this copy
            getattr(m, hooks, {}).clear()
        if isinstance(m, SpikeConv2d):
            m.forward = types.MethodType(nn.Conv2d.forward, m)
        elif isinstance(m, IFNeuron):
            m.compiled = False
            m.forward = types.MethodType(_neuron_forward, m)
            m.forward_constant = types.MethodType(_neuron_forward_constant, m)
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


def _one_step_multistep(x: torch.Tensor, threshold: torch.Tensor, signed: bool, timesteps: int, constant: bool):
    """The allocations of :func:`fastsnn.neuron.if_multistep` at its peak, with one step instead of T.

    Every step of the loop allocates the same temporaries and frees them before the next, so
    the buffers (:func:`~fastsnn.neuron.multistep_buffers`) and one step's temporaries are the
    whole peak. Keep in step with ``if_multistep``.
    """
    from ..neuron import multistep_buffers, step_into

    like = x if constant else x[0]
    theta, v, count, out, scratch = multistep_buffers(like, threshold, signed, timesteps)
    step_into(out[0], like, v, count, theta, signed, scratch)
    return out


def _neuron_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
    return _one_step_multistep(x_seq, self.threshold, self.signed, x_seq.shape[0], False)


def _neuron_forward_constant(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:
    return _one_step_multistep(x, self.threshold, self.signed, timesteps, True)


def meta_like(obj):
    """``obj`` (a tensor, or tuples / lists / dicts of them) as empty meta tensors of the same shapes."""
    if isinstance(obj, torch.Tensor):
        return torch.empty_like(obj, device="meta")
    if isinstance(obj, (list, tuple)):
        return type(obj)(meta_like(o) for o in obj)
    if isinstance(obj, dict):
        return {k: meta_like(v) for k, v in obj.items()}
    return obj


def available_memory(device: torch.device | str) -> int | None:
    """Bytes free for new tensors on ``device``: ``torch.cuda.mem_get_info`` on CUDA, the kernel's
    ``MemAvailable`` (``/proc/meminfo``) on the CPU; None where neither is known."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
