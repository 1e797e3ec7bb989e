"""Helpers shared by ``benchmarks/fidelity.py`` and ``benchmarks/speed.py``.

* the environment a result came from (versions, CPU / GPU, threads, load average, commit);
* waiting for a quiet machine before timing (``wait_for_quiet``);
* timing several callables round-robin, so that a change of machine load hits them all alike;
* peak memory of one call: the PyTorch CPU allocator's high-water mark above what was already
  allocated (from ``torch.profiler`` memory events), or ``torch.cuda.max_memory_allocated``;
* SpikingJelly (optional): conversion of a float ANN with ``ann2snn.RateCodingRecipe`` and its
  simulation (the documented single-step loop, or multi-step mode); SpikingJelly's signed ternary
  neuron ``STBIFNode`` (SpikeZIP's ST-BIF) simulating one of our quantized ANNs (``STBIFSNN``);
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

from fastsnn.planner.machine import cpu_name
from tasks.finetune_stage import resolve_device  # noqa: F401  ("auto": the GPU if any), used by the scripts

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- environment


def load_average() -> float | None:
    """1-minute load average (None where the OS does not report one)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


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


class LoadSampler:
    """Samples the 1-minute load average every ``every_s`` seconds in a daemon thread while in
    use (``with LoadSampler() as load: ...``); ``summary()``: start, end, mean, max, samples."""

    def __init__(self, every_s: float = 30.0):
        import threading

        self.every_s = every_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        load = load_average()
        if load is not None:
            self.samples.append(round(load, 2))

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self) -> LoadSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def summary(self) -> dict:
        s = self.samples
        nan = float("nan")
        return {
            "every_s": self.every_s,
            "start": s[0] if s else nan,
            "end": s[-1] if s else nan,
            "mean": sum(s) / len(s) if s else nan,
            "max": max(s) if s else nan,
            "samples": s,
        }


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


class _TimeFoldedNeuron(torch.nn.Module):
    """A multi-step SpikingJelly neuron inside a network whose other layers see ``[T * N, ...]``:
    unfolds the time (``[T, N, ...]``), runs the neuron over the T steps, folds it back."""

    def __init__(self, node: torch.nn.Module):
        super().__init__()
        self.node = node
        self.steps = 1  # set by STBIFSNN before each simulation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.node.step_mode == "s":  # single-step: one step of [N, ...], the state kept in the node
            return self.node(x)
        return self.node(x.reshape(self.steps, -1, *x.shape[1:])).reshape(x.shape)


class STBIFSNN:
    """SpikingJelly's signed ternary neuron (``neuron.STBIFNode``: SpikeZIP's ST-BIF) simulating one
    of our quantized ANNs (a model prepared by ``fastsnn.quantize_model``), for a comparison of
    neurons on the same network.

    Every ``QuantReLU`` (``b`` bits, clip ``alpha``) becomes an ``STBIFNode`` set up as SpikeZIP
    sets it up from a QANN quantizer: ``level = 2**b`` quantization levels, unsigned (``sym=False``:
    the released count is bounded to ``[neg_min, pos_max] = [0, 2**b - 1]``), residual ``q``
    starting at 0.5 (round to nearest), threshold from the quantizer's step ``s = alpha / (2**b - 1)``.
    Every other layer is the quantized ANN's own (quantized convs and linears, eval batch norm,
    pooling, residual adds, the analog output layer), applied to all steps at once with the time
    folded into the batch; the neurons run in SpikingJelly's multi-step mode on ``[T, N, ...]``
    and are reset with ``functional.reset_net`` before and after each batch.

    Input and read-out as our SNN's (direct encoding): the analog image is presented at every
    step. SpikeZIP sums the network's outputs over the steps, each spike carrying ``s``; with the
    image presented at every one of the ``timesteps`` steps every current is ``timesteps`` times
    the quantized ANN's, so the threshold (and a spike's value) is ``timesteps * s`` and the output
    after ``t`` steps is the sum of the first ``t`` outputs divided by ``timesteps``. At
    ``timesteps = 2**b - 1`` the threshold is ``alpha``: the neuron is then our signed IF neuron
    (membrane starting at half the threshold, a negative spike only while the net count is
    positive) plus SpikeZIP's upper bound of ``2**b - 1`` on the net count, which cannot bind in
    ``t <= 2**b - 1`` steps; beyond them it does (our neuron's count may keep growing, and its mean
    output stays in ``[0, alpha]``).

    ``step_mode="s"`` runs SpikingJelly's single-step loop instead (the network called once per
    step on ``[N, ...]``, the neurons' state kept between calls): the same outputs.
    """

    def __init__(
        self,
        qmodel: torch.nn.Module,
        timesteps: int | None = None,
        device: torch.device | str = "cpu",
        step_mode: str = "m",
    ):
        import copy

        from spikingjelly.activation_based import functional, neuron

        from fastsnn.quantizers import QuantReLU

        self.functional = functional
        self.device = torch.device(device)
        self.net = copy.deepcopy(qmodel).to(self.device).eval()
        relus = [(name, m) for name, m in self.net.named_modules() if isinstance(m, QuantReLU)]
        if step_mode not in ("m", "s"):
            raise ValueError(f"step_mode must be 'm' or 's', got {step_mode!r}")
        self.step_mode = step_mode
        if not relus:
            raise ValueError("STBIFSNN needs a quantized ANN (QuantReLU activations: fastsnn.quantize_model)")
        bits = {m.bits for _, m in relus}
        if None in bits:
            raise ValueError("STBIFSNN needs quantized activations (QuantReLU with bits set), not clipped ReLUs")
        self.bits = max(bits)
        self.timesteps = int(timesteps) if timesteps is not None else 2**self.bits - 1
        self.neurons: list[_TimeFoldedNeuron] = []
        for name, m in relus:
            levels = 2**m.bits - 1
            step = float(m.alpha.detach().reshape(-1)[0]) / levels  # the quantizer's scale s
            node = neuron.STBIFNode(q_threshold=step * self.timesteps, level=2**m.bits, sym=False, step_mode=step_mode)
            wrapped = _TimeFoldedNeuron(node).to(self.device)
            parent, _, child = name.rpartition(".")
            setattr(self.net.get_submodule(parent) if parent else self.net, child, wrapped)
            self.neurons.append(wrapped)

    @torch.no_grad()
    def running_outputs(self, x: torch.Tensor, steps: int, at: set[int] | None = None) -> dict[int, torch.Tensor]:
        """Simulate ``steps`` steps on ``x`` ``[N, ...]``; the output after each step in ``at``
        (default: the last), i.e. the sum of the outputs so far divided by ``timesteps``."""
        at = {steps} if at is None else set(at)
        if self.step_mode == "s":
            return self._running_outputs_single_step(x, steps, at)
        for m in self.neurons:
            m.steps = steps
        self.functional.reset_net(self.net)
        x = x.to(self.device)
        out = self.net(x.unsqueeze(0).expand(steps, *x.shape).reshape(steps * x.shape[0], *x.shape[1:]))
        self.functional.reset_net(self.net)
        total = out.reshape(steps, x.shape[0], *out.shape[1:]).cumsum(0) / self.timesteps
        return {t: total[t - 1] for t in sorted(at)}

    def _running_outputs_single_step(self, x: torch.Tensor, steps: int, at: set[int]) -> dict[int, torch.Tensor]:
        self.functional.reset_net(self.net)
        x = x.to(self.device)
        total, outs = None, {}
        for t in range(1, steps + 1):
            out = self.net(x)
            total = out if total is None else total + out
            if t in at:
                outs[t] = total / self.timesteps
        self.functional.reset_net(self.net)
        return outs

    def __call__(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """The output after ``steps`` steps (default ``timesteps``)."""
        steps = self.timesteps if steps is None else int(steps)
        return self.running_outputs(x, steps)[steps]


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
