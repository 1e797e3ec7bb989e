"""What every data module shares: the base class with the loaders, and clear data errors.

Nothing in this project downloads data. Every data module checks its on-disk layout up front and
raises :class:`DataError` explaining what is missing, the layout it expects and where to get it.

:class:`DataModule` is the one base of the data modules of every task: a subclass says how to
build the dataset of a split (``_dataset(split)``) and, if not torch's default, how to batch it
(``collate_fn(split)``); the base builds each split once, on first use, and makes the loaders
with the same settings everywhere (``batch_size``, ``eval_batch_size``, ``num_workers``,
``pin_memory``; persistent, seeded workers).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "DataError",
    "DataModule",
    "SPLITS",
    "data_error",
    "flip_probability",
    "make_loader",
    "require_paths",
    "seed_worker",
]


class DataError(RuntimeError):
    """Raised when a data set is missing or malformed; the message says how to fix it."""


def data_error(
    dataset_name: str,
    problem: str,
    *,
    root: str | os.PathLike,
    layout: str,
    source: str,
) -> DataError:
    """Build a :class:`DataError` with the problem, the expected layout under ``root`` and the source."""
    indented = "\n".join("    " + line for line in layout.strip("\n").splitlines())
    message = (
        f"{dataset_name}: {problem}\n"
        f"  Expected layout under {root}:\n{indented}\n"
        f"  Source: {source}\n"
        f"  Nothing is downloaded automatically; obtain the data from the source above and "
        f"arrange it as shown."
    )
    return DataError(message)


def require_paths(
    root: str | os.PathLike,
    relative_paths: Iterable[str],
    dataset_name: str,
    layout: str,
    source: str,
) -> list[Path]:
    """Check that every ``root/<relative path>`` exists; raise :class:`DataError` for the first missing one.

    Returns the resolved paths in the given order.
    """
    root = Path(root).expanduser()
    paths = []
    for rel in relative_paths:
        path = root / rel
        if not path.exists():
            problem = f"required path not found: {path}"
            if not root.exists():
                problem += f" (the root directory {root} does not exist)"
            raise data_error(dataset_name, problem, root=root, layout=layout, source=source)
        paths.append(path)
    return paths


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and ``random`` from the worker's torch seed.

    PyTorch seeds each worker's torch RNG but not numpy/``random``, so without this every worker
    would produce the same numpy-based augmentation.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
    collate_fn=None,
) -> DataLoader:
    """DataLoader with the project's conventions (persistent, seeded workers when ``num_workers > 0``)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        collate_fn=collate_fn,  # None: torch's default
        # Re-spawning workers every epoch is slow for small epochs (CIFAR, digits).
        persistent_workers=num_workers > 0,
        worker_init_fn=seed_worker if num_workers > 0 else None,
    )


def flip_probability(flip) -> float:
    """``flip``, the probability of a random horizontal flip, checked to be a number in [0, 1].

    A boolean is refused rather than read as 0 or 1: ``flip: true`` would mean "always flip".
    """
    if isinstance(flip, bool) or not isinstance(flip, (int, float)) or not 0.0 <= flip <= 1.0:
        raise ValueError(
            f"flip is the probability of a random horizontal flip, a number in [0, 1] "
            f"(0.5: the usual augmentation, 0: no flips); got {flip!r}"
        )
    return float(flip)


SPLITS = ("train", "val", "test")
# The splits a Lightning stage needs (any other stage, or None: all of them).
_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


class DataModule(L.LightningDataModule):
    """The base of every data module: one dataset per split, built on first use, and its loaders.

    Subclasses implement :meth:`_dataset` (``"train"``, ``"val"`` or ``"test"``; it may return
    ``self.dataset(other)`` to serve one split with another's data, e.g. validation on the test
    set) and override :meth:`collate_fn` when batches are not torch's default stacking. They set
    ``num_classes``, ``in_channels`` and ``image_size`` in ``__init__``, so that models can be
    built before ``setup``.

    Args:
        batch_size: training batch size; training batches are shuffled.
        eval_batch_size: validation / test batch size (``None``: ``batch_size``).
        num_workers: loader worker processes; with more than 0 they are persistent (kept across
            epochs) and seed numpy / ``random`` per worker (:func:`seed_worker`).
        pin_memory: page-locked batches, for faster copies to a GPU.

    ``drop_last_train = True`` (a class attribute) drops the last incomplete training batch when
    the split holds more than one batch.
    """

    drop_last_train = False

    def __init__(
        self, batch_size: int = 32, eval_batch_size: int | None = None, num_workers: int = 0, pin_memory: bool = False
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size or batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = bool(pin_memory)
        self.datasets: dict[str, Dataset] = {}

    # -- subclass hooks
    def _dataset(self, split: str) -> Dataset:
        """The dataset of ``split`` (``"train"``, ``"val"`` or ``"test"``), with its transforms."""
        raise NotImplementedError

    def collate_fn(self, split: str):
        """How the loader of ``split`` makes a batch from samples; ``None``: torch's default."""
        return None

    # -- datasets
    def dataset(self, split: str) -> Dataset:
        """The dataset of ``split``, built on first use and kept."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if split not in self.datasets:
            self.datasets[split] = self._dataset(split)
        return self.datasets[split]

    @property
    def train_dataset(self) -> Dataset | None:
        """The training dataset once built (by ``setup`` or a loader), else ``None``."""
        return self.datasets.get("train")

    @property
    def val_dataset(self) -> Dataset | None:
        return self.datasets.get("val")

    @property
    def test_dataset(self) -> Dataset | None:
        return self.datasets.get("test")

    def setup(self, stage: str | None = None) -> None:
        for split in _STAGE_SPLITS.get(stage, SPLITS):
            self.dataset(split)

    # -- loaders
    def _loader(self, split: str) -> DataLoader:
        dataset = self.dataset(split)
        train = split == "train"
        return make_loader(
            dataset,
            self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=train and self.drop_last_train and len(dataset) > self.batch_size,
            collate_fn=self.collate_fn(split),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
