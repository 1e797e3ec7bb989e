"""Weights from elsewhere: init_from= with a plain or nested state dict, model.weights= from the hub cache."""

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
from torch import nn

from fastsnn.backbones.torchvision import torchvision_backbone
from fastsnn.weights import load_matching, network_state
from tasks.pipeline import run
from tasks.settings import SettingsError
from tests import helpers

TV = ["model=tv_resnet18", *helpers.TINY]  # ImageNet stem on 1-channel digits, 10 classes


def _imagenet_resnet18() -> dict:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=1000).state_dict()


def test_a_head_with_other_classes_is_replaced_and_the_rest_loaded():
    state = _imagenet_resnet18()
    net = torchvision.models.resnet18(num_classes=10)
    match = load_matching(net, state, "file")
    assert set(match.replaced) == {"fc.weight", "fc.bias"} and not match.missing and not match.ignored
    assert torch.equal(net.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert not torch.equal(net.fc.bias, state["fc.bias"][:10])


def test_a_nested_prefixed_state_dict_is_found():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    source = {f"model.{k}": v + 1 for k, v in net.state_dict().items()}
    match = load_matching(net, network_state({"state_dict": source, "epoch": 3}, "f"), "f")
    assert match.prefix == "model." and len(match.loaded) == 4
    assert torch.equal(net[0].weight, source["model.0.weight"])


def test_weights_of_another_model_are_refused_naming_the_file():
    net = nn.Sequential(nn.Linear(3, 4))
    with pytest.raises(ValueError, match="other.pt fits no parameter"):
        load_matching(net, {"encoder.weight": torch.zeros(4, 3)}, "other.pt")
    with pytest.raises(ValueError, match="holds no state dict"):
        network_state({"epoch": 3}, "other.pt")


@pytest.mark.slow
def test_a_run_from_a_torchvision_state_dict_trains_converts_and_finetunes(tmp_path):
    path = tmp_path / "resnet18_elsewhere.pth"
    torch.save(_imagenet_resnet18(), path)
    results = run(helpers.compose_config(tmp_path / "run", *TV, f"init_from={path}"))
    report = results["init_from"]
    assert report["loaded"] > 50 and {"fc.weight", "fc.bias"} <= set(report["replaced"])
    assert "conv1.weight" in report["replaced"]  # 3 input channels there, 1 here
    assert results["snn_finetuned"] is not None and results["ann"] is not None


def test_a_file_that_fits_nothing_stops_before_training(tmp_path, monkeypatch):
    path = tmp_path / "unrelated.pt"
    torch.save({"encoder.weight": torch.zeros(4, 3)}, path)
    cfg = helpers.compose_config(tmp_path / "run", *TV, f"init_from={path}")
    monkeypatch.setattr("lightning.Trainer.fit", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(SettingsError, match="unrelated.pt fits no parameter"):
        run(cfg)


def _hub_file(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    return tmp_path / "torch" / "hub" / "checkpoints" / Path(url).name


def test_pretrained_weights_come_from_the_hub_cache(tmp_path, monkeypatch):
    path = _hub_file(tmp_path, monkeypatch)
    path.parent.mkdir(parents=True)
    state = _imagenet_resnet18()
    torch.save(state, path)
    net = torchvision_backbone("resnet18", num_classes=10, in_channels=1, weights="IMAGENET1K_V1")
    assert torch.equal(net.layer2.get_submodule("0").conv1.weight, state["layer2.0.conv1.weight"])
    # one input channel: the pretrained stem summed over RGB
    assert torch.allclose(net.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))


def test_absent_pretrained_weights_name_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    path = _hub_file(tmp_path, monkeypatch)

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(FileNotFoundError, match=f"put the file {path.name} .* at {path}"):
        torchvision_backbone("resnet18", num_classes=10, weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="no torchvision weights 'IMAGENET9K'"):
        torchvision_backbone("resnet18", num_classes=10, weights="IMAGENET9K")
