"""The compare stage: SpikingJelly's conversions of the run's own models, tested as our SNN is.

``python run.py stages=[train,convert,compare,finetune]`` (or ``stages=[convert,compare] ckpt_path=...``)
converts the run's models with SpikingJelly 2.0 (:mod:`fastsnn.peers.spikingjelly`) and runs the task
module's SNN test pass on each, under its own label, with the task's metric after every step:

* ``unsigned`` -- our own conversion with ordinary (unsigned) IF neurons, the baseline the signed
  neuron improves on (needs no SpikingJelly);
* ``stbif`` -- SpikingJelly's ``STBIFNode`` (SpikeZIP's signed ST-BIF neuron) simulating the same
  quantized ANN as our SNN, for the run's T steps;
* ``rate_max`` / ``rate_p999`` -- SpikingJelly's rate-coding conversion (thresholds from the maximum /
  the 99.9th percentile of the activations on ``calibration_batches`` training batches) of the float
  model, simulated for ``rate_timesteps`` steps: the float twin of the quantized ANN (the same
  weights, plain ReLUs), or the float ANN of ``float_ckpt`` (a ``bits=32`` run's checkpoint).

Each method's metric goes into ``results.json`` as ``<method>`` (after the last step) and
``<method>_per_step`` (after t = 1, 2, ... steps), and to the loggers as ``<method>/test_<metric>``.
With rate coding, the float model it converts is tested too (``float_ann``): the accuracy its SNNs
approach as the steps grow, which is not the clipped float ANN's (rate coding drops the clips).
A method SpikingJelly cannot apply to the model is skipped with a warning (``<method>_error``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from hydra.utils import instantiate
from torch import nn

from fastsnn import convert_to_snn
from fastsnn.peers.spikingjelly import (
    STBIFSNN,
    CalibrationInputs,
    OneStep,
    PeerSNN,
    SpikingJellySNN,
    float_twin,
    spikingjelly_version,
)
from tasks.checkpoints import checkpoint_bits, load_weights
from tasks.results import PEER_LABELS, record_snn
from tasks.settings import FULL_PRECISION, RunSettings, SettingsError

if TYPE_CHECKING:
    from tasks.pipeline import Experiment

log = logging.getLogger(__name__)

RATE_MODES = {"rate_max": "max", "rate_p999": "99.9%"}  # method -> RateCodingRecipe mode
METHODS = PEER_LABELS  # unsigned, stbif, then the rate-coding modes
INSTALL = 'pip install -e ".[compare]"'


class CompareStage:
    """The compare stage's settings (``conf/compare/default.yaml``) and its run on an experiment.

    Args:
        methods: which of ``unsigned``, ``stbif``, ``rate_max``, ``rate_p999`` to run.
        rate_timesteps: steps the rate-coded SNNs are simulated for (their curve has one point per step).
        calibration_batches: training batches that set the rate-coding thresholds (None: all).
        float_ckpt: a ``bits=32`` run's checkpoint whose float ANN rate coding converts (None: the
            float twin of the run's quantized ANN).
        rate_step_mode: ``"s"`` (SpikingJelly's step-by-step loop: memory independent of the steps) or
            ``"m"`` (multi-step, time folded into the batch).
    """

    def __init__(
        self,
        methods: Sequence[str] = METHODS,
        rate_timesteps: int = 64,
        calibration_batches: int | None = 20,
        float_ckpt: str | None = None,
        rate_step_mode: str = "s",
    ):
        self.methods = list(methods)
        self.rate_timesteps = rate_timesteps
        self.calibration_batches = calibration_batches
        self.float_ckpt = float_ckpt
        self.rate_step_mode = rate_step_mode

    def check(self, settings: RunSettings) -> None:
        """Refuse, before any training, a compare stage that cannot run: SpikingJelly missing, an
        unknown option, ``stbif`` on a full-precision model, a ``float_ckpt`` that is no float ANN."""
        if set(self.methods) - {"unsigned"} and spikingjelly_version() is None:
            raise SettingsError(
                "the compare stage converts the run's models with SpikingJelly, which is not installed (or does "
                f"not import): install it with `{INSTALL}`, or leave compare out of stages=[...]"
            )
        self._check_options()
        spiking_qann = [m for m in self.methods if m in ("unsigned", "stbif")]
        if spiking_qann and settings.bits is None:
            raise SettingsError(
                f"compare methods {spiking_qann} simulate the quantized ANN, but this is a full-precision run "
                "(bits=32): use compare.methods=[rate_max,rate_p999]"
            )
        if self.float_ckpt and checkpoint_bits(self.float_ckpt) not in (None, FULL_PRECISION):
            raise SettingsError(
                f"compare.float_ckpt={self.float_ckpt} holds a {checkpoint_bits(self.float_ckpt)}-bit model; give "
                "a bits=32 run's checkpoint (its float ANN), or float_ckpt=null for the float twin of this run's ANN"
            )

    def _check_options(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise SettingsError(f"compare.methods must be a non-empty subset of {list(METHODS)}, got {self.methods}")
        for name in ("rate_timesteps", "calibration_batches"):
            value = getattr(self, name)
            if value is None and name == "calibration_batches":
                continue  # all of them
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingsError(f"compare.{name} must be a positive integer, got {value!r}")
        if self.rate_step_mode not in ("s", "m"):
            raise SettingsError(f"compare.rate_step_mode must be 's' or 'm', got {self.rate_step_mode!r}")

    def run(self, exp: Experiment, results: dict, test_pass: Callable[[str], dict]) -> None:
        """Each method's SNN as ``exp.module.snn`` for one ``test_pass(label)``; our SNN put back after."""
        results["compare"] = {
            "spikingjelly": spikingjelly_version(),
            "timesteps": {m: self._timesteps(m, exp) for m in self.methods},
            "float_model": f"float ANN of {self.float_ckpt}" if self.float_ckpt else "quantized ANN's float twin",
            "calibration_batches": self.calibration_batches,
        }
        ours = exp.module.snn
        float_ann = self._float_ann(exp) if set(self.methods) & set(RATE_MODES) else None
        if float_ann is not None:
            results["float_ann"] = self._test_float_ann(exp, float_ann, test_pass)
        for label in self.methods:
            try:
                peer = self._peer(label, exp, float_ann)
                exp.module.set_snn(peer)
                metrics = test_pass(label)
            except Exception as err:  # SpikingJelly refuses a layer of this model, or fails on it
                log.warning("compare: SpikingJelly's %s could not run on this model, skipped: %r", label, err)
                results[label], results[f"{label}_error"] = None, repr(err)
                continue
            finally:
                exp.module.set_snn(ours)
            record_snn(results, label, metrics, exp.module.metric, peer.timesteps)

    @staticmethod
    def _test_float_ann(exp: Experiment, float_ann: nn.Module, test_pass: Callable[[str], dict]) -> float | None:
        """The test metric of the float model rate coding converts, run as a one-step 'SNN'."""
        ours = exp.module.snn
        exp.module.set_snn(OneStep(float_ann).to(exp.trainer.strategy.root_device))
        try:
            metrics = test_pass("float_ann")
        finally:
            exp.module.set_snn(ours)
        return metrics.get(f"float_ann/test_{exp.module.metric}")

    def _timesteps(self, label: str, exp: Experiment) -> int:
        return self.rate_timesteps if label in RATE_MODES else exp.settings.timesteps

    def _peer(self, label: str, exp: Experiment, float_ann: nn.Module | None) -> nn.Module:
        """The method's SNN, with our SpikingModel's call signature."""
        device = exp.trainer.strategy.root_device
        if label == "unsigned":
            return convert_to_snn(exp.net, exp.conversion.simulation.replace(signed=False)).to(device)
        if label == "stbif":
            return PeerSNN(STBIFSNN(exp.net, timesteps=exp.settings.timesteps, device=device), exp.settings.timesteps)
        calibration = CalibrationInputs(exp.datamodule.train_dataloader(), exp.module.inputs, self.calibration_batches)
        simulation = SpikingJellySNN(
            float_ann, calibration, mode=RATE_MODES[label], step_mode=self.rate_step_mode, device=device
        )
        return PeerSNN(simulation, self.rate_timesteps)

    def _float_ann(self, exp: Experiment) -> nn.Module:
        """The float model rate coding converts: ``float_ckpt``'s float ANN, or the run's quantized ANN's
        float twin; either with plain ReLUs (:func:`fastsnn.peers.spikingjelly.float_twin`)."""
        if not self.float_ckpt:
            return float_twin(exp.net)
        data = exp.datamodule
        net = instantiate(exp.cfg.model.net, num_classes=data.num_classes, in_channels=data.in_channels)
        net = instantiate(exp.cfg.quant, weight_bits=None)(net, bits=None)  # as a bits=32 run builds it
        load_weights(net, self.float_ckpt)
        log.info(
            "compare: rate coding converts the float ANN of %s (its clipped ReLUs as plain ReLUs)", self.float_ckpt
        )
        return float_twin(net)
