"""Where the values carried from layer to layer live: in memory, or in files streamed back.

A batch's carried values (:class:`_Batch`) are the SNN's values at the cut between tuned and
untuned layers, spike trains as int8 (:class:`_Stored`), and a paused run of the ANN. In
memory they are objects in a list (:class:`_InMemory`); on disk (:class:`_OnDisk`) each batch
is one file of plain tensors, read back one batch at a time, so the memory a layer needs is
one batch's whatever the data size.
"""

from __future__ import annotations

import errno
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import fx

from .graph import _Cursor

logger = logging.getLogger(__name__)


class CacheWriteError(OSError):
    """The carried values could not be written to the cache directory."""


class _Stored:
    """A cached value. A spike train (``s * theta``, ``s`` in {-1, 0, 1}) is kept as int8 ``s``
    when that gives back exactly the same tensor; anything else is kept as it is."""

    def __init__(self, value, theta: torch.Tensor | None = None):
        self.value, self.codes, self.scale = value, None, None
        if theta is not None and isinstance(value, torch.Tensor) and value.is_floating_point():
            scale = theta.to(value.dtype)
            codes = torch.round(value / scale).to(torch.int8)
            if torch.equal(codes.to(value.dtype) * scale, value):
                self.value, self.codes, self.scale = None, codes, scale

    def get(self, fresh: bool = False):
        """The value; ``fresh``: a tensor of its own (for a graph that writes into its inputs)."""
        if self.codes is not None:
            return self.codes.to(self.scale.dtype) * self.scale
        return self.value.clone() if fresh and isinstance(self.value, torch.Tensor) else self.value

    def tensors(self) -> list:
        return [self.codes, self.scale] if self.codes is not None else [self.value]

    def state(self) -> dict:
        return {"codes": self.codes, "scale": self.scale} if self.codes is not None else {"value": self.value}

    @classmethod
    def restore(cls, state: dict) -> _Stored:
        stored = cls(state.get("value"))
        stored.codes, stored.scale = state.get("codes"), state.get("scale")
        return stored


@dataclass
class _Batch:
    ann: _Cursor  # the ANN's run on this batch, paused at the current layer's target
    values: dict[str, _Stored]  # SNN values (by node name) that layers not tuned yet read


class _InMemory(list):
    """The batches as objects; a batch changed in place is stored already."""

    def put(self, i: int, batch: _Batch) -> None:
        self[i] = batch

    def close(self) -> None:
        self.clear()


def _own_directory(cache_dir: str | Path, need: float) -> tuple[Path, bool]:
    """A new directory of this process's own inside ``cache_dir`` (made if absent: then the second
    value is true); a clear error, naming the bytes needed, when it cannot be written."""
    for _ in range(3):
        made = not Path(cache_dir).exists()
        try:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix="fastsnn-finetune-", dir=cache_dir)), made
        except FileNotFoundError as e:  # another process removed the cache_dir it had made, in between
            error = e
        except OSError as e:
            error = e
            break
    raise CacheWriteError(
        error.errno,
        f"the fine-tuning cache directory {cache_dir} cannot be written ({error.strerror}); "
        f"the carried values need about {need / 2**30:.3g} GiB there: choose another cache_dir",
    ) from error


def _remove_directory(root: Path, made_parent: bool) -> None:
    shutil.rmtree(root, ignore_errors=True)
    if made_parent:
        try:
            root.parent.rmdir()  # fails when something else was put there meanwhile
        except OSError:
            pass


class _OnDisk:
    """The batches as files in a directory of their own under ``cache_dir``, deleted by :meth:`close`.

    ``need`` (bytes, estimated) is named in the error when a write fails.
    """

    def __init__(self, cache_dir: str | Path, ann_gm: fx.GraphModule, device: torch.device, need: float):
        self.ann_gm, self.device, self.need, self.n = ann_gm, device, need, 0
        self.root, self.made = _own_directory(cache_dir, need)  # made: close() removes cache_dir too, if empty

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[_Batch]:
        for i in range(self.n):
            yield self._read(i)

    def _path(self, i: int) -> Path:
        return self.root / f"batch_{i:07d}.pt"

    def append(self, batch: _Batch) -> None:
        self.n += 1
        self.put(self.n - 1, batch)

    def put(self, i: int, batch: _Batch) -> None:
        path = self._path(i)
        state = {"ann": batch.ann.state(), "values": {k: s.state() for k, s in batch.values.items()}}
        try:
            torch.save(state, path)
        except (OSError, RuntimeError) as e:  # torch reports a failed write as a RuntimeError
            code = getattr(e, "errno", None) or errno.EIO
            free = shutil.disk_usage(self.root).free
            raise CacheWriteError(
                code,
                f"writing the fine-tuning cache {path} failed ({e}); the carried values need about "
                f"{self.need / 2**30:.3g} GiB, {free / 2**30:.3g} GiB are free there: free space or choose "
                "another cache_dir",
            ) from e

    def _read(self, i: int) -> _Batch:
        state = torch.load(self._path(i), map_location=self.device, weights_only=True)
        values = {k: _Stored.restore(v) for k, v in state["values"].items()}
        return _Batch(_Cursor.restore(self.ann_gm, state["ann"]), values)

    def close(self) -> None:
        _remove_directory(self.root, self.made)


def check_writable(cache_dir: str | Path, need: float) -> float:
    """The bytes free in ``cache_dir`` (made if absent); a clear error when it cannot be written."""
    root, made = _own_directory(cache_dir, need)
    try:
        return float(shutil.disk_usage(root).free)
    finally:
        _remove_directory(root, made)
