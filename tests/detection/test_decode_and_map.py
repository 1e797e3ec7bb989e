"""Decoding + class-aware NMS on hand-made prediction maps; mAP on hand-made detections."""

from __future__ import annotations

import math

import pytest
import torch

from tasks.detection.module import DetectionMAP, DetectionModule
from tasks.detection.yolo import decode, postprocess

BIG = 12.0  # a logit whose sigmoid is 1 - 6e-6


def _map(num_anchors: int, num_classes: int, h: int = 2, w: int = 2) -> torch.Tensor:
    """A prediction map where nothing is detected (objectness logit -BIG everywhere)."""
    p = torch.zeros(1, num_anchors, 5 + num_classes, h, w)
    p[:, :, 4] = -BIG
    return p


def _set(p, anchor, row, col, tx=0.0, ty=0.0, tw=0.0, th=0.0, obj=BIG, cls=0):
    v = p[0, anchor, :, row, col]
    v[:4] = torch.tensor([tx, ty, tw, th])
    v[4] = obj
    v[5:] = -BIG
    v[5 + cls] = BIG


def _flat(p):
    return p.reshape(1, -1, *p.shape[-2:])


def test_decode_gives_the_boxes_of_the_yolov2_parametrisation():
    anchors = torch.tensor([[0.25, 0.25]])  # a quarter of the 64 px image: 16 px
    p = _map(1, 2)
    _set(p, 0, 0, 0)  # centre of cell (0, 0) = (16, 16); anchor size 16
    _set(p, 0, 1, 1, tw=math.log(2), th=math.log(3), cls=1)  # centre (48, 48); 32 x 48 -> clipped
    boxes, obj, cls = decode(_flat(p), anchors, 2, (64, 64))
    assert boxes.shape == (1, 4, 4) and obj.shape == (1, 4) and cls.shape == (1, 4, 2)
    # (anchor, row, col) order: index 0 = cell (0, 0), index 3 = cell (1, 1)
    torch.testing.assert_close(boxes[0, 0], torch.tensor([8.0, 8.0, 24.0, 24.0]))
    torch.testing.assert_close(boxes[0, 3], torch.tensor([32.0, 24.0, 64.0, 64.0]))  # y1 = 72 clipped to 64
    assert obj[0, 0] > 0.999 and obj[0, 1] < 1e-3
    assert cls[0, 3].argmax() == 1


def test_postprocess_thresholds_and_applies_class_aware_nms():
    anchors = torch.tensor([[0.25, 0.25], [0.25, 0.25]])  # two identical anchors: identical boxes
    p = _map(2, 3)
    _set(p, 0, 0, 0, cls=0)  # [8, 8, 24, 24], class 0, score ~1
    _set(p, 1, 0, 0, cls=0, obj=1.0)  # the same box, class 0, lower score: suppressed by NMS
    _set(p, 0, 1, 1, cls=2, obj=0.0)  # [40, 40, 56, 56], class 2, score 0.5
    _set(p, 1, 1, 1, cls=1, obj=-1.0)  # the same box but class 1: kept (class-aware NMS)
    out = postprocess(_flat(p), anchors, 3, (64, 64), conf_thresh=0.05, nms_iou=0.45, max_det=100)
    (det,) = out
    assert det["labels"].tolist() == [0, 2, 1]
    torch.testing.assert_close(det["scores"], torch.tensor([1.0, 0.5, 1 / (1 + math.e)]), atol=1e-4, rtol=0)
    torch.testing.assert_close(det["boxes"], torch.tensor([[8.0, 8, 24, 24], [40, 40, 56, 56], [40, 40, 56, 56]]))
    # without NMS, the lower-scored duplicate of class 0 would be there: NMS really removed it
    no_nms = postprocess(_flat(p), anchors, 3, (64, 64), conf_thresh=0.05, nms_iou=1.0)[0]
    assert len(no_nms["labels"]) == 4
    # confidence threshold and max detections
    assert postprocess(_flat(p), anchors, 3, (64, 64), conf_thresh=0.4)[0]["labels"].tolist() == [0, 2]
    assert postprocess(_flat(p), anchors, 3, (64, 64), conf_thresh=0.05, max_det=1)[0]["labels"].tolist() == [0]


def test_multi_label_keeps_every_class_above_the_threshold():
    anchors = torch.tensor([[0.25, 0.25]])
    p = _map(1, 2)
    _set(p, 0, 0, 0)
    p[0, 0, 5:, 0, 0] = 0.0  # both classes at probability 0.5
    multi = postprocess(_flat(p), anchors, 2, (64, 64), conf_thresh=0.1, multi_label=True)[0]
    single = postprocess(_flat(p), anchors, 2, (64, 64), conf_thresh=0.1, multi_label=False)[0]
    assert sorted(multi["labels"].tolist()) == [0, 1] and len(single["labels"]) == 1
    torch.testing.assert_close(multi["scores"], torch.tensor([0.5, 0.5]), atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------- mAP

# One class, two ground truths; detections ranked TP (0.9), FP (0.8), TP (0.7): precision/recall
# (1, .5), (.5, .5), (2/3, 1). COCO's 101-point interpolated AP at IoU 0.5: the 51 recall points
# 0, .01, ..., .50 have interpolated precision 1, the 50 points .51 ... 1 have 2/3.
HAND_AP = (51 * 1.0 + 50 * (2 / 3)) / 101


def _hand_case():
    gts = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.tensor([0, 0])}]
    preds = [
        {
            "boxes": torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 31]]),
            "scores": torch.tensor([0.9, 0.8, 0.7]),
            "labels": torch.tensor([0, 0, 0]),
        }
    ]
    return preds, gts


def test_map50_equals_the_hand_computed_value():
    metric = DetectionMAP()
    preds, gts = _hand_case()
    metric.update(preds, gts)
    out = metric.compute()
    assert out["map_50"].item() == pytest.approx(HAND_AP, abs=1e-6)
    assert set(out) >= {"map", "map_50"} and all(v.numel() == 1 for v in out.values())


def test_ignored_boxes_are_neither_misses_nor_false_positives():
    """A difficult / crowd ground truth (iscrowd=1), detected or not, leaves the AP unchanged."""
    preds, gts = _hand_case()
    gts[0]["boxes"] = torch.cat([gts[0]["boxes"], torch.tensor([[70.0, 70, 90, 90], [100, 0, 120, 20]])])
    gts[0]["labels"] = torch.tensor([0, 0, 0, 0])
    gts[0]["iscrowd"] = torch.tensor([0, 0, 1, 1])  # one detected below, one missed
    preds[0]["boxes"] = torch.cat([preds[0]["boxes"], torch.tensor([[70.0, 70, 90, 90]])])
    preds[0]["scores"] = torch.cat([preds[0]["scores"], torch.tensor([0.95])])
    preds[0]["labels"] = torch.tensor([0, 0, 0, 0])
    metric = DetectionMAP()
    metric.update(preds, gts)
    assert metric.compute()["map_50"].item() == pytest.approx(HAND_AP, abs=1e-6)
    gts[0]["iscrowd"] = torch.zeros(4, dtype=torch.long)  # counted: AP changes
    metric = DetectionMAP()
    metric.update(preds, gts)
    assert metric.compute()["map_50"].item() != pytest.approx(HAND_AP, abs=1e-3)


class _FixedNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("anchors", torch.tensor([[0.25, 0.25]]))
        self.num_classes = 2
        self.conv = torch.nn.Conv2d(3, 7, 1)


def test_module_update_metrics_decodes_and_scores_in_original_image_coordinates():
    """A perfect prediction map scores mAP 1; boxes are scaled back to ``orig_size``."""
    module = DetectionModule(_FixedNet(), num_classes=2, conf_thresh=0.01)
    p = _map(1, 2)
    _set(p, 0, 0, 0, cls=0)  # [8, 8, 24, 24] at 64 px
    _set(p, 0, 1, 1, cls=1)  # [40, 40, 56, 56]
    images = torch.zeros(1, 3, 64, 64)
    targets = [
        {
            "boxes": torch.tensor([[8.0, 8, 24, 24], [40, 40, 56, 56]]),
            "labels": torch.tensor([0, 1]),
            "iscrowd": torch.tensor([0, 0]),
            "orig_size": torch.tensor([128, 256]),
        }
    ]
    metrics = module.make_metrics()
    module.update_metrics(metrics, _flat(p), (images, targets))
    out = metrics.compute()
    assert out["map_50"].item() == pytest.approx(1.0) and out["map"].item() == pytest.approx(1.0)
    # areas are measured in the original 256 x 128 image: 16 x 16 px at 64 px become 64 x 32 px,
    # COCO "medium" (32^2 .. 96^2), not "small" as they would be unscaled
    assert out["map_medium"].item() == pytest.approx(1.0) and out["map_small"].item() == -1
    metrics.reset()
    _set(p, 0, 1, 1, cls=0)  # wrong class for the second box
    module.update_metrics(metrics, _flat(p), (images, targets))
    assert metrics.compute()["map_50"].item() == pytest.approx(0.5)
