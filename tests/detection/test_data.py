"""Detection data: the VOC and COCO readers on tiny fixtures in the real formats, augmentation."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from tasks.common.data import DataError
from tasks.detection.data import (
    VOC_CLASSES,
    COCODetectionDataModule,
    COCODetectionReader,
    MultiScaleCollate,
    ShapesDetectionDataModule,
    VOCDetectionDataModule,
    VOCDetectionReader,
    collate,
)

from .conftest import write_voc

DOG, PERSON, CAR = VOC_CLASSES.index("dog"), VOC_CLASSES.index("person"), VOC_CLASSES.index("car")


# --------------------------------------------------------------------------------------- VOC


def test_voc_reader_parses_clips_drops_and_keeps_negatives(voc_root, caplog):
    with caplog.at_level(logging.WARNING):
        ds = VOCDetectionReader(voc_root, "2007", "test", VOC_CLASSES)
    assert len(ds) == 3
    img, t = ds[0]
    assert img.shape == (3, 48, 64) and img.dtype == torch.uint8
    # 1-based inclusive VOC indices -> continuous xyxy; the difficult person is an ignore region
    torch.testing.assert_close(t["boxes"].as_subclass(torch.Tensor), torch.tensor([[10.0, 5, 40, 30], [1, 1, 20, 40]]))
    assert t["labels"].tolist() == [DOG, PERSON] and t["iscrowd"].tolist() == [0, 1]
    assert t["orig_size"].tolist() == [48, 64]
    _, t = ds[1]  # the car box reaches outside the 64 x 48 image: clipped; the zero-area cat: dropped
    torch.testing.assert_close(t["boxes"].as_subclass(torch.Tensor), torch.tensor([[49.0, 29, 64, 48]]))
    assert t["labels"].tolist() == [CAR]
    assert "dropped 1 zero-area box" in caplog.text and "000002.xml" in caplog.text
    _, t = ds[2]  # no objects: a valid negative
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)


def test_voc_difficult_objects_are_targets_only_when_configured(voc_root):
    ds = VOCDetectionReader(voc_root, "2007", "trainval", VOC_CLASSES, use_difficult=True)
    assert ds[0][1]["iscrowd"].tolist() == [0, 0]
    dm = VOCDetectionDataModule(voc_root, image_size=32, batch_size=2, num_workers=0, use_difficult=False)
    dm.setup("fit")
    assert len(dm.train_dataset) == 4  # 2007 trainval (3) + 2012 trainval (1), the default 07+12
    # evaluation always ignores difficult objects; training keeps them as ignore regions here
    ignored = [t["iscrowd"].tolist() for _, t in (dm.val_dataset[0], dm.train_dataset[0])]
    assert ignored == [[0, 1], [0, 1]]


def test_voc_datamodule_batches_resize_boxes_with_the_image(voc_root):
    dm = VOCDetectionDataModule(voc_root, image_size=32, batch_size=3, num_workers=0)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (20, 3, 32)  # before setup
    dm.setup("test")
    images, targets = next(iter(dm.test_dataloader()))
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.float32
    assert type(targets[0]["boxes"]) is torch.Tensor  # plain tensors, not tv_tensors
    # 64 x 48 -> 32 x 32: x halves, y scales by 2/3
    torch.testing.assert_close(targets[0]["boxes"], torch.tensor([[5.0, 10 / 3, 20, 20], [0.5, 2 / 3, 10, 80 / 3]]))
    assert targets[2]["boxes"].shape == (0, 4)


def _broken(voc_root, text):
    (voc_root / "VOCdevkit" / "VOC2007" / "Annotations" / "000002.xml").write_text(text)


def test_unparsable_xml_raises_naming_the_file(voc_root):
    _broken(voc_root, "<annotation><object><name>car</name>")
    with pytest.raises(DataError, match=r"000002\.xml"):
        VOCDetectionReader(voc_root, "2007", "test", VOC_CLASSES)


def test_unknown_class_raises_naming_the_file_and_the_class(voc_root):
    write_voc(voc_root, "2007", {"000002": (64, 48, [{"name": "unicorn", "bbox": (1, 1, 5, 5)}])}, "x")
    with pytest.raises(DataError, match=r"000002\.xml.*unicorn"):
        VOCDetectionReader(voc_root, "2007", "x", VOC_CLASSES)


def test_bad_coordinates_raise_naming_the_file(voc_root):
    _broken(
        voc_root,
        "<annotation><object><name>car</name><bndbox><xmin>a</xmin><ymin>1</ymin>"
        "<xmax>3</xmax><ymax>4</ymax></bndbox></object></annotation>",
    )
    with pytest.raises(DataError, match=r"000002\.xml.*xmin"):
        VOCDetectionReader(voc_root, "2007", "test", VOC_CLASSES)


def test_missing_root_and_split_say_what_layout_is_expected(tmp_path):
    dm = VOCDetectionDataModule(tmp_path / "nowhere", num_workers=0)
    with pytest.raises(DataError, match=r"(?s)does not exist.*VOCdevkit/.*VOC2007.*ImageSets/Main"):
        dm.prepare_data()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"(?s)trainval\.txt not found.*Expected layout"):
        VOCDetectionDataModule(tmp_path / "empty", num_workers=0).setup("fit")


# --------------------------------------------------------------------------------------- COCO


def test_coco_reader_maps_categories_ignores_crowds_clips_and_drops(coco_root, caplog):
    with caplog.at_level(logging.WARNING):
        ds = COCODetectionReader(coco_root, "val2017")
    assert ds.cat_ids == [1, 18, 90] and len(ds) == 3
    _, t = ds[0]
    # [x, y, w, h] -> xyxy; the toothbrush box (50, 30, 70, 50) is clipped to the 60 x 40 image
    torch.testing.assert_close(
        t["boxes"].as_subclass(torch.Tensor), torch.tensor([[10.0, 5, 30, 20], [50, 30, 60, 40], [0, 0, 30, 30]])
    )
    assert t["labels"].tolist() == [1, 2, 0] and t["iscrowd"].tolist() == [0, 0, 1]
    assert t["image_id"] == 7
    assert ds.label_to_category(t["labels"]).tolist() == [18, 90, 1]  # and back, for evaluation
    assert ds[1][1]["boxes"].shape == (0, 4)  # its only box had zero width
    assert "dropped 1 zero-area box" in caplog.text
    assert ds[2][1]["labels"].shape == (0,)  # no annotations: a negative


def test_coco_datamodule_and_errors(coco_root, tmp_path):
    dm = COCODetectionDataModule(coco_root, num_classes=3, image_size=32, batch_size=3, num_workers=0)
    assert dm.num_classes == 3
    dm.setup("fit")
    images, targets = next(iter(dm.val_dataloader()))
    assert images.shape == (3, 3, 32, 32) and dm.classes == ("person", "dog", "toothbrush")
    assert targets[0]["iscrowd"].tolist() == [0, 0, 1]
    with pytest.raises(DataError, match="3 categories but num_classes=80"):
        COCODetectionDataModule(coco_root, num_workers=0).setup("fit")
    with pytest.raises(DataError, match=r"(?s)does not exist.*instances_train2017\.json"):
        COCODetectionDataModule(tmp_path / "nowhere").prepare_data()
    ann = coco_root / "annotations" / "instances_val2017.json"
    ann.write_text(ann.read_text().replace('"category_id": 18', '"category_id": 77'))
    with pytest.raises(DataError, match=r"instances_val2017\.json.*unknown category id 77"):
        COCODetectionReader(coco_root, "val2017")
    ann.write_text("{not json")
    with pytest.raises(DataError, match=r"instances_val2017\.json"):
        COCODetectionReader(coco_root, "val2017")


# --------------------------------------------------------------------------------------- augmentation


def _white_square_sample(size=64, box=(10, 20, 30, 44)):
    img = torch.zeros(3, size, size, dtype=torch.uint8)
    x0, y0, x1, y1 = box
    img[:, y0:y1, x0:x1] = 255
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor([box], dtype=torch.float32), format="XYXY", canvas_size=(size, size)
        ),
        "labels": torch.tensor([3]),
        "iscrowd": torch.tensor([0]),
    }
    return tv_tensors.Image(img), target


def test_train_augmentation_moves_the_boxes_with_the_image(tmp_path):
    dm = ShapesDetectionDataModule(
        tmp_path / "shapes", image_size=64, jitter=0.0, flip=0.5, scale_range=(0.6, 1.4), translate=0.2, num_workers=0
    )
    tf = dm.transforms(train=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.manual_seed(0)
    moved = 0
    for _ in range(12):
        img, t = tf(*_white_square_sample())
        white = ((img * std + mean).mean(0) > 0.5).nonzero()
        if len(t["boxes"]) == 0:  # the square left the image: its box was dropped with it
            assert len(white) < 8 and t["labels"].shape == (0,)
            continue
        found = torch.tensor([white[:, 1].min(), white[:, 0].min(), white[:, 1].max() + 1, white[:, 0].max() + 1])
        box = t["boxes"].as_subclass(torch.Tensor)[0]
        assert (found - box).abs().max() <= 1.5, (found, box)
        assert t["labels"].tolist() == [3] and t["iscrowd"].tolist() == [0]
        moved += not torch.allclose(box, torch.tensor([10.0, 20, 30, 44]))
    assert moved >= 8  # the augmentation really moved things


def test_sanitize_drops_degenerate_boxes_with_their_labels(tmp_path):
    dm = ShapesDetectionDataModule(tmp_path / "shapes", image_size=64, augment=False, num_workers=0)
    img, t = _white_square_sample()
    t["boxes"] = tv_tensors.BoundingBoxes(
        torch.tensor([[10.0, 20, 30, 44], [70, 5, 90, 20], [5, 5, 5.5, 30]]), format="XYXY", canvas_size=(64, 64)
    )
    t["labels"], t["iscrowd"] = torch.tensor([3, 1, 2]), torch.tensor([0, 1, 0])
    _, out = dm.transforms(train=True)(img, t)
    assert out["labels"].tolist() == [3] and out["iscrowd"].tolist() == [0] and len(out["boxes"]) == 1


def test_multiscale_collate_resizes_images_and_boxes():
    img, t = _white_square_sample()
    sample = (img.float(), {k: v for k, v in t.items()})
    images, targets = MultiScaleCollate([32])([sample, sample])
    assert images.shape == (2, 3, 32, 32)
    torch.testing.assert_close(targets[0]["boxes"], torch.tensor([[5.0, 10, 15, 22]]))
    images, targets = collate([sample])
    assert images.shape == (1, 3, 64, 64) and type(targets[0]["boxes"]) is torch.Tensor


def test_shapes_datamodule_generates_and_reads_the_voc_layout(tmp_path):
    dm = ShapesDetectionDataModule(
        tmp_path / "shapes", splits={"train": 6, "val": 2, "test": 2}, batch_size=4, num_workers=0
    )
    assert (dm.num_classes, dm.image_size) == (5, 128)
    dm.prepare_data()
    assert (tmp_path / "shapes" / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main" / "test.txt").is_file()
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (6, 2, 2)
    images, targets = next(iter(dm.test_dataloader()))
    assert images.shape == (2, 3, 128, 128)
    assert all(((t["labels"] >= 0) & (t["labels"] < 5)).all() for t in targets)
    wh = dm.train_box_sizes()
    assert wh.ndim == 2 and wh.shape[1] == 2 and len(wh) > 0 and (wh > 0).all() and (wh <= 1).all()
    assert np.isfinite(wh).all()
