"""YOLOv2-style detectors on the shared quantizable backbones, and the decoding of their output.

The networks return the raw prediction map ``[B, A * (5 + C), H, W]`` (per anchor: ``tx, ty,
tw, th, objectness logit, C class logits``); decoding, NMS and the loss live outside ``forward``
so the models trace with ``torch.fx`` and convert to SNNs: every activation is an ``nn.ReLU``
module (one per use, made ``QuantReLU`` by ``quantize_model``), there is no max pooling, and the
1x1 prediction conv is the analog output layer (in the SNN it runs on the mean over T of the
last spiking layer, so the SNN's map is decoded exactly as the ANN's).

Anchors are ``(w, h)`` fractions of the input image side (``anchors_px = anchors * image_size``).
On the YOLOv2 grid (416 px, stride 32, 13 x 13 cells) that is darknet's anchors divided by 13,
and like darknet's grid-unit anchors they scale with the input under multi-scale training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torchvision.ops import batched_nms

from fastsnn.backbones import create_backbone
from fastsnn.backbones.layers import conv_bn_relu, scale_channels

__all__ = ["VOC_ANCHORS", "COCO_ANCHORS", "TinyYOLO", "YOLOv2R34", "decode", "postprocess"]

# yolov2-voc.cfg / yolov2.cfg (COCO) anchors, in cells of the 13 x 13 grid -> fractions of the image.
VOC_ANCHORS = tuple(
    (w / 13, h / 13)
    for w, h in ((1.3221, 1.73145), (3.19275, 4.00944), (5.05587, 8.09892), (9.47112, 4.84053), (11.2364, 10.0071))
)
COCO_ANCHORS = tuple(
    (w / 13, h / 13)
    for w, h in ((0.57273, 0.677385), (1.87446, 2.06253), (3.33843, 5.47434), (7.88282, 3.52778), (9.77052, 9.16828))
)


def _anchor_tensor(anchors) -> torch.Tensor:
    a = torch.as_tensor(VOC_ANCHORS if anchors is None else [list(map(float, p)) for p in anchors], dtype=torch.float32)
    if a.ndim != 2 or a.shape[1] != 2 or len(a) == 0 or not bool((a > 0).all()):
        raise ValueError(f"anchors must be a non-empty list of positive (w, h) pairs, got {anchors!r}")
    if bool((a > 4).any()):
        raise ValueError(
            f"anchors are fractions of the image side (e.g. 0.1-1.0), got {anchors!r}; "
            "divide darknet's grid-unit anchors by the grid size (13 at 416 px)"
        )
    return a


class _YOLOBase(nn.Module):
    """Holds the anchors (a buffer: they travel with the checkpoint) and the prediction conv."""

    def _init_head(self, in_channels: int, num_classes: int, anchors, prior: float = 0.01) -> None:
        self.num_classes = int(num_classes)
        self.register_buffer("anchors", _anchor_tensor(anchors))
        self.num_anchors = len(self.anchors)
        self.pred = nn.Conv2d(in_channels, self.num_anchors * (5 + self.num_classes), 1)
        nn.init.normal_(self.pred.weight, 0.0, 0.01)
        nn.init.zeros_(self.pred.bias)
        with torch.no_grad():  # start with few confident boxes (stable early training)
            bias = self.pred.bias.view(self.num_anchors, 5 + self.num_classes)
            bias[:, 4] = torch.log(torch.tensor(prior / (1 - prior)))


class TinyYOLO(_YOLOBase):
    """Tiny YOLOv2: the Darknet-tiny trunk (max pools replaced by stride-2 convs), a 3x3 conv,
    and the 1x1 prediction conv with ``A * (5 + C)`` outputs.

    ``output_stride=16`` keeps the resolution of the last stride-2 stage (the 512-channel conv
    runs at stride 1, like Tiny YOLO's last, stride-1 max pool): a finer grid for small inputs.
    """

    def __init__(
        self,
        num_classes: int = 20,
        in_channels: int = 3,
        width: float = 1.0,
        head_channels: int = 1024,
        anchors: Sequence | None = None,
        output_stride: int = 32,
    ):
        super().__init__()
        self.backbone = create_backbone(
            "darknet_tiny", in_channels=in_channels, width=width, output_stride=output_stride
        )
        self.output_stride = output_stride
        channels = scale_channels(head_channels, width)
        self.head = conv_bn_relu(self.backbone.out_channels, channels)
        self._init_head(channels, num_classes, anchors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pred(self.head(self.backbone(x)))


class YOLOv2R34(_YOLOBase):
    """YOLOv2 with the shared ResNet-34 trunk (output stride 32).

    Head as in YOLOv2: two 3x3 convs on the last stage; the passthrough layer (a 1x1 conv on the
    stride-16 stage, space-to-depth by ``PixelUnshuffle(2)``) is concatenated and fused by a third
    3x3 conv; then the 1x1 prediction conv. All linear per time step, so the SNN sees it too.
    """

    def __init__(
        self,
        num_classes: int = 20,
        in_channels: int = 3,
        width: float = 1.0,
        head_channels: int = 1024,
        passthrough_channels: int = 64,
        anchors: Sequence | None = None,
        passthrough: bool = True,
    ):
        super().__init__()
        self.backbone = create_backbone("resnet34_features", in_channels=in_channels, width=width, output_stride=32)
        channels = scale_channels(head_channels, width)
        c4 = self.backbone.layers[2][-1].conv2.out_channels
        self.head1 = conv_bn_relu(self.backbone.out_channels, channels)
        self.head2 = conv_bn_relu(channels, channels)
        self.use_passthrough = passthrough
        fused_in = channels
        if passthrough:
            pt = scale_channels(passthrough_channels, width)
            self.passthrough = nn.Sequential(*conv_bn_relu(c4, pt, kernel_size=1), nn.PixelUnshuffle(2))
            fused_in += 4 * pt
        self.head3 = conv_bn_relu(fused_in, channels)
        self.output_stride = 32
        self._init_head(channels, num_classes, anchors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = self.backbone.layers
        c4 = layers[2](layers[1](layers[0](self.backbone.stem(x))))
        y = self.head2(self.head1(layers[3](c4)))
        if self.use_passthrough:  # a constructor constant: the trace stays static
            y = torch.cat([y, self.passthrough(c4)], dim=1)
        return self.pred(self.head3(y))


# --------------------------------------------------------------------------- decoding


def split_prediction(pred: torch.Tensor, num_anchors: int) -> torch.Tensor:
    """``[B, A*(5+C), H, W]`` -> ``[B, A, H, W, 5+C]``."""
    b, ch, h, w = pred.shape
    if ch % num_anchors:
        raise ValueError(f"prediction map has {ch} channels, not a multiple of {num_anchors} anchors")
    return pred.view(b, num_anchors, ch // num_anchors, h, w).permute(0, 1, 3, 4, 2)


def grid_boxes(p: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Boxes ``(cx, cy, w, h)`` in grid-cell units from ``p = split_prediction(...)`` ``[B,A,H,W,5+C]``."""
    _, _, h, w, _ = p.shape
    gy, gx = torch.meshgrid(
        torch.arange(h, device=p.device, dtype=p.dtype), torch.arange(w, device=p.device, dtype=p.dtype), indexing="ij"
    )
    cells = anchors.to(p) * torch.tensor([w, h], device=p.device, dtype=p.dtype)  # [A, 2]
    cx = torch.sigmoid(p[..., 0]) + gx
    cy = torch.sigmoid(p[..., 1]) + gy
    # exp of a huge logit would give inf boxes; e^8 ~ 3000 anchors is far beyond any image
    bw = torch.exp(p[..., 2].clamp(max=8.0)) * cells[:, 0].view(1, -1, 1, 1)
    bh = torch.exp(p[..., 3].clamp(max=8.0)) * cells[:, 1].view(1, -1, 1, 1)
    return torch.stack([cx, cy, bw, bh], dim=-1)


def decode(pred: torch.Tensor, anchors: torch.Tensor, num_classes: int, image_size: tuple[int, int]):
    """Decode a raw prediction map into per-box outputs.

    Returns ``boxes [B, N, 4]`` (xyxy pixels of the ``image_size = (height, width)`` input, clipped
    to it), ``objectness [B, N]`` (sigmoid) and ``class_prob [B, N, C]`` (softmax), with
    ``N = A * H * W`` in (anchor, row, column) order.
    """
    p = split_prediction(pred, len(anchors))
    if p.shape[-1] != 5 + num_classes:
        raise ValueError(f"prediction has {p.shape[-1] - 5} class channels, expected {num_classes}")
    b, _, h, w, _ = p.shape
    img_h, img_w = image_size
    box = grid_boxes(p, anchors)
    sx, sy = img_w / w, img_h / h
    cx, cy, bw, bh = box.unbind(-1)
    xyxy = torch.stack([(cx - bw / 2) * sx, (cy - bh / 2) * sy, (cx + bw / 2) * sx, (cy + bh / 2) * sy], -1)
    xyxy[..., 0::2] = xyxy[..., 0::2].clamp(0, img_w)
    xyxy[..., 1::2] = xyxy[..., 1::2].clamp(0, img_h)
    obj = torch.sigmoid(p[..., 4])
    cls = torch.softmax(p[..., 5:], dim=-1)
    return xyxy.reshape(b, -1, 4), obj.reshape(b, -1), cls.reshape(b, -1, num_classes)


@torch.no_grad()
def postprocess(
    pred: torch.Tensor,
    anchors: torch.Tensor,
    num_classes: int,
    image_size: tuple[int, int],
    conf_thresh: float = 0.005,
    nms_iou: float = 0.45,
    max_det: int = 100,
    multi_label: bool = True,
    pre_nms_topk: int = 3000,
) -> list[dict[str, torch.Tensor]]:
    """Decode + confidence threshold + class-aware NMS (``torchvision.ops.batched_nms``).

    A box's score for class ``c`` is ``objectness * P(c)``. ``multi_label`` keeps every class
    above ``conf_thresh`` (better recall for mAP), otherwise only the best class. Returns one
    ``dict(boxes [n, 4] xyxy pixels, scores [n], labels [n] int64)`` per image, best first, at
    most ``max_det`` boxes.
    """
    boxes, obj, cls = decode(pred.float(), anchors, num_classes, image_size)
    scores_all = obj.unsqueeze(-1) * cls  # [B, N, C]
    out = []
    for b in range(len(boxes)):
        if multi_label:
            idx, labels = (scores_all[b] > conf_thresh).nonzero(as_tuple=True)
            scores = scores_all[b, idx, labels]
        else:
            scores, labels = scores_all[b].max(-1)
            idx = (scores > conf_thresh).nonzero(as_tuple=True)[0]
            scores, labels = scores[idx], labels[idx]
        if len(scores) > pre_nms_topk:  # bounded NMS cost with an untrained net
            scores, top = scores.topk(pre_nms_topk)
            idx, labels = idx[top], labels[top]
        kept_boxes = boxes[b, idx]
        keep = batched_nms(kept_boxes, scores, labels, nms_iou)[:max_det]
        out.append({"boxes": kept_boxes[keep], "scores": scores[keep], "labels": labels[keep].long()})
    return out
