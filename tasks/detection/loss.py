"""The YOLOv2 loss (Redmon & Farhadi, CVPR 2017) on the raw prediction map.

For every ground-truth box (not ignored), the cell holding its centre and the anchor whose shape
fits it best (IoU of centred boxes) are *responsible* for it:

* box regression: ``(sigmoid(tx) - x_offset)^2 + (sigmoid(ty) - y_offset)^2 +
  (tw - log(w / anchor_w))^2 + (th - log(h / anchor_h))^2``, weighted ``coord_scale * (2 - w*h)``
  (``w, h`` as fractions of the image: small boxes weigh more, as in darknet's region layer);
* objectness: binary cross-entropy towards 1 (or towards the IoU of the predicted box with its
  ground truth, ``rescore=True``), weighted ``obj_scale``;
* classification: softmax cross-entropy, weighted ``cls_scale``.

Every other prediction learns "no object" (objectness towards 0, weighted ``noobj_scale``) unless
its predicted box overlaps some ground truth (ignored ones included: VOC *difficult* objects and
COCO crowd boxes) by more than ``ignore_thresh``: those are left alone. The sum is divided by
the batch size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou

from .yolo import grid_boxes, split_prediction


def _cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


class YOLOv2Loss(nn.Module):
    def __init__(
        self,
        ignore_thresh: float = 0.6,
        coord_scale: float = 1.0,
        obj_scale: float = 5.0,
        noobj_scale: float = 1.0,
        cls_scale: float = 1.0,
        rescore: bool = False,
    ):
        super().__init__()
        self.ignore_thresh = ignore_thresh
        self.coord_scale, self.obj_scale = coord_scale, obj_scale
        self.noobj_scale, self.cls_scale = noobj_scale, cls_scale
        self.rescore = rescore

    def forward(
        self, pred: torch.Tensor, targets: list[dict], anchors: torch.Tensor, image_size: tuple[int, int]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``targets``: per image ``boxes`` (xyxy pixels of the ``image_size = (h, w)`` input),
        ``labels`` and optionally ``iscrowd`` (1: ignore region, never a target)."""
        p = split_prediction(pred, len(anchors)).float()  # [B, A, H, W, 5+C]
        B, A, H, W, _ = p.shape
        img_h, img_w = image_size
        scale = p.new_tensor([W / img_w, H / img_h, W / img_w, H / img_h])
        noobj, bi, g, labels = self._ground_truth(p, targets, anchors, scale)
        zero = p.sum() * 0.0
        loss_box = loss_obj = loss_cls = zero
        if len(bi):
            anchor_cells = anchors.to(p) * p.new_tensor([W, H])  # [A, 2]
            bi, ai, gj, gi, g, labels = _responsible(bi, g, labels, anchor_cells, p.shape[:4])
            noobj[bi, ai, gj, gi] = False
            loss_box, loss_obj, loss_cls = self._object_losses(p, anchors, anchor_cells, (bi, ai, gj, gi), g, labels)
        noobj_logits = p[..., 4][noobj]
        loss_noobj = (
            self.noobj_scale
            * F.binary_cross_entropy_with_logits(noobj_logits, torch.zeros_like(noobj_logits), reduction="sum")
            / B
        )
        total = loss_box + loss_obj + loss_noobj + loss_cls if len(bi) else loss_noobj
        parts = {"box": loss_box, "obj": loss_obj, "noobj": loss_noobj, "cls": loss_cls}
        return total, {k: v.detach() for k, v in parts.items()}

    @torch.no_grad()
    def _ground_truth(self, p: torch.Tensor, targets: list[dict], anchors: torch.Tensor, scale: torch.Tensor):
        """The "no object" mask (predictions overlapping no box by more than ``ignore_thresh``) and
        the non-crowd boxes (image index, xyxy in cells, label) that predictions are responsible for."""
        B, A, H, W, _ = p.shape
        pboxes = _cxcywh_to_xyxy(grid_boxes(p.detach(), anchors))  # cells
        noobj = torch.ones(B, A, H, W, dtype=torch.bool, device=p.device)
        gt_b, gt_box, gt_label = [], [], []
        for b, t in enumerate(targets):
            boxes = t["boxes"].to(p).reshape(-1, 4) * scale
            if len(boxes) == 0:
                continue
            iou = box_iou(pboxes[b].reshape(-1, 4), boxes).amax(1).view(A, H, W)
            noobj[b] &= iou <= self.ignore_thresh
            crowd = t.get("iscrowd")
            keep = (
                torch.ones(len(boxes), dtype=torch.bool, device=p.device)
                if crowd is None
                else ~crowd.to(p.device).bool().reshape(-1)
            )
            gt_b.append(torch.full((int(keep.sum()),), b, device=p.device, dtype=torch.long))
            gt_box.append(boxes[keep])
            gt_label.append(t["labels"].to(p.device).long().reshape(-1)[keep])
        if not gt_b:
            empty = torch.zeros(0, dtype=torch.long, device=p.device)
            return noobj, empty, p.new_zeros(0, 4), empty
        return noobj, torch.cat(gt_b), torch.cat(gt_box), torch.cat(gt_label)

    def _object_losses(self, p, anchors, anchor_cells, index, g, labels):
        """Box, objectness and class losses of the responsible predictions ``p[index]``."""
        B, _, H, W, _ = p.shape
        bi, ai, gj, gi = index
        gxy = (g[:, :2] + g[:, 2:]) / 2
        gwh = (g[:, 2:] - g[:, :2]).clamp_min(1e-6)
        pr = p[bi, ai, gj, gi]  # [M, 5+C]
        txy = gxy - torch.stack([gi, gj], 1).to(p)
        twh = torch.log(gwh / anchor_cells[ai])
        weight = self.coord_scale * (2.0 - gwh.prod(-1) / (W * H))
        loss_box = (
            weight * ((torch.sigmoid(pr[:, :2]) - txy).pow(2).sum(1) + (pr[:, 2:4] - twh).pow(2).sum(1))
        ).sum() / B
        if self.rescore:
            with torch.no_grad():
                pb = _cxcywh_to_xyxy(grid_boxes(p.detach(), anchors)[bi, ai, gj, gi])
                obj_target = box_iou(pb, g).diagonal().clamp(0, 1)
        else:
            obj_target = torch.ones(len(pr), device=p.device)
        loss_obj = self.obj_scale * F.binary_cross_entropy_with_logits(pr[:, 4], obj_target, reduction="sum") / B
        loss_cls = p.sum() * 0.0
        if p.shape[-1] - 5 > 1:
            loss_cls = self.cls_scale * F.cross_entropy(pr[:, 5:], labels, reduction="sum") / B
        return loss_box, loss_obj, loss_cls


def _responsible(bi, g, labels, anchor_cells, shape):
    """For each box, the (image, anchor, row, column) of the prediction responsible for it: the
    cell of its centre and the anchor of the most similar shape (IoU of boxes sharing a centre).
    Several boxes on one (cell, anchor): the last one wins, like darknet."""
    B, A, H, W = shape
    gxy = (g[:, :2] + g[:, 2:]) / 2
    gwh = (g[:, 2:] - g[:, :2]).clamp_min(1e-6)
    gi = gxy[:, 0].floor().long().clamp(0, W - 1)
    gj = gxy[:, 1].floor().long().clamp(0, H - 1)
    inter = torch.minimum(gwh[:, None], anchor_cells[None]).prod(-1)
    shape_iou = inter / (gwh.prod(-1)[:, None] + anchor_cells.prod(-1)[None] - inter)
    ai = shape_iou.argmax(1)
    slot = ((bi * A + ai) * H + gj) * W + gi
    last = torch.zeros(B * A * H * W, dtype=torch.long, device=g.device)
    last[slot] = torch.arange(len(slot), device=g.device)
    win = last[slot] == torch.arange(len(slot), device=g.device)
    return bi[win], ai[win], gj[win], gi[win], g[win], labels[win]
