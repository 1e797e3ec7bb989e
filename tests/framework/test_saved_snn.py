"""The SNN as a file that rebuilds itself: fastsnn.save_snn / load_snn, and stages=[evaluate] snn_path=..."""

import pytest
import torch
from torch import nn

from fastsnn import convert_to_snn, load_snn, quantize_model, read_snn, save_snn
from fastsnn.backbones import create_backbone
from tasks.pipeline import run
from tasks.settings import SettingsError

VGG = ("fastsnn.backbones.create_backbone", {"name": "vgg11", "width": 0.125, "num_classes": 10, "in_channels": 1})


def _fine_tuned_like(snn):
    """Change the SNN's weights as fine-tuning would, so that a reload must carry them."""
    with torch.no_grad():
        for p in snn.parameters():
            p.mul_(1.1)
    return snn


def test_a_saved_snn_reloads_to_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    qmodel = quantize_model(create_backbone(**VGG[1]), bits=2, weight_bits="same").eval()
    snn = _fine_tuned_like(convert_to_snn(qmodel, integer_kernels=False))
    path = save_snn(tmp_path / "snn.pt", snn, qmodel, VGG, {"bits": 2, "weight_bits": "same"}, {"task": "t"})
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        expected = snn(x, return_steps=True)[1]
        saved = read_snn(path)
        assert torch.equal(saved.snn(x, return_steps=True)[1], expected)
    assert saved.meta == {"task": "t"} and saved.snn.timesteps == 3 and saved.snn.config.integer_kernels is False
    assert load_snn(path, timesteps=7).timesteps == 7  # simulation options may be replaced


def test_an_untrusted_builder_is_not_imported_but_a_given_net_is_used(tmp_path):
    class Mine(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))

        def forward(self, x):
            return self.body(x)

    net = Mine()
    net(torch.zeros(1, 1, 6, 6))
    qmodel = quantize_model(net, bits=2).eval()
    path = save_snn(tmp_path / "mine.pt", convert_to_snn(qmodel), qmodel, ("os.system", {"command": "x"}), {"bits": 2})
    with pytest.raises(ValueError, match=r"built by os.system.*load_snn\(path, net=\.\.\.\)"):
        load_snn(path)
    fresh = Mine()
    fresh(torch.zeros(1, 1, 6, 6))
    assert load_snn(path, net=fresh)(torch.rand(2, 1, 6, 6)).shape == (2, 3)


def test_a_file_that_is_no_snn_is_refused(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an SNN file of fastsnn"):
        load_snn(tmp_path / "other.pt")


@pytest.mark.slow
def test_evaluating_the_saved_snn_gives_what_the_run_reported(make_config):
    first = run(make_config(name="job"))
    again = run(make_config("stages=[evaluate]", f"snn_path={first['snn_checkpoint']}", name="eval"))
    assert again["snn"] == first["snn_finetuned"] and again["ann"] == first["ann"]
    assert again["snn_per_step"] == first["snn_finetuned_per_step"]
    assert (again["bits"], again["timesteps"], again["model"]) == (first["bits"], first["timesteps"], first["model"])
    with pytest.raises(SettingsError, match="holds a classification SNN: add task=classification"):
        run(make_config("task=detection", "stages=[evaluate]", f"snn_path={first['snn_checkpoint']}", name="det"))
    with pytest.raises(SettingsError, match="runs alone"):
        run(make_config("stages=[convert,evaluate]", f"snn_path={first['snn_checkpoint']}", name="two"))
