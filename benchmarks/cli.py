"""The options every benchmark takes, and the start of a measurement: threads, seed, device, a
quiet machine (waiting up to ``--max-wait`` s for the load average to fall below ``--max-load``),
and the load sampled while it runs."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.record import RESULTS_DIR, LoadSampler, load_average


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser described by ``doc`` (a module docstring), with the common options."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = p.add_argument_group("common to every benchmark")
    common.add_argument("--quick", action="store_true", help="a short run at small sizes (written as <name>_quick)")
    common.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    common.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu or cuda[:i]")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--max-load", type=float, default=1.5, help="wait for a 1-minute load average below this")
    common.add_argument("--max-wait", type=float, default=None, help="seconds to wait for it (default 900, quick 60)")
    common.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="default benchmarks/results/")
    common.add_argument("--name", default=None, help="output file stem (default: the benchmark's name)")
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None, benchmark: str) -> argparse.Namespace:
    """Parse ``argv`` (default: the command line); fill in the defaults that depend on ``--quick``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    args.argv, args.benchmark = argv, benchmark
    args.name = args.name or benchmark + ("_quick" if args.quick else "")
    args.max_wait = args.max_wait if args.max_wait is not None else (60 if args.quick else 900)
    return args


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def resolve_device(device: str) -> torch.device:
    """``"auto"``: the GPU when there is one, else the CPU; anything else as given."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device)


def wait_for_quiet(max_load: float, max_wait_s: float, poll_s: float = 15.0) -> tuple[float | None, float]:
    """Sleep until the load average is below ``max_load`` or ``max_wait_s`` passed: ``(load, waited s)``."""
    start = time.monotonic()
    load = load_average()
    while load is not None and load >= max_load and time.monotonic() - start < max_wait_s:
        log(f"load average {load:.2f} >= {max_load}: waiting ({time.monotonic() - start:.0f}/{max_wait_s:.0f} s)")
        time.sleep(min(poll_s, max(max_wait_s - (time.monotonic() - start), 0.1)))
        load = load_average()
    if load is not None and load >= max_load:
        log(f"load average still {load:.2f} after {max_wait_s:.0f} s: measuring anyway (recorded)")
    return load, round(time.monotonic() - start, 1)


@dataclass
class Measurement:
    """Where and under which load a benchmark measures."""

    device: torch.device
    load_before: float | None
    waited_s: float
    sampler: LoadSampler
    started: float

    def load(self) -> dict:
        return {
            "before": self.load_before,
            "waited_s": self.waited_s,
            "during": self.sampler.summary(),
            "seconds": round(time.perf_counter() - self.started, 1),
        }


@contextmanager
def measuring(args: argparse.Namespace) -> Iterator[Measurement]:
    """Set the threads and the seed, resolve the device, wait for a quiet machine; sample the load
    until the block ends."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    load, waited = wait_for_quiet(args.max_load, args.max_wait)
    with LoadSampler() as sampler:
        yield Measurement(device, load, waited, sampler, time.perf_counter())
