"""Data helpers shared by all tasks: clear errors for missing/malformed data, loader construction.

Nothing in this project downloads data. Every data module checks its on-disk layout up front and
raises :class:`DataError` explaining what is missing, the layout it expects and where to get it.
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

__all__ = ["DataError", "data_error", "require_paths", "seed_worker", "make_loader"]


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


class SplitDataModule(L.LightningDataModule):
    """Data loaders over ``train_dataset`` / ``val_dataset`` / ``test_dataset``, built in ``setup``.

    Subclasses set those three (a property may stand for one, e.g. val = test) and have
    ``batch_size``, ``num_workers`` and ``pin_memory``; training batches are shuffled.
    """

    def _loader(self, dataset, shuffle: bool):
        return make_loader(
            dataset, self.batch_size, shuffle=shuffle, num_workers=self.num_workers, pin_memory=self.pin_memory
        )

    def train_dataloader(self):
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self):
        return self._loader(self.test_dataset, shuffle=False)
