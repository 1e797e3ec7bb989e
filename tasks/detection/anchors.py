"""k-means anchor boxes on a data set's training boxes (YOLOv2's dimension clusters).

Distance ``1 - IoU`` between box shapes (centred boxes), so large boxes do not dominate as they
would with Euclidean distance. Prints the anchors as a YAML list of ``(w, h)`` fractions of the
image side, ready for ``data.anchors`` / ``model.net.anchors``::

    python -m tasks.detection.anchors                       # the default shapes_det data
    python -m tasks.detection.anchors data=voc data.root=/data/voc k=5
"""

from __future__ import annotations

import sys

import numpy as np


def shape_iou(wh: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """IoU of centred boxes: ``wh [N, 2]`` against ``centroids [K, 2]`` -> ``[N, K]``."""
    inter = np.minimum(wh[:, None, 0], centroids[None, :, 0]) * np.minimum(wh[:, None, 1], centroids[None, :, 1])
    union = wh.prod(1)[:, None] + centroids.prod(1)[None] - inter
    return inter / union


def kmeans_anchors(wh: np.ndarray, k: int = 5, iters: int = 300, seed: int = 0) -> np.ndarray:
    """``k`` anchor shapes clustering ``wh`` (``[N, 2]``, positive) with the ``1 - IoU`` distance,
    k-means++ seeding; sorted by area. Deterministic for a given ``seed``."""
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    wh = wh[(wh > 0).all(1)]
    if len(wh) < k:
        raise ValueError(f"need at least k={k} boxes for k-means, got {len(wh)}")
    rng = np.random.default_rng(seed)
    centroids = [wh[rng.integers(len(wh))]]
    for _ in range(1, k):  # k-means++: next centre far (in 1 - IoU) from the chosen ones
        d = 1 - shape_iou(wh, np.array(centroids)).max(1)
        centroids.append(wh[rng.choice(len(wh), p=d / d.sum())] if d.sum() > 0 else wh[rng.integers(len(wh))])
    centroids = np.array(centroids)
    assign = None
    for _ in range(iters):
        new = shape_iou(wh, centroids).argmax(1)
        if assign is not None and (new == assign).all():
            break
        assign = new
        for j in range(k):
            if (assign == j).any():
                centroids[j] = np.median(wh[assign == j], axis=0)  # median: robust to outliers
    return centroids[np.argsort(centroids.prod(1))]


def mean_best_iou(wh: np.ndarray, anchors: np.ndarray) -> float:
    """Average over boxes of the IoU with their best anchor (how well the anchors fit)."""
    return float(shape_iou(np.asarray(wh, np.float64), np.asarray(anchors, np.float64)).max(1).mean())


def main(argv: list[str]) -> None:
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    k = 5
    overrides = []
    for a in argv:
        if a.startswith("k="):
            k = int(a[2:])
        else:
            overrides.append(a)
    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=["task=detection", "paths.output_dir=.", *overrides])
    datamodule = instantiate(cfg.data)
    if hasattr(datamodule, "prepare_data"):
        datamodule.prepare_data()
    wh = datamodule.train_box_sizes()
    anchors = kmeans_anchors(wh, k)
    print(f"# {len(wh)} training boxes, k={k}, mean IoU with the best anchor {mean_best_iou(wh, anchors):.3f}")
    print("anchors: [" + ", ".join(f"[{w:.4f}, {h:.4f}]" for w, h in anchors) + "]")


if __name__ == "__main__":
    main(sys.argv[1:])
