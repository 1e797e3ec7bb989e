"""Deterministic synthetic "shapes" scenes, cached on disk in the PASCAL VOC layout.

The default detection and segmentation jobs must run without downloads, so this module
draws scenes of a few coloured shapes on photo/texture backgrounds and writes them as a
real VOC2012 tree (``<root>/VOCdevkit/VOC2012/{JPEGImages,Annotations,SegmentationClass,
ImageSets}``). The very same VOC readers (e.g. ``torchvision.datasets.VOCDetection`` /
``VOCSegmentation`` with ``root=<root>, year="2012"``) then serve it and real VOC.

One scene gives one JPEG, one XML annotation and one palette PNG, so both tasks share a
single generator (:func:`generate_scene`).
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.common.constants import IGNORE_INDEX

__all__ = [
    "SHAPE_CLASSES",
    "VOC_SUBDIR",
    "MANIFEST_NAME",
    "GENERATOR_VERSION",
    "DEFAULT_SPLITS",
    "ensure_shapes_dataset",
    "generate_scene",
    "scene_rng",
    "voc_palette",
]

#: Class names; a pixel/label value of ``i + 1`` means ``SHAPE_CLASSES[i]`` (0 is background).
SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
#: Where the VOC tree lives inside ``root`` (the path torchvision expects for year="2012").
VOC_SUBDIR = Path("VOCdevkit") / "VOC2012"
MANIFEST_NAME = "shapes.json"
#: Bump whenever the generator's output changes, so stale caches are detected.
GENERATOR_VERSION = 1
DEFAULT_SPLITS: dict[str, int] = {"train": 1200, "val": 200, "test": 200}

JPEG_QUALITY = 95
_SUPERSAMPLE = 4  # sub-pixels per axis for anti-aliased coverage
_MIN_VISIBLE = 0.35  # drop objects less visible than this (fraction of their full area)
_EMPTY_SCENE_P = 0.03  # rare zero-object images act as valid negatives
_SIZE_RANGE = (0.12, 0.45)  # object diameter as a fraction of the image side
# Bundled in the scikit-image wheel as PNG (no pooch download; PNG decoding is exact,
# unlike JPEG sources whose pixels can differ between libjpeg builds).
_BACKGROUND_SOURCES = (
    "astronaut",
    "coffee",
    "chelsea",
    "immunohistochemistry",
    "camera",
    "moon",
    "coins",
    "brick",
    "grass",
    "gravel",
)
_KNOWN_SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}


# --------------------------------------------------------------------------- scenes


@lru_cache(maxsize=1)
def _background_images() -> tuple[Image.Image, ...]:
    import skimage.data

    out = []
    for name in _BACKGROUND_SOURCES:
        arr = np.asarray(getattr(skimage.data, name)())
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        out.append(Image.fromarray(np.ascontiguousarray(arr[..., :3], dtype=np.uint8)))
    return tuple(out)


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a small (k, k, c) grid to (size, size, c): smooth texture."""
    k = grid.shape[0]
    t = np.linspace(0.0, k - 1.0, size)
    i0 = np.minimum(np.floor(t).astype(int), k - 2)
    w = (t - i0)[:, None]
    rows = grid[i0] * (1 - w[..., None]) + grid[i0 + 1] * w[..., None]  # (size, k, c)
    cols = rows[:, i0] * (1 - w[None]) + rows[:, i0 + 1] * w[None]  # (size, size, c)
    return cols


def _photo_crop(rng: np.random.Generator, size: int) -> np.ndarray:
    sources = _background_images()
    img = sources[int(rng.integers(len(sources)))]
    w0, h0 = img.size
    side = rng.uniform(0.2, 1.0) * min(w0, h0)
    aspect = math.exp(rng.uniform(-0.3, 0.3))
    cw, ch = min(w0, side * math.sqrt(aspect)), min(h0, side / math.sqrt(aspect))
    x0, y0 = rng.uniform(0, w0 - cw), rng.uniform(0, h0 - ch)
    crop = img.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    arr = np.asarray(crop, dtype=np.float64)
    arr = np.rot90(arr, int(rng.integers(4)))
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    return arr


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Photo crop + colour shift + low-frequency texture: cluttered but not overwhelming."""
    bg = _photo_crop(rng, size)
    if rng.random() < 0.3:  # blend a second crop for extra clutter
        a = rng.uniform(0.2, 0.5)
        bg = (1 - a) * bg + a * _photo_crop(rng, size)
    if rng.random() < 0.2:  # desaturate; the gains below re-tint it
        bg = np.repeat(bg.mean(axis=2, keepdims=True), 3, axis=2)
    mean = bg.mean(axis=(0, 1))
    bg = mean + (bg - mean) * rng.uniform(0.35, 0.9)  # lower contrast keeps shapes findable
    bg = bg * rng.uniform(0.6, 1.3, 3) + rng.uniform(-40, 40, 3)
    k = int(rng.integers(3, 10))
    bg = bg + rng.uniform(0, 35) * _upsample(rng.normal(0, 1, (k, k, 3)), size)
    return bg


def _inside(cls: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Point-in-shape test in shape coordinates (circumradius 1, centred at the origin)."""
    name = SHAPE_CLASSES[cls]
    if name == "circle":
        return u * u + v * v <= 0.85**2
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.75
    if name == "triangle":  # equilateral, circumradius 1 -> apothem 0.5
        ok = np.ones(u.shape, dtype=bool)
        for a in (math.pi / 6, 5 * math.pi / 6, 3 * math.pi / 2):
            ok &= u * math.cos(a) + v * math.sin(a) <= 0.5
        return ok
    if name == "star":  # five points, outer radius 1, inner 0.45; fold into one half-sector
        sector = 2 * math.pi / 5
        r = np.hypot(u, v)
        phi = np.mod(np.arctan2(v, u), sector)
        phi = np.minimum(phi, sector - phi)
        px, py = r * np.cos(phi), r * np.sin(phi)
        bx, by = 0.45 * math.cos(sector / 2), 0.45 * math.sin(sector / 2)
        return (bx - 1.0) * py - by * (px - 1.0) >= 0
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.9) & (av <= 0.3)) | ((av <= 0.9) & (au <= 0.3))
    raise ValueError(f"unknown shape class {cls}")


def _coverage(cls, cx, cy, radius, angle, size):
    """Anti-aliased coverage of one shape, clipped to the image, plus its full hard area.

    Returns (coverage float [H,W], full_area int). The full area counts sub-threshold pixels
    outside the image too, so truncation by the border counts as "not visible".
    """
    ss = _SUPERSAMPLE
    x0, x1 = math.floor(cx - radius) - 1, math.ceil(cx + radius) + 1
    y0, y1 = math.floor(cy - radius) - 1, math.ceil(cy + radius) + 1
    xs = (np.arange(x0 * ss, x1 * ss) + 0.5) / ss  # pixel i spans [i, i+1)
    ys = (np.arange(y0 * ss, y1 * ss) + 0.5) / ss
    u, v = (xs[None, :] - cx) / radius, (ys[:, None] - cy) / radius
    c, s = math.cos(angle), math.sin(angle)
    inside = _inside(cls, c * u + s * v, -s * u + c * v)
    cov = inside.reshape(y1 - y0, ss, x1 - x0, ss).mean(axis=(1, 3))
    full_area = int((cov >= 0.5).sum())
    out = np.zeros((size, size))
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x1, size), min(y1, size)
    if cx1 > cx0 and cy1 > cy0:
        out[cy0:cy1, cx0:cx1] = cov[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return out, full_area


def _erode(mask: np.ndarray) -> np.ndarray:
    """3x3 binary erosion; the image border counts as inside (VOC draws no band there)."""
    p = np.pad(mask, 1, mode="edge")
    h, w = mask.shape
    out = mask.copy()
    for dy in range(3):
        for dx in range(3):
            out &= p[dy : dy + h, dx : dx + w]
    return out


def _boundary_band(labels: np.ndarray) -> np.ndarray:
    """Pixels with an 8-neighbour of a different label (both sides of an edge: 2 px band)."""
    p = np.pad(labels, 1, mode="edge")
    h, w = labels.shape
    band = np.zeros(labels.shape, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            band |= p[dy : dy + h, dx : dx + w] != labels
    return band


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb) * 255.0


def _pick_colour(rng: np.random.Generator, local_mean: np.ndarray) -> np.ndarray:
    """A saturated, bright colour far enough from the background under the object."""
    best, best_d = None, -1.0
    for _ in range(8):
        col = _hsv_to_rgb(rng.random(), rng.uniform(0.45, 1.0), rng.uniform(0.6, 1.0))
        d = float(np.linalg.norm(col - local_mean))
        if d > best_d:
            best, best_d = col, d
        if d >= 110:
            break
    return best


def _visible(cands, size: int) -> list:
    """The candidates ``(cls, coverage, full_area)`` visible enough to keep, in drawing order,
    as ``(cls, coverage, visible mask, truncated)``.

    Visibility is decided before painting, so a dropped object never appears unlabelled.
    Back to front: only kept later objects occlude, so a single pass is exact.
    """
    covered = np.zeros((size, size), dtype=bool)
    kept = []
    for cls, cov, full_area in reversed(cands):
        hard = cov >= 0.5
        vis = hard & ~covered
        n_vis = int(vis.sum())
        # The eroded test guarantees pixels outside the 255 band, i.e. a label in the PNG.
        if full_area > 0 and n_vis >= _MIN_VISIBLE * full_area and int(_erode(vis).sum()) >= 0.25 * full_area:
            covered |= hard
            kept.append((cls, cov, vis, hard.sum() < full_area))
    kept.reverse()
    return kept


def generate_scene(rng: np.random.Generator, image_size: int = 128, max_objects: int = 4):
    """Draw one scene; a pure function of ``rng`` (shared by detection and segmentation).

    Returns ``(image, objects, class_mask)``:

    - ``image``: uint8 [H, W, 3] RGB;
    - ``objects``: list of ``dict(name, label, bbox, mask, truncated)`` in drawing order, with
      ``label`` = class index + 1, ``mask`` the bool [H, W] VISIBLE pixels (later objects
      occlude earlier ones) and ``bbox = (xmin, ymin, xmax, ymax)`` the extent of ``mask`` as
      0-based inclusive pixel indices (VOC XML stores these + 1);
    - ``class_mask``: uint8 [H, W], 0 background, ``label`` on visible object pixels and
      255 on the thin band where labels meet (like VOC's void boundary).
    """
    size = int(image_size)
    img = _background(rng, size)

    n = 0 if rng.random() < _EMPTY_SCENE_P else int(rng.integers(1, max_objects + 1))
    cands = []
    for _ in range(n):
        cls = int(rng.integers(len(SHAPE_CLASSES)))
        radius = rng.uniform(*_SIZE_RANGE) * size / 2
        # Centres may sit up to half a radius from the edge: some objects get truncated.
        cx, cy = rng.uniform(radius * 0.5, size - radius * 0.5, 2)
        angle = rng.uniform(0, 2 * math.pi)
        cov, full_area = _coverage(cls, cx, cy, radius, angle, size)
        cands.append((cls, cov, full_area))

    kept = _visible(cands, size)
    labels = np.zeros((size, size), dtype=np.uint8)
    objects = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for cls, cov, vis, truncated in kept:
        hard = cov >= 0.5
        colour = _pick_colour(rng, img[hard].mean(axis=0))
        # A gentle linear shading makes the fill less trivially flat.
        g = rng.uniform(-0.25, 0.25, 2)
        shade = 1.0 + g[0] * (xx - 0.5) + g[1] * (yy - 0.5)
        a = cov[..., None]
        img = img * (1 - a) + (colour * shade[..., None]) * a
        labels[hard] = cls + 1
        ys, xs = np.nonzero(vis)
        objects.append(
            dict(
                name=SHAPE_CLASSES[cls],
                label=cls + 1,
                bbox=(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())),
                mask=vis,
                truncated=bool(truncated),
            )
        )

    img = img + rng.normal(0, rng.uniform(0, 10), img.shape)  # sensor-like noise everywhere
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    class_mask = labels.copy()
    class_mask[_boundary_band(labels)] = IGNORE_INDEX
    return image, objects, class_mask


def _split_index(split: str) -> int:
    # Fixed per-name index (not position in the dict), so adding/removing/reordering
    # splits never changes the images of the others.
    return _KNOWN_SPLIT_INDEX.get(split, zlib.crc32(split.encode()))


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` (0-based) of ``split``: independent of generation order."""
    return np.random.default_rng([int(seed), _split_index(split), int(index)])


# --------------------------------------------------------------------------- VOC files


def voc_palette() -> list[int]:
    """The standard 256-entry PASCAL VOC colour map as a flat [r, g, b, ...] list."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def _annotation_xml(image_id: str, size: int, objects) -> bytes:
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = VOC_SUBDIR.name
    ET.SubElement(ann, "filename").text = f"{image_id}.jpg"
    src = ET.SubElement(ann, "source")
    ET.SubElement(src, "database").text = "fastsnn synthetic shapes"
    sz = ET.SubElement(ann, "size")
    ET.SubElement(sz, "width").text = str(size)
    ET.SubElement(sz, "height").text = str(size)
    ET.SubElement(sz, "depth").text = "3"
    ET.SubElement(ann, "segmented").text = "1"
    for obj in objects:
        o = ET.SubElement(ann, "object")
        ET.SubElement(o, "name").text = obj["name"]
        ET.SubElement(o, "pose").text = "Unspecified"
        ET.SubElement(o, "truncated").text = str(int(obj["truncated"]))
        ET.SubElement(o, "difficult").text = "0"
        bb = ET.SubElement(o, "bndbox")
        for key, val in zip(("xmin", "ymin", "xmax", "ymax"), obj["bbox"]):
            ET.SubElement(bb, key).text = str(val + 1)  # VOC: 1-based, inclusive
    ET.indent(ann, space="\t")
    return ET.tostring(ann, encoding="utf-8") + b"\n"


def _write_scene(voc: Path, image_id: str, image, objects, class_mask, palette) -> None:
    Image.fromarray(image).save(
        voc / "JPEGImages" / f"{image_id}.jpg", format="JPEG", quality=JPEG_QUALITY, subsampling=0
    )
    (voc / "Annotations" / f"{image_id}.xml").write_bytes(_annotation_xml(image_id, image.shape[1], objects))
    seg = Image.fromarray(class_mask)  # "L" -> "P" through putpalette, values kept as-is
    seg.putpalette(palette)
    seg.save(voc / "SegmentationClass" / f"{image_id}.png", format="PNG")


def _ordered_splits(splits: Mapping[str, int]) -> dict[str, int]:
    """Validated splits in a canonical order (train, val, test, then others by name)."""
    out = {}
    for name, count in splits.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
            raise ValueError(f"invalid split name {name!r}")
        if int(count) != count or count < 0:
            raise ValueError(f"split {name!r}: count must be a non-negative integer, got {count!r}")
        out[name] = int(count)
    order = sorted(out, key=lambda s: (_KNOWN_SPLIT_INDEX.get(s, 3), s))
    return {s: out[s] for s in order}


def _generate(dest: Path, params: dict, progress: bool) -> None:
    from tqdm.auto import tqdm

    voc = dest / VOC_SUBDIR
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Main", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    size, max_objects, seed = params["image_size"], params["max_objects"], params["seed"]
    split_ids: dict[str, list[str]] = {}
    total = sum(params["splits"].values())
    next_id = 1
    with tqdm(total=total, desc="shapes data set", unit="img", disable=not progress) as bar:
        for split, count in params["splits"].items():
            ids = split_ids.setdefault(split, [])
            for i in range(count):
                image_id = f"{next_id:06d}"
                next_id += 1
                scene = generate_scene(scene_rng(seed, split, i), size, max_objects)
                _write_scene(voc, image_id, *scene, palette)
                ids.append(image_id)
                bar.update(1)
    if "train" in split_ids and "val" in split_ids and "trainval" not in split_ids:
        split_ids["trainval"] = split_ids["train"] + split_ids["val"]  # as in real VOC
    for split, ids in split_ids.items():
        text = "".join(f"{i}\n" for i in ids)
        for kind in ("Main", "Segmentation"):
            (voc / "ImageSets" / kind / f"{split}.txt").write_text(text)
    manifest = dict(params, classes=list(SHAPE_CLASSES), num_images=total)
    # Written last: its presence marks a complete data set.
    (dest / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _check_manifest(root: Path, params: dict) -> None:
    stored = json.loads((root / MANIFEST_NAME).read_text())
    diffs = [
        f"{key}: stored {stored.get(key)!r}, requested {val!r}" for key, val in params.items() if stored.get(key) != val
    ]
    if diffs:
        raise ValueError(
            f"{root} holds a shapes data set generated with different parameters "
            f"({'; '.join(diffs)}). Delete that folder or choose another root."
        )
    voc = root / VOC_SUBDIR
    for split, count in params["splits"].items():
        f = voc / "ImageSets" / "Main" / f"{split}.txt"
        if not f.is_file() or len(f.read_text().split()) != count:
            raise ValueError(f"{root} has a manifest but {f} is missing or incomplete; delete {root}.")


def ensure_shapes_dataset(
    root,
    image_size: int = 128,
    splits: Mapping[str, int] | None = None,
    seed: int = 0,
    max_objects: int = 4,
    progress: bool = True,
) -> Path:
    """Return ``<root>/VOCdevkit/VOC2012``, generating the data set there on first use.

    ``splits`` defaults to ``{"train": 1200, "val": 200, "test": 200}``. A complete data set
    is marked by ``<root>/shapes.json`` (parameters + generator version). Raises
    ``ValueError`` rather than touching ``root`` if it holds a data set of other parameters
    or unrelated files. Pass ``root`` (not the returned path) to torchvision's VOC readers.
    """
    root = Path(root).expanduser()
    if int(image_size) < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    if int(max_objects) < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    params = {
        "version": GENERATOR_VERSION,
        "image_size": int(image_size),
        "splits": _ordered_splits(DEFAULT_SPLITS if splits is None else splits),
        "seed": int(seed),
        "max_objects": int(max_objects),
    }
    if (root / MANIFEST_NAME).is_file():
        _check_manifest(root, params)
        return root / VOC_SUBDIR
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(
            f"{root} exists and is not a shapes data set (no {MANIFEST_NAME}); "
            "refusing to write into it. Delete it or choose another root."
        )

    # Build in a sibling temp dir and rename at the end: an interrupted run never leaves
    # something that looks complete, and concurrent generators cannot mix their files.
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        _generate(tmp, params, progress)
        if root.exists():
            root.rmdir()  # checked empty above
        os.rename(tmp, root)
    except OSError:
        # Another process may have finished the same data set first: accept it if valid.
        if (root / MANIFEST_NAME).is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            _check_manifest(root, params)
            return root / VOC_SUBDIR
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root / VOC_SUBDIR
