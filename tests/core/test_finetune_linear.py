"""Layer-wise fine-tuning that carries each batch's values from layer to layer (cost linear in depth).

With a fixed list of batches, ``layerwise_finetune`` keeps per batch the SNN values at the cut
between tuned and untuned layers (and a paused ANN run) instead of simulating the SNN from the
input for every layer. The results must be exactly those of simulating again (``cache="off"``):
the same LayerReports and the same tuned weights, on residual, concat and analog-skip graphs,
with undone layers, validation, resume and several epochs; and it falls back, saying why, when
the values would not fit the memory budget, when layers share weights or when the loader is not
a list.
"""

import copy
import dataclasses
import logging
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import fastsnn
from fastsnn.backbones.layers import conv_bn_relu
from fastsnn.backbones.resnet import BasicBlock
from fastsnn.convert import trace
from fastsnn.finetune import graph, sources
from tests.helpers import randomize_bn

FALLBACK = "recomputed for every layer"


pytestmark = pytest.mark.usefixtures("one_thread")


class Residual(nn.Module):
    """Stem, a residual block, a downsampling block (conv shortcut), pooling, linear."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn_relu(1, 8)
        self.block1 = BasicBlock(8, 8)
        self.block2 = BasicBlock(8, 12, stride=2)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.block2(self.block1(self.stem(x))), 1).flatten(1))


class Concat(nn.Module):
    """A skip from the stem over a residual block into a concat, upsampling, and an analog
    input branch (a conv on the image) that joins spikes: a value of the analog side read late."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn_relu(1, 6)
        self.image = nn.Conv2d(1, 6, 3, padding=1)
        self.body = nn.Sequential(nn.AvgPool2d(2), BasicBlock(6, 6))
        self.side = conv_bn_relu(6, 6, 1)
        self.fuse = conv_bn_relu(12, 8)
        self.mix = nn.Conv2d(8, 6, 1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        s = self.stem(x)
        y = torch.cat([F.interpolate(self.body(s), scale_factor=2, mode="nearest"), self.side(s)], dim=1)
        y = self.act(self.mix(self.fuse(y)) + self.image(x))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


class Shared(nn.Module):
    """One conv called by two layers: tuning the second changes the first one's spikes."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn_relu(1, 6)
        self.conv = nn.Conv2d(6, 6, 3, padding=1)
        self.a, self.b, self.c = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.last = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        y = self.c(self.last(self.b(self.conv(self.a(self.conv(self.stem(x)))))))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


class Plain(nn.Module):
    def __init__(self, depth: int):
        super().__init__()
        self.layers = nn.Sequential(conv_bn_relu(1, 6), *[conv_bn_relu(6, 6) for _ in range(depth)])
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.layers(x), 1).flatten(1))


MODELS = {"residual": Residual, "concat": Concat, "shared": Shared}


def converted(make: Callable[[], nn.Module], T: int = 3, seed: int = 1):
    torch.manual_seed(seed)
    ann = fastsnn.quantize_model(randomize_bn(make(), bias_offset=0.3), 2, alpha_init=1.0).eval()
    return ann, fastsnn.convert_to_snn(ann, timesteps=T)


def batches(n: int = 4, size: int = 6, seed: int = 1) -> list:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 8, 8, generator=gen), torch.zeros(size)) for _ in range(n)]


def tune(ann, snn, data, **kwargs):
    """Fine-tune a copy of ``snn``; return (reports as tuples, tuned copy)."""
    snn = copy.deepcopy(snn)
    kwargs = {"lr": 0.01, "measure_batches": 2, **kwargs}
    reports = fastsnn.layerwise_finetune(ann, snn, data, **kwargs)
    return [dataclasses.astuple(r) for r in reports], snn


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def fallback_messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if FALLBACK in r.getMessage()]


def scripted(scores):
    """A ``validate`` whose scores are given in advance (so that some layers are undone)."""
    it = iter(scores)
    return lambda snn: next(it)


@pytest.mark.parametrize("name", ["residual", "concat"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"epochs_per_layer": 2, "measure_batches": 9},
        {"validate": "scripted", "keep_if_better": False},
    ],
    ids=["default", "two-epochs", "validate"],
)
def test_carried_values_give_exactly_the_results_of_simulating_again(name, options, caplog):
    ann, snn = converted(MODELS[name])
    data = batches()
    n = len([layer for layer in snn.layers if not layer.constant_input])
    assert n >= 4

    def make(options):
        if options.get("validate") == "scripted":  # scores: up, down, up, ...: every other layer undone
            return {**options, "validate": scripted([0.0] + [(i + 1) // 2 * (1 if i % 2 else -1) for i in range(n)])}
        return options

    old, old_snn = tune(ann, snn, data, cache="off", **make(options))
    with caplog.at_level(logging.WARNING, logger="fastsnn.finetune"):
        new, new_snn = tune(ann, snn, data, **make(options))
    assert not fallback_messages(caplog)  # the carried path was taken
    assert new == old
    assert same_weights(new_snn, old_snn)
    assert not same_weights(new_snn, snn)  # something was tuned
    kept = [r[6] for r in new]
    assert any(kept) and not all(kept)  # kept and undone layers: the carried values follow both


class CallCounter:
    def __init__(self, modules):
        self.calls = {id(m): 0 for m in modules}
        self.handles = [m.register_forward_hook(self._hook) for m in modules]

    def _hook(self, module, inputs, output):
        self.calls[id(module)] += 1

    def __getitem__(self, module):
        return self.calls[id(module)]


@pytest.mark.parametrize("depth", [3, 6])
def test_each_layer_costs_the_same_whatever_its_depth(depth):
    """With carried values every conv runs a fixed number of times: on each training batch twice
    (spikes, then rates with gradients), on each measured batch before and after, once more per
    batch to move the cut past its layer, and once in the dry run that sizes the cache. Simulated
    from the input again, the first convs would run again for every later layer."""
    ann, snn = converted(lambda: Plain(depth))
    data, epochs, measure = batches(n=3), 2, 2
    tunable = [layer for layer in snn.layers if not layer.constant_input]
    nodes = {n.target: n for n in snn.net.graph.nodes if n.op == "call_module"}
    convs = [graph._layer_graph(snn.net, nodes[layer.name]).modules[0] for layer in tunable]
    expected = 2 * epochs * len(data) + 2 * measure + len(data) + 1
    for cache, check in (("auto", lambda c: c == expected), ("off", lambda c: c > expected)):
        tuned = copy.deepcopy(snn)
        tuned_convs = [tuned.net.get_submodule(n) for n, m in snn.net.named_modules() if any(m is c for c in convs)]
        counter = CallCounter(tuned_convs)
        fastsnn.layerwise_finetune(ann, tuned, data, epochs_per_layer=epochs, measure_batches=measure, cache=cache)
        counts = [counter[c] for c in tuned_convs]
        assert check(counts[0]), (cache, counts)
        if cache == "auto":  # the last layer's spikes feed no later layer: no move past it
            assert counts == [expected] * (len(counts) - 1) + [expected - len(data) - 1]


def test_resume_carries_the_batches_through_the_layers_tuned_before():
    ann, snn = converted(Residual)
    data = batches()
    full = copy.deepcopy(snn)
    states = []
    reports = fastsnn.layerwise_finetune(
        ann, full, data, lr=0.01, on_layer_end=lambda r: states.append(copy.deepcopy(full.state_dict()))
    )
    for start in (2, 3):
        resumed = copy.deepcopy(snn)
        resumed.load_state_dict(states[start - 1])
        rest = fastsnn.layerwise_finetune(ann, resumed, data, lr=0.01, start_layer=start)
        assert [dataclasses.astuple(r) for r in rest] == [dataclasses.astuple(r) for r in reports[start:]]
        assert same_weights(resumed, full)


def test_over_the_memory_budget_it_simulates_again_and_says_why(caplog):
    ann, snn = converted(Concat)
    data = batches()
    tunables = graph._tunable_layers(snn)
    per_batch = sources._frontier_bytes(snn, trace(ann), tunables, data[0][0])
    need = per_batch * len(data)
    old, old_snn = tune(ann, snn, data, cache="off")
    with caplog.at_level(logging.WARNING, logger="fastsnn.finetune"):
        fits, fits_snn = tune(ann, snn, data, cache_budget=need)
    assert not fallback_messages(caplog)
    with caplog.at_level(logging.WARNING, logger="fastsnn.finetune"):
        over, over_snn = tune(ann, snn, data, cache_budget=need - 1)
    (message,) = fallback_messages(caplog)
    assert "budget" in message and "cache_budget" in message
    assert fits == old == over
    assert same_weights(fits_snn, old_snn) and same_weights(over_snn, old_snn)


def test_spike_trains_are_carried_as_int8():
    ann, snn = converted(Residual)
    tunables = graph._tunable_layers(snn)
    frontier = sources._Frontier(snn, trace(ann), tunables, [batches()[0][0]], 1, None)
    for t in tunables[:3]:
        frontier.advance(t)
    stored = frontier.batches[0].values
    assert stored  # the block's input (skip) and the current layer's spikes
    assert all(s.codes is not None and s.codes.dtype == torch.int8 for s in stored.values())


def test_shared_weights_are_simulated_again(caplog):
    ann, snn = converted(Shared)
    data = batches()
    old, old_snn = tune(ann, snn, data, cache="off")
    with caplog.at_level(logging.WARNING, logger="fastsnn.finetune"):
        new, new_snn = tune(ann, snn, data)
    (message,) = fallback_messages(caplog)
    assert "shared weights" in message
    assert new == old and same_weights(new_snn, old_snn)


def test_one_pass_of_a_loader_is_held_like_a_list_and_cache_off_takes_fresh_passes(caplog):
    ann, snn = converted(Residual)
    data = batches()
    loader = DataLoader(
        TensorDataset(torch.cat([x for x, _ in data]), torch.cat([y for _, y in data])), batch_size=len(data[0][0])
    )
    listed, listed_snn = tune(ann, snn, data)
    with caplog.at_level(logging.INFO, logger="fastsnn.finetune"):
        held, held_snn = tune(ann, snn, loader)
        fresh, fresh_snn = tune(ann, snn, loader, cache="off")
    plans = [r.getMessage() for r in caplog.records if "fine-tuning plan" in r.getMessage()]
    assert len(plans) == 2 and "in memory" in plans[0] and FALLBACK in plans[1] and "cache='off'" in plans[1]
    assert all(r.levelno == logging.INFO for r in caplog.records if "fine-tuning plan" in r.getMessage())
    assert held == fresh == listed
    assert same_weights(held_snn, listed_snn) and same_weights(fresh_snn, listed_snn)


def test_streaming_and_chunked_models_are_tuned_on_their_multistep_graph():
    ann, snn = converted(Concat)
    data = batches()
    reference, reference_snn = tune(ann, snn, data)
    other = copy.deepcopy(snn)
    other.mode, other.chunk_size = "streaming", 2
    got, got_snn = tune(ann, other, data)
    assert got == reference and same_weights(got_snn, reference_snn)
    assert (got_snn.mode, got_snn.chunk_size) == ("streaming", 2)
    x = data[0][0]
    with torch.no_grad():
        streamed = got_snn(x)
        got_snn.mode, got_snn.chunk_size = "multistep", None
        assert torch.allclose(streamed, got_snn(x), atol=1e-5)


def test_progress_and_on_layer_end_see_every_layer():
    ann, snn = converted(Residual)
    data = batches(n=3)
    seen, ended = [], []

    def progress(iterable, description):
        items = list(iterable)
        seen.append((description, len(items)))
        return items

    reports = fastsnn.layerwise_finetune(
        ann, copy.deepcopy(snn), data, epochs_per_layer=2, progress=progress, on_layer_end=ended.append
    )
    assert ended == reports
    expected = [(f"layer {r.index} {r.path} ({e}/2)", len(data)) for r in reports for e in (1, 2)]
    assert seen == expected


def test_no_batches_gives_the_same_empty_measurements():
    ann, snn = converted(Residual)
    empty = tune(ann, snn, [])[0]
    assert empty == tune(ann, snn, [], cache="off")[0] == tune(ann, snn, iter([]), cache="memory")[0]


class _CountingLoader:
    """A shuffling loader that counts its passes."""

    def __init__(self, data, batch_size):
        self.loader = DataLoader(TensorDataset(*data), batch_size=batch_size, shuffle=True)
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        return iter(self.loader)

    def __len__(self):
        return len(self.loader)


def test_the_stage_tunes_every_layer_on_one_held_pass(caplog):
    from tasks.finetune_stage import FineTuningStage

    ann, snn = converted(Residual)
    data = batches(n=6)
    loader = _CountingLoader((torch.cat([x for x, _ in data]), torch.cat([y for _, y in data])), len(data[0][0]))

    class Task:  # what the stage reads of a SpikingTask
        net, eval_label = ann, "snn"

        def __init__(self):
            self.snn = copy.deepcopy(snn)

        def to(self, device):
            return self

        def inputs(self, batch):
            return batch[0]

    class Data:
        def setup(self, stage):
            pass

        def train_dataloader(self):
            return loader

    stage = FineTuningStage(validate=False, limit_batches=3, measure_batches=2, device="cpu", progress=False)
    with caplog.at_level(logging.WARNING, logger="fastsnn.finetune"):
        reports = stage.run(Task(), Data())
    assert len(reports) == len(graph._tunable_layers(snn)) >= 4
    assert not fallback_messages(caplog)
    assert loader.passes == 2  # one batch to size the cache, one pass held for all layers
