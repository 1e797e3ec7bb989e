"""The YOLO models: they quantize and convert, the SNN follows the ANN, the loss trains them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fastsnn import QuantReLU, convert_to_snn, quantize_model
from fastsnn.finetune import run_until
from tasks.common.shapes import generate_scene, scene_rng
from tasks.detection.loss import YOLOv2Loss
from tasks.detection.module import DetectionModule
from tasks.detection.yolo import TinyYOLO, YOLOv2R34

SIZE = 64
ANCHORS = [[0.15, 0.15], [0.3, 0.3]]


def _scenes(n: int, seed: int = 0):
    """``n`` synthetic shapes scenes (64 px), normalised like the data modules, with targets."""
    images, targets = [], []
    for i in range(n):
        image, objects, _ = generate_scene(scene_rng(seed, "train", i), SIZE, 3)
        images.append(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255)
        boxes = torch.tensor(
            [[x0, y0, x1 + 1, y1 + 1] for x0, y0, x1, y1 in (o["bbox"] for o in objects)], dtype=torch.float32
        ).reshape(-1, 4)
        labels = torch.tensor([o["label"] - 1 for o in objects], dtype=torch.long)
        targets.append({"boxes": boxes, "labels": labels, "iscrowd": torch.zeros_like(labels)})
    images = (torch.stack(images) - 0.45) / 0.225
    return images, targets


def _tiny_yolo(bits: int = 3) -> TinyYOLO:
    torch.manual_seed(0)
    net = TinyYOLO(num_classes=5, width=0.125, output_stride=16, anchors=ANCHORS)
    return quantize_model(net, bits, alpha_init=2.0)


@pytest.fixture(scope="module")
def trained():
    """A 3-bit Tiny YOLO trained briefly on 8 scenes, and its loss before and after."""
    net = _tiny_yolo(3)
    images, targets = _scenes(8)
    criterion = YOLOv2Loss()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    losses = []
    for _ in range(60):
        loss, _ = criterion(net(images), targets, net.anchors, (SIZE, SIZE))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return net.eval(), images, targets, losses


def test_loss_decreases_on_a_tiny_overfit_batch(trained):
    _, _, _, losses = trained
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.1 * np.mean(losses[:3]), losses[::10]


def test_the_trained_model_finds_its_training_boxes(trained):
    net, images, targets, _ = trained
    module = DetectionModule(net, num_classes=5)
    metrics = module.make_metrics()
    with torch.no_grad():
        module.update_metrics(metrics, net(images), (images, targets))
    assert metrics.compute()["map_50"] > 0.3


def test_tiny_yolo_converts_every_relu_and_has_no_max_pooling():
    net = _tiny_yolo(3).eval()
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)) for m in net.modules())
    assert not any(type(m) is nn.ReLU for m in net.modules())  # all became QuantReLU
    qrelus = [n for n, m in net.named_modules() if isinstance(m, QuantReLU)]
    assert len(qrelus) == 8  # 7 trunk convs + the head conv
    snn = convert_to_snn(net)
    assert snn.timesteps == 7
    assert sorted(layer.path for layer in snn.layers) == sorted(qrelus)  # every ReLU is a neuron layer
    assert not any(isinstance(m, (QuantReLU, nn.MaxPool2d)) for m in snn.modules())
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert snn(x).shape == net(x).shape == (2, 2 * 10, 4, 4)  # A * (5 + C) channels, stride 16


def test_snn_first_layer_equals_the_quantized_ann_and_the_output_agrees(trained):
    net, images, _, _ = trained
    snn = convert_to_snn(net, timesteps=7, signed=True)
    first = snn.layers[0]
    assert first.constant_input
    captured = {}
    hook = net.get_submodule(first.path).register_forward_hook(lambda m, i, o: captured.setdefault("ann", o))
    with torch.no_grad():
        ann_out = net(images)
        hook.remove()
        node = snn.net.get_submodule(first.name)
        spikes = run_until(snn.net, images, _node_name(snn, first.name), ())[_node_name(snn, first.name)]
        rate = spikes.reshape(7, len(images), *spikes.shape[1:]).mean(0)
        snn_out = snn(images)
    assert node.neuron is not None
    assert torch.allclose(rate, captured["ann"], atol=1e-5)  # the first layer is exact
    assert (captured["ann"] > 0).float().mean() > 0.05  # ... and not trivially zero

    # the prediction map (the analog output layer on the mean over T) follows the ANN closely
    def rel_error(out):
        return ((out - ann_out).norm() / (ann_out - ann_out.mean()).norm()).item()

    assert rel_error(snn_out) < 0.15, rel_error(snn_out)  # ~0.07 measured
    cos = nn.functional.cosine_similarity(snn_out.flatten(), ann_out.flatten(), dim=0)
    assert cos > 0.99, cos
    with torch.no_grad():  # the unsigned baseline drifts further (sequential error)
        assert rel_error(convert_to_snn(net, timesteps=7, signed=False)(images)) > rel_error(snn_out)


def _node_name(snn, module_name):
    return next(n.name for n in snn.net.graph.nodes if n.op == "call_module" and n.target == module_name)


def test_yolov2_r34_converts_with_its_passthrough_layer():
    torch.manual_seed(0)
    net = quantize_model(YOLOv2R34(num_classes=5, width=0.125, anchors=ANCHORS), 2).eval()
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    n_relu = sum(isinstance(m, QuantReLU) for m in net.modules())
    assert n_relu == 2 + 16 * 2 + 1 + 3  # stem, 16 basic blocks, passthrough, head
    snn = convert_to_snn(net)
    assert len(snn.layers) == n_relu and snn.timesteps == 3
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert snn(x).shape == net(x).shape == (2, 2 * 10, 2, 2)


def test_anchors_are_validated_and_saved_with_the_weights():
    with pytest.raises(ValueError, match="fractions of the image"):
        TinyYOLO(5, anchors=[[1.3, 1.7], [9.5, 4.8]])
    with pytest.raises(ValueError, match="positive"):
        TinyYOLO(5, anchors=[[0.1, -0.2]])
    net = TinyYOLO(5, width=0.125, anchors=ANCHORS)
    assert torch.equal(net.state_dict()["anchors"], torch.tensor(ANCHORS))
    assert TinyYOLO(5, width=0.125).anchors.shape == (5, 2)  # YOLOv2's VOC anchors by default
