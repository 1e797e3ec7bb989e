"""Image classification: cross-entropy, top-1 / top-5 accuracy (torchmetrics)."""

from __future__ import annotations

from torch.nn import functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from tasks.base import SNNTaskModule


class ClassificationModule(SNNTaskModule):
    metric = "acc"

    def __init__(
        self,
        net,
        num_classes: int,
        optimizer=None,
        scheduler=None,
        label_smoothing: float = 0.0,
        per_step_metrics: bool = True,
    ):
        self.num_classes = num_classes
        super().__init__(net, optimizer, scheduler, per_step_metrics)
        self.label_smoothing = label_smoothing

    def make_metrics(self):
        metrics = {"acc": MulticlassAccuracy(self.num_classes, top_k=1, average="micro")}
        if self.num_classes > 5:
            metrics["acc_top5"] = MulticlassAccuracy(self.num_classes, top_k=5, average="micro")
        return MetricCollection(metrics)

    def loss(self, logits, batch):
        return F.cross_entropy(logits, batch[1], label_smoothing=self.label_smoothing)

    def update_metrics(self, metrics, logits, batch):
        metrics.update(logits, batch[1])
