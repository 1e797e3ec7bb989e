"""Segmentation data: VOC / COCO readers on tiny fixtures in the real formats, the synthetic
shapes data, joint augmentation and the errors for bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision import tv_tensors
from torchvision.datasets import VOCSegmentation

from tasks.common.data import DataError
from tasks.common.shapes import generate_scene, scene_rng, voc_palette
from tasks.segmentation.data import (
    COCOSegDataModule,
    RandomScale,
    ShapesSegDataModule,
    VOCSegDataModule,
    build_transforms,
    pad_collate,
)

# --------------------------------------------------------------------------------------------------
# VOC fixtures
# --------------------------------------------------------------------------------------------------

W, H = 24, 16


def _voc_mask(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.zeros((H, W), dtype=np.uint8)
    c = int(rng.integers(1, 21))
    m[4:12, 5:15] = c
    m[3, 5:15] = 255  # a border band, as VOC draws around objects
    m[0, 0] = 20
    return m


def _write_voc(root: Path, splits: dict, aug_ids=(), sizes=None) -> dict:
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    masks = {}
    ids = sorted({i for ids in splits.values() for i in ids} | set(aug_ids))
    for k, image_id in enumerate(ids):
        rgb = np.random.default_rng(k).integers(0, 255, (H, W, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(voc / "JPEGImages" / f"{image_id}.jpg")
        m = _voc_mask(k)
        png = Image.fromarray(m, mode="L").convert("P")
        png.putpalette(voc_palette())
        png.save(voc / "SegmentationClass" / f"{image_id}.png")
        masks[image_id] = m
    for split, names in splits.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in names))
    if aug_ids:
        (voc / "SegmentationClassAug").mkdir()
        for image_id in aug_ids:  # the DeepLab distribution of SBD: grayscale PNGs of class ids
            Image.fromarray(masks[image_id], mode="L").save(voc / "SegmentationClassAug" / f"{image_id}.png")
        (voc / "ImageSets" / "Segmentation" / "trainaug.txt").write_text("".join(f"{i}\n" for i in aug_ids))
    return masks


def _plain(dm_cls, root, **kw):
    return dm_cls(
        root, batch_size=2, eval_batch_size=2, num_workers=0, crop_size=None, scale_range=None, flip=0.0, **kw
    )


def test_voc_reader_loads_palette_pngs_through_torchvision(tmp_path):
    masks = _write_voc(tmp_path, {"train": ["2007_000001", "2007_000002"], "val": ["2007_000003"]})
    dm = _plain(VOCSegDataModule, tmp_path)
    assert (dm.num_classes, dm.in_channels) == (21, 3)
    dm.setup("fit")
    train = dm.dataset("train")
    assert len(train) == 2  # no trainaug files: auto -> train
    assert type(train.reader.dataset) is VOCSegmentation  # torchvision's own reader for train/val
    img, mask = train[1]
    assert img.shape == (3, H, W) and img.dtype == torch.float32
    assert mask.dtype == torch.int64
    assert torch.equal(mask, torch.from_numpy(masks["2007_000002"]).long())  # ids, 255 kept
    images, batch_masks = next(iter(dm.val_dataloader()))
    assert images.shape == (1, 3, H, W) and batch_masks.shape == (1, H, W)
    assert (batch_masks == 255).any()


def test_voc_trainaug_is_used_when_present(tmp_path):
    masks = _write_voc(tmp_path, {"train": ["a1", "a2"], "val": ["v1"]}, aug_ids=["a1", "a2", "s1"])
    dm = _plain(VOCSegDataModule, tmp_path)
    train = dm.dataset("train")
    assert len(train) == 3
    assert train.reader.dataset.masks[2].endswith("SegmentationClassAug/s1.png")
    assert torch.equal(train[2][1], torch.from_numpy(masks["s1"]).long())
    assert len(_plain(VOCSegDataModule, tmp_path, train_split="train").dataset("train")) == 2


def test_voc_mask_of_the_wrong_size_is_an_error_naming_the_file(tmp_path):
    _write_voc(tmp_path, {"train": ["x1"], "val": ["x2"]})
    bad = tmp_path / "VOCdevkit/VOC2012/SegmentationClass/x2.png"
    Image.fromarray(np.zeros((H + 2, W), dtype=np.uint8), mode="L").save(bad)
    with pytest.raises(DataError, match=r"x2\.png.*24x18.*x2\.jpg is 24x16"):
        _plain(VOCSegDataModule, tmp_path).dataset("val")[0]


def test_voc_class_ids_beyond_the_class_count_are_an_error_naming_the_file(tmp_path):
    _write_voc(tmp_path, {"train": ["x1"], "val": ["x2"]})
    m = np.zeros((H, W), dtype=np.uint8)
    m[0, :3] = [21, 30, 255]  # 255 is fine, 21 and 30 are not
    Image.fromarray(m, mode="L").save(tmp_path / "VOCdevkit/VOC2012/SegmentationClass/x1.png")
    with pytest.raises(DataError, match=r"x1\.png holds class ids \[21, 30\]"):
        _plain(VOCSegDataModule, tmp_path).dataset("train")[0]


def test_voc_rgb_mask_is_an_error(tmp_path):
    _write_voc(tmp_path, {"train": ["x1"], "val": ["x2"]})
    Image.new("RGB", (W, H), (128, 0, 0)).save(tmp_path / "VOCdevkit/VOC2012/SegmentationClass/x1.png")
    with pytest.raises(DataError, match=r"x1\.png.*mode 'RGB'"):
        _plain(VOCSegDataModule, tmp_path).dataset("train")[0]


def test_missing_voc_root_says_what_layout_is_expected(tmp_path):
    dm = VOCSegDataModule(tmp_path / "nowhere")
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert "does not exist" in msg and "nowhere" in msg
    assert "VOCdevkit/VOC2012/" in msg and "JPEGImages" in msg and "ImageSets/Segmentation" in msg


# --------------------------------------------------------------------------------------------------
# COCO fixtures
# --------------------------------------------------------------------------------------------------

CW, CH = 40, 30
CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 90, "name": "toothbrush"}]


def _box(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _uncompressed_rle(m: np.ndarray) -> dict:
    flat = m.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"counts": counts, "size": [m.shape[0], m.shape[1]]}


def _rle_region():
    m = np.zeros((CH, CW), dtype=np.uint8)
    m[18:28, 32:39] = 1
    return m


def _crowd_region():
    m = np.zeros((CH, CW), dtype=np.uint8)
    m[26:30, 0:8] = 1
    return m


def _coco_anns():
    rle = mask_utils.encode(np.asfortranarray(_rle_region()))
    rle["counts"] = rle["counts"].decode("ascii")
    return [
        # a large person with a small toothbrush on it: the smaller one must stay visible
        {
            "id": 10,
            "image_id": 1,
            "category_id": 1,
            "segmentation": _box(2, 2, 30, 25),
            "area": 644.0,
            "bbox": [2, 2, 28, 23],
            "iscrowd": 0,
        },
        {
            "id": 11,
            "image_id": 1,
            "category_id": 90,
            "segmentation": _box(10, 10, 16, 16),
            "area": 36.0,
            "bbox": [10, 10, 6, 6],
            "iscrowd": 0,
        },
        # a car given as compressed RLE
        {
            "id": 12,
            "image_id": 1,
            "category_id": 3,
            "segmentation": rle,
            "area": 70.0,
            "bbox": [32, 18, 7, 10],
            "iscrowd": 0,
        },
        # a crowd of people as uncompressed RLE -> ignore
        {
            "id": 13,
            "image_id": 1,
            "category_id": 1,
            "segmentation": _uncompressed_rle(_crowd_region()),
            "area": 32.0,
            "bbox": [0, 26, 8, 4],
            "iscrowd": 1,
        },
    ]


def _write_coco(root: Path, split: str, anns, images=None, categories=CATEGORIES, real_size=(CW, CH)):
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    images = images or [
        {"id": 1, "file_name": "000000000001.jpg", "width": CW, "height": CH},
        {"id": 2, "file_name": "000000000002.jpg", "width": CW, "height": CH},
    ]
    for info in images:
        Image.new("RGB", real_size, (90, 120, 30)).save(root / split / info["file_name"])
    data = {"images": images, "annotations": anns, "categories": categories}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


def _coco_dm(root, **kw):
    return _plain(COCOSegDataModule, root, train_split="val2017", num_classes=len(CATEGORIES) + 1, **kw)


def test_coco_instances_become_a_semantic_mask(tmp_path):
    _write_coco(tmp_path, "val2017", _coco_anns())
    dm = _coco_dm(tmp_path)
    ds = dm.dataset("val")
    assert ds.reader.dataset.classes == ["background", "person", "car", "toothbrush"]
    assert len(ds) == 2
    img, mask = ds[0]
    assert img.shape == (3, CH, CW) and mask.shape == (CH, CW) and mask.dtype == torch.int64
    assert mask[5, 5] == 1  # person (category 1 -> label 1)
    assert mask[13, 13] == 3  # the toothbrush (category 90 -> label 3) painted over the person
    assert torch.all(mask[torch.from_numpy(_rle_region().astype(bool))] == 2)  # RLE car, exactly
    assert torch.all(mask[torch.from_numpy(_crowd_region().astype(bool))] == 255)  # crowd -> ignore
    assert mask[1, 38] == 0  # background
    assert set(mask.unique().tolist()) == {0, 1, 2, 3, 255}
    assert torch.all(ds[1][1] == 0)  # an image without annotations is all background


def test_coco_overlaps_are_resolved_independently_of_annotation_order(tmp_path):
    _write_coco(tmp_path / "a", "val2017", _coco_anns())
    _write_coco(tmp_path / "b", "val2017", list(reversed(_coco_anns())))
    mask_a = _coco_dm(tmp_path / "a").dataset("val")[0][1]
    mask_b = _coco_dm(tmp_path / "b").dataset("val")[0][1]
    assert torch.equal(mask_a, mask_b)


def test_coco_image_size_differing_from_the_annotations_is_an_error_naming_the_file(tmp_path):
    _write_coco(tmp_path, "val2017", _coco_anns(), real_size=(CW + 10, CH))
    with pytest.raises(DataError, match=r"000000000001\.jpg is 50x30 .* says 40x30"):
        _coco_dm(tmp_path).dataset("val")[0]


def test_coco_unknown_category_is_an_error(tmp_path):
    anns = _coco_anns()
    anns[0]["category_id"] = 7
    _write_coco(tmp_path, "val2017", anns)
    with pytest.raises(DataError, match=r"000000000001\.jpg.*category_id 7"):
        _coco_dm(tmp_path).dataset("val")[0]


def test_coco_class_count_must_match_the_annotation_file(tmp_path):
    _write_coco(tmp_path, "val2017", _coco_anns())
    with pytest.raises(DataError, match="3 categories"):
        _plain(COCOSegDataModule, tmp_path, train_split="val2017").dataset("val")  # num_classes=81


def test_missing_coco_root_says_what_layout_is_expected(tmp_path):
    with pytest.raises(DataError, match=r"(?s)not found.*annotations/instances_train2017\.json"):
        COCOSegDataModule(tmp_path / "coco").prepare_data()


# --------------------------------------------------------------------------------------------------
# synthetic shapes
# --------------------------------------------------------------------------------------------------

SMALL = {"train": 3, "val": 2, "test": 2}


def test_shapes_data_is_deterministic_and_is_the_shared_generators_scenes(tmp_path):
    a = _plain(ShapesSegDataModule, tmp_path / "a", splits=SMALL, progress=False)
    b = _plain(ShapesSegDataModule, tmp_path / "b", splits=SMALL, progress=False)
    assert (a.num_classes, a.in_channels, a.image_size) == (6, 3, 128)
    for split, n in SMALL.items():
        ds_a, ds_b = a.dataset(split), b.dataset(split)
        assert len(ds_a) == n
        for i in range(n):
            (img_a, mask_a), (img_b, mask_b) = ds_a[i], ds_b[i]
            assert torch.equal(img_a, img_b) and torch.equal(mask_a, mask_b)
            _, _, class_mask = generate_scene(scene_rng(0, split, i))
            assert torch.equal(mask_a, torch.from_numpy(class_mask).long())
    assert (tmp_path / "a" / "VOCdevkit/VOC2012/ImageSets/Segmentation/test.txt").is_file()


def test_shapes_data_can_be_read_at_a_smaller_size(tmp_path):
    dm = _plain(ShapesSegDataModule, tmp_path, splits=SMALL, progress=False, resize=64)
    assert dm.image_size == 64
    img, mask = dm.dataset("val")[1]
    assert img.shape == (3, 64, 64) and mask.shape == (64, 64)
    _, _, class_mask = generate_scene(scene_rng(0, "val", 1))
    assert torch.equal(mask, torch.from_numpy(class_mask[::2, ::2]).long())  # nearest: ids kept


def test_shapes_root_with_other_parameters_is_refused(tmp_path):
    _plain(ShapesSegDataModule, tmp_path, splits=SMALL, progress=False).prepare_data()
    with pytest.raises(ValueError, match="different parameters"):
        _plain(ShapesSegDataModule, tmp_path, splits={"train": 4, "val": 2, "test": 2}, progress=False).prepare_data()


# --------------------------------------------------------------------------------------------------
# joint augmentation and batching
# --------------------------------------------------------------------------------------------------


def test_training_transforms_scale_crop_pad_and_flip_image_and_mask_together():
    torch.manual_seed(0)
    img = tv_tensors.Image(torch.full((3, 20, 20), 200, dtype=torch.uint8))
    mask_np = np.zeros((20, 20), dtype=np.uint8)
    mask_np[:, :10] = 3  # left half class 3, right half 0
    mask = tv_tensors.Mask(torch.from_numpy(mask_np))
    t = build_transforms(train=True, crop_size=16, scale_range=(0.5, 0.5), flip=0.0)
    out_img, out_mask = t(img, mask)
    assert out_img.shape == (3, 16, 16) and out_mask.shape == (16, 16)
    pad = out_mask == 255  # the 10x10 scaled image sits in a 16x16 crop: the rest is padding
    assert pad.sum() == 16 * 16 - 10 * 10
    assert set(out_mask[~pad].unique().tolist()) == {0, 3}  # nearest: no new class ids
    assert torch.all(out_img[:, pad] == 0)  # normalised image padded with 0 (the mean)
    assert torch.all(out_img[:, ~pad] > 0)
    # flip: image and mask flip together
    t_flip = build_transforms(train=True, crop_size=None, scale_range=None, flip=0.5)
    for _ in range(10):
        fi, fm = t_flip(tv_tensors.Image(torch.arange(20.0).expand(3, 20, 20).to(torch.uint8)), mask)
        left_is_class_3 = bool(fm[0, 0] == 3)
        assert left_is_class_3 == bool(fi[0, 0, 0] < fi[0, 0, -1])


def test_random_scale_resizes_masks_with_nearest_neighbours():
    mask = tv_tensors.Mask(torch.tensor([[0, 5], [7, 255]], dtype=torch.uint8))
    img = tv_tensors.Image(torch.rand(3, 2, 2))
    _, out = RandomScale((3.0, 3.0))(img, mask)
    assert out.shape == (6, 6)
    assert set(out.unique().tolist()) == {0, 5, 7, 255}


def test_pad_collate_pads_images_with_zero_and_masks_with_ignore():
    batch = [
        (torch.ones(3, 4, 5), torch.zeros(4, 5, dtype=torch.int64)),
        (torch.ones(3, 6, 3), torch.ones(6, 3, dtype=torch.int64)),
    ]
    images, masks = pad_collate(batch)
    assert images.shape == (2, 3, 6, 5) and masks.shape == (2, 6, 5) and masks.dtype == torch.int64
    assert torch.all(images[0, :, 4:] == 0) and torch.all(masks[0, 4:] == 255)
    assert torch.all(masks[1, :, 3:] == 255) and torch.all(masks[1, :, :3] == 1)
