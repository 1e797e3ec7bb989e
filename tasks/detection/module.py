"""Object detection: the YOLOv2 loss, decoding + class-aware NMS, mAP (torchmetrics, pycocotools).

Batches are ``(images [B, 3, H, W], targets)`` with one dict per image: ``boxes`` (xyxy pixels of
the network input), ``labels``, ``iscrowd`` (1: ignored in the loss and in the evaluation: VOC
*difficult* objects, COCO crowd boxes) and optionally ``orig_size`` ``(h, w)`` of the original
image, to which boxes are scaled back before they are scored (IoU does not change under this
scaling; COCO's small / medium / large areas do).

The network's output is the raw prediction map; for the SNN it is the mean over T of the analog
prediction conv, decoded exactly as the ANN's.
"""

from __future__ import annotations

import torch
from torchmetrics.detection import MeanAveragePrecision

from tasks.base import SNNTaskModule

from .loss import YOLOv2Loss
from .yolo import postprocess

#: the scalars of MeanAveragePrecision worth logging (the rest are per-class or -1 placeholders)
MAP_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100")


class DetectionMAP(MeanAveragePrecision):
    """``MeanAveragePrecision`` (COCO protocol, pycocotools backend) that returns only the scalars
    in :data:`MAP_KEYS`: ``map`` is mAP@[.5:.95], ``map_50`` mAP@0.5 (101-point interpolated)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("backend", "pycocotools")
        super().__init__(box_format="xyxy", iou_type="bbox", **kwargs)

    def compute(self) -> dict[str, torch.Tensor]:
        values = super().compute()
        return {k: values[k] for k in MAP_KEYS if k in values}


class DetectionModule(SNNTaskModule):
    """YOLOv2 detection on any net whose ``forward`` gives the raw prediction map and that has
    ``anchors`` (``[A, 2]`` fractions of the image side) and ``num_classes``.

    ``metric`` is the headline metric (``map_50`` for VOC-style evaluation, ``map`` for COCO).
    ``conf_thresh``, ``nms_iou``, ``max_det``, ``multi_label`` configure the post-processing.
    """

    metric = "map_50"

    def __init__(
        self,
        net,
        num_classes: int,
        optimizer=None,
        scheduler=None,
        loss: dict | None = None,
        conf_thresh: float = 0.005,
        nms_iou: float = 0.45,
        max_det: int = 100,
        multi_label: bool = True,
        per_step_metrics: bool = True,
        metric: str = "map_50",
        warmup_epochs: float = 0.0,
    ):
        if metric not in MAP_KEYS:
            raise ValueError(f"metric must be one of {MAP_KEYS}, got {metric!r}")
        if getattr(net, "num_classes", num_classes) != num_classes:
            raise ValueError(f"the net predicts {net.num_classes} classes but the data has {num_classes}")
        if not hasattr(net, "anchors"):
            raise ValueError(
                f"{type(net).__name__} has no `anchors`: the detection task needs a YOLO net (tasks.detection.yolo)"
            )
        self.num_classes = num_classes
        self.metric = metric
        super().__init__(net, optimizer, scheduler, per_step_metrics)
        self.criterion = YOLOv2Loss(**(loss or {}))
        self.conf_thresh, self.nms_iou, self.max_det = conf_thresh, nms_iou, max_det
        self.multi_label = multi_label
        self.warmup_epochs = warmup_epochs

    # ----------------------------------------------------------------- task hooks
    def make_metrics(self):
        return DetectionMAP()

    def loss(self, outputs, batch):
        images, targets = batch
        total, parts = self.criterion(outputs, targets, self.net.anchors, tuple(images.shape[-2:]))
        if self.training and self._trainer is not None:
            for name, value in parts.items():
                self.log(f"train/loss_{name}", value, batch_size=len(images))
        return total

    def detect(self, outputs, image_size: tuple[int, int]) -> list[dict[str, torch.Tensor]]:
        """Boxes, scores and labels per image from a raw prediction map (input pixels)."""
        return postprocess(
            outputs,
            self.net.anchors,
            self.num_classes,
            image_size,
            self.conf_thresh,
            self.nms_iou,
            self.max_det,
            self.multi_label,
        )

    def update_metrics(self, metrics, outputs, batch):
        images, targets = batch
        size = tuple(images.shape[-2:])
        preds = self.detect(outputs, size)
        gts = []
        for pred, t in zip(preds, targets):
            boxes = t["boxes"].reshape(-1, 4).float()
            if "orig_size" in t:
                s = _scale(size, t["orig_size"], boxes)
                boxes = boxes * s
                pred["boxes"] = pred["boxes"] * s
            iscrowd = t.get("iscrowd")
            gts.append(
                {
                    "boxes": boxes,
                    "labels": t["labels"].long().reshape(-1),
                    "iscrowd": (
                        torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)
                        if iscrowd is None
                        else iscrowd.long().reshape(-1)
                    ),
                }
            )
        metrics.update(preds, gts)

    # ----------------------------------------------------------------- optimisation
    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        """Linear learning-rate warm-up over the first ``warmup_epochs`` (YOLO's burn-in)."""
        if self.warmup_epochs > 0 and self._trainer is not None:
            steps = max(1, int(self.warmup_epochs * self.trainer.num_training_batches))
            step = self.trainer.global_step
            if step <= steps:
                for group in optimizer.param_groups:
                    group.setdefault("initial_lr", group["lr"])
                    group["lr"] = group["initial_lr"] * min(1.0, (step + 1) / steps)
        optimizer.step(closure=optimizer_closure)


def _scale(size: tuple[int, int], orig_size, boxes: torch.Tensor) -> torch.Tensor:
    oh, ow = (float(v) for v in (orig_size.tolist() if torch.is_tensor(orig_size) else orig_size))
    h, w = size
    return boxes.new_tensor([ow / w, oh / h, ow / w, oh / h])
