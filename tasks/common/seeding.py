"""Random draws that are functions of the run's seed and of where training is, not of the past.

A resumed run must draw what the uninterrupted run drew at the same point. Lightning's checkpoints
carry no generator states, and loader workers each have their own; so instead of saving states,
training reseeds the generators from a key that the point in training determines: the data order
from (seed, epoch), a sample's augmentation from (seed, epoch, index), a training step's draws
(dropout) from (seed, epoch, batch, rank). Nothing then needs saving, and the number of loader
workers no longer changes the numbers.
"""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["ORDER", "SAMPLE", "STEP", "derived_seed", "seed_all"]

# The first word of every key, so that the streams of the order, the samples and the steps never
# share a seed (the key (seed, epoch) of an order must not be the key of a sample).
ORDER, SAMPLE, STEP = 0, 1, 2


def derived_seed(*key: int) -> int:
    """A 64-bit seed from non-negative integers. numpy's SeedSequence hashes the whole key, so
    neighbouring keys (epoch 3 and 4, samples 7 and 8) give unrelated streams."""
    low, high = np.random.SeedSequence([int(k) for k in key]).generate_state(2)
    return int(high) << 32 | int(low)


def seed_all(*key: int, cuda: bool = False) -> None:
    """Seed torch's, numpy's and ``random``'s global generators from ``key``.

    ``cuda``: torch's CUDA generators too (a training step's dropout on a GPU); without it only the
    CPU generator, which is all that data transforms use, and no CUDA call is made.
    """
    seed = derived_seed(*key)
    if cuda:
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)
    np.random.seed([seed & 0xFFFFFFFF, seed >> 32])  # numpy's legacy seed takes 32-bit words
    random.seed(seed)
