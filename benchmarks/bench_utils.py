"""Helpers shared by ``benchmarks/fidelity.py`` and ``benchmarks/speed.py``.

* the environment a result came from (versions, CPU / GPU, threads, load average, commit);
* waiting for a quiet machine before timing (``wait_for_quiet``);
* timing several callables round-robin, so that a change of machine load hits them all alike;
* peak memory of one call: the PyTorch CPU allocator's high-water mark above what was already
  allocated (from ``torch.profiler`` memory events), or ``torch.cuda.max_memory_allocated``;
* SpikingJelly (optional): conversion of a float ANN with ``ann2snn.RateCodingRecipe`` and its
  simulation (the documented single-step loop, or multi-step mode);
* writing a result as JSON + markdown under ``benchmarks/results/``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- environment


def load_average() -> float | None:
    """1-minute load average (None where the OS does not report one)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "fastsnn", "benchmarks"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def spikingjelly_version() -> str | None:
    """The installed SpikingJelly version, or None when it cannot be imported."""
    try:
        from importlib.metadata import version

        import spikingjelly.activation_based.ann2snn  # noqa: F401

        return version("spikingjelly")
    except Exception:  # not installed, or broken: the benchmarks run without it
        return None


def environment(device: torch.device | str = "cpu") -> dict:
    device = torch.device(device)
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "spikingjelly": spikingjelly_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "load_average_1min": load_average(),
        "commit": git_commit(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def device_label(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(device)})"
    return f"CPU ({cpu_name()}, {torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''})"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def wait_for_quiet(max_load: float, max_wait_s: float, poll_s: float = 15.0, log=print) -> dict:
    """Sleep until the 1-minute load average is below ``max_load`` or ``max_wait_s`` passed.

    Returns ``{"load_before": ..., "waited_s": ..., "quiet": bool}``.
    """
    start = time.monotonic()
    load = load_average()
    while load is not None and load >= max_load and time.monotonic() - start < max_wait_s:
        log(f"load average {load:.2f} >= {max_load}: waiting ({time.monotonic() - start:.0f}/{max_wait_s:.0f} s)")
        time.sleep(min(poll_s, max(max_wait_s - (time.monotonic() - start), 0.1)))
        load = load_average()
    quiet = load is None or load < max_load
    if not quiet:
        log(f"load average still {load:.2f} after {max_wait_s:.0f} s: measuring anyway (reported)")
    return {"load_before": load, "waited_s": round(time.monotonic() - start, 1), "quiet": quiet}


# --------------------------------------------------------------------------- timing and memory


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round_robin(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device, budget_s: float | None = None
) -> dict[str, dict]:
    """Call every function ``repeats`` times, round-robin (a, b, c, a, b, c, ...).

    Interleaving spreads slow phases of a shared machine over all candidates. Returns per name
    ``{"times_s": [...], "min_s", "median_s"}``. ``budget_s`` stops early (after at least
    one full round) when the rounds take longer than that.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    for r in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
        if budget_s is not None and time.perf_counter() - start > budget_s and r >= 1:
            break
    return {k: {"times_s": v, "min_s": min(v), "median_s": statistics.median(v)} for k, v in times.items()}


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak memory allocated by PyTorch during ``fn()`` above what was allocated before it.

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset. CPU: the high-water mark of the
    CPU allocator's allocation / free events recorded by ``torch.profiler`` (tensors only:
    allocator caches, library scratch buffers and the Python heap are not counted; the same
    rule for every method measured). The result of ``fn`` is released inside the measurement.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del out
        return int(peak)
    from torch.profiler import ProfilerActivity, profile

    def run():
        fn()  # the output is dropped here, inside the profiled region

    with _stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return int(peak)


@contextlib.contextmanager
def _stderr_silenced():
    """Mute file descriptor 2 (the profiler's C++ start / stop log lines), restored afterwards."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (e.g. captured): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# --------------------------------------------------------------------------- SpikingJelly


class SpikingJellySNN:
    """A SpikingJelly ``ann2snn`` conversion of a float ANN and its simulation for T steps.

    ``RateCodingRecipe(dataloader, mode=mode)``: thresholds from activation statistics
    (``"max"`` or a percentile such as ``"99.9%"``), IF neurons with soft reset, the analog input
    presented at every step. ``step_mode="s"`` runs the documented loop (``T`` calls of the
    network, ``functional.reset_net`` before each sample batch); ``"m"`` switches the converted
    network to multi-step mode (time folded into the batch inside SpikingJelly's layers).
    """

    def __init__(
        self,
        float_ann: torch.nn.Module,
        calibration,
        mode: str = "max",
        step_mode: str = "s",
        device: torch.device | str = "cpu",
    ):
        import copy

        from spikingjelly.activation_based import ann2snn, functional

        self.functional = functional
        self.device = torch.device(device)
        recipe = ann2snn.RateCodingRecipe(dataloader=calibration, mode=mode)
        with contextlib.redirect_stderr(io.StringIO()):  # its calibration progress bar
            self.net = ann2snn.Converter(recipe=recipe, device=self.device).convert(copy.deepcopy(float_ann)).eval()
        self.mode = mode
        self.step_mode = step_mode
        self.backend = "torch"
        if step_mode == "m":
            functional.set_step_mode(self.net, "m")
            if self.device.type == "cuda":  # SpikingJelly's fused CUDA neurons where available
                self.backend = self._fastest_cuda_backend()

    def _fastest_cuda_backend(self) -> str:
        from spikingjelly.activation_based import neuron

        for backend in ("triton", "cupy"):
            try:
                self.functional.set_backend(self.net, backend, instance=neuron.IFNode)
                return backend
            except Exception:  # backend not installed / not supported here
                continue
        return "torch"

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:
        """Mean output over ``timesteps`` steps."""
        self.functional.reset_net(self.net)
        if self.step_mode == "m":
            out = self.net(x.unsqueeze(0).expand(timesteps, *x.shape)).mean(0)
        else:
            out = None
            for _ in range(timesteps):
                step = self.net(x)
                out = step if out is None else out + step
            out = out / timesteps
        self.functional.reset_net(self.net)
        return out

    @torch.no_grad()
    def running_outputs(self, x: torch.Tensor, timesteps: int, at: set[int]) -> dict[int, torch.Tensor]:
        """Single-step simulation for ``timesteps`` steps; the mean output after each step in ``at``."""
        self.functional.reset_net(self.net)
        total, outs = None, {}
        for t in range(1, timesteps + 1):
            step = self.net(x)
            total = step if total is None else total + step
            if t in at:
                outs[t] = total / t
        self.functional.reset_net(self.net)
        return outs


# --------------------------------------------------------------------------- output


def write_results(name: str, result: dict, markdown: str, out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.json`` and ``<out_dir>/<name>.md``; print the markdown and both
    paths; return the paths."""
    out_dir = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(result, indent=2, default=_jsonable) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    print(markdown)
    print(f"\nresults: {json_path}\n         {md_path}")
    return json_path, md_path


def _jsonable(obj):
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.device):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def command_line() -> str:
    """The command that produced a result, as a user would type it from the repository root."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(REPO_ROOT)
    except ValueError:
        pass
    return " ".join(["python", str(script), *sys.argv[1:]])


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)
