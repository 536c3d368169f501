"""The neighbour geometry on plain arrays: no model and no files (tests/test_layers.py holds its imports)."""

import numpy as np
import torch

from nbtrain.neighbours import (
    class_contrast,
    class_cores,
    combined_evidence,
    cosine_knn,
    distance_to_class_core,
    group_robust_z,
    label_diversity,
    label_mix,
    local_outlier_factor,
    most_similar,
    nearest_neighbours,
    outlier_scores,
    robust_sd,
    robust_z,
    share_less_extreme,
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


def test_group_robust_z_judges_each_class_by_its_own_spread_and_small_classes_by_the_whole():
    rng = np.random.default_rng(0)
    dark_class = rng.normal(-3.0, 0.1, 20)  # a class that is low as a whole
    bright_class = rng.normal(0.0, 0.1, 20)
    x = np.concatenate([dark_class, bright_class, [0.0, -3.0]])
    groups = np.array([0] * 20 + [1] * 20 + [2, 2])
    z = group_robust_z(x, groups, min_size=8)
    assert np.abs(z[:40]).max() < 5  # nobody is extreme for their own class
    assert z[41] == robust_z(x)[41] and z[40] == robust_z(x)[40]  # the class of two: against the whole


def test_share_less_extreme_says_how_many_of_its_class_an_image_is_past():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 100.0, 7.0, 8.0, 9.0])
    share = share_less_extreme(x, np.zeros(9, dtype=int), min_size=5)
    assert share[5] == 1.0 and share[0] == 0.0


def test_label_diversity_counts_the_labels_of_each_images_neighbours():
    targets = np.array([0, 0, 1, 2, 3])
    idx = np.array([[1, 1], [0, -1], [3, 4], [2, 4], [2, 3]])
    assert label_diversity(idx, targets).tolist() == [1, 1, 2, 2, 2]


def test_label_mix_counts_many_labels_only_where_few_neighbours_share_the_image_label():
    targets = np.array([0, 0, 0, 1, 2, 3])
    idx = np.array([[1, 2, 3], [0, 2, 4], [3, 4, 5], [0, 1, 2], [0, 1, 2], [-1, -1, -1]])
    mix = label_mix(idx, targets)
    # Mostly its own label: little; a stray among strays of three labels, none its own: 3.
    assert np.allclose(mix[:5], [2 / 3, 2 / 3, 3.0, 1.0, 1.0])
    assert np.isnan(mix[5])


def test_robust_sd_is_the_scaled_median_absolute_deviation_ignoring_nan():
    assert robust_sd(np.array([1.0, 2.0, 3.0, np.nan])) == 1.4826
    assert robust_sd(np.array([np.nan])) == 0.0


def test_combined_evidence_counts_each_piece_above_zero_and_up_to_the_cap():
    parts = {"a": np.array([20.0, -5.0, np.nan]), "b": np.array([1.0, 2.0, 3.0])}
    assert combined_evidence(parts, cap=8).tolist() == [9.0, 2.0, 3.0]
    assert combined_evidence(parts, cap=8, weights={"b": 0.5}).tolist() == [8.5, 1.0, 1.5]


def test_combined_evidence_counts_pieces_that_measure_one_thing_once_as_the_largest():
    parts = {"a": np.array([6.0, 1.0]), "b": np.array([7.0, 0.0]), "c": np.array([2.0, 2.0])}
    assert combined_evidence(parts, cap=8, alike=(("a", "b"),)).tolist() == [9.0, 3.0]


def test_a_group_of_strays_in_one_class_is_far_from_that_class_core():
    feats, targets = _two_clusters(n=60)
    g = torch.Generator().manual_seed(1)
    strays = torch.randn(1, feats.shape[1], generator=g) * 5 + 0.3 * torch.randn(8, feats.shape[1], generator=g)
    feats = torch.cat([feats, strays])
    targets = np.concatenate([targets, np.zeros(8, dtype=int)])  # all eight put in class 0
    d = distance_to_class_core(feats, targets)
    assert d[-8:].min() > np.sort(d[:60])[-1]  # every stray farther than any member of either class


def test_group_robust_z_with_a_reference_judges_a_class_by_its_core_alone():
    x = np.concatenate([np.zeros(10) + np.linspace(0, 1, 10), np.full(20, 9.0)])  # strays outnumber the class
    groups = np.zeros(30, dtype=int)
    core = np.arange(30) < 10
    assert np.abs(group_robust_z(x, groups, min_size=8)[10:]).max() < 1  # the strays set the class median
    assert group_robust_z(x, groups, min_size=8, reference=core)[10:].min() > 5


def test_a_group_of_strays_outnumbering_its_class_is_not_its_core():
    feats, targets = _two_clusters(n=40)
    g = torch.Generator().manual_seed(2)
    strays = torch.randn(1, feats.shape[1], generator=g) * 5 + 0.3 * torch.randn(30, feats.shape[1], generator=g)
    feats = torch.cat([feats, strays])
    targets = np.concatenate([targets, np.zeros(30, dtype=int)])  # 30 strays among 20 of class 0
    unusual = np.concatenate([np.ones(40), np.full(30, 8.0)])  # grey and blurred for the dataset
    core, group = class_cores(feats, targets, unusual)
    assert core[:20].all() and not core[40:].any()
    assert (group[40:] > 3).all() and (group[:40] == 0).all()
    d = distance_to_class_core(feats, targets, core)
    assert d[40:].min() > d[:20].max()
    # Ordinary in its looks, the larger part stays the core: a class may have two kinds of image.
    plain_core, plain_group = class_cores(feats, targets, np.ones(70))
    assert plain_core[40:].all() and not plain_core[:20].any() and not plain_group.any()
