"""Detection data: the synthetic shapes scenes, PASCAL VOC and COCO 2017.

Every data module yields ``(images float32 [B, 3, S, S] normalised, targets)``, ``targets`` a list
of dicts with ``boxes`` (float ``[n, 4]`` xyxy pixels of the ``S x S`` network input), ``labels``
(int64, ``0..C-1``), ``iscrowd`` (int64 0/1: an *ignored* box, never a training target and not a
miss in evaluation: VOC ``difficult`` objects, COCO crowd boxes), ``image_id`` and ``orig_size``
(``(h, w)`` of the image on disk). ``num_classes``, ``in_channels``, ``image_size`` and ``classes``
are known right after construction.

Reading rules, the same for every source:

* a box partly outside the image is clipped to it; a box of zero area (after clipping) is
  dropped, and the number dropped is reported in one warning per split;
* an image without objects is a valid negative;
* an annotation file that cannot be parsed, or that names an unknown class, raises
  :class:`~tasks.common.data.DataError` naming the file; a missing root or split list raises it
  with the expected layout. Nothing is downloaded.

Augmentation (train split, ``torchvision.transforms.v2`` on ``tv_tensors.BoundingBoxes`` so the
boxes follow the image): colour jitter, horizontal flip, random zoom in/out and shift (a random
resize + crop/pad, ``RandomAffine`` without rotation), then ``SanitizeBoundingBoxes`` drops boxes
that became degenerate. ``multiscale`` resizes whole training batches to a random size from a
list (YOLOv2's multi-scale training). Loaders and their settings come from
:class:`~tasks.common.data.DataModule`.
"""

from __future__ import annotations

import logging
import os
import random
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from tasks.common.constants import IMAGENET_MEAN, IMAGENET_STD, VOC_CLASSES
from tasks.common.data import DataError, DataModule, data_error, flip_probability

log = logging.getLogger(__name__)

__all__ = [
    "VOC_CLASSES",
    "VOCDetectionDataModule",
    "ShapesDetectionDataModule",
    "COCODetectionDataModule",
    "VOCDetectionReader",
    "COCODetectionReader",
    "collate",
]


VOC_SOURCE = (
    "http://host.robots.ox.ac.uk/pascal/VOC/ (VOCtrainval_06-Nov-2007.tar, VOCtest_06-Nov-2007.tar, "
    "VOCtrainval_11-May-2012.tar)"
)
VOC_LAYOUT = """\
VOCdevkit/
    VOC2007/
        Annotations/<id>.xml
        JPEGImages/<id>.jpg
        ImageSets/Main/{trainval,test}.txt
    VOC2012/
        Annotations/<id>.xml
        JPEGImages/<id>.jpg
        ImageSets/Main/trainval.txt"""
COCO_SOURCE = "https://cocodataset.org/#download (2017 Train/Val images, 2017 Train/Val annotations)"
COCO_LAYOUT = """\
annotations/
    instances_train2017.json
    instances_val2017.json
train2017/<12-digit id>.jpg
val2017/<12-digit id>.jpg"""


# --------------------------------------------------------------------------------------------------
# records: what the readers parse up front (no image decoding)
# --------------------------------------------------------------------------------------------------


@dataclass
class _Record:
    image: str  # path
    boxes: np.ndarray  # float32 [n, 4] xyxy, continuous pixel coordinates of the image on disk
    labels: np.ndarray  # int64 [n]
    iscrowd: np.ndarray  # int64 [n]
    size: tuple[int, int] | None = None  # (h, w) from the annotation, when it says
    image_id: int = 0


@dataclass
class _Dropped:
    """Counts of zero-area boxes dropped while reading one split (reported in one warning)."""

    count: int = 0
    files: list[str] = field(default_factory=list)

    def add(self, path: str, n: int) -> None:
        if n:
            self.count += n
            if len(self.files) < 3:
                self.files.append(path)

    def warn(self, what: str) -> None:
        if self.count:
            log.warning("%s: dropped %d zero-area box(es) (e.g. in %s)", what, self.count, ", ".join(self.files))


def _clip_and_filter(boxes: np.ndarray, size: tuple[int, int] | None):
    """Clip xyxy boxes to the image (when its size is known); return (boxes, keep mask)."""
    if size is not None and len(boxes):
        h, w = size
        boxes = boxes.copy()
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) if len(boxes) else np.zeros(0, bool)
    return boxes, keep


class _RecordDataset(Dataset):
    """Images + parsed annotations -> ``(image tv_tensors.Image, target dict)`` through ``transforms``."""

    records: list[_Record]

    def __init__(self, records: list[_Record], transforms=None):
        self.records = records
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        r = self.records[i]
        with Image.open(r.image) as im:
            img = im.convert("RGB")
        h, w = img.height, img.width
        boxes, keep = _clip_and_filter(r.boxes, (h, w))  # also clip to the real size
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(boxes[keep]).reshape(-1, 4), format="XYXY", canvas_size=(h, w)
            ),
            "labels": torch.from_numpy(r.labels[keep]),
            "iscrowd": torch.from_numpy(r.iscrowd[keep]),
            "image_id": r.image_id,
            "orig_size": torch.tensor([h, w]),
        }
        image = tv_tensors.Image(v2.functional.pil_to_tensor(img))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def box_sizes(self) -> np.ndarray:
        """``(w, h)`` of every non-ignored box as fractions of its image side (for k-means anchors)."""
        out = []
        for r in self.records:
            if r.size is None:
                with Image.open(r.image) as im:
                    r.size = (im.height, im.width)
            h, w = r.size
            b = r.boxes[r.iscrowd == 0]
            out.append(np.stack([(b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h], 1))
        return np.concatenate(out) if out else np.zeros((0, 2))


# --------------------------------------------------------------------------------------------------
# PASCAL VOC layout (real VOC and the synthetic shapes)
# --------------------------------------------------------------------------------------------------


def parse_voc_xml(
    path: str | os.PathLike, class_index: dict[str, int], dropped: _Dropped | None = None, use_difficult: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int] | None]:
    """Boxes (xyxy, continuous pixels), labels, iscrowd flags and ``(h, w)`` of one VOC XML file.

    VOC stores 1-based inclusive pixel indices: ``<xmin>`` 1 is the first column, so the box is
    ``[xmin - 1, xmax]`` in continuous coordinates. ``difficult`` objects are ignore regions
    (``iscrowd = 1``) unless ``use_difficult``. Raises :class:`DataError` naming the file.
    """
    path = str(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise DataError(f"cannot parse the VOC annotation {path}: {err}") from err
    if root.tag != "annotation":
        raise DataError(f"{path} is not a VOC annotation (root element <{root.tag}>, expected <annotation>)")

    def number(node, tag, obj_no=None):
        text = node.findtext(tag)
        where = f" (object {obj_no})" if obj_no is not None else ""
        if text is None:
            raise DataError(f"{path}: missing <{tag}>{where}")
        try:
            return float(text)
        except ValueError:
            raise DataError(f"{path}: <{tag}> is not a number: {text!r}{where}") from None

    size = None
    sz = root.find("size")
    if sz is not None and sz.findtext("width") and sz.findtext("height"):
        w, h = int(number(sz, "width")), int(number(sz, "height"))
        size = (h, w) if w > 0 and h > 0 else None
    boxes, labels, crowd = [], [], []
    for i, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if name not in class_index:
            raise DataError(
                f"{path}: object {i} names an unknown class {name!r}; known classes: {', '.join(class_index)}"
            )
        bb = obj.find("bndbox")
        if bb is None:
            raise DataError(f"{path}: object {i} ({name}) has no <bndbox>")
        x0, y0, x1, y1 = (number(bb, t, i) for t in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((x0 - 1, y0 - 1, x1, y1))
        labels.append(class_index[name])
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        crowd.append(int(difficult and not use_difficult))
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    boxes, keep = _clip_and_filter(boxes, size)
    if dropped is not None:
        dropped.add(path, int((~keep).sum()))
    return boxes[keep], np.asarray(labels, np.int64)[keep], np.asarray(crowd, np.int64)[keep], size


class VOCDetectionReader(_RecordDataset):
    """One ``(year, image_set)`` of a VOCdevkit tree: ``root/VOCdevkit/VOC<year>/...``.

    Reads the same files as ``torchvision.datasets.VOCDetection`` but for any split name (torchvision
    refuses ``test`` for 2012, which our synthetic data uses), parses and validates every XML file
    up front, and keeps ``difficult`` objects as ignore regions (see :func:`parse_voc_xml`).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        year: str,
        image_set: str,
        classes: Sequence[str],
        use_difficult: bool = False,
        transforms=None,
        name: str = "PASCAL VOC",
        layout: str = VOC_LAYOUT,
        source: str = VOC_SOURCE,
        max_images: int | None = None,
    ):
        root = Path(root).expanduser()
        voc = root / "VOCdevkit" / f"VOC{year}"
        split_file = voc / "ImageSets" / "Main" / f"{image_set}.txt"

        def error(problem):
            return data_error(name, problem, root=root, layout=layout, source=source)

        if not root.is_dir():
            raise error(f"the data root {root} does not exist")
        if not split_file.is_file():
            raise error(f"split list {split_file} not found")
        ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
        if max_images is not None:
            ids = ids[:max_images]
        class_index = {c: i for i, c in enumerate(classes)}
        dropped = _Dropped()
        records = []
        for n, image_id in enumerate(ids):
            xml = voc / "Annotations" / f"{image_id}.xml"
            jpg = voc / "JPEGImages" / f"{image_id}.jpg"
            if not xml.is_file():
                raise error(f"annotation {xml} (listed in {split_file}) not found")
            if not jpg.is_file():
                raise error(f"image {jpg} (listed in {split_file}) not found")
            boxes, labels, crowd, size = parse_voc_xml(xml, class_index, dropped, use_difficult)
            numeric = image_id.replace("_", "")
            records.append(_Record(str(jpg), boxes, labels, crowd, size, int(numeric) if numeric.isdigit() else n))
        dropped.warn(f"{name} VOC{year}/{image_set}")
        super().__init__(records, transforms)


# --------------------------------------------------------------------------------------------------
# COCO
# --------------------------------------------------------------------------------------------------


def _coco_record(coco, image_id: int, index: dict[int, int], image_dir: Path, ann_file: Path, dropped: _Dropped):
    """The :class:`_Record` of one COCO image: xyxy boxes clipped to the image, labels, crowd flags."""
    info = coco.imgs[image_id]
    size = (int(info["height"]), int(info["width"])) if info.get("height") and info.get("width") else None
    boxes, labels, crowd = [], [], []
    for ann in coco.imgToAnns.get(image_id, []):
        cat = ann.get("category_id")
        if cat not in index:
            raise DataError(
                f"{ann_file}: annotation {ann.get('id')} of image {image_id} names an unknown category id {cat!r}"
            )
        bbox = ann.get("bbox")
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4):
            raise DataError(f"{ann_file}: annotation {ann.get('id')} has no [x, y, w, h] bbox: {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        boxes.append((x, y, x + w, y + h))
        labels.append(index[cat])
        crowd.append(int(bool(ann.get("iscrowd", 0))))
    b, keep = _clip_and_filter(np.asarray(boxes, np.float32).reshape(-1, 4), size)
    dropped.add(f"image {image_id}", int((~keep).sum()))
    labels, crowd = np.asarray(labels, np.int64)[keep], np.asarray(crowd, np.int64)[keep]
    return _Record(str(image_dir / info["file_name"]), b[keep], labels, crowd, size, int(image_id))


class COCODetectionReader(_RecordDataset):
    """A COCO split through ``torchvision.datasets.CocoDetection`` (pycocotools).

    The (non-contiguous) category ids, sorted, map to labels ``0..C-1`` (``cat_ids[label]`` maps
    back). Crowd annotations are ignore regions; ``[x, y, w, h]`` boxes become xyxy, clipped to the
    image; zero-area boxes are dropped. Images without annotations are kept (negatives).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "val2017",
        transforms=None,
        cat_ids: Sequence[int] | None = None,
        max_images: int | None = None,
    ):
        from torchvision.datasets import CocoDetection

        root = Path(root).expanduser()
        ann_file = root / "annotations" / f"instances_{split}.json"
        image_dir = root / split

        def error(problem):
            return data_error("COCO", problem, root=root, layout=COCO_LAYOUT, source=COCO_SOURCE)

        if not root.is_dir():
            raise error(f"the data root {root} does not exist")
        for p in (ann_file, image_dir):
            if not p.exists():
                raise error(f"required path not found: {p}")
        try:
            coco_ds = CocoDetection(str(image_dir), str(ann_file))
        except Exception as err:  # json / pycocotools errors
            raise DataError(f"cannot read the COCO annotation file {ann_file}: {type(err).__name__}: {err}") from err
        coco = coco_ds.coco
        self.coco = coco
        file_cats = sorted(coco.getCatIds())
        self.cat_ids = list(file_cats if cat_ids is None else cat_ids)
        index = {c: i for i, c in enumerate(self.cat_ids)}
        unknown = sorted(set(file_cats) - set(index))
        if unknown:
            raise DataError(f"{ann_file}: category ids {unknown[:10]} are not among the {len(index)} known ones")
        dropped = _Dropped()
        ids = coco_ds.ids if max_images is None else coco_ds.ids[:max_images]
        records = [_coco_record(coco, image_id, index, image_dir, ann_file, dropped) for image_id in ids]
        dropped.warn(f"COCO {split} ({ann_file})")
        super().__init__(records, transforms)

    def label_to_category(self, labels: torch.Tensor) -> torch.Tensor:
        """Our labels ``0..C-1`` back to the file's COCO category ids."""
        return torch.as_tensor(self.cat_ids, device=labels.device)[labels.long()]


# --------------------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------------------


def _plain_target(t: dict) -> dict:
    out = {}
    for k, v in t.items():
        if isinstance(v, tv_tensors.BoundingBoxes):
            v = v.as_subclass(torch.Tensor).float().reshape(-1, 4)
        out[k] = v
    return out


def collate(batch):
    """Stack images; keep targets as a list of plain-tensor dicts."""
    images = torch.stack([img.as_subclass(torch.Tensor) for img, _ in batch])
    return images, [_plain_target(t) for _, t in batch]


class MultiScaleCollate:
    """:func:`collate`, then resize the whole batch to a random size from ``sizes`` (multi-scale)."""

    def __init__(self, sizes: Sequence[int]):
        self.sizes = [int(s) for s in sizes]

    def __call__(self, batch):
        images, targets = collate(batch)
        # `random` as the batch's last sample left it (tasks.common.data.SeededSamples seeds each one):
        # the same size in any worker and in a resumed run.
        size = random.choice(self.sizes)
        h, w = images.shape[-2:]
        if (h, w) != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
            s = torch.tensor([size / w, size / h, size / w, size / h])
            for t in targets:
                t["boxes"] = t["boxes"] * s
        return images, targets


def _crowd_and_labels(inputs):
    target = inputs[1] if isinstance(inputs, (tuple, list)) else inputs
    return target["labels"], target["iscrowd"]


# --------------------------------------------------------------------------------------------------
# data modules
# --------------------------------------------------------------------------------------------------


class _DetectionDataModule(DataModule):
    """Transforms, batching and the common constructor arguments of the detection data modules.

    Subclasses implement ``_read(split, transforms)``: the split's images and boxes.

    Args:
        image_size: the square network input ``S`` (images are resized to ``S x S``).
        augment: training augmentation on/off; ``jitter`` (colour), ``flip`` (probability),
            ``scale_range`` (zoom range) and ``translate`` (fraction of the side) tune it.
        multiscale: optional list of input sizes; each training batch is resized to one of them.
        anchors: the data set's anchor boxes ((w, h) fractions of the image side, e.g. from
            ``python -m tasks.detection.anchors``); the models use them when they set none.
        max_images: optional cap on the images per split (smoke tests).
        batch_size, eval_batch_size, num_workers, pin_memory: the loaders
            (:class:`~tasks.common.data.DataModule`).
    """

    classes: tuple[str, ...] = ()

    def __init__(
        self,
        image_size: int = 416,
        batch_size: int = 32,
        num_workers: int = 4,
        augment: bool = True,
        jitter: float = 0.3,
        flip: float = 0.5,
        scale_range: Sequence[float] = (0.75, 1.25),
        translate: float = 0.15,
        multiscale: Sequence[int] | None = None,
        anchors: Sequence | None = None,
        max_images: int | None = None,
        pin_memory: bool = False,
        eval_batch_size: int | None = None,
    ):
        super().__init__(batch_size, eval_batch_size, num_workers, pin_memory)
        self.image_size = int(image_size)
        self.augment = augment
        self.jitter, self.flip, self.translate = jitter, flip_probability(flip), translate
        self.scale_range = tuple(scale_range)
        self.multiscale = list(multiscale) if multiscale else None
        self.anchors = [list(a) for a in anchors] if anchors else None
        self.max_images = max_images
        self.in_channels = 3
        self.num_classes = len(self.classes)

    # -- to implement: the images and boxes of a split, through ``transforms``
    def _read(self, split: str, transforms) -> Dataset:
        raise NotImplementedError

    def _dataset(self, split: str) -> Dataset:
        return self._read(split, self.transforms(train=split == "train"))

    def collate_fn(self, split: str):
        return MultiScaleCollate(self.multiscale) if split == "train" and self.multiscale else collate

    def transforms(self, train: bool):
        s = self.image_size
        ops: list = [v2.Resize((s, s), antialias=True)]
        if train and self.augment:
            j = self.jitter
            ops += [
                v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(0.5, j / 6)),
                v2.RandomHorizontalFlip(self.flip),
                # random zoom in / out and shift: a random resize + crop (or pad) of the image
                v2.RandomAffine(
                    degrees=0.0,
                    translate=(self.translate, self.translate),
                    scale=self.scale_range,
                    fill=tuple(int(255 * m) for m in IMAGENET_MEAN),
                ),
            ]
        ops += [v2.ClampBoundingBoxes()]
        if train:
            ops += [v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_crowd_and_labels)]
        ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        return v2.Compose(ops)

    def train_box_sizes(self) -> np.ndarray:
        """``(w, h)`` fractions of every training box (no augmentation): input of k-means anchors."""
        ds = self._read("train", None)
        parts = ds.datasets if isinstance(ds, ConcatDataset) else [ds]
        return np.concatenate([p.box_sizes() for p in parts])


def _voc_sets(sets) -> list[tuple[str, str]]:
    out = []
    for item in sets:
        if isinstance(item, str):
            year, _, image_set = item.partition("/")
        else:
            year, image_set = item
        out.append((str(year), str(image_set)))
    return out


class VOCDetectionDataModule(_DetectionDataModule):
    """PASCAL VOC detection from ``root/VOCdevkit/VOC<year>``: by default trained on 2007+2012
    trainval and tested on 2007 test (also the validation split, as usual for VOC).

    Split lists are ``"<year>/<image_set>"`` strings (or ``[year, image_set]`` pairs); several
    are concatenated. The 20 classes map to labels 0..19 in the usual alphabetical order.
    ``use_difficult=False`` keeps *difficult* objects as ignore regions in training (no target,
    and predictions on them are not penalised); evaluation always ignores them (not counted as
    misses, detections of them not counted as false positives).
    """

    classes = VOC_CLASSES
    name = "PASCAL VOC"
    layout = VOC_LAYOUT
    source = VOC_SOURCE

    def __init__(
        self,
        root: str | os.PathLike,
        train_sets: Sequence = ("2007/trainval", "2012/trainval"),
        val_sets: Sequence = ("2007/test",),
        test_sets: Sequence = ("2007/test",),
        use_difficult: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.root = Path(root).expanduser()
        self.sets = {"train": _voc_sets(train_sets), "val": _voc_sets(val_sets), "test": _voc_sets(test_sets)}
        self.use_difficult = use_difficult

    def prepare_data(self) -> None:
        if not self.root.is_dir():
            raise data_error(
                self.name,
                f"the data root {self.root} does not exist",
                root=self.root,
                layout=self.layout,
                source=self.source,
            )

    def _read(self, split: str, transforms) -> Dataset:
        readers = [
            VOCDetectionReader(
                self.root,
                year,
                image_set,
                self.classes,
                use_difficult=self.use_difficult and split == "train",
                transforms=transforms,
                name=self.name,
                layout=self.layout,
                source=self.source,
                max_images=self.max_images,
            )
            for year, image_set in self.sets[split]
        ]
        return readers[0] if len(readers) == 1 else ConcatDataset(readers)


class ShapesDetectionDataModule(VOCDetectionDataModule):
    """The synthetic shapes scenes (:mod:`tasks.common.shapes`): 5 classes, 128 px, in the VOC layout.

    Generated deterministically on first use under ``root`` (shared with the segmentation task,
    which uses the same generator parameters) and read by the same VOC reader as real VOC:
    ``VOC2012/{train,val,test}``. ``splits`` changes the generator's split sizes (tests); a root
    holding a data set of other parameters raises an error, so use another root then.
    """

    classes = None  # set in __init__ from the generator
    name = "shapes (synthetic)"
    source = "generated by tasks.common.shapes.ensure_shapes_dataset (nothing to download)"
    layout = "VOCdevkit/VOC2012/{Annotations,JPEGImages,ImageSets/Main}\nshapes.json"

    def __init__(self, root: str | os.PathLike, splits: dict | None = None, image_size: int = 128, **kwargs):
        from tasks.common.shapes import SHAPE_CLASSES

        self.classes = SHAPE_CLASSES
        super().__init__(
            root,
            train_sets=("2012/train",),
            val_sets=("2012/val",),
            test_sets=("2012/test",),
            image_size=image_size,
            **kwargs,
        )
        self.splits = dict(splits) if splits else None
        self._ready = False

    def prepare_data(self) -> None:
        self._ensure()

    def _ensure(self) -> None:
        if not self._ready:
            from tasks.common.shapes import ensure_shapes_dataset

            ensure_shapes_dataset(self.root, splits=self.splits)
            self._ready = True

    def _read(self, split: str, transforms) -> Dataset:
        self._ensure()
        return super()._read(split, transforms)


class COCODetectionDataModule(_DetectionDataModule):
    """COCO 2017 detection from ``root/{annotations,train2017,val2017}`` (pycocotools).

    Validation and test use ``val2017`` by default (test-dev has no public annotations). The 80
    category ids map to labels 0..79 in sorted order (``cat_ids`` maps back); crowd boxes are
    ignore regions.
    """

    classes = tuple(str(i) for i in range(80))  # placeholder names; the files hold the real ones

    def __init__(
        self,
        root: str | os.PathLike,
        train_split: str = "train2017",
        val_split: str = "val2017",
        test_split: str = "val2017",
        num_classes: int = 80,
        **kwargs,
    ):
        self.classes = tuple(str(i) for i in range(int(num_classes)))
        super().__init__(**kwargs)
        self.root = Path(root).expanduser()
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.cat_ids: list[int] | None = None

    def prepare_data(self) -> None:
        if not self.root.is_dir():
            raise data_error(
                "COCO",
                f"the data root {self.root} does not exist",
                root=self.root,
                layout=COCO_LAYOUT,
                source=COCO_SOURCE,
            )

    def _read(self, split: str, transforms) -> Dataset:
        ds = COCODetectionReader(
            self.root, self.splits[split], transforms, cat_ids=self.cat_ids, max_images=self.max_images
        )
        if self.cat_ids is None:
            self.cat_ids = ds.cat_ids
        if len(ds.cat_ids) != self.num_classes:
            raise DataError(
                f"{self.root / 'annotations'}: the {self.splits[split]} annotations have "
                f"{len(ds.cat_ids)} categories but num_classes={self.num_classes}"
            )
        self.classes = tuple(ds.coco.cats[c]["name"] if c in ds.coco.cats else str(c) for c in ds.cat_ids)
        return ds
