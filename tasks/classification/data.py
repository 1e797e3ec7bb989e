"""LightningDataModules for image classification: scikit-learn digits, CIFAR-10/100, Fashion-MNIST
and ImageNet.

Every module yields ``(images float32 [B, C, H, W] normalised, labels int64 [B])`` and exposes
``num_classes``, ``in_channels`` and ``image_size`` right after construction so that models can be
built before ``setup``; loaders and loader settings come from :class:`~tasks.common.data.DataModule`. Nothing is ever downloaded: missing or malformed data raises
:class:`~tasks.common.data.DataError` with the expected layout and the data's source.
"""

from __future__ import annotations

import copy
import gzip
import logging
import os
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset
from torchvision import transforms as T
from torchvision.datasets import CIFAR10, CIFAR100, MNIST, FashionMNIST, ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from tasks.common.constants import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
)
from tasks.common.data import DataError, DataModule, data_error, flip_probability, require_paths

__all__ = ["DigitsDataModule", "CIFARDataModule", "FashionMNISTDataModule", "ImageNetDataModule"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# scikit-learn digits
# --------------------------------------------------------------------------------------------------


class _RandomShift:
    """Translate a [C, H, W] tensor by up to ``max_shift`` pixels, filling with ``fill``."""

    def __init__(self, max_shift: int, fill: float) -> None:
        self.max_shift = max_shift
        self.fill = fill

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.max_shift
        if m <= 0:
            return x
        h, w = x.shape[-2:]
        padded = F.pad(x, (m, m, m, m), value=self.fill)
        dy, dx = torch.randint(0, 2 * m + 1, (2,)).tolist()
        return padded[..., dy : dy + h, dx : dx + w]


class _TransformedTensorDataset(Dataset):
    """In-memory (images, labels) with a per-sample image transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


class DigitsDataModule(DataModule):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes, no download).

    A fixed stratified train/val/test split (seeded by ``split_seed`` only, independent of the
    global torch seed). Pixels are scaled to [0, 1], upsampled once to ``image_size`` (bilinear,
    ``align_corners=False``) and normalised with the training split's mean/std. ``val_fraction``
    and ``test_fraction`` are fractions of the whole data set.
    """

    NUM_SAMPLES = 1797

    def __init__(
        self,
        image_size: int = 32,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        augment: bool = False,
        pin_memory: bool = False,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, pin_memory)
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"need 0 < val_fraction, test_fraction and val_fraction + test_fraction < 1, "
                f"got {val_fraction}, {test_fraction}"
            )
        self.image_size = int(image_size)
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.augment = augment
        self.num_classes = 10
        self.in_channels = 1
        self.split_indices: dict[str, np.ndarray] | None = None
        self.mean: float | None = None
        self.std: float | None = None

    def prepare_data(self) -> None:
        """Nothing to do: the data ships with scikit-learn."""

    def _dataset(self, split: str) -> Dataset:
        # The three splits are made together (one split, one normalisation): all are there from now on.
        self.datasets.update(self._build())
        return self.datasets[split]

    def _build(self) -> dict[str, Dataset]:
        """All three splits at once: the split and the normalisation are computed together."""
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # [N,1,8,8]
        y = np.asarray(digits.target, dtype=np.int64)
        n = len(y)
        idx = np.arange(n)
        # Absolute counts so that both fractions refer to the whole data set.
        n_test = round(self.test_fraction * n)
        n_val = round(self.val_fraction * n)
        trainval, test = train_test_split(idx, test_size=n_test, stratify=y, random_state=self.split_seed)
        train, val = train_test_split(trainval, test_size=n_val, stratify=y[trainval], random_state=self.split_seed)
        self.split_indices = {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}

        # Upsample once up front: cheaper than per-batch resizing and keeps the data deterministic.
        x = F.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        train_x = x[self.split_indices["train"]]
        self.mean = float(train_x.mean())
        self.std = float(train_x.std())
        x = (x - self.mean) / self.std
        labels = torch.from_numpy(y)

        def subset(name: str) -> tuple[torch.Tensor, torch.Tensor]:
            i = torch.from_numpy(self.split_indices[name])
            return x[i].contiguous(), labels[i].contiguous()

        train_x, train_y = subset("train")
        if self.augment:
            # Background (pixel 0) after normalisation, so shifted-in borders look like background.
            shift = _RandomShift(self.image_size // 8, fill=-self.mean / self.std)
            train = _TransformedTensorDataset(train_x, train_y, shift)
        else:
            train = TensorDataset(train_x, train_y)
        return {"train": train, "val": TensorDataset(*subset("val")), "test": TensorDataset(*subset("test"))}


# --------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100
# --------------------------------------------------------------------------------------------------

CIFAR_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html (python version, e.g. cifar-10-python.tar.gz)"

_CIFAR_SPECS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "name": "CIFAR-10",
        "base": CIFAR10,
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "meta_key": "label_names",
        "label_key": "labels",
        "num_classes": 10,
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
    },
    "cifar100": {
        "name": "CIFAR-100",
        "base": CIFAR100,
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "meta_key": "fine_label_names",
        "label_key": "fine_labels",
        "num_classes": 100,
        "mean": CIFAR100_MEAN,
        "std": CIFAR100_STD,
    },
}


def _cifar_layout(spec: dict[str, Any]) -> str:
    files = spec["train"] + spec["test"] + [spec["meta"]]
    return "\n".join([f"{spec['folder']}/"] + [f"    {f}" for f in files])


def _cifar_files(spec: dict[str, Any]) -> list[str]:
    return [f"{spec['folder']}/{f}" for f in spec["train"] + spec["test"] + [spec["meta"]]]


def _unpickle(path: Path) -> dict[str, Any]:
    """Load a CIFAR pickle; keys normalised to ``str`` (Python-2 pickles give str, Python-3 bytes)."""
    with open(path, "rb") as f:
        # latin1 is what the Python-2 pickled numpy arrays of the official files need.
        entry = pickle.load(f, encoding="latin1")
    if not isinstance(entry, dict):
        raise ValueError(f"expected a pickled dict, got {type(entry).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _as_str(name: Any) -> str:
    return name.decode("latin1") if isinstance(name, bytes) else str(name)


class _CheckedCIFARMixin:
    """Reads the official CIFAR python pickles without torchvision's md5 check, validating content.

    torchvision's loader refuses any file whose md5 differs from the official archive (so also
    small test fixtures) and gives no hint which file is broken; this reads the same format and
    raises :class:`DataError` naming the offending file.
    """

    spec: dict[str, Any]

    def __init__(self, root: str | os.PathLike, train: bool = True, transform=None) -> None:
        # Bypass CIFAR10.__init__ (md5 check + its own loading); keep everything else it provides.
        super(CIFAR10, self).__init__(root, transform=transform)
        self.train = train
        spec = self.spec
        folder = Path(root) / spec["folder"]
        n_cls = spec["num_classes"]

        datas, targets = [], []
        for name in spec["train"] if train else spec["test"]:
            path = folder / name
            entry = self._read(path)
            data = entry.get("data")
            labels = entry.get(spec["label_key"])
            if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                desc = f"array {data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
                self._fail(path, f"'data' must be a uint8 array of shape [N, 3072], got {desc}")
            if labels is None:
                self._fail(path, f"missing key '{spec['label_key']}'")
            labels = np.asarray(labels)
            if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
                self._fail(
                    path,
                    f"'{spec['label_key']}' must hold {data.shape[0]} integer labels, "
                    f"got shape {list(labels.shape)} dtype {labels.dtype}",
                )
            if labels.size and (labels.min() < 0 or labels.max() >= n_cls):
                self._fail(path, f"labels must lie in [0, {n_cls}), got [{labels.min()}, {labels.max()}]")
            datas.append(data)
            targets.extend(int(t) for t in labels)

        # Rows are channel-major (1024 R, 1024 G, 1024 B), each 32x32 row-major; store HWC for PIL.
        self.data = np.vstack(datas).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
        self.targets = targets
        self._load_meta()

    def _load_meta(self) -> None:
        spec = self.spec
        path = Path(self.root) / spec["folder"] / spec["meta"]
        meta = self._read(path)
        names = meta.get(spec["meta_key"])
        if not isinstance(names, (list, tuple)) or len(names) != spec["num_classes"]:
            got = len(names) if isinstance(names, (list, tuple)) else type(names).__name__
            self._fail(path, f"'{spec['meta_key']}' must list {spec['num_classes']} class names, got {got}")
        self.classes = [_as_str(n) for n in names]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    def _check_integrity(self) -> bool:
        # Content is validated while reading instead of by md5 (see class docstring).
        return True

    def download(self) -> None:
        raise DataError(f"{self.spec['name']}: downloading is disabled; see {CIFAR_SOURCE}")

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            return _unpickle(path)
        except DataError:
            raise
        except Exception as e:  # any unpickling failure means a corrupt or foreign file
            self._fail(path, f"cannot unpickle ({type(e).__name__}: {e})", cause=e)

    def _fail(self, path: Path, problem: str, cause: Exception | None = None):
        spec = self.spec
        err = data_error(
            spec["name"],
            f"malformed file {path}: {problem}",
            root=self.root,
            layout=_cifar_layout(spec),
            source=CIFAR_SOURCE,
        )
        raise err from cause


class _CheckedCIFAR10(_CheckedCIFARMixin, CIFAR10):
    spec = _CIFAR_SPECS["cifar10"]


class _CheckedCIFAR100(_CheckedCIFARMixin, CIFAR100):
    spec = _CIFAR_SPECS["cifar100"]


_CIFAR_DATASETS = {"cifar10": _CheckedCIFAR10, "cifar100": _CheckedCIFAR100}


class CIFARDataModule(DataModule):
    """CIFAR-10 / CIFAR-100 from the official python pickle batches under ``root``.

    Expected layout: ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` or
    ``root/cifar-100-python/{train, test, meta}``. Validation and test both use the official test
    set (there is no separate validation split, as in the Fast-SNN paper). Train augmentation
    (``augment``) is a random 32 px crop of the image padded by ``crop_padding`` pixels and a
    horizontal flip with probability ``flip``; normalisation uses the usual per-variant mean/std.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        variant: str = "cifar10",
        batch_size: int = 128,
        num_workers: int = 4,
        augment: bool = True,
        pin_memory: bool = False,
        eval_batch_size: int | None = None,
        flip: float = 0.5,
        crop_padding: int = 4,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, pin_memory)
        if variant not in _CIFAR_SPECS:
            raise ValueError(f"variant must be one of {sorted(_CIFAR_SPECS)}, got {variant!r}")
        self.root = Path(root).expanduser()
        self.variant = variant
        self.augment = augment
        self.flip = flip_probability(flip)
        self.crop_padding = int(crop_padding)
        spec = _CIFAR_SPECS[variant]
        self.num_classes = spec["num_classes"]
        self.in_channels = 3
        self.image_size = 32
        self.mean, self.std = spec["mean"], spec["std"]

    def _transforms(self, train: bool):
        ops = []
        if train and self.augment:
            ops = [T.RandomCrop(32, padding=self.crop_padding), T.RandomHorizontalFlip(self.flip)]
        return T.Compose(ops + [T.ToTensor(), T.Normalize(self.mean, self.std)])

    def prepare_data(self) -> None:
        """Never downloads; only checks that the files are in place."""
        self._check_layout()

    def _check_layout(self) -> None:
        spec = _CIFAR_SPECS[self.variant]
        require_paths(self.root, _cifar_files(spec), spec["name"], _cifar_layout(spec), CIFAR_SOURCE)

    def _dataset(self, split: str) -> Dataset:
        if split == "val":  # validation uses the official test batch
            return self.dataset("test")
        self._check_layout()
        train = split == "train"
        return _CIFAR_DATASETS[self.variant](self.root, train=train, transform=self._transforms(train=train))


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------------------

#: Where Debian's package ``dataset-fashion-mnist`` puts the four gzipped idx files.
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
FASHION_MNIST_SOURCE = (
    f"apt-get install dataset-fashion-mnist (Debian / Ubuntu: the files land in {FASHION_MNIST_DEBIAN_DIR}), "
    "or the four files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
    "t10k-labels-idx1-ubyte.gz of the public release, https://github.com/zalandoresearch/fashion-mnist (data/fashion)"
)
FASHION_MNIST_LAYOUT = "\n".join(
    [f"{name}.gz        (or uncompressed: {name})" for name in FASHION_MNIST_FILES]
    + ["either directly in the root, or in root/FashionMNIST/raw/ (torchvision's layout)"]
)
_IDX_UBYTE = 0x08  # the idx type code of unsigned bytes; magic = 0x0000 0800 + number of dimensions


def _fashion_error(problem: str, root: Path) -> DataError:
    return data_error("Fashion-MNIST", problem, root=root, layout=FASHION_MNIST_LAYOUT, source=FASHION_MNIST_SOURCE)


def _idx_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, the uncompressed one first; ``None`` if neither is a file."""
    return next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)


def read_idx(path: Path, ndim: int, root: Path) -> np.ndarray:
    """The unsigned-byte array of an idx file (gzipped when its name ends in ``.gz``), checked.

    The header is the magic number ``0x00000800 + ndim`` then ``ndim`` big-endian 32-bit sizes;
    the data follows, exactly as many bytes as the sizes say. Raises :class:`DataError` naming
    the file when it is not such a file (bad magic, truncated, trailing bytes, broken gzip).
    """
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise _fashion_error(f"cannot read {path}: {type(err).__name__}: {err}", root) from err
    header = 4 * (1 + ndim)
    if len(data) < header:
        raise _fashion_error(f"{path} is truncated: {len(data)} bytes, less than its {header}-byte idx header", root)
    magic, expected_magic = int.from_bytes(data[:4], "big"), (_IDX_UBYTE << 8) + ndim
    if magic != expected_magic:
        kind = "images" if ndim == 3 else "labels"
        raise _fashion_error(
            f"{path} is not an idx file of {kind}: magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"(unsigned bytes, {ndim} dimension{'s' * (ndim > 1)})",
            root,
        )
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    size = int(np.prod(dims))
    if len(data) != header + size:
        what = "truncated" if len(data) < header + size else "longer than its header says"
        raise _fashion_error(
            f"{path} is {what}: the header announces {' x '.join(map(str, dims))} = {size} bytes of data, "
            f"the file holds {len(data) - header}",
            root,
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def find_fashion_mnist(root: str | os.PathLike, fallback_roots=()) -> Path:
    """The folder holding the four Fashion-MNIST files: ``root`` itself or ``root/FashionMNIST/raw``,
    else the same two places under each of ``fallback_roots`` (a warning names the one used).

    A folder holding some of the four files but not all raises :class:`DataError` naming the
    missing ones; no files anywhere raises it listing every folder looked in.
    """
    root = Path(root).expanduser()
    bases = [root, *(Path(r).expanduser() for r in fallback_roots)]
    looked = [folder for base in bases for folder in (base, base / "FashionMNIST" / "raw")]
    for folder in looked:
        found = {name: _idx_file(folder, name) for name in FASHION_MNIST_FILES}
        if not any(found.values()):
            continue
        missing = [name for name, path in found.items() if path is None]
        if missing:
            raise _fashion_error(
                f"{folder} holds some of the Fashion-MNIST files but not "
                + ", ".join(f"{folder / m}(.gz)" for m in missing),
                folder,
            )
        if folder in (root, root / "FashionMNIST" / "raw"):
            log.info("Fashion-MNIST: reading the files in %s", folder)
        else:
            log.warning("Fashion-MNIST: no files under data.root=%s; using the ones in %s", root, folder)
        return folder
    raise _fashion_error("no Fashion-MNIST files found; looked in " + ", ".join(map(str, looked)), root)


class _FashionMNISTFolder(FashionMNIST):
    """torchvision's ``FashionMNIST`` (class names, PIL samples, transforms) over the idx files in
    ``folder``, gzipped or not, checked by :func:`read_idx`.

    torchvision's own loading looks only in ``root/FashionMNIST/raw``, reads no ``.gz`` file and
    fails on a broken file with a bare assertion; this reads the same files wherever they are.
    """

    def __init__(self, folder: Path, train: bool = True, transform=None) -> None:
        # Skip MNIST.__init__ (fixed folder, download logic); keep everything else the class provides.
        super(MNIST, self).__init__(str(folder), transform=transform)
        self.train = train
        self.folder = Path(folder)
        self.data, self.targets = self._load_data()

    @property
    def raw_folder(self) -> str:
        return str(self.folder)

    def _load_data(self):
        prefix = "train" if self.train else "t10k"
        images_file = _idx_file(self.folder, f"{prefix}-images-idx3-ubyte")
        labels_file = _idx_file(self.folder, f"{prefix}-labels-idx1-ubyte")
        for name, path in ((f"{prefix}-images-idx3-ubyte", images_file), (f"{prefix}-labels-idx1-ubyte", labels_file)):
            if path is None:
                raise _fashion_error(f"missing file {self.folder / name}(.gz)", self.folder)
        images, labels = read_idx(images_file, 3, self.folder), read_idx(labels_file, 1, self.folder)
        if images.shape[1:] != (28, 28):
            raise _fashion_error(
                f"{images_file} holds {images.shape[1]}x{images.shape[2]} images, not 28x28", self.folder
            )
        if len(images) != len(labels):
            raise _fashion_error(
                f"{images_file} holds {len(images)} images but {labels_file} {len(labels)} labels", self.folder
            )
        if len(labels) and labels.max() >= len(self.classes):
            raise _fashion_error(f"{labels_file} holds label {labels.max()}; Fashion-MNIST's are 0..9", self.folder)
        return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


class FashionMNISTDataModule(DataModule):
    """Fashion-MNIST (Zalando): 28x28 grey images of clothes, 10 classes, 60000 train + 10000 test.

    Reads the four official idx files, gzipped or not, from ``root`` itself or from
    ``root/FashionMNIST/raw`` (torchvision's layout); when neither holds them, from the same places
    under ``fallback_roots`` (by default Debian's ``/usr/share/datasets/fashion-mnist``), with a
    warning naming the folder used. Never downloads.

    Validation is ``val_size`` images of the official training set, drawn at random with
    ``split_seed`` (independent of the global seed), training the rest; test is the official test
    set. Images are zero-padded (centred) to ``image_size`` when it is larger than 28 (default 32,
    the input size of the CIFAR backbones), resized when smaller. Training augmentation
    (``augment``): a random crop of the image padded by ``crop_padding`` pixels and a horizontal
    flip with probability ``flip``. Normalisation with the training set's mean / std.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int = 32,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = False,
        val_size: int = 5000,
        split_seed: int = 0,
        augment: bool = True,
        crop_padding: int = 4,
        flip: float = 0.5,
        fallback_roots=(FASHION_MNIST_DEBIAN_DIR,),
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, pin_memory)
        for name, value, low in (
            ("image_size", image_size, 8),
            ("val_size", val_size, 1),
            ("crop_padding", crop_padding, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.root = Path(root).expanduser()
        self.fallback_roots = [Path(r).expanduser() for r in fallback_roots or ()]
        self.image_size, self.val_size, self.split_seed = image_size, val_size, split_seed
        self.augment, self.crop_padding, self.flip = augment, crop_padding, flip_probability(flip)
        self.num_classes, self.in_channels = 10, 1
        self.classes = tuple(FashionMNIST.classes)
        self.mean, self.std = FASHION_MNIST_MEAN, FASHION_MNIST_STD
        self.folder: Path | None = None  # where the files were found
        self.split_indices: dict[str, np.ndarray] | None = None
        self._official_train: _FashionMNISTFolder | None = None

    def prepare_data(self) -> None:
        """Never downloads; only finds the files."""
        self._folder()

    def _folder(self) -> Path:
        if self.folder is None:
            self.folder = find_fashion_mnist(self.root, self.fallback_roots)
        return self.folder

    def _transforms(self, train: bool):
        extra = self.image_size - 28
        ops = [T.Pad((extra // 2, extra // 2, extra - extra // 2, extra - extra // 2))] if extra > 0 else []
        ops += [T.Resize(self.image_size, antialias=True)] if extra < 0 else []
        if train and self.augment:
            ops += [T.RandomCrop(self.image_size, padding=self.crop_padding), T.RandomHorizontalFlip(self.flip)]
        return T.Compose(ops + [T.ToTensor(), T.Normalize(self.mean, self.std)])

    def _training_set(self) -> _FashionMNISTFolder:
        """The official training set (read once), and its split into train / val indices."""
        if self._official_train is None:
            data = _FashionMNISTFolder(self._folder(), train=True)
            if self.val_size >= len(data):
                raise ValueError(
                    f"val_size={self.val_size} leaves no training images: the training set in {self.folder} "
                    f"has {len(data)}"
                )
            order = np.random.default_rng(self.split_seed).permutation(len(data))
            self.split_indices = {"train": np.sort(order[self.val_size :]), "val": np.sort(order[: self.val_size])}
            self._official_train = data
        return self._official_train

    def _dataset(self, split: str) -> Dataset:
        if split == "test":
            return _FashionMNISTFolder(self._folder(), train=False, transform=self._transforms(train=False))
        data = copy.copy(self._training_set())  # shares the arrays; only the transform differs
        data.transform = self._transforms(train=split == "train")
        return Subset(data, self.split_indices[split].tolist())


# --------------------------------------------------------------------------------------------------
# ImageNet
# --------------------------------------------------------------------------------------------------

IMAGENET_SOURCE = (
    "https://image-net.org/ (ILSVRC2012 train/val images; re-arrange the flat val images into "
    "class folders, e.g. with the common valprep.sh script)"
)
IMAGENET_LAYOUT = """\
train/
    n01440764/
        n01440764_10026.JPEG
        ...
    ... (one folder per class)
val/
    n01440764/
        ILSVRC2012_val_00000293.JPEG
        ...
    ... (same class folders as train/)"""


def _class_folders(directory: Path) -> list[str]:
    """Sorted class sub-folder names, exactly as ImageFolder finds them."""
    with os.scandir(directory) as it:
        return sorted(entry.name for entry in it if entry.is_dir())


class ImageNetDataModule(DataModule):
    """ImageNet (ILSVRC2012) as ``torchvision.datasets.ImageFolder`` on ``root/train`` and ``root/val``.

    ``root/val`` must use the same class-folder layout as ``root/train``: the official flat
    validation images have to be re-arranged into class folders first (e.g. with the common
    ``valprep.sh`` script). The test set is the validation set. ``num_classes`` is the number of
    class folders in ``root/train``; when ``root/train`` does not exist yet at construction time the
    ``num_classes`` argument is used and checked against the folders in ``setup``. Training
    augmentation (``augment``): a random resized crop and a horizontal flip with probability ``flip``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int = 224,
        batch_size: int = 256,
        num_workers: int = 8,
        augment: bool = True,
        num_classes: int = 1000,
        pin_memory: bool = False,
        eval_batch_size: int | None = None,
        flip: float = 0.5,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, pin_memory)
        self.root = Path(root).expanduser()
        self.image_size = int(image_size)
        self.augment = augment
        self.flip = flip_probability(flip)
        self.in_channels = 3
        train_dir = self.root / "train"
        # Cheap listing so models can be sized before setup; the error (if any) is raised in setup.
        self.num_classes = len(_class_folders(train_dir)) if train_dir.is_dir() else int(num_classes)

    def _transforms(self, train: bool):
        if train and self.augment:
            ops = [T.RandomResizedCrop(self.image_size), T.RandomHorizontalFlip(self.flip)]
        else:
            # Standard 0.875 centre-crop ratio (256 -> 224).
            ops = [T.Resize(int(self.image_size / 0.875)), T.CenterCrop(self.image_size)]
        return T.Compose(ops + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def _error(self, problem: str) -> DataError:
        return data_error("ImageNet", problem, root=self.root, layout=IMAGENET_LAYOUT, source=IMAGENET_SOURCE)

    def _check_layout(self) -> list[str]:
        """Validate both splits' class folders; returns the class names."""
        require_paths(self.root, ["train", "val"], "ImageNet", IMAGENET_LAYOUT, IMAGENET_SOURCE)
        classes = {}
        for split in ("train", "val"):
            d = self.root / split
            if not d.is_dir():
                raise self._error(f"{d} is not a directory")
            classes[split] = _class_folders(d)
            if not classes[split]:
                raise self._error(f"no class folders in {d}")
        if classes["train"] != classes["val"]:
            # ImageFolder indexes classes per split, so differing folders would shift labels.
            only_train = sorted(set(classes["train"]) - set(classes["val"]))[:5]
            only_val = sorted(set(classes["val"]) - set(classes["train"]))[:5]
            raise self._error(
                f"train/ and val/ must contain the same class folders "
                f"(only in train: {only_train}, only in val: {only_val}); "
                f"was val/ re-arranged into class folders?"
            )
        if len(classes["train"]) != self.num_classes:
            raise self._error(
                f"found {len(classes['train'])} class folders in {self.root / 'train'} but "
                f"num_classes={self.num_classes}"
            )
        return classes["train"]

    def prepare_data(self) -> None:
        """Never downloads; only checks the folder layout."""
        self._check_layout()

    def _folder(self, split: str, train: bool) -> ImageFolder:
        try:
            return ImageFolder(str(self.root / split), transform=self._transforms(train))
        except FileNotFoundError as e:  # raised by ImageFolder for class folders without images
            raise self._error(f"{self.root / split}: {e} (supported extensions: {', '.join(IMG_EXTENSIONS)})") from e

    def _dataset(self, split: str) -> Dataset:
        if split == "test":  # the test set is the validation set
            return self.dataset("val")
        self._check_layout()
        return self._folder(split, train=split == "train")
