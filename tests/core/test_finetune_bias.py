"""Bias correction (docs/method.md §4.2): a layer's mean error per channel, added to the bias that
reaches its neuron one for one; alone (``epochs_per_layer=0``) or after a layer's epochs."""

import copy
import logging

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fastsnn
from fastsnn.backbones.layers import conv_bn_relu
from fastsnn.finetune import bias, graph
from tasks.finetune_stage import FineTuningStage
from tests.core.test_finetune_linear import Residual, batches, converted, same_weights
from tests.helpers import StageData, StageTask

pytestmark = pytest.mark.usefixtures("one_thread")


def first_layer_bias(snn) -> nn.Parameter:
    t = graph._tunable_layers(snn)[0]
    x = batches(n=1)[0][0]
    vals = graph.run_until(snn.net, x, t.graph.neuron.name, t.graph.sources)
    found = bias._unit_bias(snn.net, t, graph._feeds(snn.net, t.graph, vals, snn.timesteps))
    assert found is not None
    return found


def test_a_mean_error_put_into_a_bias_is_taken_out_again():
    ann, snn = converted(Residual)
    b = first_layer_bias(snn)
    original = b.detach().clone()
    with torch.no_grad():
        b.sub_(0.25)  # every channel's input a quarter of a step too low
    reports = fastsnn.layerwise_finetune(
        ann, snn, batches(n=6), epochs_per_layer=0, bias_correction=True, measure_batches=6, keep_if_better=False
    )
    assert reports[0].mse_after < 0.5 * reports[0].mse_before
    assert (b - original).abs().max() < 0.1  # most of the 0.25 is back in every channel


def test_on_an_exact_conversion_it_is_undone_by_the_gate():
    """Converted from a quantized ANN the SNN sits on the ANN's grid except for its timing
    errors: shifting a bias by their mean moves exact places off the grid (MSE up), so the
    measured objective undoes it."""
    ann, snn = converted(Residual)
    before = copy.deepcopy(snn)
    reports = fastsnn.layerwise_finetune(ann, snn, batches(n=4), epochs_per_layer=0, bias_correction=True)
    assert not any(r.kept for r in reports) and same_weights(snn, before)


def test_without_it_a_layer_with_no_epochs_is_left_alone():
    ann, snn = converted(Residual)
    before = copy.deepcopy(snn)
    fastsnn.layerwise_finetune(ann, snn, batches(n=2), epochs_per_layer=0, measure_batches=2)
    assert same_weights(snn, before)


class NoBias(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn_relu(1, 6)
        self.conv = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.act = nn.ReLU()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.act(self.conv(self.stem(x))), 1).flatten(1))


def test_a_layer_without_such_a_bias_is_skipped_and_says_so(caplog):
    ann, snn = converted(NoBias)
    before = copy.deepcopy(snn)
    with caplog.at_level(logging.INFO, logger="fastsnn"):
        fastsnn.layerwise_finetune(ann, snn, batches(n=2), epochs_per_layer=0, bias_correction=True, measure_batches=2)
    assert same_weights(snn, before)
    assert any("no bias that reaches its neuron" in r.getMessage() for r in caplog.records)


def test_the_stage_corrects_the_bias_when_asked():
    ann, snn = converted(Residual)
    data = StageData(batches(n=4))
    runs = {}
    for flag in (False, True):
        task = StageTask(ann, copy.deepcopy(snn))
        stage = FineTuningStage(
            device="cpu", progress=False, epochs_per_layer=0, bias_correction=flag, validate=False, keep_if_better=False
        )
        stage.run(task, data)
        runs[flag] = task.snn
    assert same_weights(runs[False], snn) and not same_weights(runs[True], snn)
