"""Classification data modules, on tiny fixtures written in the real on-disk formats."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from tasks.classification.data import CIFARDataModule, DigitsDataModule, ImageNetDataModule
from tasks.common.data import DataError, require_paths

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "data"


# ------------------------------------------------------------------------------------------------
# digits
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(image_size=32, batch_size=64)
    dm.setup("fit")
    return dm


def test_digits_split_sizes_disjoint_stratified(digits):
    s = digits.split_indices
    sizes = {k: len(v) for k, v in s.items()}
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == round(0.2 * 1797) and sizes["val"] == round(0.15 * 1797)
    assert set(np.concatenate(list(s.values()))) == set(range(1797))  # disjoint + complete
    for name, ds in [("train", digits.train_dataset), ("val", digits.val_dataset), ("test", digits.test_dataset)]:
        labels = ds.tensors[1]
        assert labels.dtype == torch.int64 and len(labels) == sizes[name]
        assert set(labels.tolist()) == set(range(10)), f"{name} split misses a class"
    # Stratified: each class's share of every split matches its share of the whole data set.
    splits = (digits.train_dataset, digits.val_dataset, digits.test_dataset)
    all_counts = np.bincount(np.concatenate([ds.tensors[1].numpy() for ds in splits]))
    for ds in splits:
        counts = np.bincount(ds.tensors[1].numpy(), minlength=10)
        expected = all_counts * len(ds) / 1797
        assert np.abs(counts - expected).max() <= 1.0


def test_digits_deterministic_and_independent_of_torch_seed(digits):
    torch.manual_seed(123)
    other = DigitsDataModule(image_size=32)
    other.setup("fit")
    for k in ("train", "val", "test"):
        np.testing.assert_array_equal(digits.split_indices[k], other.split_indices[k])
    assert torch.equal(digits.train_dataset.tensors[0], other.train_dataset.tensors[0])
    different = DigitsDataModule(split_seed=1)
    different.setup()
    assert not np.array_equal(digits.split_indices["test"], different.split_indices["test"])


def test_digits_batches_and_normalisation(digits):
    assert (digits.num_classes, digits.in_channels, digits.image_size) == (10, 1, 32)
    x, y = next(iter(digits.train_dataloader()))
    assert x.shape == (64, 1, 32, 32) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.int64
    train_x = digits.train_dataset.tensors[0]
    assert abs(train_x.mean().item()) < 1e-4 and abs(train_x.std().item() - 1) < 1e-4
    # Upsampled from real 8x8 digits, not constant: un-normalised values span [0, 1].
    raw = train_x * digits.std + digits.mean
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5 and raw.max() > 0.9
    xv, _ = next(iter(digits.val_dataloader()))
    assert xv.shape[1:] == (1, 32, 32)
    # Train loader shuffles, val does not.
    assert digits.train_dataloader().sampler.__class__.__name__ == "EpochSampler"
    assert digits.val_dataloader().sampler.__class__.__name__ == "SequentialSampler"


def test_digits_augment_shifts_but_keeps_shape():
    dm = DigitsDataModule(image_size=16, augment=True)
    dm.setup()
    img, label = dm.train_dataset[0]
    base = dm.train_dataset.images[0]
    assert img.shape == (1, 16, 16) and label.dtype == torch.int64
    torch.manual_seed(0)
    outs = [dm.train_dataset[0][0] for _ in range(10)]
    assert any(not torch.equal(o, base) for o in outs)


def test_loader_uses_persistent_workers_when_multiprocess():
    dm = DigitsDataModule(num_workers=2)
    dm.setup()
    loader = dm.train_dataloader()  # not iterated: no workers are started
    assert loader.persistent_workers and loader.num_workers == 2 and not loader.drop_last
    assert dm.val_dataloader().persistent_workers
    single = DigitsDataModule()
    single.setup()
    assert single.train_dataloader().num_workers == 0 and not single.train_dataloader().persistent_workers


# ------------------------------------------------------------------------------------------------
# CIFAR fixtures: pickled dicts like the official python batches
# ------------------------------------------------------------------------------------------------


def _key(k: str, bytes_keys: bool):
    return k.encode() if bytes_keys else k


def _dump(path: Path, obj: dict, bytes_keys: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({_key(k, bytes_keys): v for k, v in obj.items()}, f, protocol=2)


def _batch(rng, n: int, num_classes: int, label_key: str, extra: dict | None = None) -> dict:
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, num_classes, size=n)]
    d = {"batch_label": "fixture", label_key: labels, "data": data, "filenames": [f"img_{i}.png" for i in range(n)]}
    d.update(extra or {})
    return d


def write_cifar10(root: Path, bytes_keys: bool = True) -> dict[str, dict]:
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    batches = {}
    for i in range(1, 6):
        batches[f"data_batch_{i}"] = _batch(rng, 3, 10, "labels")
    test = _batch(rng, 4, 10, "labels")
    test["data"][0, 1024 + 5 * 32 + 7] = 200  # green channel, row 5, column 7 of test image 0
    test["labels"][0] = 7
    batches["test_batch"] = test
    for name, b in batches.items():
        _dump(folder / name, b, bytes_keys)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(folder / "batches.meta", {"num_cases_per_batch": 10000, "label_names": names, "num_vis": 3072}, bytes_keys)
    return batches


def write_cifar100(root: Path, bytes_keys: bool = False) -> dict[str, dict]:
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    batches = {}
    for name, n in (("train", 6), ("test", 5)):
        b = _batch(rng, n, 100, "fine_labels")
        b["coarse_labels"] = [v // 5 for v in b["fine_labels"]]
        batches[name] = b
    batches["test"]["fine_labels"][1] = 99
    for name, b in batches.items():
        _dump(folder / name, b, bytes_keys)
    meta = {"fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]}
    _dump(folder / "meta", meta, bytes_keys)
    return batches


def _unnormalise(x: torch.Tensor, dm: CIFARDataModule) -> torch.Tensor:
    mean = torch.tensor(dm.mean).view(-1, 1, 1)
    std = torch.tensor(dm.std).view(-1, 1, 1)
    return x * std + mean


def _as_chw(row: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(row.reshape(3, 32, 32).astype(np.float32) / 255.0)


def test_cifar10_loads_labels_and_pixels(tmp_path):
    batches = write_cifar10(tmp_path)
    dm = CIFARDataModule(tmp_path, variant="cifar10", batch_size=4, num_workers=0)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (10, 3, 32)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_dataset) == 15 and len(dm.val_dataset) == 4
    assert dm.train_dataset.classes[7] == "horse"

    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    test = batches["test_batch"]
    assert y.tolist() == test["labels"]
    raw = _unnormalise(x, dm)
    assert raw[0, 1, 5, 7].item() == pytest.approx(200 / 255, abs=1e-5)
    for i in range(4):  # whole images: channel-major rows, row-major pixels
        torch.testing.assert_close(raw[i], _as_chw(test["data"][i]), atol=1e-5, rtol=0)

    # Train: all 5 batches, shuffled + augmented, same label multiset.
    xt, yt = next(iter(dm.train_dataloader()))
    assert xt.shape == (4, 3, 32, 32)
    all_train = sorted(v for i in range(1, 6) for v in batches[f"data_batch_{i}"]["labels"])
    got = sorted(int(t) for _, t in dm.train_dataset)
    assert got == all_train
    # Test loader reuses the official test batch.
    xs, ys = next(iter(dm.test_dataloader()))
    assert torch.equal(xs, x) and torch.equal(ys, y)

    dm.setup("fit")  # idempotent
    assert len(dm.train_dataset) == 15


def test_cifar10_without_augment_train_is_exact(tmp_path):
    batches = write_cifar10(tmp_path, bytes_keys=False)  # str keys, as real files load with latin1
    dm = CIFARDataModule(tmp_path, batch_size=3, num_workers=0, augment=False)
    dm.setup("fit")
    img, label = dm.train_dataset[3]  # first image of data_batch_2
    torch.testing.assert_close(_unnormalise(img, dm), _as_chw(batches["data_batch_2"]["data"][0]), atol=1e-5, rtol=0)
    assert label == batches["data_batch_2"]["labels"][0]


def test_cifar100_loads(tmp_path):
    batches = write_cifar100(tmp_path)
    dm = CIFARDataModule(tmp_path, variant="cifar100", batch_size=5, num_workers=0)
    assert dm.num_classes == 100
    dm.setup()
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (5, 3, 32, 32)
    assert y.tolist() == batches["test"]["fine_labels"] and y[1] == 99  # fine, not coarse, labels
    torch.testing.assert_close(_unnormalise(x[2], dm), _as_chw(batches["test"]["data"][2]), atol=1e-5, rtol=0)
    assert len(dm.train_dataset) == 6 and dm.train_dataset.classes[99] == "fine99"


def test_cifar_missing_root_names_path_and_layout(tmp_path):
    root = tmp_path / "nowhere"
    dm = CIFARDataModule(root, variant="cifar10")
    with pytest.raises(DataError) as e:
        dm.setup("fit")
    msg = str(e.value)
    assert str(root / "cifar-10-batches-py" / "data_batch_1") in msg
    assert "test_batch" in msg and "batches.meta" in msg  # expected layout
    assert "cs.toronto.edu" in msg and "download" in msg


def test_cifar_missing_single_file(tmp_path):
    write_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(DataError, match=r"cifar-100-python[/\\]meta"):
        CIFARDataModule(tmp_path, variant="cifar100").setup("test")


def test_cifar_corrupted_file(tmp_path):
    write_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(b"\x00garbage, not a pickle" * 10)
    with pytest.raises(DataError) as e:
        CIFARDataModule(tmp_path).setup("fit")
    assert str(bad) in str(e.value) and "unpickle" in str(e.value)


def test_cifar_wrong_shape(tmp_path):
    write_cifar10(tmp_path)
    rng = np.random.default_rng(2)
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    b = _batch(rng, 4, 10, "labels")
    b["data"] = b["data"][:, :1024]  # single channel: wrong
    _dump(bad, b, True)
    with pytest.raises(DataError, match="3072") as e:
        CIFARDataModule(tmp_path).setup("test")
    assert str(bad) in str(e.value)


def test_cifar_bad_labels_and_meta(tmp_path):
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    b = _batch(np.random.default_rng(3), 4, 10, "labels")
    b["labels"] = b["labels"][:3]
    _dump(folder / "test_batch", b, True)
    with pytest.raises(DataError, match="labels"):
        CIFARDataModule(tmp_path).setup("test")

    write_cifar10(tmp_path)
    _dump(folder / "batches.meta", {"label_names": ["a", "b"]}, True)
    with pytest.raises(DataError, match="batches.meta"):
        CIFARDataModule(tmp_path).setup("test")


def test_cifar_bad_variant():
    with pytest.raises(ValueError):
        CIFARDataModule("x", variant="cifar1000")


# ------------------------------------------------------------------------------------------------
# ImageNet-style ImageFolder
# ------------------------------------------------------------------------------------------------

WNIDS = ["n01440764", "n01443537", "n01484850"]


def write_imagefolder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("val", 1)):
        for wnid in WNIDS:
            d = root / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{wnid}_{i}.JPEG", format="JPEG")


def test_imagenet_loads(tmp_path):
    write_imagefolder(tmp_path)
    dm = ImageNetDataModule(tmp_path, image_size=32, batch_size=4, num_workers=0)
    assert dm.num_classes == 3 and dm.in_channels == 3
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_dataset) == 6 and len(dm.val_dataset) == 3
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    assert y.tolist() == [0, 1, 2] and y.dtype == torch.int64
    xt, yt = next(iter(dm.train_dataloader()))
    assert xt.shape == (4, 3, 32, 32)
    xs, ys = next(iter(dm.test_dataloader()))
    assert torch.equal(xs, x)


def test_imagenet_missing_root_defers_error(tmp_path):
    root = tmp_path / "imagenet"
    dm = ImageNetDataModule(root)
    assert dm.num_classes == 1000
    with pytest.raises(DataError) as e:
        dm.setup("fit")
    assert str(root / "train") in str(e.value) and "image-net.org" in str(e.value)
    # Data appearing later with a different class count than assumed is caught at setup.
    write_imagefolder(root)
    with pytest.raises(DataError, match="num_classes=1000"):
        dm.setup("fit")


def test_imagenet_missing_val(tmp_path):
    write_imagefolder(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "val")
    with pytest.raises(DataError) as e:
        ImageNetDataModule(tmp_path, image_size=32).setup("fit")
    msg = str(e.value)
    assert str(tmp_path / "val") in msg and "valprep" in msg and "n01440764" in msg


def test_imagenet_empty_class_folder_and_mismatch(tmp_path):
    write_imagefolder(tmp_path)
    (tmp_path / "train" / "n09999999").mkdir()
    (tmp_path / "val" / "n09999999").mkdir()
    with pytest.raises(DataError, match="n09999999"):
        ImageNetDataModule(tmp_path, image_size=32).setup("fit")
    # A class present in train/ only would shift ImageFolder's label indices between splits.
    (tmp_path / "val" / "n09999999").rmdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "n09999999" / "x.JPEG")
    with pytest.raises(DataError, match=r"only in train: \['n09999999'\]"):
        ImageNetDataModule(tmp_path, image_size=32).setup("fit")


# ------------------------------------------------------------------------------------------------
# shared helpers and Hydra configs
# ------------------------------------------------------------------------------------------------


def test_require_paths(tmp_path):
    (tmp_path / "a").touch()
    assert require_paths(tmp_path, ["a"], "X", "a\nb", "somewhere") == [tmp_path / "a"]
    with pytest.raises(DataError) as e:
        require_paths(tmp_path, ["a", "b", "c"], "X", "a\nb\nc", "https://example.org")
    msg = str(e.value)
    assert str(tmp_path / "b") in msg and str(tmp_path / "c") not in msg.split("Expected")[0]
    assert "https://example.org" in msg and "Nothing is downloaded" in msg


@pytest.mark.parametrize(
    "name, cls, attrs",
    [
        ("digits", DigitsDataModule, {"num_classes": 10, "image_size": 32, "batch_size": 64}),
        ("cifar10", CIFARDataModule, {"num_classes": 10, "variant": "cifar10"}),
        ("cifar100", CIFARDataModule, {"num_classes": 100, "variant": "cifar100"}),
        ("imagenet", ImageNetDataModule, {"num_classes": 1000, "image_size": 224}),
    ],
)
def test_hydra_configs_instantiate(tmp_path, name, cls, attrs):
    data_cfg = OmegaConf.load(CONF_DIR / f"{name}.yaml")
    cfg = OmegaConf.merge(OmegaConf.create({"paths": {"data_dir": str(tmp_path)}}), {"data": data_cfg})
    dm = instantiate(cfg.data)
    assert isinstance(dm, cls)
    for k, v in attrs.items():
        assert getattr(dm, k) == v
    if name != "digits":
        assert dm.root == tmp_path / name
