"""Metrics against scikit-learn on the same predictions, the threshold rule, the threshold search, and names."""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from nbtrain.metrics import (
    AccuracyMulti,
    F1Score,
    F1ScoreMulti,
    FBeta,
    FBetaMulti,
    Precision,
    PrecisionMulti,
    Recall,
    RecallMulti,
    TopKAccuracy,
    accuracy,
    accuracy_multi,
    accuracy_thresh,
    error_rate,
    find_best_threshold,
    metric_name,
    top_k_accuracy,
)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
APPROX = dict(abs=1e-12, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Cases: (logits (N, C), targets)


def single_label_cases() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    cases = {"random": (torch.randn(60, 5, generator=g), torch.randint(0, 5, (60,), generator=g))}

    # Class 4 is in neither targets nor predictions; class 3 is predicted but never a target.
    logits = torch.randn(40, 5, generator=g)
    logits[:, 4] = -100.0
    cases["class_absent"] = (logits, torch.randint(0, 3, (40,), generator=g))

    # Class 2 is a target but never predicted.
    logits = torch.randn(40, 4, generator=g)
    logits[:, 2] = -100.0
    cases["never_predicted"] = (logits, torch.randint(0, 4, (40,), generator=g))

    # Every prediction right for the classes it uses, one class only ever predicted.
    cases["one_class_predicted"] = (torch.tensor([[5.0, 0, 0]] * 6), torch.tensor([0, 0, 1, 1, 2, 0]))

    # Ties for the highest score: the first of the tied classes is the prediction (numpy's and torch's
    # argmax rule). Rows 0-1 tie every class, rows 2-4 tie two of them; class 3 is never predicted.
    logits = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],
            [1.0, 1.0, 1.0, 1.0],
            [0.2, 2.0, 2.0, -1.0],
            [3.0, -1.0, 3.0, 3.0],
            [-2.0, 0.5, 0.1, 0.5],
            [0.1, 0.2, 0.3, 0.0],
        ]
    )
    cases["argmax_ties"] = (logits, torch.tensor([0, 1, 2, 3, 3, 2]))
    return cases


SINGLE = single_label_cases()


def multi_label_cases() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(40, 6, generator=g) * 2
    targs = (torch.rand(40, 6, generator=g) < 0.35).float()
    targs[0] = 0  # a sample with no labels, and none predicted
    logits[0] = -10.0
    targs[1] = 0  # a sample with no labels but some predicted
    logits[1, :3] = 10.0
    logits[2] = -10.0  # a sample with labels but none predicted
    targs[2, :2] = 1
    targs[:, 4] = 0  # column 4: never a target, sometimes predicted
    targs[:, 5] = 0  # column 5: never a target, never predicted
    logits[:, 5] = -10.0
    return {
        "random": (logits, targs),
        "int_targets": (logits, targs.long()),
        "all_negative": (torch.full((5, 3), -3.0), torch.zeros(5, 3)),
        "all_positive": (torch.full((4, 3), 3.0), torch.ones(4, 3, dtype=torch.long)),
    }


MULTI = multi_label_cases()


def argmax_np(preds: torch.Tensor) -> np.ndarray:
    # numpy's argmax, not torch's: among tied scores it takes the first, as the metrics must.
    return preds.numpy().argmax(axis=1)


def thresholded_np(preds: torch.Tensor, thresh: float) -> np.ndarray:
    # The documented rule, `sigmoid(logit) > thresh`; its ties are pinned by the tests further down.
    return (torch.sigmoid(preds) > thresh).numpy().astype(int)


# ---------------------------------------------------------------------------------------------
# Single label


@pytest.mark.parametrize("case", SINGLE)
def test_accuracy_and_error_rate_match_sklearn(case):
    preds, targs = SINGLE[case]
    expected = skm.accuracy_score(targs.numpy(), argmax_np(preds))
    assert accuracy(preds, targs) == pytest.approx(expected, **APPROX)
    assert error_rate(preds, targs) == pytest.approx(1 - expected, **APPROX)


@pytest.mark.parametrize("case", ["random", "class_absent", "never_predicted"])
def test_top_k_accuracy_matches_sklearn(case):
    preds, targs = SINGLE[case]
    for k in [1, 2, 3, 5, 7]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn warns when k >= number of classes
            expected = skm.top_k_accuracy_score(targs.numpy(), preds.numpy(), k=k, labels=np.arange(preds.shape[1]))
        assert top_k_accuracy(preds, targs, k=k) == pytest.approx(expected, **APPROX), k
        assert TopKAccuracy(k)(preds, targs) == pytest.approx(expected, **APPROX), k
    assert top_k_accuracy(preds, targs, k=1) == accuracy(preds, targs)


SINGLE_SCORES = [
    pytest.param(m, sk, id=repr(m))
    for m, sk in [
        (FBeta(0.5), functools.partial(skm.fbeta_score, beta=0.5)),
        (FBeta(2), functools.partial(skm.fbeta_score, beta=2)),
        (F1Score(), skm.f1_score),
        (Precision(), skm.precision_score),
        (Recall(), skm.recall_score),
    ]
]


@pytest.mark.parametrize("metric,sk", SINGLE_SCORES)
@pytest.mark.parametrize("case", SINGLE)
def test_single_label_scores_match_sklearn(case, metric, sk):
    preds, targs = SINGLE[case]
    for average in ["macro", "micro", "weighted"]:
        m = dataclasses.replace(metric, average=average)
        expected = sk(targs.numpy(), argmax_np(preds), average=average, zero_division=0)
        assert m(preds, targs) == pytest.approx(expected, **APPROX), average


@pytest.mark.parametrize("metric,sk", SINGLE_SCORES)
def test_single_label_binary_matches_sklearn(metric, sk):
    g = torch.Generator().manual_seed(2)
    preds, targs = torch.randn(30, 2, generator=g), torch.randint(0, 2, (30,), generator=g)
    never_predicted = torch.tensor([[1.0, 0.0]] * 4)  # class 1 never predicted: precision 0/0 -> 0
    for pos_label in [0, 1]:
        for p, t in [(preds, targs), (never_predicted, torch.tensor([0, 1, 1, 0]))]:
            m = dataclasses.replace(metric, average="binary", pos_label=pos_label)
            expected = sk(t.numpy(), argmax_np(p), average="binary", pos_label=pos_label, zero_division=0)
            assert m(p, t) == pytest.approx(expected, **APPROX), pos_label


def test_binary_average_needs_two_classes():
    preds, targs = SINGLE["random"]
    with pytest.raises(ValueError, match="binary"):
        F1Score(average="binary")(preds, targs)


def test_single_label_metrics_accept_long_or_float_or_column_targets():
    preds, targs = SINGLE["random"]
    expected = F1Score()(preds, targs)
    assert F1Score()(preds, targs.float()) == expected
    assert F1Score()(preds, targs[:, None]) == expected
    assert accuracy(preds, targs[:, None]) == accuracy(preds, targs)


def test_single_label_metric_on_multi_label_targets_says_so():
    preds, targs = MULTI["random"]
    with pytest.raises(ValueError, match="multi-label"):
        accuracy(preds, targs)


# ---------------------------------------------------------------------------------------------
# Multi label


@pytest.mark.parametrize("case", MULTI)
def test_accuracy_multi_is_per_label_accuracy(case):
    preds, targs = MULTI[case]
    for thresh in [0.2, 0.5]:
        y, yhat = targs.numpy().astype(int), thresholded_np(preds, thresh)
        expected = skm.accuracy_score(y.ravel(), yhat.ravel())
        assert expected == pytest.approx(1 - skm.hamming_loss(y, yhat), **APPROX)
        assert accuracy_multi(preds, targs, thresh=thresh) == pytest.approx(expected, **APPROX)
        assert accuracy_thresh(preds, targs, thresh=thresh) == pytest.approx(expected, **APPROX)
        assert AccuracyMulti(thresh)(preds, targs) == pytest.approx(expected, **APPROX)
        assert AccuracyMulti(thresh, sigmoid=False)(torch.sigmoid(preds), targs) == pytest.approx(expected, **APPROX)


MULTI_SCORES = [
    pytest.param(m, sk, id=repr(m))
    for m, sk in [
        (FBetaMulti(beta=2), functools.partial(skm.fbeta_score, beta=2)),
        (FBetaMulti(beta=0.5), functools.partial(skm.fbeta_score, beta=0.5)),
        (F1ScoreMulti(), skm.f1_score),
        (PrecisionMulti(), skm.precision_score),
        (RecallMulti(), skm.recall_score),
    ]
]


@pytest.mark.parametrize("metric,sk", MULTI_SCORES)
@pytest.mark.parametrize("case", MULTI)
def test_multi_label_scores_match_sklearn(case, metric, sk):
    preds, targs = MULTI[case]
    for thresh in [0.2, 0.5]:
        for average in ["samples", "macro", "micro", "weighted"]:
            m = dataclasses.replace(metric, average=average, thresh=thresh)
            expected = sk(targs.numpy().astype(int), thresholded_np(preds, thresh), average=average, zero_division=0)
            assert m(preds, targs) == pytest.approx(expected, **APPROX), (average, thresh)


def test_multi_label_scores_with_per_class_thresholds_match_sklearn():
    preds, targs = MULTI["random"]
    thresh = [0.1, 0.2, 0.3, 0.5, 0.7, 0.9]
    yhat = (torch.sigmoid(preds) > torch.tensor(thresh)).numpy().astype(int)
    for average in ["samples", "macro"]:
        expected = skm.fbeta_score(targs.numpy(), yhat, beta=2, average=average, zero_division=0)
        assert FBetaMulti(thresh=thresh, average=average)(preds, targs) == pytest.approx(expected, **APPROX)
        assert FBetaMulti(thresh=torch.tensor(thresh), average=average)(preds, targs) == pytest.approx(
            expected, **APPROX
        )


def test_a_probability_at_the_threshold_is_a_negative():
    # sigmoid=False with probabilities exactly at the threshold (as float32): strictly greater is positive.
    probs = torch.tensor([[0.2, 0.2000001, 0.1999999, 0.5]])
    assert accuracy_multi(probs, torch.tensor([[0, 1, 0, 1]]), thresh=0.2, sigmoid=False) == 1.0
    assert accuracy_multi(probs, torch.tensor([[0, 1, 0, 0]]), thresh=[0.2, 0.2, 0.2, 0.5], sigmoid=False) == 1.0
    # The tied label is a missed positive: recall 2/3, precision 1.
    targs = torch.tensor([[1, 1, 0, 1]])
    assert RecallMulti(thresh=0.2, sigmoid=False, average="micro")(probs, targs) == pytest.approx(2 / 3, **APPROX)
    assert PrecisionMulti(thresh=0.2, sigmoid=False, average="micro")(probs, targs) == 1.0
    assert FBetaMulti(beta=1, thresh=0.2, sigmoid=False)(probs, targs) == pytest.approx(0.8, **APPROX)


def test_a_zero_logit_is_a_negative_at_one_half():
    logits = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    assert torch.sigmoid(logits[0, 0]).item() == 0.5  # exactly at the threshold
    targs = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # Predicted [[0, 0], [1, 0]]: F2 per sample is 0 for the first row and 1 for the second. (With `>=`
    # the first row would predict [1, 1] and score 5/6.)
    assert FBetaMulti(beta=2, thresh=0.5)(logits, targs) == 0.5
    assert accuracy_multi(logits, targs) == 0.75
    expected = skm.fbeta_score(targs.numpy(), np.array([[0, 0], [1, 0]]), beta=2, average="samples", zero_division=0)
    assert expected == 0.5


def test_a_logit_built_at_the_threshold_is_a_negative():
    # torch.logit does not round-trip exactly in float32, so the threshold is taken from the sigmoid itself.
    at = torch.logit(torch.tensor([0.2]))
    thresh = float(torch.sigmoid(at))
    logits = torch.cat([at, at + 0.01])[None]
    assert accuracy_multi(logits, torch.tensor([[0, 1]]), thresh=thresh) == 1.0


def threshold_tie_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities (float32) exactly at 0.2 and at 0.5 in every row and column, beside others.

    Row 0 has no labels (an all-negative row) but ties; column 3 is never a target. With `>=` instead of
    `>` the predictions, and so every score below, would differ.
    """
    probs = torch.tensor(
        [
            [0.5, 0.2, 0.1, 0.2],
            [0.5, 0.9, 0.2, 0.0],
            [0.2, 0.5, 0.7, 0.5],
            [0.1, 0.2, 0.5, 0.3],
            [0.2, 0.05, 0.5, 0.5],
        ]
    )
    targs = torch.tensor([[0, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 1, 0], [0, 0, 1, 0]])
    return probs, targs


@pytest.mark.parametrize("thresh", [0.2, 0.5])
@pytest.mark.parametrize("metric,sk", MULTI_SCORES)
def test_multi_label_scores_at_threshold_ties_match_sklearn(metric, sk, thresh):
    probs, targs = threshold_tie_case()
    p = probs.numpy()
    strict = (p > np.float32(thresh)).astype(int)  # the documented rule: a tie is a negative
    loose = (p >= np.float32(thresh)).astype(int)
    assert (p == np.float32(thresh)).any(axis=0).all() and (p == np.float32(thresh)).any(axis=1).all()
    y = targs.numpy()
    differs = []
    for average in ["samples", "macro", "micro", "weighted"]:
        expected = sk(y, strict, average=average, zero_division=0)
        differs.append(expected != sk(y, loose, average=average, zero_division=0))
        m = dataclasses.replace(metric, average=average, thresh=thresh, sigmoid=False)
        assert m(probs, targs) == pytest.approx(expected, **APPROX), average
        if thresh == 0.5:  # the same from logits: a logit of 0 has a sigmoid of exactly 0.5
            logits = torch.logit(probs)
            assert (torch.sigmoid(logits)[probs == 0.5] == 0.5).all()
            assert dataclasses.replace(m, sigmoid=True)(logits, targs) == pytest.approx(expected, **APPROX), average
    assert any(differs), "the case must tell `>` from `>=`"


@pytest.mark.parametrize("thresh", [0.2, 0.5])
def test_accuracy_multi_and_per_class_thresholds_at_ties_match_sklearn(thresh):
    probs, targs = threshold_tie_case()
    y, yhat = targs.numpy(), (probs.numpy() > np.float32(thresh)).astype(int)
    expected = skm.accuracy_score(y.ravel(), yhat.ravel())
    assert expected != skm.accuracy_score(y.ravel(), (probs.numpy() >= np.float32(thresh)).astype(int).ravel())
    assert accuracy_multi(probs, targs, thresh=thresh, sigmoid=False) == pytest.approx(expected, **APPROX)
    assert accuracy_thresh(probs, targs, thresh=thresh, sigmoid=False) == pytest.approx(expected, **APPROX)
    # Per-class thresholds, each tied somewhere.
    per = [0.2, 0.5, 0.2, 0.5]
    yhat = (probs.numpy() > np.array(per, dtype=np.float32)).astype(int)
    assert accuracy_multi(probs, targs, thresh=per, sigmoid=False) == pytest.approx(
        skm.accuracy_score(y.ravel(), yhat.ravel()), **APPROX
    )
    for average in ["samples", "macro"]:
        assert FBetaMulti(beta=2, thresh=per, sigmoid=False, average=average)(probs, targs) == pytest.approx(
            skm.fbeta_score(y, yhat, beta=2, average=average, zero_division=0), **APPROX
        )


# ---------------------------------------------------------------------------------------------
# Edge cases shared by all metrics


ALL_SINGLE = [accuracy, error_rate, top_k_accuracy, TopKAccuracy(3), FBeta(2), F1Score(), Precision(), Recall()]
ALL_MULTI = [
    accuracy_multi,
    accuracy_thresh,
    AccuracyMulti(),
    FBetaMulti(),
    F1ScoreMulti(),
    PrecisionMulti(),
    RecallMulti(),
    F1ScoreMulti(average="weighted"),
    FBetaMulti(average="micro"),
]


@pytest.mark.parametrize("device", DEVICES)
def test_metrics_run_on_the_tensors_device_and_return_floats(device):
    sp, st = (t.to(device) for t in SINGLE["class_absent"])
    mp, mt = (t.to(device) for t in MULTI["random"])
    for m in ALL_SINGLE:
        v = m(sp, st)
        assert isinstance(v, float) and v == pytest.approx(m(sp.cpu(), st.cpu()), **APPROX)
    for m in ALL_MULTI:
        v = m(mp, mt)
        assert isinstance(v, float) and v == pytest.approx(m(mp.cpu(), mt.cpu()), **APPROX)
    assert find_best_threshold(mp, mt) == find_best_threshold(mp.cpu(), mt.cpu())


def test_empty_validation_set_gives_nan():
    for m in ALL_SINGLE:
        assert math.isnan(m(torch.empty(0, 3), torch.empty(0, dtype=torch.long)))
    for m in ALL_MULTI:
        assert math.isnan(m(torch.empty(0, 3), torch.empty(0, 3)))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="average"):
        F1Score(average="samples")
    with pytest.raises(ValueError, match="average"):
        FBetaMulti(average="binary")
    with pytest.raises(ValueError, match="beta"):
        FBeta(-1)
    with pytest.raises(ValueError, match="k must"):
        TopKAccuracy(0)
    with pytest.raises(ValueError, match="thresh"):
        F1ScoreMulti(thresh=[0.5, 0.5])(*MULTI["random"])
    with pytest.raises(ValueError, match="class indices"):
        accuracy(torch.randn(3, 2), torch.tensor([0, 1, 2]))


# ---------------------------------------------------------------------------------------------
# Threshold search


def separable_case():
    # Column 0: positives >= 0.7, negatives <= 0.65. Column 1: positives >= 0.2, negatives <= 0.1.
    probs = torch.tensor([[0.9, 0.3], [0.7, 0.05], [0.65, 0.2], [0.3, 0.1], [0.1, 0.6], [0.8, 0.0]])
    targs = torch.tensor([[1, 1], [1, 0], [0, 1], [0, 0], [0, 1], [1, 0]])
    return probs, targs


def test_find_best_threshold_takes_the_smallest_of_equal_thresholds():
    # Negatives up to 0.35, positives from 0.6: every threshold in [0.35, 0.6) is perfect. 0.35 itself
    # works because a probability at the threshold is a negative, and it is the smallest.
    probs = torch.tensor([[0.8, 0.1], [0.35, 0.6], [0.7, 0.35], [0.2, 0.9]])
    targs = (probs > 0.5).long()
    t, score = find_best_threshold(probs, targs, FBetaMulti(beta=2, sigmoid=False))
    assert (t, score) == (0.35, 1.0)
    t, score = find_best_threshold(probs, targs, functools.partial(accuracy_multi, sigmoid=False))
    assert (t, score) == (0.35, 1.0)
    # The same with logits and the default metric (F2 per sample): negatives at most 1/3, so 0.34.
    probs[1, 0] = probs[2, 1] = 1 / 3
    assert find_best_threshold(torch.logit(probs), targs) == (0.34, 1.0)


def test_find_best_threshold_per_class():
    probs, targs = separable_case()
    metric = F1ScoreMulti(sigmoid=False, average="macro")
    t, score = find_best_threshold(probs, targs, metric)
    assert score < 1.0  # no single threshold separates both columns
    per, score = find_best_threshold(probs, targs, metric, per_class=True)
    assert per == [0.65, 0.1] and score == 1.0
    assert F1ScoreMulti(thresh=per, sigmoid=False)(probs, targs) == 1.0


def test_find_best_threshold_scores_every_grid_value():
    g = torch.Generator().manual_seed(3)
    preds, targs = torch.randn(50, 4, generator=g), (torch.rand(50, 4, generator=g) < 0.4).long()
    grid = [0.1, 0.25, 0.4, 0.55, 0.7]
    metric = FBetaMulti(beta=2, average="samples")
    scores = [FBetaMulti(beta=2, thresh=t)(preds, targs) for t in grid]
    t, score = find_best_threshold(preds, targs, metric, thresholds=grid[::-1])
    assert score == max(scores) and t == grid[scores.index(max(scores))]
    per, per_score = find_best_threshold(preds, targs, metric, thresholds=grid, per_class=True)
    assert len(per) == 4 and set(per) <= set(grid) and per_score >= score
    assert FBetaMulti(beta=2, thresh=per)(preds, targs) == per_score


def test_find_best_threshold_needs_a_metric_with_a_threshold():
    with pytest.raises(TypeError, match="threshold"):
        find_best_threshold(*MULTI["random"], metric=accuracy)


# ---------------------------------------------------------------------------------------------
# Column names


class MyMetric:
    def __call__(self, preds, targs):
        return 0.0


class Named(MyMetric):
    name = "custom"


@pytest.mark.parametrize(
    "metric,name",
    [
        (accuracy, "accuracy"),
        (error_rate, "error_rate"),
        (top_k_accuracy, "top_k_accuracy"),
        (TopKAccuracy(), "top_5_accuracy"),
        (TopKAccuracy(k=3), "top_3_accuracy"),
        (FBeta(2), "fbeta_score"),
        (F1Score(), "f1_score"),
        (Precision(), "precision_score"),
        (Recall(), "recall_score"),
        (accuracy_multi, "accuracy_multi"),
        (accuracy_thresh, "accuracy_thresh"),
        (AccuracyMulti(0.2), "accuracy_multi"),
        (FBetaMulti(), "fbeta_score"),
        (F1ScoreMulti(), "f1_score"),
        (PrecisionMulti(), "precision_score"),
        (RecallMulti(), "recall_score"),
        (functools.partial(accuracy_multi, thresh=0.2), "accuracy_multi"),
        (MyMetric(), "my_metric"),
        (Named(), "custom"),
    ],
)
def test_metric_name(metric, name):
    assert metric_name(metric) == name
