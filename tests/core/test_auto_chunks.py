"""chunk_size="auto" (the default): samples per chunk from the per-sample multi-step peak and the
CPU's cache; the whole batch's outputs; one estimate and one log line per sample shape; bounded memory."""

import logging

import pytest
import torch

import fastsnn
from benchmarks.measure import peak_memory_bytes
from fastsnn.backbones import create_backbone
from fastsnn.planner import machine, simulation
from tests.helpers import randomize_bn


def _qmodel(width=0.25):
    torch.manual_seed(0)
    net = randomize_bn(create_backbone("resnet20", num_classes=10, in_channels=1, width=width), bias_offset=0.3)
    return fastsnn.quantize_model(net, 2, weight_bits=2, alpha_init=2.0).eval()


def _cache(monkeypatch, nbytes):
    monkeypatch.setattr(simulation, "last_level_cache", lambda: (nbytes, f"a {nbytes} B test cache"))


@pytest.mark.parametrize(
    "per_sample,cache,expected",
    [(100, 50, 1), (100, 100, 1), (100, 140, 1), (100, 150, 2), (100, 3000, 32), (1, 2**20, 2**20)],
)
def test_samples_per_chunk_is_the_nearest_power_of_two_of_the_ratio(per_sample, cache, expected):
    assert simulation.samples_per_chunk(per_sample, cache) == expected


def _fake_caches(monkeypatch, tmp_path, sizes):
    for i, (level, size) in enumerate(sizes):
        entry = tmp_path / f"index{i}"
        entry.mkdir()
        (entry / "level").write_text(f"{level}\n")
        (entry / "size").write_text(f"{size}\n")
    monkeypatch.setattr(machine, "CACHE_DIR", tmp_path)
    machine.last_level_cache.cache_clear()


def test_last_level_cache_reads_the_largest_cache(monkeypatch, tmp_path):
    _fake_caches(monkeypatch, tmp_path, [(1, "48K"), (2, "2048K"), (3, "16M")])
    try:
        assert machine.last_level_cache() == (16 * 2**20, "the 16 MiB L3 cache")
    finally:
        machine.last_level_cache.cache_clear()


def test_a_socket_sized_cache_counts_as_max_cache_bytes(monkeypatch, tmp_path):
    # a VM's guest sees the whole socket's L3; its cores use a slice of it
    _fake_caches(monkeypatch, tmp_path, [(2, "2048K"), (3, "491520K")])
    try:
        nbytes, what = machine.last_level_cache()
    finally:
        machine.last_level_cache.cache_clear()
    assert nbytes == machine.MAX_CACHE_BYTES
    assert "480 MiB L3" in what and "counted as 32 MiB" in what


def test_auto_chunks_follow_the_estimate_and_give_the_whole_batch_outputs(monkeypatch, caplog):
    q, x = _qmodel(), torch.randn(7, 1, 32, 32)
    snn = fastsnn.convert_to_snn(q, timesteps=3, mode="multistep")
    per_sample = snn.planner.estimate_multistep_bytes(x[:1])
    _cache(monkeypatch, int(2.1 * per_sample))  # room for two samples
    whole = fastsnn.convert_to_snn(q, timesteps=3, mode="multistep", chunk_size=None)
    calls = []
    monkeypatch.setattr(
        snn, "_forward_multistep", lambda x, r, f=snn._forward_multistep: calls.append(len(x)) or f(x, r)
    )
    with caplog.at_level(logging.INFO, logger="fastsnn"), torch.no_grad():
        assert snn.planner.chunk(x) == 2
        out, steps = snn(x, return_steps=True)
        snn(x[:5])  # another batch size, the same sample shape: no new estimate
        ref, ref_steps = whole(x, return_steps=True)
    assert calls == [2, 2, 2, 1, 2, 2, 1]
    assert torch.allclose(out, ref, atol=1e-6) and torch.allclose(steps, ref_steps, atol=1e-6)
    lines = [r.getMessage() for r in caplog.records if "chunk_size='auto'" in r.getMessage()]
    assert len(lines) == 1 and "2 sample(s) per chunk" in lines[0] and "(1, 32, 32)" in lines[0]


def test_a_large_cache_keeps_whole_batches_and_streaming_never_chunks(monkeypatch):
    _cache(monkeypatch, 2**40)
    q, x = _qmodel(), torch.randn(4, 1, 32, 32)
    assert fastsnn.convert_to_snn(q, timesteps=3).planner.chunk(x) is None
    _cache(monkeypatch, 1)
    streaming = fastsnn.convert_to_snn(q, timesteps=3, mode="streaming")
    assert streaming.planner.plan(x) == ("streaming", None)
    assert fastsnn.convert_to_snn(q, timesteps=3, mode="multistep").planner.chunk(x) == 1


def test_auto_chunks_bound_the_peak_memory(monkeypatch):
    _cache(monkeypatch, 1)  # one sample at a time
    q, x = _qmodel(width=0.5), torch.randn(4, 1, 96, 96)
    peaks = {}
    for chunk in (None, "auto"):
        snn = fastsnn.convert_to_snn(
            q, timesteps=15, mode="multistep", chunk_size=chunk, compiled=False
        )  # no compile mid-measurement
        with torch.no_grad():
            snn(x[:1])  # estimates and warm-up outside the measurement
            peaks[chunk] = peak_memory_bytes(lambda snn=snn: snn(x), torch.device("cpu"))
    assert peaks["auto"] < 0.4 * peaks[None], peaks


def test_bad_chunk_settings_are_refused():
    with pytest.raises(ValueError, match="chunk_size must be a positive number of samples, 'auto' or None"):
        fastsnn.convert_to_snn(_qmodel(), chunk_size="big")
    with pytest.raises(ValueError, match="chunk_size"):
        fastsnn.convert_to_snn(_qmodel(), chunk_size=0)
