"""The network-level fine-tuning phase (docs/method.md §4.1): ``fastsnn.network_finetune``.

The graph evaluated on rates, each neuron a straight-through estimate of its spike count, gives
the SNN's own output; one backward pass reaches the weights of every layer fed by spikes (and
the output layer's); an epoch that makes things worse is undone exactly; a phase resumed from
its saved state ends where an uninterrupted one ends; and on held-out digits it brings the SNN's
output closer to the quantized ANN's than layer-wise fine-tuning alone.
"""

import copy

import pytest
import torch
from torch.nn import functional as F

import fastsnn
from fastsnn.finetune import graph, network
from tests.core.digits import accuracy, digits_splits, loader, quantized_model
from tests.core.test_finetune_linear import Concat, Residual, batches, converted, same_weights

pytestmark = pytest.mark.usefixtures("one_thread")


def tuned_tensors(snn, output_layer: bool) -> dict[str, torch.Tensor]:
    ids = {id(p) for p in network.network_params(snn, output_layer)}
    return {k: p.detach().clone() for k, p in snn.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("make", [Residual, Concat], ids=["residual", "concat"])
def test_the_graph_on_rates_gives_the_snn_output(make):
    ann, snn = converted(make)
    x = batches(n=1)[0][0]
    out, rates = network.snn_rates(snn, x)
    assert set(rates) == {layer.name for layer in snn.layers}
    surrogate = graph._eval_network(snn.net, x, rates)
    assert torch.allclose(surrogate, snn(x), atol=1e-5) and torch.allclose(out, snn(x), atol=1e-5)


@pytest.mark.parametrize("make", [Residual, Concat], ids=["residual", "concat"])
def test_one_backward_reaches_every_tuned_layer_and_the_output_layer(make):
    ann, snn = converted(make)
    x = torch.cat([x for x, _ in batches(n=4)])
    params = network.network_params(snn, output_layer=True)
    for p in params:
        p.requires_grad_(True)
    _, rates = network.snn_rates(snn, x)
    network.output_mse(graph._eval_network(snn.net, x, rates), ann(x)).backward()
    tunables = graph._tunable_layers(snn)
    assert len(tunables) >= 4
    for t in tunables:
        weight = max(t.params, key=torch.Tensor.numel)  # the layer's conv weight
        assert weight.grad is not None and weight.grad.abs().sum() > 0, t.layer.path
    (fc,) = [m for m in snn.net.modules() if isinstance(m, torch.nn.Linear)]
    assert fc.weight.grad.abs().sum() > 0
    assert {id(p) for p in network.network_params(snn)} == {id(p) for t in tunables for p in t.params}
    assert all(p.grad is None for p in snn.parameters() if id(p) not in {id(q) for q in params})  # first layer


@pytest.mark.parametrize("output_layer", [False, True])
def test_the_phase_changes_only_the_tuned_weights_and_leaves_no_gradients(output_layer):
    ann, snn = converted(Residual)
    before = copy.deepcopy(snn)
    reports = fastsnn.network_finetune(ann, snn, batches(), lr=0.01, keep_if_better=False, output_layer=output_layer)
    assert len(reports) == 1 and reports[0].kept
    tuned, old = tuned_tensors(snn, output_layer), dict(before.named_parameters())
    for name, p in snn.named_parameters():
        assert name in tuned or torch.equal(p, old[name]), name  # the first layer, thresholds (and fc) stay
    assert all(not torch.equal(p, old[name]) for name, p in tuned.items() if name.endswith("weight"))
    assert all(p.grad is None and not p.requires_grad for p in snn.parameters())


@pytest.mark.parametrize("how", ["validate", "keep_if_better"])
def test_a_worse_epoch_is_undone_exactly_and_ends_the_phase(how):
    ann, snn = converted(Residual)
    start = copy.deepcopy(snn)
    scores = iter([1.0, 0.5])  # the start, then a drop after the first epoch
    if how == "validate":
        kwargs = {"validate": lambda s: next(scores), "keep_if_better": False, "lr": 1e-3}
    else:
        kwargs = {"keep_if_better": True, "lr": 10.0}  # a huge step: the loss (MSE to the ANN's output) explodes
    reports = fastsnn.network_finetune(ann, snn, batches(), epochs=3, **kwargs)
    assert len(reports) == 1 and not reports[0].kept  # the phase ended at the first undone epoch
    if how == "keep_if_better":
        assert reports[0].loss_after > reports[0].loss_before
    else:
        assert reports[0].score == 0.5
    assert same_weights(snn, start)


def scripted(scores):
    """A ``validate`` whose scores are given in advance."""
    it = iter(scores)
    return lambda snn: next(it)


def test_a_resumed_phase_ends_where_an_uninterrupted_one_ends():
    ann, snn = converted(Residual)
    data = batches(n=5)
    kwargs = {"epochs": 2, "lr": 0.01, "checkpoint_every": 2, "keep_if_better": False}
    scores = [0.0, 1.0, 2.0]  # the start, after epoch 1, after epoch 2: both kept
    full, states = copy.deepcopy(snn), []
    done = fastsnn.network_finetune(ann, full, data, **kwargs, validate=scripted(scores), on_checkpoint=states.append)
    assert len(done) == 2 and all(r.kept for r in done)
    assert [(s["epoch"], s["step"]) for s in states] == [(0, 2), (0, 4), (1, 0), (1, 2), (1, 4), (2, 0)]
    for state in (states[1], states[2], states[3]):  # killed inside the first epoch, between epochs, in the second
        resumed = copy.deepcopy(snn)  # the weights come from the state
        validate = scripted(scores[1 + state["epoch"] :])  # no score for the start: the state has the best so far
        got = fastsnn.network_finetune(ann, resumed, data, **kwargs, validate=validate, resume=copy.deepcopy(state))
        assert got == done
        assert same_weights(resumed, full)


def test_the_loss_may_be_a_callable_that_sees_the_batch_and_the_gate_measures_it():
    ann, snn = converted(Residual)
    data = [(x, torch.randint(0, 5, (len(x),))) for x, _ in batches()]
    seen = []

    def task_loss(snn_out, ann_out, batch):
        seen.append((torch.is_grad_enabled(), batch[1]))
        return F.cross_entropy(snn_out, batch[1])

    (report,) = fastsnn.network_finetune(ann, snn, data, loss=task_loss, measure_batches=2, keep_if_better=False)
    labels = [y for _, y in data]
    trained = [y for grad, y in seen if grad]
    measured = [y for grad, y in seen if not grad]  # the first two batches, before and after the epoch
    assert len(trained) == len(data) and all(torch.equal(a, b) for a, b in zip(trained, labels))
    assert len(measured) == 4 and all(torch.equal(a, b) for a, b in zip(measured, labels[:2] * 2))
    with torch.no_grad():
        expected = sum(F.cross_entropy(snn(x), y).item() for x, y in data[:2]) / 2
    assert report.loss_after == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="loss must be one of"):
        fastsnn.network_finetune(ann, snn, data, loss="l1")


def test_a_network_without_layers_fed_by_spikes_has_nothing_to_tune(caplog):
    ann = fastsnn.quantize_model(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten()), 2)
    snn = fastsnn.convert_to_snn(ann.eval())
    assert fastsnn.network_finetune(ann, snn, batches()) == []
    assert "no layer fed by spikes" in caplog.text


@pytest.mark.slow
def test_on_held_out_digits_it_brings_the_output_closer_to_the_ann_than_layerwise_alone():
    """Residual digits CNN, 2 bits, T = 3: the MSE of SNN to ANN logits on the test split (never
    seen by either phase) after layer-wise fine-tuning, and after the output phase on top."""
    data = digits_splits(image_size=16)
    torch.manual_seed(0)
    ann = quantized_model("residual", data, bits=2, fp_epochs=6, q_epochs=6, seed=0)
    snn = fastsnn.convert_to_snn(ann, timesteps=3)
    train = list(loader(data["train"], batch_size=64, shuffle=True, seed=0))
    x_test, _ = data["test"]

    def validate(s):
        return accuracy(s, data["val"])

    @torch.no_grad()
    def output_error(s):
        return F.mse_loss(s(x_test), ann(x_test)).item()

    converted_error = output_error(snn)
    fastsnn.layerwise_finetune(ann, snn, train, validate=validate)
    layerwise_error, layerwise_acc = output_error(snn), accuracy(snn, data["test"])
    reports = fastsnn.network_finetune(ann, snn, train, epochs=2, lr=1e-3, validate=validate)
    error, acc = output_error(snn), accuracy(snn, data["test"])
    print(
        f"\noutput MSE to the ANN on the test split: converted {converted_error:.4f}, layer-wise "
        f"{layerwise_error:.4f}, + output phase {error:.4f}; test accuracy ANN {accuracy(ann, data['test']):.2f}, "
        f"layer-wise {layerwise_acc:.2f}, + output phase {acc:.2f}; epochs {[(r.kept, r.score) for r in reports]}"
    )
    assert reports[0].kept
    assert error < 0.9 * layerwise_error
    assert acc >= layerwise_acc - 0.5  # not worse beyond one test image in 450 (the gate is on validation)
