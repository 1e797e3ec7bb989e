"""Tiny detection fixtures written in the real on-disk formats (VOC XML + JPEG, COCO JSON + JPEG)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every detection test on one thread (the fixture of tests/conftest.py)."""


def _jpeg(path: Path, w: int, h: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, format="JPEG")


def voc_xml(filename: str, w: int, h: int, objects: list[dict]) -> str:
    objs = "".join(
        f"<object><name>{o['name']}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{int(o.get('difficult', 0))}</difficult><bndbox>"
        + "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), o["bbox"]))
        + "</bndbox></object>"
        for o in objects
    )
    return (
        f"<annotation><folder>VOC2007</folder><filename>{filename}</filename><size><width>{w}</width>"
        f"<height>{h}</height><depth>3</depth></size><segmented>0</segmented>{objs}</annotation>"
    )


# image id -> (width, height, objects); VOC boxes are 1-based inclusive pixel indices
VOC_IMAGES = {
    "000001": (
        64,
        48,
        [{"name": "dog", "bbox": (11, 6, 40, 30)}, {"name": "person", "bbox": (2, 2, 20, 40), "difficult": 1}],
    ),
    "000002": (
        64,
        48,
        [
            {"name": "car", "bbox": (50, 30, 90, 60)},  # partly outside: clipped
            {"name": "cat", "bbox": (10, 10, 9, 20)},
        ],
    ),  # zero area: dropped
    "000003": (64, 48, []),  # no objects: a negative
}


def write_voc(root: Path, year: str = "2007", images: dict | None = None, split: str = "test") -> Path:
    images = VOC_IMAGES if images is None else images
    voc = root / "VOCdevkit" / f"VOC{year}"
    (voc / "Annotations").mkdir(parents=True, exist_ok=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for i, (image_id, (w, h, objects)) in enumerate(images.items()):
        _jpeg(voc / "JPEGImages" / f"{image_id}.jpg", w, h, i)
        (voc / "Annotations" / f"{image_id}.xml").write_text(voc_xml(f"{image_id}.jpg", w, h, objects))
    (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in images))
    return root


@pytest.fixture
def voc_root(tmp_path) -> Path:
    root = tmp_path / "voc"
    write_voc(root, "2007", split="test")
    write_voc(root, "2007", split="trainval")
    write_voc(root, "2012", {"2008_000001": VOC_IMAGES["000001"]}, split="trainval")
    return root


def write_coco(root: Path, split: str = "val2017") -> Path:
    """3 images: two objects + a crowd box + a box outside; a zero-area box; no annotations."""
    images = [
        {"id": 7, "file_name": "000000000007.jpg", "width": 60, "height": 40},
        {"id": 9, "file_name": "000000000009.jpg", "width": 60, "height": 40},
        {"id": 12, "file_name": "000000000012.jpg", "width": 60, "height": 40},
    ]
    cats = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 90, "name": "toothbrush"}]
    anns = [
        {"id": 1, "image_id": 7, "category_id": 18, "bbox": [10, 5, 20, 15], "area": 300, "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 90, "bbox": [50, 30, 20, 20], "area": 400, "iscrowd": 0},
        {"id": 3, "image_id": 7, "category_id": 1, "bbox": [0, 0, 30, 30], "area": 900, "iscrowd": 1},
        {"id": 4, "image_id": 9, "category_id": 1, "bbox": [5, 5, 0, 10], "area": 0, "iscrowd": 0},
    ]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    for i, im in enumerate(images):
        _jpeg(root / split / im["file_name"], im["width"], im["height"], i)
    return root


@pytest.fixture
def coco_root(tmp_path) -> Path:
    root = tmp_path / "coco"
    write_coco(root, "val2017")
    write_coco(root, "train2017")
    return root
