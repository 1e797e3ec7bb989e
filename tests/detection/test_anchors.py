"""k-means anchors (1 - IoU distance) recover the box shapes they are given."""

import numpy as np

from tasks.detection.anchors import kmeans_anchors, mean_best_iou


def test_kmeans_recovers_clustered_box_shapes_deterministically():
    rng = np.random.default_rng(0)
    centres = np.array([[0.1, 0.1], [0.2, 0.5], [0.6, 0.3]])
    wh = np.concatenate([c * rng.uniform(0.95, 1.05, (200, 2)) for c in centres])
    anchors = kmeans_anchors(wh, k=3, seed=1)
    assert anchors.shape == (3, 2)
    np.testing.assert_allclose(anchors, centres, rtol=0.05)  # sorted by area, like the centres
    assert np.array_equal(anchors, kmeans_anchors(wh, k=3, seed=1))
    assert mean_best_iou(wh, anchors) > 0.9 > mean_best_iou(wh, np.array([[0.3, 0.3]]))
