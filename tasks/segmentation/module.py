"""Semantic segmentation: pixel-wise cross-entropy, mIoU and pixel accuracy (torchmetrics).

The network's output is the logits at input resolution, ``[B, C, H, W]``; the batch is
``(images, masks)`` with masks ``[B, H, W]`` int64 and ``ignore_index`` (255) for pixels
that count neither in the loss nor in the metrics. The SNN passes hand the same kind of
logits (mean over T, or the running mean after each step) to :meth:`update_metrics`.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from tasks.base import SNNTaskModule


class SegmentationModule(SNNTaskModule):
    """``miou``: mean over classes of the dataset-level IoU (classes absent from both the
    predictions and the masks are left out); ``pixel_acc``: correct / non-ignored pixels."""

    metric = "miou"

    def __init__(
        self,
        net,
        num_classes: int,
        optimizer=None,
        scheduler=None,
        ignore_index: int = 255,
        per_step_metrics: bool = True,
    ):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        super().__init__(net, optimizer, scheduler, per_step_metrics)

    def make_metrics(self):
        return MetricCollection(
            {
                "miou": MulticlassJaccardIndex(
                    self.num_classes, average="macro", ignore_index=self.ignore_index, validate_args=False
                ),
                "pixel_acc": MulticlassAccuracy(
                    self.num_classes, average="micro", ignore_index=self.ignore_index, validate_args=False
                ),
            },
            compute_groups=False,
        )

    def loss(self, logits, batch):
        return F.cross_entropy(logits, batch[1], ignore_index=self.ignore_index)

    @torch.no_grad()
    def update_metrics(self, metrics, logits, batch):
        metrics.update(logits.argmax(1), batch[1])
