"""Tests for the synthetic shapes data set written in the PASCAL VOC layout."""

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from tasks.common.shapes import (
    MANIFEST_NAME,
    SHAPE_CLASSES,
    VOC_SUBDIR,
    ensure_shapes_dataset,
    generate_scene,
    scene_rng,
    voc_palette,
)

SPLITS = {"train": 6, "val": 2, "test": 2}
SIZE = 64  # small images keep the tests fast; the geometry code is size-agnostic
BAND = 255


def _make(root, **kw):
    args = dict(image_size=SIZE, splits=SPLITS, seed=3, max_objects=4, progress=False)
    args.update(kw)
    return ensure_shapes_dataset(root, **args)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "data"
    return root, _make(root)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _ids(voc, kind, split):
    return (voc / "ImageSets" / kind / f"{split}.txt").read_text().split()


def _boxes(voc, image_id):
    ann = ET.parse(voc / "Annotations" / f"{image_id}.xml").getroot()
    out = []
    for obj in ann.findall("object"):
        bb = obj.find("bndbox")
        box = tuple(int(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        out.append((obj.find("name").text, box))
    return ann, out


def test_generation_is_byte_identical(dataset, tmp_path):
    root, _ = dataset
    other = tmp_path / "again"
    _make(other)
    a, b = _files(root), _files(other)
    assert a.keys() == b.keys()
    assert len(a) > 3 * sum(SPLITS.values())
    for rel in a:
        assert a[rel] == b[rel], rel


def test_voc_layout(dataset):
    root, voc = dataset
    assert voc == root / VOC_SUBDIR
    all_ids = set()
    for split, count in SPLITS.items():
        ids = _ids(voc, "Main", split)
        assert len(ids) == count and ids == _ids(voc, "Segmentation", split)
        assert not all_ids & set(ids)  # ids unique across splits
        all_ids |= set(ids)
    assert _ids(voc, "Main", "trainval") == _ids(voc, "Main", "train") + _ids(voc, "Main", "val")
    for sub, ext in (("JPEGImages", ".jpg"), ("Annotations", ".xml"), ("SegmentationClass", ".png")):
        assert {p.stem for p in (voc / sub).iterdir()} == all_ids
        assert all(p.suffix == ext for p in (voc / sub).iterdir())
    pal = voc_palette()
    assert pal[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0] and pal[-3:] == [224, 224, 192]
    for image_id in all_ids:
        jpg = Image.open(voc / "JPEGImages" / f"{image_id}.jpg")
        assert jpg.format == "JPEG" and jpg.mode == "RGB" and jpg.size == (SIZE, SIZE)
        png = Image.open(voc / "SegmentationClass" / f"{image_id}.png")
        assert png.mode == "P" and png.size == (SIZE, SIZE)
        assert png.getpalette()[: 3 * 256] == pal
        values = set(np.unique(np.asarray(png)).tolist())
        assert values <= set(range(len(SHAPE_CLASSES) + 1)) | {BAND}


def test_boxes_match_masks(dataset):
    _, voc = dataset
    n_objects = 0
    for image_id in _ids(voc, "Main", "trainval") + _ids(voc, "Main", "test"):
        ann, boxes = _boxes(voc, image_id)
        assert ann.find("filename").text == f"{image_id}.jpg"
        assert int(ann.find("size/width").text) == SIZE == int(ann.find("size/height").text)
        seg = np.asarray(Image.open(voc / "SegmentationClass" / f"{image_id}.png"))
        named = set()
        for name, (x0, y0, x1, y1) in boxes:
            assert name in SHAPE_CLASSES
            assert 1 <= x0 <= x1 <= SIZE and 1 <= y0 <= y1 <= SIZE  # 1-based inclusive
            label = SHAPE_CLASSES.index(name) + 1
            # Every object keeps some labelled pixels inside its box.
            assert (seg[y0 - 1 : y1, x0 - 1 : x1] == label).any()
            named.add(label)
            n_objects += 1
        # Per class, the labelled pixels fill the union of its boxes up to the 255 band
        # (the band eats 1 px at edges and a few more at thin star tips).
        for label in set(np.unique(seg).tolist()) - {0, BAND}:
            assert label in named, "labelled pixels without an annotated object"
            ys, xs = np.nonzero(seg == label)
            cls_boxes = np.array([b for n, b in boxes if SHAPE_CLASSES.index(n) + 1 == label])
            union = np.array([*cls_boxes[:, :2].min(0), *cls_boxes[:, 2:].max(0)]) - 1
            ext = np.array([xs.min(), ys.min(), xs.max(), ys.max()])
            assert (ext[:2] >= union[:2]).all() and (ext[2:] <= union[2:]).all()
            assert np.abs(ext - union).max() <= 5
    assert n_objects > 0


def test_files_are_the_generated_scenes(dataset):
    """XML and PNG equal generate_scene's output: boxes = exact visible-mask extent."""
    _, voc = dataset
    for split in SPLITS:
        for i, image_id in enumerate(_ids(voc, "Main", split)):
            image, objects, class_mask = generate_scene(scene_rng(3, split, i), SIZE, 4)
            seg = np.asarray(Image.open(voc / "SegmentationClass" / f"{image_id}.png"))
            assert np.array_equal(seg, class_mask)
            _, boxes = _boxes(voc, image_id)
            assert [(o["name"], tuple(v + 1 for v in o["bbox"])) for o in objects] == boxes
            jpg = np.asarray(Image.open(voc / "JPEGImages" / f"{image_id}.jpg"), dtype=float)
            assert np.abs(jpg - image).mean() < 6  # the same picture, up to JPEG loss


def test_torchvision_voc_readers(dataset):
    tv = pytest.importorskip("torchvision.datasets")
    root, voc = dataset
    det = tv.VOCDetection(root, year="2012", image_set="train", download=False)
    assert len(det) == SPLITS["train"]
    names = []
    for i in range(len(det)):
        img, target = det[i]
        assert img.size == (SIZE, SIZE)
        names += [o["name"] for o in target["annotation"]["object"]]
    assert names and set(names) <= set(SHAPE_CLASSES)
    seg = tv.VOCSegmentation(root, year="2012", image_set="val", download=False)
    assert len(seg) == SPLITS["val"]
    img, mask = seg[0]
    assert img.size == mask.size == (SIZE, SIZE) and mask.mode == "P"


def test_cached_and_guarded(dataset, tmp_path):
    root, voc = dataset
    manifest = root / MANIFEST_NAME
    before = {p: p.stat().st_mtime_ns for p in [manifest, *root.rglob("*.jpg")]}
    assert _make(root) == voc
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert json.loads(manifest.read_text())["seed"] == 3

    with pytest.raises(ValueError, match="seed"):
        _make(root, seed=4)
    with pytest.raises(ValueError, match="image_size"):
        _make(root, image_size=SIZE * 2)
    with pytest.raises(ValueError, match="splits"):
        _make(root, splits={"train": 7, "val": 2, "test": 2})
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing overwritten

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing"):
        _make(foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert (foreign / "notes.txt").read_text() == "keep me"
    # No temp directory is left behind either.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_empty_root_dir_is_filled(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    voc = _make(root, splits={"train": 1})
    assert (root / MANIFEST_NAME).is_file() and _ids(voc, "Main", "train") == ["000001"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    import tasks.common.shapes as shapes

    calls = []

    def boom(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = shapes._write_scene
    monkeypatch.setattr(shapes, "_write_scene", boom)
    with pytest.raises(KeyboardInterrupt):
        _make(tmp_path / "data")
    assert list(tmp_path.iterdir()) == []


def test_generate_scene_is_deterministic_and_consistent():
    for idx in range(12):
        a = generate_scene(np.random.default_rng([7, 0, idx]), 96, 4)
        b = generate_scene(np.random.default_rng([7, 0, idx]), 96, 4)
        image, objects, class_mask = a
        assert np.array_equal(image, b[0]) and np.array_equal(class_mask, b[2])
        assert [(o["name"], o["bbox"]) for o in objects] == [(o["name"], o["bbox"]) for o in b[1]]
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert class_mask.shape == (96, 96) and class_mask.dtype == np.uint8
        assert 0 <= len(objects) <= 4
        union = np.zeros((96, 96), dtype=bool)
        for o in objects:
            m = o["mask"]
            ys, xs = np.nonzero(m)
            assert o["bbox"] == (xs.min(), ys.min(), xs.max(), ys.max())
            assert not (union & m).any()  # visible masks never overlap
            union |= m
            # Off the band, the class mask is exactly the visible object pixels.
            assert (class_mask[m & (class_mask != BAND)] == SHAPE_CLASSES.index(o["name"]) + 1).all()
        assert set(np.unique(class_mask[~union]).tolist()) <= {0, BAND}
        # The 255 band is VOC-like: it covers every label change and is at most 2 px wide.
        recon = np.zeros((96, 96), dtype=int)
        for o in objects:
            recon[o["mask"]] = SHAPE_CLASSES.index(o["name"]) + 1
        change = recon[:, 1:] != recon[:, :-1]  # horizontal neighbours with different labels
        assert (class_mask[:, 1:][change] == BAND).all() and (class_mask[:, :-1][change] == BAND).all()
        near = np.zeros((96, 96), dtype=bool)  # pixels with a differing 8-neighbour
        p = np.pad(recon, 1, mode="edge")
        for dy in range(3):
            for dx in range(3):
                near |= p[dy : dy + 96, dx : dx + 96] != recon
        assert ((class_mask == BAND) == near).all()
        assert (class_mask == BAND).any() == bool(objects)
    # Different generators give different scenes.
    c = generate_scene(np.random.default_rng([7, 0, 99]), 96, 4)
    assert not np.array_equal(a[0], c[0])
