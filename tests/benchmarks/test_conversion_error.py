"""benchmarks/conversion_error.py's per-layer split of the SNN's error (no data set needed)."""

import torch

import fastsnn
from benchmarks.conversion_error import layer_errors, parse_args
from fastsnn.backbones import create_backbone


def _tiny_pair(T: int = 3):
    torch.manual_seed(0)
    net = create_backbone("resnet20", num_classes=10, in_channels=1, width=0.25).eval()
    q = fastsnn.quantize_model(net, 2, alpha_init=1.0).eval()
    return q, fastsnn.convert_to_snn(q, timesteps=T, chunk_size=None)


def test_first_spike_fed_layer_inherits_nothing():
    # The first neuron layer reproduces the quantized ANN exactly, so the next one's mean input
    # is the ANN's: any error there is the neuron's own.
    q, snn = _tiny_pair()
    rows = layer_errors(q, snn, torch.randn(8, 1, 32, 32))
    assert rows[0]["mse_inherited"] < 1e-9
    assert abs(rows[0]["mse_total"] - rows[0]["mse_added"]) < 1e-9
    assert any(r["mse_inherited"] > 0 for r in rows[1:])  # deeper layers do inherit


def test_added_error_is_exactly_the_late_and_early_neurons():
    q, snn = _tiny_pair()
    rows = layer_errors(q, snn, torch.randn(8, 1, 32, 32))
    assert any(r["late"] > 0 for r in rows)  # a random net at T=3 has timing errors
    for r in rows:
        assert (r["mse_added"] > 0) == (r["late"] + r["early"] > 0), r


def test_leaves_the_simulation_settings_alone():
    q, snn = _tiny_pair()
    snn.mode, snn.chunk_size = "streaming", 4
    layer_errors(q, snn, torch.randn(4, 1, 32, 32))
    assert (snn.mode, snn.chunk_size) == ("streaming", 4)


def test_train_images_and_width_reach_the_training_settings():
    assert parse_args([]).train_images == 5000  # fidelity.py's Fashion-MNIST default
    assert parse_args(["--train-images", "0"]).train_images is None  # all of them
    assert parse_args(["--train-images", "20000"]).train_images == 20000
    assert parse_args([]).width_scale == 1.0 and parse_args(["--width-scale", "2"]).width_scale == 2.0
    assert parse_args([]).ft_images == 512 and parse_args(["--ft-images", "0"]).ft_images is None  # all
