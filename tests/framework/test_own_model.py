"""Your own nn.Module in run.py: model=custom model.net._target_=<your class>."""

import textwrap

import pytest
from omegaconf.errors import MissingMandatoryValue

from fastsnn import QuantReLU
from tasks.pipeline import build, run
from tests import helpers

MY_MODELS = """
from torch import nn


class SmallNet(nn.Module):
    def __init__(self, num_classes, in_channels, hidden=8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(), nn.AvgPool2d(4)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(hidden * 8 * 8, num_classes))

    def forward(self, x):
        return self.head(self.features(x))
"""


@pytest.fixture
def my_models(tmp_path, monkeypatch):
    """A module outside the package, importable as a user's own would be (PYTHONPATH=.)."""
    (tmp_path / "my_models.py").write_text(textwrap.dedent(MY_MODELS))
    monkeypatch.syspath_prepend(str(tmp_path))
    return ["model=custom", "model.net._target_=my_models.SmallNet", "+model.net.hidden=6"]


def test_a_class_of_ones_own_gets_the_data_and_its_arguments(tmp_path, my_models):
    exp = build(helpers.compose_config(tmp_path / "build", *helpers.TINY, *my_models))
    assert type(exp.net).__module__ == "my_models" and exp.net.features[0].out_channels == 6
    assert exp.net.features[0].in_channels == 1 and exp.net.head[1].out_features == 10  # digits
    assert isinstance(exp.net.features[2], QuantReLU)


@pytest.mark.slow
def test_a_class_of_ones_own_trains_converts_and_finetunes(tmp_path, my_models):
    results = run(helpers.compose_config(tmp_path / "run", *helpers.TINY, *my_models))
    assert results["model"] == "custom" and results["snn_finetuned"] is not None


def test_without_a_class_the_run_says_which_key_is_missing(tmp_path):
    with pytest.raises(MissingMandatoryValue, match="_target_"):
        build(helpers.compose_config(tmp_path / "run", *helpers.TINY, "model=custom"))
