"""spike_stats simulates the model as it runs (mode, chunks): the same numbers in every mode and
chunk size, and a streaming model's statistics pass needs the memory of streaming."""

import pytest
import torch

import fastsnn
from benchmarks.measure import peak_memory_bytes
from fastsnn.backbones import create_backbone
from tests.helpers import randomize_bn


def _qmodel(name, width=0.25, bits=2):
    torch.manual_seed(0)
    net = randomize_bn(create_backbone(name, num_classes=10, in_channels=1, width=width), bias_offset=0.3)
    return fastsnn.quantize_model(net, bits, weight_bits=bits, alpha_init=2.0).eval()


@pytest.mark.parametrize("name", ["vgg11", "resnet20"])
def test_the_same_statistics_in_every_mode_and_chunk_size(name):
    q = _qmodel(name)
    x = torch.randn(5, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    batches = [(x[:3], None), (x[3:], None)]
    reference = fastsnn.spike_stats(fastsnn.convert_to_snn(q, timesteps=4, mode="multistep"), batches)
    settings = [
        ("streaming", None, None),
        ("multistep", 2, None),
        ("streaming", 2, None),
        ("streaming", 1, None),
        ("auto", None, 1),  # auto: streaming (1-byte budget)
        ("auto", 2, 2**40),  # auto: multistep
    ]
    for mode, chunk, budget in settings:
        snn = fastsnn.convert_to_snn(q, timesteps=4, mode=mode, chunk_size=chunk, memory_budget=budget)
        stats = fastsnn.spike_stats(snn, batches)
        assert stats == reference, (mode, chunk)  # counts of the same events: exactly equal
    assert reference["sops"] > 0 and reference["neg_rate"] >= 0 and reference["images"] == 5


def test_stats_of_a_streaming_model_peak_well_below_the_multistep_pass():
    q = _qmodel("resnet20", width=0.5)
    x = torch.randn(4, 1, 96, 96)
    peaks = {}
    for mode in ("multistep", "streaming"):
        snn = fastsnn.convert_to_snn(q, timesteps=15, mode=mode, chunk_size=None)  # whole batches
        peaks[mode] = peak_memory_bytes(lambda snn=snn: fastsnn.spike_stats(snn, x), torch.device("cpu"))
    assert peaks["streaming"] < 0.3 * peaks["multistep"], peaks
