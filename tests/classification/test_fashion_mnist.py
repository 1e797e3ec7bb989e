"""Fashion-MNIST (data=fashion_mnist) on tiny idx files written in the real format, in both layouts,
gzipped or not; the errors for missing or broken files; the split; a short run of the pipeline."""

from __future__ import annotations

import gzip
import json
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torchvision.datasets import FashionMNIST

from tasks.classification.data import FASHION_MNIST_DEBIAN_DIR, FashionMNISTDataModule
from tasks.common.data import DataError
from tests.helpers import compose_config

CONF = Path(__file__).resolve().parents[2] / "conf" / "data" / "fashion_mnist.yaml"
N_TRAIN, N_TEST = 40, 12
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An idx file: the magic number, the sizes as big-endian 32-bit integers, the bytes."""
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def write_fashion(folder: Path, gz: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """The four files in ``folder`` (``.gz`` or not); images random, labels 0..9 in turn."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(N_TRAIN) * 7 % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(N_TEST) % 10).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(array, IMAGES_MAGIC if array.ndim == 3 else LABELS_MAGIC)
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return arrays


def _dm(root, **kw) -> FashionMNISTDataModule:
    args = dict(image_size=28, batch_size=8, num_workers=0, val_size=10, augment=False, fallback_roots=[])
    return FashionMNISTDataModule(root, **{**args, **kw})


def _raw(x: torch.Tensor, dm) -> np.ndarray:
    """Normalised [.., 1, H, W] back to the uint8 pixels."""
    return np.rint((x * dm.std[0] + dm.mean[0]) * 255).squeeze(-3).numpy().astype(np.uint8)


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "raw"])
@pytest.mark.parametrize("layout", ["direct", "torchvision"])
def test_reads_the_idx_files_in_both_layouts_gzipped_or_not(tmp_path, layout, gz):
    folder = tmp_path if layout == "direct" else tmp_path / "FashionMNIST" / "raw"
    arrays = write_fashion(folder, gz=gz)
    dm = _dm(tmp_path)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (10, 1, 28)  # before setup
    assert dm.classes[0] == "T-shirt/top" and dm.classes[9] == "Ankle boot" and len(dm.classes) == 10
    dm.setup("test")
    assert dm.folder == folder
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    np.testing.assert_array_equal(_raw(x, dm), arrays["t10k-images-idx3-ubyte"][:8])
    assert y.tolist() == arrays["t10k-labels-idx1-ubyte"][:8].tolist()


def test_reads_what_torchvisions_own_reader_reads(tmp_path):
    write_fashion(tmp_path / "FashionMNIST" / "raw", gz=False)  # the only form torchvision reads itself
    ours = _dm(tmp_path)
    for train, split in ((True, "val"), (False, "test")):
        theirs = FashionMNIST(str(tmp_path), train=train, download=False)
        ds = ours.dataset(split)
        base = ds.dataset if split == "val" else ds
        assert torch.equal(base.data, theirs.data) and torch.equal(base.targets, theirs.targets)
        assert base.classes == theirs.classes


def test_split_of_the_training_set_is_deterministic_disjoint_and_configurable(tmp_path):
    arrays = write_fashion(tmp_path)
    torch.manual_seed(1)
    a = _dm(tmp_path, val_size=10)
    a.setup("fit")
    torch.manual_seed(2)  # the global seed does not move the split
    b = _dm(tmp_path, val_size=10)
    b.setup("fit")
    train, val = a.split_indices["train"], a.split_indices["val"]
    assert len(val) == 10 and len(train) == N_TRAIN - 10
    assert not set(train) & set(val) and set(train) | set(val) == set(range(N_TRAIN))
    np.testing.assert_array_equal(val, b.split_indices["val"])
    assert (len(a.train_dataset), len(a.val_dataset)) == (30, 10)
    img, label = a.val_dataset[0]  # a validation sample is the training image it says
    np.testing.assert_array_equal(_raw(img, a), arrays["train-images-idx3-ubyte"][val[0]])
    assert label == arrays["train-labels-idx1-ubyte"][val[0]]
    other = _dm(tmp_path, val_size=10, split_seed=1)
    other.setup("fit")
    assert not np.array_equal(other.split_indices["val"], val)
    assert len(_dm(tmp_path, val_size=25).dataset("val")) == 25
    with pytest.raises(ValueError, match="val_size=40 leaves no training images"):
        _dm(tmp_path, val_size=N_TRAIN).setup("fit")


def test_padding_to_32_and_the_augmentation_options(tmp_path):
    arrays = write_fashion(tmp_path)
    dm = _dm(tmp_path, image_size=32)
    img, _ = dm.dataset("test")[0]
    assert img.shape == (1, 32, 32)
    np.testing.assert_array_equal(_raw(img, dm)[2:30, 2:30], arrays["t10k-images-idx3-ubyte"][0])  # centred
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    torch.testing.assert_close(img[0][border], torch.full((int(border.sum()),), -dm.mean[0] / dm.std[0]))
    assert _dm(tmp_path, image_size=16).dataset("test")[0][0].shape == (1, 16, 16)  # smaller: resized

    augmented = _dm(tmp_path, image_size=32, augment=True)
    plain = _dm(tmp_path, image_size=32, augment=False)
    torch.manual_seed(0)
    draws = [augmented.dataset("train")[0][0] for _ in range(8)]
    assert all(d.shape == (1, 32, 32) for d in draws)
    assert any(not torch.equal(d, plain.dataset("train")[0][0]) for d in draws)  # crops / flips move it
    # no padding, no flips: the augmentation is the identity, so the options are what acts
    still = _dm(tmp_path, image_size=32, augment=True, crop_padding=0, flip=0.0)
    assert torch.equal(still.dataset("train")[0][0], plain.dataset("train")[0][0])
    always = _dm(tmp_path, image_size=32, augment=True, crop_padding=0, flip=1.0)
    assert torch.equal(always.dataset("train")[0][0], plain.dataset("train")[0][0].flip(-1))
    with pytest.raises(ValueError, match="flip"):
        _dm(tmp_path, flip=True)


def _broken(tmp_path, name: str, data: bytes) -> Path:
    write_fashion(tmp_path, gz=False)
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "name, data, reason",
    [
        ("t10k-labels-idx1-ubyte", idx_bytes(np.zeros((4, 28, 28)), IMAGES_MAGIC), "magic number 0x00000803"),
        ("t10k-images-idx3-ubyte", idx_bytes(np.zeros((12, 28, 28)), IMAGES_MAGIC)[:-100], "truncated"),
        ("t10k-images-idx3-ubyte", b"\x00\x00\x08", "truncated"),
        ("t10k-images-idx3-ubyte", idx_bytes(np.zeros((12, 28, 28)), IMAGES_MAGIC) + b"x", "longer than"),
        ("t10k-images-idx3-ubyte", idx_bytes(np.zeros((12, 20, 20)), IMAGES_MAGIC), "20x20 images, not 28x28"),
        ("t10k-labels-idx1-ubyte", idx_bytes(np.zeros(11), LABELS_MAGIC), "12 images but"),
        ("t10k-labels-idx1-ubyte", idx_bytes(np.full(12, 10), LABELS_MAGIC), "label 10"),
    ],
    ids=["bad-magic", "truncated", "no-header", "trailing-bytes", "not-28x28", "count-mismatch", "label-range"],
)
def test_a_broken_file_is_a_data_error_naming_it(tmp_path, name, data, reason):
    path = _broken(tmp_path, name, data)
    with pytest.raises(DataError) as err:
        _dm(tmp_path).setup("test")
    assert str(path) in str(err.value) and reason in str(err.value)


@pytest.mark.parametrize("cut", [True, False], ids=["cut-short", "not-gzip"])
def test_a_broken_gzip_file_is_a_data_error_naming_it(tmp_path, cut):
    write_fashion(tmp_path, gz=True)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:2000] if cut else b"not a gzip stream")
    with pytest.raises(DataError, match="cannot read") as err:
        _dm(tmp_path).setup("fit")
    assert str(bad) in str(err.value)


def test_a_missing_label_file_is_named(tmp_path):
    write_fashion(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        _dm(tmp_path, fallback_roots=[FASHION_MNIST_DEBIAN_DIR]).setup("test")  # not silently elsewhere
    problem = str(err.value).splitlines()[0]  # the lines after it show the whole expected layout
    assert str(tmp_path / "t10k-labels-idx1-ubyte") in problem and "train-labels" not in problem


def test_no_files_says_where_it_looked_and_how_to_get_them(tmp_path):
    fallback = tmp_path / "elsewhere"
    with pytest.raises(DataError) as err:
        _dm(tmp_path / "fm", fallback_roots=[fallback]).prepare_data()
    msg = str(err.value)
    for folder in (tmp_path / "fm", tmp_path / "fm" / "FashionMNIST" / "raw", fallback):
        assert str(folder) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "github.com/zalandoresearch/fashion-mnist" in msg
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        assert name in msg
    assert "t10k-labels-idx1-ubyte.gz" in msg and "Nothing is downloaded" in msg


def test_the_fallback_folder_is_used_with_a_warning_naming_it(tmp_path, caplog):
    write_fashion(tmp_path / "debian")
    dm = _dm(tmp_path / "empty", fallback_roots=[tmp_path / "debian"])
    with caplog.at_level(logging.WARNING, logger="tasks.classification.data"):
        dm.setup("test")
    assert dm.folder == tmp_path / "debian" and len(dm.test_dataset) == N_TEST
    assert str(tmp_path / "empty") in caplog.text and str(tmp_path / "debian") in caplog.text


def test_the_config_defaults(tmp_path):
    cfg = OmegaConf.merge({"paths": {"data_dir": str(tmp_path)}}, {"data": OmegaConf.load(CONF)})
    dm = instantiate(cfg.data)
    assert isinstance(dm, FashionMNISTDataModule)
    assert dm.root == tmp_path / "fashion_mnist" and dm.fallback_roots == [Path(FASHION_MNIST_DEBIAN_DIR)]
    assert (dm.image_size, dm.in_channels, dm.num_classes, dm.val_size) == (32, 1, 10, 5000)
    assert (dm.augment, dm.flip, dm.crop_padding) == (True, 0.5, 4)


TINY = [  # a run of seconds, on the CPU (++: whether or not the trainer config has the key)
    "trainer.max_epochs=1",
    "++trainer.limit_train_batches=3",
    "++trainer.limit_val_batches=2",
    "++trainer.limit_test_batches=2",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "callbacks.progress_bar=null",
    "logger=none",
    "model.net.width=0.125",
    "finetune.limit_batches=2",
    "finetune.limit_val_batches=1",
    "finetune.measure_batches=1",
    "finetune.progress=false",
]


def test_a_short_pipeline_run_on_the_fixture(tmp_path):
    from tasks.pipeline import run

    write_fashion(tmp_path / "fixture", gz=True)
    cfg = compose_config(
        tmp_path / "run",
        "data=fashion_mnist",
        f"data.root={tmp_path / 'fixture'}",
        "data.fallback_roots=[]",
        "data.val_size=8",
        "data.batch_size=8",
        "data.num_workers=0",
        *TINY,
    )
    results = run(cfg)
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert written["data"] == "fashion_mnist" and written["task"] == "classification"
    for key in ("ann", "snn", "snn_finetuned"):
        assert 0.0 <= results[key] <= 1.0 and written[key] == results[key]
