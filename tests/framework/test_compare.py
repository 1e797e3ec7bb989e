"""The compare stage (tasks/compare.py) and its SpikingJelly adapters (fastsnn/peers/spikingjelly.py).

SpikingJelly's STBIFNode (SpikeZIP's ST-BIF) simulating one of our quantized ANNs is, under our input
encoding (the image at every step), our signed IF neuron plus SpikeZIP's bound of 2**b - 1 on the net
spike count: the same outputs as our signed SNN for t <= 2**b - 1 steps, different beyond, where the
bound binds. Rate coding converts the quantized ANN's float twin.
"""

import json
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

import fastsnn
from fastsnn.backbones import create_backbone
from fastsnn.peers.spikingjelly import STBIFSNN, PeerSNN, float_twin, spikingjelly_version
from tasks import compare, pipeline
from tasks.compare import CompareStage
from tasks.pipeline import build, run
from tasks.settings import SettingsError
from tests.helpers import randomize_bn

needs_spikingjelly = pytest.mark.skipif(spikingjelly_version() is None, reason="SpikingJelly not installed")


def _qmodel(name: str, bits: int) -> nn.Module:
    torch.manual_seed(0)
    net = randomize_bn(create_backbone(name, num_classes=10, in_channels=1, width=0.25), bias_offset=0.3)
    return fastsnn.quantize_model(net, bits, weight_bits=bits, alpha_init=2.0).eval()


# ----------------------------------------------------------------------------- without SpikingJelly


def test_without_spikingjelly_a_run_with_the_compare_stage_stops_before_training(make_config, monkeypatch):
    for name in [m for m in sys.modules if m == "spikingjelly" or m.startswith("spikingjelly.")] + ["spikingjelly"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import spikingjelly...` now fails
    assert spikingjelly_version() is None
    monkeypatch.setattr(L.Trainer, "fit", lambda *a, **k: pytest.fail("trained before refusing"))
    cfg = make_config("stages=[train,convert,compare,finetune]")
    with pytest.raises(SettingsError, match=r'SpikingJelly.*not installed.*pip install -e "\.\[compare\]"'):
        run(cfg)
    assert not (Path(cfg.paths.output_dir) / "results.json").exists()
    assert build(make_config("stages=[train,convert]", name="plain")).settings.stages == ("train", "convert")


@needs_spikingjelly
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["stages=[train,compare]"], r"compare stage compares .* stages=\[convert,compare\]"),
        (["compare.methods=[stbif,rate_mean]"], "compare.methods must be a non-empty subset"),
        (["compare.rate_timesteps=0"], "compare.rate_timesteps must be a positive integer"),
        (["bits=32", "timesteps=3"], r"\['unsigned', 'stbif'\] simulate the quantized ANN"),
    ],
)
def test_a_compare_stage_that_cannot_run_is_refused_before_training(make_config, monkeypatch, overrides, message):
    monkeypatch.setattr(L.Trainer, "fit", lambda *a, **k: pytest.fail("trained before refusing"))
    with pytest.raises(SettingsError, match=message):
        run(make_config("stages=[train,convert,compare]", *overrides))


# ----------------------------------------------------------------------------- the adapters


@needs_spikingjelly
@pytest.mark.parametrize("name,bits", [("vgg11", 2), ("resnet20", 3)])
def test_stbif_gives_our_signed_snns_outputs_at_t_equal_2_pow_b_minus_1(name, bits):
    q = _qmodel(name, bits)
    T = 2**bits - 1
    x = torch.randn(6, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    ours = fastsnn.convert_to_snn(q, timesteps=T, signed=True)
    peer = PeerSNN(STBIFSNN(q, timesteps=T), T)
    assert len(peer.simulation.neurons) == {"vgg11": 8, "resnet20": 19}[name]
    with torch.no_grad():
        output, steps = ours(x, return_steps=True)
        peer_output, peer_steps = peer(x, return_steps=True)
        unsigned = fastsnn.convert_to_snn(q, timesteps=T, signed=False)(x)
    assert peer_steps.shape == (T, 6, 10)
    torch.testing.assert_close(peer_steps, steps, atol=1e-5, rtol=1e-5)  # the same read-out at every t
    torch.testing.assert_close(peer_output, output, atol=1e-5, rtol=1e-5)
    assert (peer_output - unsigned).abs().max() > 1e-3  # the comparison can tell signed from unsigned


@needs_spikingjelly
def test_stbif_single_step_loop_gives_the_multi_step_outputs():
    q = _qmodel("resnet20", 2)
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    multi, single = STBIFSNN(q), STBIFSNN(q, step_mode="s")
    torch.testing.assert_close(single.mean_outputs(x, 3), multi.mean_outputs(x, 3), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="step_mode"):
        STBIFSNN(q, step_mode="x")


@needs_spikingjelly
def test_stbif_bounds_the_net_spike_count_by_the_quantization_levels():
    q = _qmodel("vgg11", 2)
    stbif = STBIFSNN(q)  # T = 3, level = 4: net count in [0, 3]
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(2)) * 3
    counts = []
    hooks = [m.register_forward_hook(lambda mod, i, o: counts.append(mod.node.acc_q.clone())) for m in stbif.neurons]
    long_run = stbif.running_outputs(x, 9)[9]
    for h in hooks:
        h.remove()
    assert all(float(c.min()) >= 0 and float(c.max()) <= 3 for c in counts)
    assert max(float(c.max()) for c in counts) == 3  # the bound is reached: it binds beyond t = 3
    with torch.no_grad():
        ours = fastsnn.convert_to_snn(q, timesteps=9, signed=True)(x)
    assert (long_run * 3 / 9 - ours).abs().max() > 1e-3  # ... where ours does not bound the count


@needs_spikingjelly
def test_stbif_needs_quantized_activations():
    net = create_backbone("vgg11", num_classes=10, in_channels=1, width=0.25)
    with pytest.raises(ValueError, match="QuantReLU"):
        STBIFSNN(net)
    with pytest.raises(ValueError, match="bits set"):
        STBIFSNN(fastsnn.quantize_model(net, None))


def test_the_float_twin_has_the_quantized_weights_and_plain_relus():
    q = _qmodel("resnet20", 2)
    twin = float_twin(q)
    layers = dict(twin.named_modules())
    quantized = [(n, m) for n, m in q.named_modules() if isinstance(m, (fastsnn.QuantConv2d, fastsnn.QuantLinear))]
    assert quantized
    for name, m in quantized:
        assert type(layers[name]) in (nn.Conv2d, nn.Linear)
        torch.testing.assert_close(layers[name].weight, m.quantized_weight(), rtol=0, atol=0)
    relus = [n for n, m in q.named_modules() if isinstance(m, fastsnn.QuantReLU)]
    assert all(type(layers[n]) is nn.ReLU for n in relus)
    assert not any(isinstance(m, (fastsnn.QuantReLU, fastsnn.QuantConv2d, fastsnn.QuantLinear)) for m in twin.modules())
    assert not twin.training and any(isinstance(m, fastsnn.QuantReLU) for m in q.modules())  # q is left as it was


@needs_spikingjelly
def test_float_ckpt_gives_the_float_model_that_rate_coding_converts(make_config, tmp_path):
    exp = build(make_config("stages=[train,convert,compare]"))
    float_net = build(make_config("bits=32", "stages=[train]", name="float")).net
    state = {f"net.{k}": v for k, v in float_net.state_dict().items()}
    torch.save({"state_dict": state, "fastsnn": {"bits": 32}}, tmp_path / "float.ckpt")
    torch.save({"state_dict": state, "fastsnn": {"bits": 2}}, tmp_path / "two_bit.ckpt")
    stage = CompareStage(float_ckpt=str(tmp_path / "float.ckpt"))
    stage.check(exp.settings)
    model = stage._float_ann(exp)
    weights = {n: m.weight for n, m in float_net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert weights and all(torch.equal(dict(model.named_modules())[n].weight, w) for n, w in weights.items())
    assert not any(isinstance(m, fastsnn.QuantReLU) for m in model.modules())
    with pytest.raises(SettingsError, match="holds a 2-bit model; give a bits=32 run's checkpoint"):
        CompareStage(float_ckpt=str(tmp_path / "two_bit.ckpt")).check(exp.settings)


# ----------------------------------------------------------------------------- the stage in a run


@needs_spikingjelly
def test_a_method_spikingjelly_cannot_run_is_skipped_with_a_warning_and_our_snn_is_put_back(
    make_config, monkeypatch, caplog
):
    exp = build(make_config("stages=[train,convert,compare]", "compare.methods=[rate_max,stbif]"))
    results = {"time_s": {}}
    pipeline.convert(exp, results)  # of the untrained network: enough here
    ours = exp.module.snn

    def refuse(*args, **kwargs):
        raise NotImplementedError("a layer SpikingJelly does not convert")

    monkeypatch.setattr(compare, "SpikingJellySNN", refuse)
    pipeline.compare(exp, results)
    assert results["rate_max"] is None and "a layer SpikingJelly does not convert" in results["rate_max_error"]
    assert "SpikingJelly's rate_max could not run on this model, skipped" in caplog.text
    assert results["stbif_per_step"] == pytest.approx(results["snn_per_step"])  # the next method still ran
    assert exp.module.snn is ours and results["time_s"]["compare"] > 0


@needs_spikingjelly
@pytest.mark.slow
def test_the_compare_stage_writes_each_methods_metric_and_curve(make_config):
    cfg = make_config("stages=[train,convert,compare,finetune]", "compare.rate_timesteps=8")
    results = run(cfg)
    saved = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    T, rate_T = saved["timesteps"], cfg.compare.rate_timesteps
    for label, steps in (("unsigned", T), ("stbif", T), ("rate_max", rate_T), ("rate_p999", rate_T)):
        curve = saved[f"{label}_per_step"]
        assert len(curve) == steps and all(0.0 <= v <= 1.0 for v in curve), label
        assert 0.0 <= saved[label] <= 1.0 and saved[label] == pytest.approx(curve[-1])
    # the same neuron as ours on the same network at T = 2**bits - 1: the same test accuracy at every step
    assert saved["stbif_per_step"] == pytest.approx(saved["snn_per_step"])
    assert 0.0 < saved["float_ann"] <= 1.0  # the float model rate coding converts, tested itself
    assert saved["compare"]["timesteps"] == {"unsigned": T, "stbif": T, "rate_max": rate_T, "rate_p999": rate_T}
    assert saved["spike_rate"] == saved["snn_finetuned_metrics"]["snn_finetuned/spike_rate"]  # ours, not a baseline's
    assert saved["time_s"]["compare"] > 0 and results["snn_finetuned"] is not None  # our SNN was put back
