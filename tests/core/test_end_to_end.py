"""End to end on scikit-learn's digits: quantize (2 bits) -> train -> convert (T=3) -> fine-tune.

For a plain and a residual CNN (tests/core/digits.py), on the held-out test split:
(a) the fine-tuned SNN is within 1.0 accuracy point of the quantized ANN;
(b) the signed SNN is not worse than the unsigned one;
(c) layer-wise fine-tuning lowers the per-layer MSE it optimises and never leaves a layer
    worse than it found it (updates that raise a layer's MSE are undone).
Each model takes a few seconds on a CPU (training included).
"""

import copy
import time

import pytest
import torch
from torch.nn import functional as F

import fastsnn
from tests.core.digits import accuracy, digits_splits, loader, quantized_model

MEASURE_BATCHES = 4  # layerwise_finetune's default: MSEs are measured on the first 4 batches


@pytest.fixture(scope="module")
def data():
    return digits_splits(image_size=16, test_fraction=0.25, val_fraction=0.15, split_seed=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these tiny convolutions gain nothing from more, and on a shared
    2-core machine two spinning OpenMP threads made the training 5-20x slower. It also fixes
    the floating-point reduction order, so the results below do not depend on the core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["plain", "residual"])
def pipeline(request, data, one_thread):
    name = request.param
    torch.manual_seed(0)
    start = time.perf_counter()
    ann = quantized_model(name, data, bits=2, fp_epochs=6, q_epochs=6, seed=0)
    train_s = time.perf_counter() - start
    unsigned = fastsnn.convert_to_snn(ann, timesteps=3, signed=False)
    signed = fastsnn.convert_to_snn(ann, timesteps=3, signed=True)
    converted = copy.deepcopy(signed)
    # a fixed list of shuffled batches: the MSEs are measured on its first MEASURE_BATCHES
    batches = list(loader(data["train"], batch_size=64, shuffle=True, seed=0))
    acc = {
        "ann": accuracy(ann, data["test"]),
        "unsigned": accuracy(unsigned, data["test"]),
        "signed": accuracy(signed, data["test"]),
    }
    start = time.perf_counter()
    reports = fastsnn.layerwise_finetune(ann, signed, batches, measure_batches=MEASURE_BATCHES)
    finetune_s = time.perf_counter() - start
    acc["finetuned"] = accuracy(signed, data["test"])
    print(f"\n{name}: {acc} train {train_s:.1f}s finetune {finetune_s:.1f}s")
    for r in reports:
        print(f"  {r.path}: mse {r.mse_before:.5f} -> {r.mse_after:.5f} kept={r.kept}")
    return {
        "name": name,
        "ann": ann,
        "converted": converted,
        "snn": signed,
        "acc": acc,
        "reports": reports,
        "measure": [x for x, _ in batches[:MEASURE_BATCHES]],
    }


def test_the_quantized_ann_learned_the_task(pipeline):
    # otherwise the comparisons below would be between chance-level models
    assert pipeline["acc"]["ann"] >= 95.0, pipeline["acc"]
    assert fastsnn.quantizers.activation_bits(pipeline["ann"]) == {2}
    assert pipeline["snn"].timesteps == 3


def test_finetuned_snn_is_within_one_point_of_the_quantized_ann(pipeline):
    acc = pipeline["acc"]
    assert abs(acc["finetuned"] - acc["ann"]) <= 1.0, acc


def test_signed_snn_is_not_worse_than_unsigned(pipeline):
    acc = pipeline["acc"]
    assert acc["signed"] >= acc["unsigned"], acc


@torch.no_grad()
def _layer_mse(ann, snn, batches) -> dict[str, float]:
    """Per ANN activation path: MSE between the SNN layer's rate and the ANN activation,
    measured with forward hooks on whole-model runs (independent of finetune's internals)."""
    T = snn.timesteps
    acts, rates = {}, {}
    handles = [
        m.register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o))
        for n, m in ann.named_modules()
        if isinstance(m, fastsnn.QuantReLU)
    ]
    handles += [
        gn.register_forward_hook(
            lambda m, i, o: rates.__setitem__(m.path, o.reshape(T, o.shape[0] // T, *o.shape[1:]).mean(0))
        )
        for _, gn in snn.neurons()
    ]
    total, count = {}, {}
    try:
        for x in batches:
            ann(x)
            snn(x)
            for path, rate in rates.items():
                total[path] = total.get(path, 0.0) + F.mse_loss(rate, acts[path], reduction="sum").item()
                count[path] = count.get(path, 0) + rate.numel()
    finally:
        for h in handles:
            h.remove()
    return {path: total[path] / count[path] for path in total}


def test_finetuning_lowers_the_layer_mse_it_optimises(pipeline):
    ann, snn, reports = pipeline["ann"], pipeline["snn"], pipeline["reports"]
    # every spiking layer but the first (exact: its input is the analog image) is tuned, in order
    assert [r.path for r in reports] == [layer.path for layer in snn.layers[1:]]
    assert [r.index for r in reports] == list(range(1, len(snn.layers)))

    # mse_before of the first tuned layer is the converted SNN's own error there
    converted = _layer_mse(ann, pipeline["converted"], pipeline["measure"])
    assert converted[snn.layers[0].path] == pytest.approx(0.0, abs=1e-10)  # the first layer is exact
    assert reports[0].mse_before == pytest.approx(converted[reports[0].path], rel=1e-6)

    # LayerReport.mse_after is the MSE the layer's update reached, also when the update was
    # undone (kept=False, mse_after > mse_before: mostly spike-timing error, which the
    # surrogate gradient cannot see); such a layer ends at mse_before. So "no layer ends
    # worse" is checked on the fine-tuned model itself, not on mse_after alone.
    # keep_if_better: an update is kept exactly when it did not raise the layer's MSE ...
    for r in reports:
        assert r.kept == (r.mse_after <= r.mse_before), r
    # ... and the fine-tuned SNN really holds the kept updates and none of the undone ones:
    # each layer's error now is mse_after if kept, else mse_before (later layers do not
    # change an earlier layer's output, so the final model shows every layer's end state)
    final = _layer_mse(ann, snn, pipeline["measure"])
    for r in reports:
        assert final[r.path] == pytest.approx(r.mse_after if r.kept else r.mse_before, rel=1e-6), r
        assert final[r.path] <= r.mse_before, r
    # and fine-tuning did lower the error of at least one layer
    assert any(final[r.path] < r.mse_before for r in reports), reports
