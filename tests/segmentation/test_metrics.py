"""Loss and metrics of the segmentation task on hand-made masks."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tasks.segmentation.module import SegmentationModule

IGNORE = 255


def _one_hot_logits(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(pred, num_classes).permute(0, 3, 1, 2).float() * 5.0


def _module(num_classes: int) -> SegmentationModule:
    return SegmentationModule(nn.Identity(), num_classes)


def test_miou_and_pixel_accuracy_match_a_hand_computed_value_with_ignored_pixels():
    # Two images; the last two pixels of image 0 are ignored (their predictions must not count).
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, IGNORE, IGNORE]], [[3, 3, 0, 0], [0, 0, 0, 0]]])
    pred = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 1]], [[3, 0, 0, 0], [0, 0, 0, 3]]])
    # dataset-level confusion (rows: truth, cols: prediction) over the 14 counted pixels:
    # class 0: tp 1+5=6, fp (1,1 of img0; 0,1 of img1)=2, fn (0,1 of img0; 1,3 of img1)=2 -> 6/10
    # class 1: tp 2, fp 1 (img0 0,1), fn 0 -> 2/3
    # class 2: tp 1, fp 0 (the ignored pixel predicted 2 does not count), fn 1 -> 1/2
    # class 3: tp 1, fp 1 (img1 1,3), fn 1 (img1 0,1) -> 1/3
    # class 4: absent from truth and predictions -> left out of the mean
    expected_miou = (6 / 10 + 2 / 3 + 1 / 2 + 1 / 3) / 4
    expected_acc = 10 / 14
    module = _module(5)
    metrics = module.make_metrics()
    # two updates (one image each): the metric is accumulated over the data set, not per image
    for i in range(2):
        module.update_metrics(metrics, _one_hot_logits(pred[i : i + 1], 5), (None, target[i : i + 1]))
    values = module._compute(metrics)
    assert values["miou"].item() == pytest.approx(expected_miou, abs=1e-6)
    assert values["pixel_acc"].item() == pytest.approx(expected_acc, abs=1e-6)


def test_metric_name_and_perfect_prediction():
    module = _module(3)
    assert module.metric == "miou"
    target = torch.tensor([[[0, 1], [2, IGNORE]]])
    metrics = module.make_metrics()
    module.update_metrics(metrics, _one_hot_logits(torch.tensor([[[0, 1], [2, 0]]]), 3), (None, target))
    values = module._compute(metrics)
    assert values["miou"].item() == pytest.approx(1.0)
    assert values["pixel_acc"].item() == pytest.approx(1.0)


def test_loss_is_cross_entropy_that_ignores_255():
    torch.manual_seed(0)
    module = _module(4)
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    target = torch.randint(0, 4, (2, 3, 3))
    target[0, 0, :] = IGNORE
    loss = module.loss(logits, (None, target))
    keep = target != IGNORE
    manual = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], target[keep])
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)
    loss.backward()
    assert torch.all(logits.grad[0, :, 0, :] == 0)  # ignored pixels get no gradient
    assert logits.grad[0, :, 1, :].abs().sum() > 0
