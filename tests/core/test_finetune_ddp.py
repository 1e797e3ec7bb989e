"""Data-parallel fine-tuning (``distributed=True``; the stage under DDP): 2 CPU processes over gloo.

How the order is made equal: the single process tunes on batches of 2b samples; process r of
two gets samples r, r+2, r+4, ... of each of those batches (b each), which is how a
``DistributedSampler`` deals one order out to two processes. Each step then sees the same 2b
samples, the averaged gradient of two means over b is the gradient of the mean over 2b, and the
weights must agree up to float rounding. The keep / undo decisions are the first process's on
every process, and a stage killed under DDP resumes to the weights of an uninterrupted one.
"""

import copy
import dataclasses
import socket
from datetime import timedelta

import pytest
import torch
from torch import distributed as dist
from torch import multiprocessing as mp

import fastsnn
from fastsnn.planner import kernels
from tasks.finetune_stage import FineTuningStage
from tests.core.test_finetune_linear import Residual, batches, converted, scripted
from tests.helpers import StageData, StageTask

pytestmark = pytest.mark.usefixtures("one_thread")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, fn, out, args):
    torch.set_num_threads(1)
    kernels.INTEGER_PROBE_AFTER_S = float("inf")  # as tests/conftest.py: no kernel switch between runs
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=120)
    )
    try:  # tensors passed to spawned processes share their memory: each process takes its own copy
        torch.save(fn(rank, world, *copy.deepcopy(args)), out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def on_two_processes(fn, out, *args) -> list:
    """``fn(rank, world, *args)`` in 2 processes of a gloo group; their return values."""
    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(_entry, args=(2, _port(), fn, out, args), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def shard(data: list, rank: int, world: int) -> list:
    return [(x[rank::world], y[rank::world]) for x, y in data]


def close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5) for k in a)


def layerwise(rank, world, ann, snn, data, cache):
    options = {"lr": 0.01, "measure_batches": 2, "cache": cache}
    reports = fastsnn.layerwise_finetune(ann, snn, shard(data, rank, world), distributed=True, **options)
    return snn.state_dict(), [dataclasses.astuple(r) for r in reports]


def network(rank, world, ann, snn, data):
    reports = fastsnn.network_finetune(ann, snn, shard(data, rank, world), epochs=2, lr=0.01, distributed=True)
    return snn.state_dict(), [r.kept for r in reports]


def disagreeing(rank, world, ann, snn, data):
    n = sum(not layer.constant_input for layer in snn.layers)
    scores = [0.0] + [1.0 * (i + 1) for i in range(n)]  # every layer better: keep
    if rank == 1:
        scores = [0.0] + [-1.0] * n  # every layer worse: this process alone would undo them all
    fastsnn.layerwise_finetune(
        ann, snn, shard(data, rank, world), lr=0.01, validate=scripted(scores), keep_if_better=False, distributed=True
    )
    return snn.state_dict()


class Killed(Exception):
    pass


def staged(rank, world, ann, snn, data, checkpoint_dir, resume, kill_at):
    stage = FineTuningStage(
        device="cpu", progress=False, lr=0.01, measure_batches=2, checkpoint_dir=str(checkpoint_dir), resume=resume
    )
    calls, checkpoint = [], stage._checkpoint

    def dying(*args, **kwargs):  # every process stops at the same layer, after rank 0 wrote it
        checkpoint(*args, **kwargs)
        calls.append(1)
        if len(calls) == kill_at:
            raise Killed

    stage._checkpoint = dying
    task = StageTask(ann, snn)
    try:
        stage.run(task, StageData(shard(data, rank, world)))
    except Killed:
        return None
    results = {}
    stage.record(results)
    return task.snn.state_dict(), results["finetune_world_size"]


def scenarios(rank, world, ann, snn, data, tmp):
    """Every scenario below in one pair of processes (starting processes is what costs here)."""
    fresh = copy.deepcopy
    out = {cache: layerwise(rank, world, ann, fresh(snn), data, cache) for cache in ("memory", "off")}
    out["network"] = network(rank, world, ann, fresh(snn), data)
    out["disagreeing"] = disagreeing(rank, world, ann, fresh(snn), data)
    out["full"] = staged(rank, world, ann, snn, data, tmp / "ckpt_full", None, 0)
    out["killed"] = staged(rank, world, ann, snn, data, tmp / "ckpt", None, 2)
    out["next_layer"] = torch.load(tmp / "ckpt" / "finetune_last.pt", weights_only=True)["next_layer"]
    out["resumed"] = staged(rank, world, ann, snn, data, tmp / "ckpt", str(tmp / "ckpt" / "finetune_last.pt"), 0)
    return out


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """(the models, the data, what each of the 2 processes gave)."""
    torch.set_num_threads(1)
    ann, snn = converted(Residual)
    data = batches(n=4, size=6)
    tmp = tmp_path_factory.mktemp("ddp")
    return ann, snn, data, on_two_processes(scenarios, tmp, ann, snn, data, tmp)


@pytest.mark.parametrize("cache", ["memory", "off"])
def test_two_processes_tune_as_one_process_on_their_batches_joined(two, cache):
    ann, snn, data, ranks = two
    one = copy.deepcopy(snn)
    reports = fastsnn.layerwise_finetune(ann, one, data, lr=0.01, measure_batches=2, cache=cache)
    (w0, r0), (w1, r1) = ranks[0][cache], ranks[1][cache]
    assert close(w0, one.state_dict()) and close(w1, one.state_dict())
    assert not close(w0, snn.state_dict())
    assert [r[6] for r in r0] == [r[6] for r in r1] == [r.kept for r in reports]
    assert all(abs(a[4] - r.mse_after) < 1e-6 for a, r in zip(r0, reports))  # MSE summed over the processes


def test_the_network_phase_runs_the_same_way(two):
    ann, snn, data, ranks = two
    one = copy.deepcopy(snn)
    kept = [r.kept for r in fastsnn.network_finetune(ann, one, data, epochs=2, lr=0.01)]
    (w0, k0), (w1, k1) = ranks[0]["network"], ranks[1]["network"]
    assert close(w0, one.state_dict()) and close(w1, one.state_dict()) and k0 == k1 == kept


def test_the_gate_decision_is_the_same_on_every_process(two):
    _, snn, _, ranks = two
    w0, w1 = ranks[0]["disagreeing"], ranks[1]["disagreeing"]
    assert close(w0, w1) and not close(w1, snn.state_dict())  # the first process's "keep" everywhere


def test_a_stage_killed_under_ddp_resumes_to_the_weights_of_an_uninterrupted_one(two):
    _, snn, _, ranks = two
    (full, size), (full1, _) = ranks[0]["full"], ranks[1]["full"]
    assert size == 2 and close(full, full1) and not close(full, snn.state_dict())
    assert ranks[0]["killed"] is None and ranks[1]["killed"] is None
    assert ranks[0]["next_layer"] == 2
    assert close(ranks[0]["resumed"][0], full) and close(ranks[1]["resumed"][0], full)
