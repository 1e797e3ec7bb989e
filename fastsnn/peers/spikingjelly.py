"""SpikingJelly 2.0's conversions of our models: peers of our SNN on the same network and data.

* :class:`STBIFSNN` -- SpikingJelly's signed ternary neuron ``STBIFNode`` (SpikeZIP's ST-BIF)
  simulating one of our quantized ANNs (``fastsnn.quantize_model``): the same network, their neuron.
* :class:`SpikingJellySNN` -- SpikingJelly's rate-coding conversion (``ann2snn.Converter`` with a
  ``RateCodingRecipe``) of a float ANN, e.g. the :func:`float_twin` of a quantized one.
* :class:`PeerSNN` -- either of them with the call signature of our ``SpikingModel``
  (``snn(x)``; ``snn(x, return_steps=True)`` -> ``(output, steps)``), so that the test pass that
  measures our SNN measures it too.

SpikingJelly is optional (``pip install -e ".[compare]"``): it is imported only when an adapter
is built; :func:`spikingjelly_version` says whether it can be.
"""

from __future__ import annotations

import contextlib
import copy
import io

import torch
from torch import nn

from ..convert import freeze_quantized_weights
from ..quantizers import QuantReLU


def spikingjelly_version() -> str | None:
    """The installed SpikingJelly version, or None when it cannot be imported."""
    try:
        from importlib.metadata import version

        import spikingjelly.activation_based.ann2snn  # noqa: F401

        return version("spikingjelly")
    except Exception:  # not installed, or broken: callers say what to install
        return None


def float_twin(model: nn.Module) -> nn.Module:
    """The float ANN of a quantized one, the input of SpikingJelly's rate coding: a copy in eval mode
    whose quantized convs / linears are plain layers holding their quantized weights (as floats) and
    whose every ``QuantReLU`` is a plain ``nn.ReLU``, its clip and levels dropped (rate coding sets
    its thresholds from activation statistics instead). Batch norm is kept: the converter folds it."""
    twin = copy.deepcopy(model).eval()
    freeze_quantized_weights(twin)
    for name, module in list(twin.named_modules()):
        if isinstance(module, QuantReLU):
            parent, _, child = name.rpartition(".")
            setattr(twin.get_submodule(parent) if parent else twin, child, nn.ReLU())
    return twin


class _InferenceOnly(nn.Module):
    """A wrapper of ``self.net`` that stays in inference mode whatever ``train()`` says."""

    def train(self, mode: bool = True):
        super().train(mode)
        self.net.eval()  # a converted network (or the ANN tested beside it) always runs in inference mode
        return self


class PeerSNN(_InferenceOnly):
    """A peer's simulation (:class:`STBIFSNN`, :class:`SpikingJellySNN`) with our ``SpikingModel``'s
    call signature, simulated for ``timesteps`` steps: ``snn(x)`` is the output after them,
    ``snn(x, return_steps=True)`` returns ``(output, steps)``, ``steps[t-1]`` the mean of the
    network's outputs over the first ``t`` steps (our read-out). ``.to(device)`` moves its network."""

    def __init__(self, simulation: STBIFSNN | SpikingJellySNN, timesteps: int):
        super().__init__()
        self.simulation = simulation
        self.net = simulation.net  # a submodule: moved by .to()
        self.timesteps = int(timesteps)

    def forward(self, x: torch.Tensor, return_steps: bool = False):
        self.simulation.device = x.device  # where .to() moved the network
        steps = self.simulation.mean_outputs(x, self.timesteps)
        return (steps[-1], steps) if return_steps else steps[-1]


class OneStep(_InferenceOnly):
    """An ANN with our ``SpikingModel``'s call signature, as one step: tested by the same pass as the SNNs."""

    timesteps = 1

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.eval()

    def forward(self, x: torch.Tensor, return_steps: bool = False):
        y = self.net(x)
        return (y, y.unsqueeze(0)) if return_steps else y


class CalibrationInputs:
    """Calibration data for :class:`SpikingJellySNN`: ``inputs(batch)`` of the first ``batches`` batches
    of ``loader`` (all when None), read again on every pass (nothing is held in memory)."""

    def __init__(self, loader, inputs=lambda batch: batch[0], batches: int | None = None):
        self.loader, self.inputs, self.batches = loader, inputs, batches

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if self.batches is not None and i >= self.batches:
                return
            yield self.inputs(batch)


class SpikingJellySNN:
    """``ann2snn.RateCodingRecipe(calibration, mode)`` (thresholds from activation statistics:
    ``"max"`` or a percentile such as ``"99.9%"``; IF neurons with soft reset; the analog input at
    every step) of a float ANN. ``step_mode="s"``: ``T`` calls of the network (the documented
    loop; memory independent of T); ``"m"``: SpikingJelly's multi-step mode, with its fused CUDA
    neurons on a GPU."""

    def __init__(self, float_ann: nn.Module, calibration, mode: str = "max", step_mode: str = "s", device="cpu"):
        from spikingjelly.activation_based import ann2snn, functional

        self.functional, self.device, self.step_mode = functional, torch.device(device), step_mode
        recipe = ann2snn.RateCodingRecipe(dataloader=calibration, mode=mode)
        with contextlib.redirect_stderr(io.StringIO()):  # its calibration progress bar
            self.net = ann2snn.Converter(recipe=recipe, device=self.device).convert(copy.deepcopy(float_ann)).eval()
        self.backend = "torch"
        if step_mode == "m":
            functional.set_step_mode(self.net, "m")
            if self.device.type == "cuda":
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
        """The mean output over ``timesteps`` steps."""
        self.functional.reset_net(self.net)
        if self.step_mode == "m":
            out = self.net(x.unsqueeze(0).expand(timesteps, *x.shape)).mean(0)
        else:
            out = sum(self.net(x) for _ in range(timesteps)) / timesteps
        self.functional.reset_net(self.net)
        return out

    @torch.no_grad()
    def mean_outputs(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """The mean output over the first ``t`` steps for t = 1..``steps``, stacked: ``[steps, N, ...]``."""
        self.functional.reset_net(self.net)
        if self.step_mode == "m":
            sums = self.net(x.unsqueeze(0).expand(steps, *x.shape)).cumsum(0)
        else:
            total, sums = 0, []
            for _ in range(steps):
                total = total + self.net(x)
                sums.append(total)
            sums = torch.stack(sums)
        self.functional.reset_net(self.net)
        return sums / _step_counts(steps, sums)


class TimeFoldedNeuron(nn.Module):
    """A multi-step SpikingJelly neuron among layers that see ``[T * N, ...]``: unfolds the time,
    runs the neuron over the ``steps`` steps, folds it back (single-step: one step of ``[N, ...]``)."""

    def __init__(self, node: nn.Module):
        super().__init__()
        self.node, self.steps = node, 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.node.step_mode == "s":
            return self.node(x)
        return self.node(x.reshape(self.steps, -1, *x.shape[1:])).reshape(x.shape)


class STBIFSNN:
    """SpikingJelly's ``STBIFNode`` in place of every ``QuantReLU`` (``b`` bits, clip ``alpha``) of a
    quantized ANN (``fastsnn.quantize_model``), set up as SpikeZIP sets it up from a quantizer:
    ``level = 2**b``, unsigned count bounded to ``[0, 2**b - 1]``, residual starting at 0.5.

    Every other layer is the ANN's own, applied to all steps at once (time folded into the batch).
    Input as our SNN's: the image at every one of the ``timesteps`` steps, so every current is
    ``timesteps`` times the ANN's; the threshold is ``timesteps * alpha / (2**b - 1)`` and SpikeZIP's
    output after ``t`` steps (:meth:`running_outputs`) the sum of the first ``t`` outputs divided by
    ``timesteps`` (:meth:`mean_outputs`: divided by ``t``, our read-out). At ``timesteps = 2**b - 1``
    this is our signed IF neuron plus SpikeZIP's bound on the net count, which cannot bind in
    ``t <= 2**b - 1`` steps (beyond, it does). ``step_mode="s"``: SpikingJelly's single-step loop
    (the network called once per step), with the same outputs.
    """

    def __init__(self, qmodel: nn.Module, timesteps: int | None = None, device="cpu", step_mode: str = "m"):
        from spikingjelly.activation_based import functional, neuron

        if step_mode not in ("m", "s"):
            raise ValueError(f"step_mode must be 'm' or 's', got {step_mode!r}")
        self.functional, self.device, self.step_mode = functional, torch.device(device), step_mode
        self.net = copy.deepcopy(qmodel).to(self.device).eval()
        relus = [(name, m) for name, m in self.net.named_modules() if isinstance(m, QuantReLU)]
        if not relus:
            raise ValueError("STBIFSNN needs a quantized ANN (QuantReLU activations: fastsnn.quantize_model)")
        if any(m.bits is None for _, m in relus):
            raise ValueError("STBIFSNN needs quantized activations (QuantReLU with bits set), not clipped ReLUs")
        self.timesteps = int(timesteps) if timesteps is not None else 2 ** max(m.bits for _, m in relus) - 1
        self.neurons: list[TimeFoldedNeuron] = []
        for name, m in relus:
            step = float(m.alpha.detach().reshape(-1)[0]) / (2**m.bits - 1)  # the quantizer's scale
            node = neuron.STBIFNode(q_threshold=step * self.timesteps, level=2**m.bits, sym=False, step_mode=step_mode)
            wrapped = TimeFoldedNeuron(node).to(self.device)
            parent, _, child = name.rpartition(".")
            setattr(self.net.get_submodule(parent) if parent else self.net, child, wrapped)
            self.neurons.append(wrapped)

    @torch.no_grad()
    def running_outputs(self, x: torch.Tensor, steps: int, at: set[int] | None = None) -> dict[int, torch.Tensor]:
        """Simulate ``steps`` steps on ``x`` ``[N, ...]``; the output after each step in ``at`` (default: the last)."""
        at = {steps} if at is None else set(at)
        sums = self._sums(x, steps) / self.timesteps
        return {t: sums[t - 1] for t in sorted(at)}

    @torch.no_grad()
    def mean_outputs(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """The mean output over the first ``t`` steps for t = 1..``steps``, stacked: ``[steps, N, ...]``
        (SpikeZIP's read-out times ``timesteps / t``: the same at ``t = timesteps``, the same argmax)."""
        sums = self._sums(x, steps)
        return sums / _step_counts(steps, sums)

    def _sums(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """The sum of the network's outputs over the first t steps, t = 1..``steps``: ``[steps, N, ...]``."""
        x = x.to(self.device)
        self.functional.reset_net(self.net)
        if self.step_mode == "s":
            sums, total = [], 0
            for _ in range(steps):
                total = total + self.net(x)
                sums.append(total)
            sums = torch.stack(sums)
        else:
            for m in self.neurons:
                m.steps = steps
            out = self.net(x.unsqueeze(0).expand(steps, *x.shape).reshape(steps * x.shape[0], *x.shape[1:]))
            sums = out.reshape(steps, x.shape[0], *out.shape[1:]).cumsum(0)
        self.functional.reset_net(self.net)
        return sums

    def __call__(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """The output after ``steps`` steps (default ``timesteps``)."""
        steps = self.timesteps if steps is None else int(steps)
        return self.running_outputs(x, steps)[steps]


def _step_counts(steps: int, like: torch.Tensor) -> torch.Tensor:
    """1, 2, ..., ``steps`` shaped to divide a ``[steps, N, ...]`` tensor of running sums."""
    return torch.arange(1, steps + 1, device=like.device, dtype=like.dtype).reshape(-1, *[1] * (like.dim() - 1))
