"""The neighbour geometry on plain arrays: no model and no files (tests/test_layers.py holds its imports)."""

import numpy as np
import torch

from nbtrain.neighbours import (
    class_contrast,
    cosine_knn,
    local_outlier_factor,
    most_similar,
    nearest_neighbours,
    outlier_scores,
    robust_z,
)


def _two_clusters(n: int = 40, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(2, dim, generator=g) * 5
    targets = np.repeat([0, 1], n // 2)
    feats = centres[targets] + 0.3 * torch.randn(n, dim, generator=g)
    return feats, targets


def test_robust_z_counts_mads_above_the_median_and_keeps_nan():
    x = np.array([1.0, 2.0, 3.0, 4.0, 100.0, np.nan])
    z = robust_z(x)
    assert z[2] == 0.0  # the median
    assert z[4] > 50 and np.isnan(z[5])
    # Identical values do not make the first difference infinite.
    assert np.isfinite(robust_z(np.array([5.0, 5.0, 5.0, 6.0]))).all()


def test_most_similar_in_chunks_equals_the_full_matrix_and_skips_nan_rows():
    feats, _ = _two_clusters()
    emb = torch.nn.functional.normalize(feats, dim=1)
    emb[3] = float("nan")
    full_sim, full_idx = most_similar(emb, 3)
    chunk_sim, chunk_idx = most_similar(emb, 3, chunk_bytes=4 * len(emb) * 2)  # two rows at a time
    assert torch.equal(full_idx, chunk_idx) and torch.allclose(full_sim, chunk_sim)
    assert (full_idx[3] == -1).all() and not (full_idx == 3).any()
    sim, idx = nearest_neighbours(emb)
    assert torch.equal(idx, full_idx[:, 0]) and torch.allclose(
        sim[~torch.isinf(sim)], full_sim[:, 0][~torch.isinf(sim)]
    )


def test_a_point_far_from_every_cluster_has_the_largest_lof_and_knn_distance():
    feats, targets = _two_clusters()
    stray = -feats.mean(0, keepdim=True) + 7 * torch.ones(1, feats.shape[1])
    feats = torch.cat([feats, stray])
    dist, idx = cosine_knn(feats, 5)
    lof = local_outlier_factor(dist, idx)
    assert int(np.argmax(lof)) == len(feats) - 1
    assert int(dist.mean(1).argmax()) == len(feats) - 1
    inside = lof[:-1]
    assert np.median(inside) < 1.5  # about 1 inside a group


def test_class_contrast_is_about_one_or_more_for_an_image_in_the_wrong_class():
    feats, targets = _two_clusters()
    targets = targets.copy()
    targets[0] = 1  # a cluster-0 image labelled as cluster 1
    contrast = class_contrast(feats, targets)
    assert contrast[0] > 1.0
    assert np.median(np.delete(contrast, 0)) < 0.5
    assert np.isnan(class_contrast(feats[:2], targets[:2])).all()  # too few to say


def test_outlier_scores_put_a_group_of_strays_first():
    feats, targets = _two_clusters(60)
    g = torch.Generator().manual_seed(1)
    strays = torch.randn(1, feats.shape[1], generator=g) * 5 + 0.3 * torch.randn(4, feats.shape[1], generator=g)
    feats = torch.cat([feats, strays])
    targets = np.concatenate([targets, [0, 1, 0, 1]])  # spread over both classes, as strays are
    score, lof, knn, contrast = outlier_scores(feats, targets, k=10)
    assert set(np.argsort(-score)[:4].tolist()) == {60, 61, 62, 63}
    assert len(score) == len(lof) == len(knn) == len(contrast) == 64
