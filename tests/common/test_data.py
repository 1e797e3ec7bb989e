"""The one data-module base (tasks.common.data.DataModule): splits built once on first use, the
loader settings shared by every task, and the option names every data config uses."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf
from torch.utils.data import TensorDataset

from tasks.classification.data import CIFARDataModule
from tasks.common.data import DataModule, flip_probability
from tasks.detection.data import ShapesDetectionDataModule
from tasks.segmentation.data import ShapesSegDataModule, build_transforms

CONF_DATA = Path(__file__).resolve().parents[2] / "conf" / "data"


def _first(batch):
    return "custom", batch


class Toy(DataModule):
    """Ten samples per split; counts how often each split is built."""

    def __init__(self, drop_last_train=False, **kwargs):
        super().__init__(**kwargs)
        self.drop_last_train = drop_last_train
        self.built: list[str] = []

    def _dataset(self, split):
        self.built.append(split)
        if split == "test":  # served with the validation data, as CIFAR and ImageNet do
            return self.dataset("val")
        return TensorDataset(torch.arange(10.0), torch.arange(10))

    def collate_fn(self, split):
        return _first if split == "train" else None


def test_splits_are_built_for_the_stage_once_on_first_use():
    dm = Toy(batch_size=4)
    assert dm.train_dataset is None and dm.val_dataset is None
    dm.setup("validate")
    assert dm.built == ["val"] and dm.train_dataset is None
    dm.setup("fit")
    dm.setup("fit")
    assert dm.built == ["val", "train"]  # val kept, train built once
    assert dm.test_dataset is None
    next(iter(dm.test_dataloader()))  # a loader builds its split when setup did not
    assert dm.built == ["val", "train", "test"] and dm.test_dataset is dm.val_dataset
    with pytest.raises(ValueError, match="split must be one of"):
        dm.dataset("training")


def test_loaders_share_the_settings_batch_sizes_and_collate_per_split():
    dm = Toy(batch_size=4, eval_batch_size=3, num_workers=0)
    train, val, test = dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()
    assert (train.batch_size, val.batch_size, test.batch_size) == (4, 3, 3)
    assert type(train.sampler).__name__ == "EpochSampler" and type(val.sampler).__name__ == "SequentialSampler"
    assert next(iter(train))[0] == "custom"  # the split's collate_fn
    assert isinstance(next(iter(val))[0], torch.Tensor) and len(next(iter(val))[0]) == 3
    assert not train.drop_last and len(list(train)) == 3
    assert Toy(batch_size=4).val_dataloader().batch_size == 4  # eval_batch_size=None: batch_size
    dropping = Toy(batch_size=4, drop_last_train=True)
    assert dropping.train_dataloader().drop_last and not dropping.val_dataloader().drop_last
    assert len(list(dropping.train_dataloader())) == 2
    # one batch's worth or less: nothing would be left, so the batch is kept
    assert not Toy(batch_size=10, drop_last_train=True).train_dataloader().drop_last
    assert Toy(num_workers=2).train_dataloader().persistent_workers


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"eval_batch_size": -1}, {"num_workers": -1}])
def test_bad_loader_settings_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        Toy(**bad)


def test_flip_is_a_probability_everywhere(tmp_path):
    assert flip_probability(0.5) == 0.5 and flip_probability(0) == 0.0 and flip_probability(1) == 1.0
    for bad in (True, False, 1.5, -0.1, "0.5"):
        with pytest.raises(ValueError, match=r"flip is the probability .* got"):
            flip_probability(bad)
    # every family checks it when constructed (a bool would silently mean "always" or "never")
    for make in (
        lambda: CIFARDataModule(tmp_path, flip=True),
        lambda: ShapesDetectionDataModule(tmp_path, flip=True),
        lambda: ShapesSegDataModule(tmp_path, flip=True),
        lambda: build_transforms(True, None, None, flip=True),
    ):
        with pytest.raises(ValueError, match="flip"):
            make()
    assert ShapesDetectionDataModule(tmp_path, flip=0.25).flip == 0.25


@pytest.mark.parametrize("path", sorted(CONF_DATA.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_data_config_is_a_DataModule_with_the_shared_option_names(path):
    cfg = OmegaConf.load(path)
    cls = get_class(cfg._target_)
    assert issubclass(cls, DataModule)
    params = inspect.signature(cls.__init__).parameters
    for key in cfg:
        if key != "_target_":
            assert key in params or "kwargs" in params, f"{path.name}: {key} is not an argument of {cls.__name__}"
    assert "eval_batch_size" in cfg  # the validation / test batch size has this name everywhere
    assert not {"val_batch_size", "scale"} & set(cfg), "old option names: use eval_batch_size, scale_range"
    if "flip" in cfg:
        assert flip_probability(cfg.flip) == cfg.flip
