"""Semantic segmentation data: synthetic shapes (default), PASCAL VOC 2012 and COCO 2017.

Every data module yields ``(images float32 [B, 3, H, W] normalised, masks int64 [B, H, W])``
with ``255`` marking pixels to ignore (VOC's object borders, crowd regions, padding) and
exposes ``num_classes`` (background included), ``in_channels`` and ``image_size`` right
after construction. Nothing is ever downloaded: a missing data root raises
:class:`~tasks.common.data.DataError` with the expected layout, and a malformed sample
(a mask whose size differs from its image, or class ids beyond the class count other than
255) raises it naming the file.

* :class:`ShapesSegDataModule`: the deterministic synthetic scenes of
  :mod:`tasks.common.shapes` (the generator the detection task uses too), generated on
  first use in the VOC layout and read through torchvision's ``VOCSegmentation``.
* :class:`VOCSegDataModule`: VOC 2012 ``train`` / ``val`` through torchvision's
  ``VOCSegmentation``, and the augmented ``trainaug`` list (SBD, masks in
  ``SegmentationClassAug``) when it is present.
* :class:`COCOSegDataModule`: COCO 2017 instance annotations (polygons, RLE) turned into
  semantic masks with pycocotools: 80 categories + background, overlaps resolved
  deterministically (larger instances first, smaller ones painted over them), crowd
  regions set to ignore.

Training augmentation (``torchvision.transforms.v2``, image and mask jointly, masks with
nearest interpolation): random scale, random crop (padding filled with 0 in the normalised
image and 255 in the mask), horizontal flip. Evaluation uses the whole image; a batch of
images of different sizes is padded at the bottom/right in the same way. Loaders and their
settings come from :class:`~tasks.common.data.DataModule`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.datasets import CocoDetection, VOCSegmentation
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms.v2._utils import query_size

from tasks.common.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from tasks.common.constants import VOC_CLASSES as VOC_OBJECT_CLASSES
from tasks.common.data import DataError, DataModule, data_error, flip_probability, require_paths
from tasks.common.shapes import SHAPE_CLASSES, VOC_SUBDIR, ensure_shapes_dataset

__all__ = [
    "IGNORE_INDEX",
    "VOC_CLASSES",
    "RandomScale",
    "SegmentationSamples",
    "VOCSegmentationList",
    "COCOSemantic",
    "coco_semantic_mask",
    "pad_collate",
    "SegmentationDataModule",
    "ShapesSegDataModule",
    "VOCSegDataModule",
    "COCOSegDataModule",
]

VOC_CLASSES = ("background", *VOC_OBJECT_CLASSES)
_MASK_MODES = ("P", "L", "I", "I;16")  # modes whose pixel values are class ids


# --------------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------------


class RandomScale(v2.Transform):
    """Resize image and mask by one random factor in ``scale_range`` (masks: nearest)."""

    def __init__(self, scale_range: Sequence[float] = (0.5, 2.0)) -> None:
        super().__init__()
        lo, hi = (float(s) for s in scale_range)
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be 0 < low <= high, got {scale_range}")
        self.scale_range = (lo, hi)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = query_size(flat_inputs)
        s = float(torch.empty(()).uniform_(*self.scale_range))
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        # v2 resizes tv_tensors.Mask with nearest interpolation whatever is asked here.
        return self._call_kernel(
            TF.resize, inpt, size=params["size"], interpolation=v2.InterpolationMode.BILINEAR, antialias=True
        )


def build_transforms(
    train: bool,
    crop_size: int | None,
    scale_range: Sequence[float] | None,
    flip: float = 0.5,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    resize: int | None = None,
) -> v2.Compose:
    """Joint image/mask transforms: optionally resize (every split), normalise; for training,
    scale, crop (pad 0 / 255) and flip (with probability ``flip``)."""
    flip = flip_probability(flip)
    ops: list = [v2.Resize(resize, antialias=True)] if resize else []
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if train:
        if scale_range is not None:
            ops.append(RandomScale(scale_range))
        if crop_size:
            # Padding: 0 in the normalised image (the mean colour), "ignore" in the mask.
            ops.append(
                v2.RandomCrop(
                    int(crop_size), pad_if_needed=True, fill={tv_tensors.Image: 0.0, tv_tensors.Mask: IGNORE_INDEX}
                )
            )
        if flip:
            ops.append(v2.RandomHorizontalFlip(flip))
    return v2.Compose(ops)


def pad_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(image [3, H, W], mask [H, W])`` pairs, padding to the largest size in the batch
    (bottom/right; image 0, mask ``IGNORE_INDEX``)."""
    h = max(img.shape[-2] for img, _ in batch)
    w = max(img.shape[-1] for img, _ in batch)
    images = torch.zeros(len(batch), batch[0][0].shape[0], h, w, dtype=torch.float32)
    masks = torch.full((len(batch), h, w), IGNORE_INDEX, dtype=torch.int64)
    for i, (img, mask) in enumerate(batch):
        images[i, :, : img.shape[-2], : img.shape[-1]] = img
        masks[i, : mask.shape[-2], : mask.shape[-1]] = mask
    return images, masks


# --------------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------------


def _mask_array(mask: Image.Image | np.ndarray, path: str, dataset: str) -> np.ndarray:
    if isinstance(mask, np.ndarray):
        return mask
    if mask.mode not in _MASK_MODES:
        raise DataError(
            f"{dataset}: malformed mask {path}: expected a palette or grayscale PNG of class "
            f"ids, got PIL mode {mask.mode!r} (an RGB rendering of the colour map cannot be read)"
        )
    return np.asarray(mask)


class SegmentationSamples(Dataset):
    """Checks and transforms the ``(PIL image, mask)`` samples of a reader.

    ``reader[i]`` gives ``(PIL image, mask)`` (a PIL image of class ids or a numpy array) and
    ``reader.sample_files(i)`` the files it came from, for error messages. Every sample is
    checked: the mask must have the image's size and hold only ids ``< num_classes`` or
    ``ignore_index``; otherwise :class:`DataError` names the file.
    """

    def __init__(
        self,
        reader,
        num_classes: int,
        transforms=None,
        name: str = "segmentation data",
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.reader = reader
        self.num_classes = num_classes
        self.transforms = transforms
        self.name = name
        self.ignore_index = ignore_index

    def __len__(self) -> int:
        return len(self.reader)

    def check(self, image: Image.Image, mask: Image.Image | np.ndarray, index: int) -> np.ndarray:
        image_file, mask_file = self.reader.sample_files(index)
        arr = _mask_array(mask, mask_file, self.name)
        if arr.ndim != 2:
            raise DataError(
                f"{self.name}: malformed mask {mask_file}: expected one channel of class ids, "
                f"got an array of shape {list(arr.shape)}"
            )
        w, h = image.size
        if arr.shape != (h, w):
            raise DataError(
                f"{self.name}: mask {mask_file} is {arr.shape[1]}x{arr.shape[0]} (WxH) but its "
                f"image {image_file} is {w}x{h}; masks must match their images pixel for pixel"
            )
        bad = (arr >= self.num_classes) & (arr != self.ignore_index)
        if bad.any():
            values = sorted(int(v) for v in np.unique(arr[bad]))[:10]
            raise DataError(
                f"{self.name}: mask {mask_file} holds class ids {values} outside 0..{self.num_classes - 1} "
                f"(and {self.ignore_index} = ignore); is it a mask of another data set, or an "
                f"RGB/anti-aliased rendering?"
            )
        return arr

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.reader[index]
        arr = self.check(image, mask, index)
        img = tv_tensors.Image(TF.pil_to_tensor(image.convert("RGB")))
        target = tv_tensors.Mask(torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True)))
        if self.transforms is not None:
            img, target = self.transforms(img, target)
        return img.as_subclass(torch.Tensor), target.as_subclass(torch.Tensor).to(torch.int64)


class VOCSegmentationList(VOCSegmentation):
    """torchvision's ``VOCSegmentation`` reader for any split list of a VOC-layout tree.

    torchvision accepts only ``train`` / ``trainval`` / ``val`` for VOC 2012 and masks in
    ``SegmentationClass``; this builds the same reader (same ``images`` / ``masks`` lists,
    same ``__getitem__``) from ``<voc_dir>/ImageSets/Segmentation/<split>.txt`` and
    ``<voc_dir>/<mask_dir>``, e.g. the synthetic ``test`` split or VOC's ``trainaug`` with
    ``SegmentationClassAug``.
    """

    def __init__(
        self, voc_dir: str | os.PathLike, split: str, mask_dir: str = "SegmentationClass", transforms=None
    ) -> None:
        voc_dir = Path(voc_dir)
        # Skip _VOCBase.__init__ (fixed split names, download logic); keep the rest of the class.
        super(VOCSegmentation, self).__init__(str(voc_dir.parent.parent), transforms=transforms)
        self.year, self.image_set = "2012", split
        list_file = voc_dir / "ImageSets" / "Segmentation" / f"{split}.txt"
        ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        self.images = [str(voc_dir / "JPEGImages" / f"{i}.jpg") for i in ids]
        self.targets = [str(voc_dir / mask_dir / f"{i}.png") for i in ids]


class _VOCReader:
    """``(PIL image, PIL mask)`` pairs of a torchvision VOC segmentation dataset, with file names."""

    def __init__(self, dataset: VOCSegmentation) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image_file, mask_file = self.sample_files(i)
        for f in (image_file, mask_file):
            if not os.path.isfile(f):
                raise DataError(f"missing file {f} (listed in the split file of {self.dataset.image_set!r})")
        return self.dataset[i]

    def sample_files(self, i: int) -> tuple[str, str]:
        return self.dataset.images[i], self.dataset.masks[i]


def coco_semantic_mask(
    coco,
    image_id: int,
    anns: Sequence[dict],
    category_to_label: dict[int, int],
    height: int,
    width: int,
    file: str = "",
) -> np.ndarray:
    """Semantic mask (uint8 [H, W]) of one COCO image from its instance annotations.

    Background is 0 and category ``c`` gets ``category_to_label[c]``. Instances are painted
    from the largest to the smallest area (ties: by annotation id), so a small object lying
    on a large one stays visible and the result does not depend on the annotation order;
    crowd regions (``iscrowd=1``) are painted last with ``IGNORE_INDEX``.
    """
    mask = np.zeros((height, width), dtype=np.uint8)
    crowd = np.zeros((height, width), dtype=bool)
    ordered = sorted(anns, key=lambda a: (-float(a.get("area", 0.0)), int(a.get("id", 0))))
    for ann in ordered:
        cat = ann.get("category_id")
        if cat not in category_to_label:
            raise DataError(
                f"COCO: annotation {ann.get('id')} of image {image_id} ({file}) has category_id {cat}, "
                f"which is not among the {len(category_to_label)} categories of the annotation file"
            )
        m = coco.annToMask(ann).astype(bool)
        if m.shape != (height, width):
            raise DataError(
                f"COCO: annotation {ann.get('id')} of image {image_id} ({file}) decodes to a "
                f"{m.shape[1]}x{m.shape[0]} mask, but the image is {width}x{height}"
            )
        if ann.get("iscrowd", 0):
            crowd |= m
        else:
            mask[m] = category_to_label[cat]
    mask[crowd] = IGNORE_INDEX
    return mask


class COCOSemantic(CocoDetection):
    """torchvision's ``CocoDetection`` reader returning ``(PIL image, semantic mask)``.

    Categories are numbered 1..K in increasing COCO ``category_id`` order (K = 80 for COCO
    2017), 0 is background; see :func:`coco_semantic_mask`.
    """

    def __init__(self, image_dir: str | os.PathLike, ann_file: str | os.PathLike) -> None:
        super().__init__(str(image_dir), str(ann_file))
        cat_ids = sorted(self.coco.getCatIds())
        self.category_to_label = {c: i + 1 for i, c in enumerate(cat_ids)}
        self.classes = ["background"] + [self.coco.cats[c]["name"] for c in cat_ids]

    def sample_files(self, index: int) -> tuple[str, str]:
        info = self.coco.loadImgs(self.ids[index])[0]
        image_file = os.path.join(self.root, info["file_name"])
        return image_file, f"the annotations of {image_file} in {self.coco_file}"

    @property
    def coco_file(self) -> str:
        return getattr(self, "_ann_file", "the annotation file")

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        info = self.coco.loadImgs(image_id)[0]
        image_file = os.path.join(self.root, info["file_name"])
        if not os.path.isfile(image_file):
            raise DataError(f"COCO: missing image {image_file} (listed in {self.coco_file})")
        image = self._load_image(image_id)
        h, w = int(info["height"]), int(info["width"])
        if image.size != (w, h):
            raise DataError(
                f"COCO: image {image_file} is {image.size[0]}x{image.size[1]} but {self.coco_file} "
                f"says {w}x{h}; its masks would not match the image"
            )
        mask = coco_semantic_mask(
            self.coco, image_id, self._load_target(image_id), self.category_to_label, h, w, image_file
        )
        return image, mask


# --------------------------------------------------------------------------------------------------
# data modules
# --------------------------------------------------------------------------------------------------


class SegmentationDataModule(DataModule):
    """Transforms and batching of the segmentation data modules; subclasses implement
    ``_reader(split)`` and ``_check_layout()``.

    Args:
        batch_size, eval_batch_size, num_workers, pin_memory: the loaders
            (:class:`~tasks.common.data.DataModule`); training drops the last incomplete batch
            (batch norm over image-level pooled features needs > 1 sample).
        crop_size: training crop (padded with ignore where the scaled image is smaller);
            ``None``: no crop, which needs images of one size.
        scale_range: random scale factors for training; ``None``: no scaling.
        flip: probability of a random horizontal flip in training (0: none).
        resize: resize every image (and mask, nearest) of every split so that its shorter
            side has this many pixels, before anything else; ``None``: native size.
    """

    dataset_name = "segmentation data"
    splits: dict[str, str] = {}  # split -> the data set's split name
    drop_last_train = True

    def __init__(
        self,
        num_classes: int,
        batch_size: int = 16,
        num_workers: int = 0,
        crop_size: int | None = None,
        scale_range: Sequence[float] | None = (0.5, 2.0),
        flip: float = 0.5,
        eval_batch_size: int | None = None,
        pin_memory: bool = False,
        image_size: int | None = None,
        resize: int | None = None,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, pin_memory)
        self.num_classes = int(num_classes)
        self.in_channels = 3
        self.resize = int(resize) if resize else None
        self.image_size = self.resize or (image_size if image_size is not None else crop_size)
        self.crop_size = crop_size
        self.scale_range = tuple(scale_range) if scale_range is not None else None
        self.flip = flip_probability(flip)

    # subclass hooks ------------------------------------------------------------------------------
    def _check_layout(self) -> None:
        raise NotImplementedError

    def _reader(self, split: str):
        raise NotImplementedError

    # lightning -----------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self._check_layout()

    def _dataset(self, split: str) -> SegmentationSamples:
        """The checked, transformed samples of ``split`` (``train``, ``val`` or ``test``)."""
        self._check_layout()
        transforms = build_transforms(split == "train", self.crop_size, self.scale_range, self.flip, resize=self.resize)
        return SegmentationSamples(self._reader(self.splits[split]), self.num_classes, transforms, self.dataset_name)

    def collate_fn(self, split: str):
        return pad_collate


class ShapesSegDataModule(SegmentationDataModule):
    """The synthetic shapes scenes (:mod:`tasks.common.shapes`) as a segmentation data set.

    Generated deterministically on first use under ``root`` (``<root>/VOCdevkit/VOC2012``,
    the VOC layout, with the generator's default parameters: 128x128 images, 1200 / 200 /
    200 train / val / test, seed 0) and shared with the detection task. 6 classes:
    background + circle, square, triangle, star, cross; 255 on object borders.
    ``splits`` (image counts per split) is for tests and small experiments on a root of
    their own: a root holds one data set, and the default root is shared with detection.
    """

    dataset_name = "shapes (synthetic)"
    splits = {"train": "train", "val": "val", "test": "test"}

    def __init__(
        self,
        root: str | os.PathLike,
        batch_size: int = 16,
        num_workers: int = 0,
        crop_size: int | None = 128,
        scale_range: Sequence[float] | None = (0.75, 1.25),
        flip: float = 0.5,
        eval_batch_size: int | None = None,
        pin_memory: bool = False,
        progress: bool = True,
        splits: dict[str, int] | None = None,
        resize: int | None = None,
    ) -> None:
        super().__init__(
            1 + len(SHAPE_CLASSES),
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            crop_size=crop_size,
            scale_range=scale_range,
            flip=flip,
            image_size=128,
            resize=resize,
        )
        self.root = Path(root).expanduser()
        self.progress = progress
        self.generator_splits = dict(splits) if splits else None
        self.classes = ("background", *SHAPE_CLASSES)
        self._voc_dir: Path | None = None

    def _check_layout(self) -> None:
        if self._voc_dir is None:
            # Generates on first use; raises if root holds something else.
            self._voc_dir = ensure_shapes_dataset(self.root, splits=self.generator_splits, progress=self.progress)

    def _reader(self, split: str):
        return _VOCReader(VOCSegmentationList(self._voc_dir, split))


VOC_SOURCE = (
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ (VOCtrainval_11-May-2012.tar); the augmented "
    "'trainaug' set: SBD (Hariharan et al. 2011) converted to PNG masks, as distributed with DeepLab"
)
VOC_LAYOUT = """\
VOCdevkit/VOC2012/
    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png           (palette PNGs: class ids 0..20, 255 = border/ignore)
    ImageSets/Segmentation/train.txt, val.txt
    SegmentationClassAug/<id>.png         (optional: masks of the augmented set)
    ImageSets/Segmentation/trainaug.txt   (optional: the augmented training list)"""


class VOCSegDataModule(SegmentationDataModule):
    """PASCAL VOC 2012 segmentation (21 classes) under ``root`` (the folder holding ``VOCdevkit``).

    ``train_split="auto"`` trains on ``trainaug`` (10582 images) when both
    ``ImageSets/Segmentation/trainaug.txt`` and ``SegmentationClassAug/`` exist, else on
    ``train`` (1464 images). Validation and test use ``val`` (1449 images; the test set has
    no public masks). ``train`` / ``val`` / ``trainval`` are read by torchvision's
    ``VOCSegmentation`` itself.
    """

    dataset_name = "PASCAL VOC 2012"

    def __init__(
        self,
        root: str | os.PathLike,
        train_split: str = "auto",
        val_split: str = "val",
        test_split: str = "val",
        aug_mask_dir: str = "SegmentationClassAug",
        batch_size: int = 16,
        num_workers: int = 4,
        crop_size: int | None = 513,
        scale_range: Sequence[float] | None = (0.5, 2.0),
        flip: float = 0.5,
        eval_batch_size: int | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(
            len(VOC_CLASSES),
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            crop_size=crop_size,
            scale_range=scale_range,
            flip=flip,
        )
        self.root = Path(root).expanduser()
        self.voc_dir = self.root / VOC_SUBDIR
        self.aug_mask_dir = aug_mask_dir
        self.train_split = train_split
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.classes = VOC_CLASSES

    def _has_trainaug(self) -> bool:
        return (self.voc_dir / "ImageSets" / "Segmentation" / "trainaug.txt").is_file() and (
            self.voc_dir / self.aug_mask_dir
        ).is_dir()

    def _resolved(self, split: str) -> str:
        if split == "auto":
            return "trainaug" if self._has_trainaug() else "train"
        return split

    def _check_layout(self) -> None:
        splits = sorted({self._resolved(s) for s in self.splits.values()})
        needed = ["JPEGImages", "SegmentationClass"] + [f"ImageSets/Segmentation/{s}.txt" for s in splits]
        if "trainaug" in splits:
            needed.append(self.aug_mask_dir)
        require_paths(
            self.root, [f"{VOC_SUBDIR.as_posix()}/{p}" for p in needed], self.dataset_name, VOC_LAYOUT, VOC_SOURCE
        )

    def _reader(self, split: str):
        split = self._resolved(split)
        if split in ("train", "val", "trainval"):
            dataset = VOCSegmentation(str(self.root), year="2012", image_set=split)
        else:
            mask_dir = self.aug_mask_dir if split == "trainaug" else "SegmentationClass"
            dataset = VOCSegmentationList(self.voc_dir, split, mask_dir)
        return _VOCReader(dataset)


COCO_SOURCE = "https://cocodataset.org/#download (2017 Train/Val images, 2017 Train/Val annotations)"
COCO_LAYOUT = """\
train2017/<image id>.jpg
val2017/<image id>.jpg
annotations/instances_train2017.json
annotations/instances_val2017.json"""


class COCOSegDataModule(SegmentationDataModule):
    """COCO 2017 as semantic segmentation: 80 categories + background (81 classes).

    Masks are made from the instance annotations (polygons and RLE) with pycocotools; see
    :func:`coco_semantic_mask`. Validation and test use ``val2017``.
    """

    dataset_name = "COCO 2017"

    def __init__(
        self,
        root: str | os.PathLike,
        train_split: str = "train2017",
        val_split: str = "val2017",
        test_split: str = "val2017",
        num_classes: int = 81,
        batch_size: int = 16,
        num_workers: int = 4,
        crop_size: int | None = 513,
        scale_range: Sequence[float] | None = (0.5, 2.0),
        flip: float = 0.5,
        eval_batch_size: int | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(
            num_classes,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            crop_size=crop_size,
            scale_range=scale_range,
            flip=flip,
        )
        self.root = Path(root).expanduser()
        self.splits = {"train": train_split, "val": val_split, "test": test_split}

    def _files(self, split: str) -> tuple[str, str]:
        return split, f"annotations/instances_{split}.json"

    def _check_layout(self) -> None:
        needed = [p for s in sorted(set(self.splits.values())) for p in self._files(s)]
        require_paths(self.root, needed, self.dataset_name, COCO_LAYOUT, COCO_SOURCE)

    def _reader(self, split: str):
        image_dir, ann_file = self._files(split)
        try:
            dataset = COCOSemantic(self.root / image_dir, self.root / ann_file)
        except DataError:
            raise
        except Exception as err:  # json / pycocotools errors: say which file
            raise data_error(
                self.dataset_name,
                f"cannot read {self.root / ann_file} ({type(err).__name__}: {err})",
                root=self.root,
                layout=COCO_LAYOUT,
                source=COCO_SOURCE,
            ) from err
        dataset._ann_file = str(self.root / ann_file)
        if len(dataset.category_to_label) + 1 != self.num_classes:
            raise DataError(
                f"{self.dataset_name}: {self.root / ann_file} has {len(dataset.category_to_label)} "
                f"categories, so {len(dataset.category_to_label) + 1} classes with background, but "
                f"num_classes={self.num_classes}"
            )
        return _COCOReader(dataset)


class _COCOReader:
    def __init__(self, dataset: COCOSemantic) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.dataset[i]

    def sample_files(self, i: int) -> tuple[str, str]:
        return self.dataset.sample_files(i)
