"""Metrics for the epoch table: accuracy, top-k accuracy, F-beta, precision and recall, their multi-label
forms, and a threshold search for multi-label models.

The learner calls each metric once per epoch as `metric(preds, targs)` on the whole validation set:
`preds` are the model's raw outputs (logits, shape (N, C)); `targs` are class indices (N,) for
single-label data or multi-hot rows (N, C) for multi-label data. Every metric returns a float.

Values equal scikit-learn's with `zero_division=0`: a ratio whose denominator is 0 (a class never
predicted, a sample with no labels) counts as 0. Like scikit-learn called without `labels`, the
single-label macro and weighted averages leave out classes that occur in neither the targets nor the
predictions, while the multi-label averages include every column. With no items at all a metric
returns NaN. Everything runs in torch on the tensors' own device; only the per-class (or
per-sample) counts go to the CPU, where the divisions are done in float64 (MPS has no float64).

Multi-label threshold rule: a label is predicted when its probability is strictly greater than the
threshold (`prob > thresh`, as in fastai). A probability exactly at the threshold is a negative, so a
logit of 0 (probability 0.5) is not a positive at `thresh=0.5`. The comparison is done in the
predictions' dtype, so a float32 probability equal to `float32(thresh)` is a negative too.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, overload

import torch
from torch import Tensor

__all__ = [
    "AccuracyMulti",
    "F1Score",
    "F1ScoreMulti",
    "FBeta",
    "FBetaMulti",
    "Precision",
    "PrecisionMulti",
    "Recall",
    "RecallMulti",
    "TopKAccuracy",
    "accuracy",
    "accuracy_multi",
    "accuracy_thresh",
    "error_rate",
    "find_best_threshold",
    "metric_name",
    "top_k_accuracy",
]

Thresh = float | Sequence[float] | Tensor
SINGLE_LABEL_AVERAGES = ("macro", "micro", "weighted", "binary")
MULTI_LABEL_AVERAGES = ("samples", "macro", "micro", "weighted")
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 + 0.01 * i, 2) for i in range(91))  # 0.05 .. 0.95


# ---------------------------------------------------------------------------------------------
# Names for the epoch table


def _camel_to_snake(name: str) -> str:
    # The same two rules as fastai's camel2snake, so custom metric classes get the same column names.
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def metric_name(metric: Any) -> str:
    """The metric's column name: its `name` attribute, else its `__name__`, else its class name in snake_case.

    A `functools.partial` is named after the function it wraps, as in fastai.
    """
    name = getattr(metric, "name", None)
    if isinstance(name, str) and name:
        return name
    if isinstance(metric, functools.partial):
        return metric_name(metric.func)
    name = getattr(metric, "__name__", None)
    if isinstance(name, str) and name:
        return name
    return _camel_to_snake(type(metric).__name__)


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _single_label(preds: Tensor, targs: Tensor, caller: str) -> tuple[Tensor, Tensor, int]:
    """Predicted and true class indices (both (N,), on the predictions' device) and the number of classes."""
    targs = targs.to(preds.device)
    if preds.ndim == 2 and targs.ndim == 2 and targs.shape == preds.shape and preds.shape[1] > 1:
        # The usual slip: a single-label metric on multi-label data. Say so instead of a shape error.
        raise ValueError(
            f"{caller} is for single-label targets (N,); these are multi-label (N, C): "
            "use accuracy_multi or a *Multi metric such as F1ScoreMulti"
        )
    targs = targs.reshape(-1).long()
    if preds.ndim == 1:  # already decoded class indices
        labels = preds.long()
        n_classes = int(max(labels.max(), targs.max())) + 1 if len(labels) else 0
    else:
        labels = preds.argmax(dim=-1)
        n_classes = preds.shape[-1]
    if len(labels) != len(targs):
        raise ValueError(f"{caller}: {len(labels)} predictions but {len(targs)} targets")
    if len(targs) and (int(targs.min()) < 0 or int(targs.max()) >= n_classes):
        raise ValueError(f"{caller}: targets must be class indices in [0, {n_classes})")
    return labels, targs, n_classes


def _as_probs(preds: Tensor, sigmoid: bool) -> Tensor:
    preds = preds if preds.is_floating_point() else preds.float()
    return preds.sigmoid() if sigmoid else preds


def _binarize(preds: Tensor, thresh: Thresh, sigmoid: bool) -> Tensor:
    """Predicted labels (N, C) as booleans: `prob > thresh`, with one threshold or one per class."""
    probs = _as_probs(preds, sigmoid)
    if isinstance(thresh, (int, float)):
        return probs > thresh  # a Python float is cast to the probabilities' dtype before comparing
    t = torch.as_tensor(thresh, dtype=probs.dtype, device=probs.device).reshape(-1)
    if t.numel() != 1 and t.numel() != probs.shape[-1]:
        raise ValueError(f"thresh has {t.numel()} values for {probs.shape[-1]} classes")
    return probs > t


def _multi_label(preds: Tensor, targs: Tensor, thresh: Thresh, sigmoid: bool) -> tuple[Tensor, Tensor]:
    """Predicted and true labels, both boolean (N, C) on the predictions' device."""
    targs = targs.to(preds.device)
    if targs.shape != preds.shape:
        raise ValueError(
            f"multi-label metrics need targets shaped like the predictions {tuple(preds.shape)}, "
            f"got {tuple(targs.shape)}"
        )
    # `> 0.5` rather than `.bool()`: label-smoothed targets (0.05 / 0.95) still read as 0 / 1.
    return _binarize(preds, thresh, sigmoid), targs > 0.5


def _divide(num: Tensor, den: Tensor) -> Tensor:
    # scikit-learn's zero_division=0: 0/0 counts as 0 rather than NaN.
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


def _score(kind: str, beta: float, tp: Tensor, pred_sum: Tensor, true_sum: Tensor) -> Tensor:
    if kind == "precision":
        return _divide(tp, pred_sum)
    if kind == "recall":
        return _divide(tp, true_sum)
    # F-beta from counts, as scikit-learn does: (1 + b²)·tp / (b²·(tp + fn) + (tp + fp)); beta=0 gives precision.
    b2 = beta * beta
    return _divide((1 + b2) * tp, b2 * true_sum + pred_sum)


def _average(
    kind: str, beta: float, tp: Tensor, pred_sum: Tensor, true_sum: Tensor, average: str, keep: Tensor | None = None
) -> float:
    """Averages per-class (or, for "samples", per-sample) scores computed from float64 CPU counts."""
    if keep is not None:
        tp, pred_sum, true_sum = tp[keep], pred_sum[keep], true_sum[keep]
    if average == "micro":
        return float(_score(kind, beta, tp.sum(), pred_sum.sum(), true_sum.sum()))
    scores = _score(kind, beta, tp, pred_sum, true_sum)
    if scores.numel() == 0:
        return math.nan
    if average == "weighted" and float(true_sum.sum()) > 0:
        return float((scores * true_sum).sum() / true_sum.sum())
    # macro, samples, and weighted with no positives at all (scikit-learn then takes the plain mean).
    return float(scores.mean())


def _counts(*tensors: Tensor) -> list[Tensor]:
    return [t.to("cpu", torch.float64) for t in tensors]


def _single_label_score(
    preds: Tensor, targs: Tensor, kind: str, beta: float, average: str, pos_label: int, caller: str
) -> float:
    labels, targs, n_classes = _single_label(preds, targs, caller)
    if len(targs) == 0:
        return math.nan
    # Only the (N,) label vectors go to the CPU; bincount there is exact and deterministic.
    labels, targs = labels.cpu(), targs.cpu()
    tp = torch.bincount(targs[labels == targs], minlength=n_classes)
    pred_sum = torch.bincount(labels, minlength=n_classes)
    true_sum = torch.bincount(targs, minlength=n_classes)
    tp, pred_sum, true_sum = _counts(tp, pred_sum, true_sum)
    if average == "binary":
        if n_classes > 2:
            raise ValueError(f"average='binary' needs 2 classes, got {n_classes}: use 'macro', 'micro' or 'weighted'")
        if not 0 <= pos_label < max(n_classes, 2):
            raise ValueError(f"pos_label={pos_label} is not a class index")
        if pos_label >= n_classes:  # a 1-D prediction of all zeros: the positive class never occurs
            return 0.0
        return float(_score(kind, beta, tp[pos_label], pred_sum[pos_label], true_sum[pos_label]))
    # scikit-learn (without `labels`) averages over the classes present in the targets or the predictions.
    return _average(kind, beta, tp, pred_sum, true_sum, average, keep=(pred_sum + true_sum) > 0)


def _multi_label_score(
    preds: Tensor, targs: Tensor, kind: str, beta: float, average: str, thresh: Thresh, sigmoid: bool
) -> float:
    pred, true = _multi_label(preds, targs, thresh, sigmoid)
    if pred.shape[0] == 0:
        return math.nan
    dim = 1 if average == "samples" else 0  # per sample, else per class
    tp, pred_sum, true_sum = _counts((pred & true).sum(dim), pred.sum(dim), true.sum(dim))
    return _average(kind, beta, tp, pred_sum, true_sum, average)


def _check_average(average: str, allowed: tuple[str, ...]) -> None:
    if average not in allowed:
        raise ValueError(f"average must be one of {allowed}, got {average!r}")


def _check_beta(beta: float) -> None:
    if not (isinstance(beta, (int, float)) and 0 <= beta < math.inf):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")


# ---------------------------------------------------------------------------------------------
# Single-label metrics


def accuracy(preds: Tensor, targs: Tensor) -> float:
    """Fraction of items whose highest-scoring class is the target."""
    labels, targs, _ = _single_label(preds, targs, "accuracy")
    # Count, then divide in Python: exact, and float64 without asking the device for it.
    return (labels == targs).sum().item() / len(targs) if len(targs) else math.nan


def error_rate(preds: Tensor, targs: Tensor) -> float:
    """1 - accuracy."""
    return 1 - accuracy(preds, targs)


def top_k_accuracy(preds: Tensor, targs: Tensor, k: int = 5) -> float:
    """Fraction of items whose target is among the `k` highest-scoring classes.

    `k` at or above the number of classes gives 1.0, as in scikit-learn. For a column named after `k`
    use `TopKAccuracy(k)`.
    """
    if preds.ndim != 2:
        raise ValueError(f"top_k_accuracy needs scores shaped (N, C), got {tuple(preds.shape)}")
    _, targs, n_classes = _single_label(preds, targs, "top_k_accuracy")
    if len(targs) == 0:
        return math.nan
    top = preds.topk(min(k, n_classes), dim=-1).indices
    return (top == targs[:, None]).any(dim=-1).sum().item() / len(targs)


@dataclass(eq=False)
class TopKAccuracy:
    """`top_k_accuracy` with a fixed `k`, shown as `top_{k}_accuracy` in the epoch table."""

    k: int = 5

    def __post_init__(self) -> None:
        if not (isinstance(self.k, int) and self.k >= 1):
            raise ValueError(f"k must be a positive integer, got {self.k!r}")

    @property
    def name(self) -> str:
        return f"top_{self.k}_accuracy"

    def __call__(self, preds: Tensor, targs: Tensor) -> float:
        return top_k_accuracy(preds, targs, k=self.k)


class _SingleLabelScore:
    """F-beta, precision or recall of the argmax predictions, as scikit-learn's with `zero_division=0`."""

    name: ClassVar[str]
    _kind: ClassVar[str]
    average: str
    pos_label: int

    def __post_init__(self) -> None:
        _check_average(self.average, SINGLE_LABEL_AVERAGES)
        _check_beta(getattr(self, "beta", 1.0))

    def __call__(self, preds: Tensor, targs: Tensor) -> float:
        return _single_label_score(
            preds, targs, self._kind, getattr(self, "beta", 1.0), self.average, self.pos_label, self.name
        )


@dataclass(eq=False)
class FBeta(_SingleLabelScore):
    """F-beta score of single-label predictions (`average="binary"` scores class `pos_label` of two)."""

    beta: float
    average: str = "macro"
    pos_label: int = 1
    name: ClassVar[str] = "fbeta_score"
    _kind: ClassVar[str] = "fbeta"


@dataclass(eq=False)
class F1Score(_SingleLabelScore):
    """F1 score of single-label predictions."""

    average: str = "macro"
    pos_label: int = 1
    name: ClassVar[str] = "f1_score"
    _kind: ClassVar[str] = "fbeta"


@dataclass(eq=False)
class Precision(_SingleLabelScore):
    """Precision of single-label predictions."""

    average: str = "macro"
    pos_label: int = 1
    name: ClassVar[str] = "precision_score"
    _kind: ClassVar[str] = "precision"


@dataclass(eq=False)
class Recall(_SingleLabelScore):
    """Recall of single-label predictions."""

    average: str = "macro"
    pos_label: int = 1
    name: ClassVar[str] = "recall_score"
    _kind: ClassVar[str] = "recall"


# ---------------------------------------------------------------------------------------------
# Multi-label metrics


def accuracy_multi(preds: Tensor, targs: Tensor, thresh: Thresh = 0.5, sigmoid: bool = True) -> float:
    """Fraction of (item, label) pairs predicted right, with `prob > thresh` as a positive.

    This is fastai's per-label accuracy (1 - Hamming loss), not scikit-learn's exact-match subset accuracy.
    `thresh` may be one value or one per class; `sigmoid=False` takes `preds` as probabilities already.
    """
    pred, true = _multi_label(preds, targs, thresh, sigmoid)
    return (pred == true).sum().item() / pred.numel() if pred.numel() else math.nan


def accuracy_thresh(preds: Tensor, targs: Tensor, thresh: Thresh = 0.5, sigmoid: bool = True) -> float:
    """`accuracy_multi` under fastai v1's name (and column name)."""
    return accuracy_multi(preds, targs, thresh=thresh, sigmoid=sigmoid)


@dataclass(eq=False)
class AccuracyMulti:
    """`accuracy_multi` with a fixed threshold, for `metrics=[AccuracyMulti(0.2)]`."""

    thresh: Thresh = 0.5
    sigmoid: bool = True
    name: ClassVar[str] = "accuracy_multi"

    def __call__(self, preds: Tensor, targs: Tensor) -> float:
        return accuracy_multi(preds, targs, thresh=self.thresh, sigmoid=self.sigmoid)


class _MultiLabelScore:
    """F-beta, precision or recall of thresholded multi-label predictions, as scikit-learn's with `zero_division=0`."""

    name: ClassVar[str]
    _kind: ClassVar[str]
    thresh: Thresh
    sigmoid: bool
    average: str

    def __post_init__(self) -> None:
        _check_average(self.average, MULTI_LABEL_AVERAGES)
        _check_beta(getattr(self, "beta", 1.0))

    def __call__(self, preds: Tensor, targs: Tensor) -> float:
        return _multi_label_score(
            preds, targs, self._kind, getattr(self, "beta", 1.0), self.average, self.thresh, self.sigmoid
        )


@dataclass(eq=False)
class FBetaMulti(_MultiLabelScore):
    """F-beta of multi-label predictions; the defaults are the Kaggle "planet" metric (F2 per sample at 0.2).

    `thresh` may be one value or one per class (as `find_best_threshold(per_class=True)` returns).
    """

    beta: float = 2.0
    thresh: Thresh = 0.2
    sigmoid: bool = True
    average: str = "samples"
    name: ClassVar[str] = "fbeta_score"
    _kind: ClassVar[str] = "fbeta"


def fbeta(
    y_pred: Tensor, y_true: Tensor, thresh: Thresh = 0.2, beta: float = 2.0, eps: float = 1e-9, sigmoid: bool = True
) -> float:
    """fastai v1's multi-label F-beta (F2 per sample at 0.2, the Kaggle "planet" metric), the name the
    course notes use: `f_score = partial(fbeta, thresh=0.2)`. `eps` is accepted for v1's signature;
    an image with no true and no predicted label scores 0, as scikit-learn's `zero_division=0`."""
    return FBetaMulti(beta=beta, thresh=thresh, sigmoid=sigmoid)(y_pred, y_true)


@dataclass(eq=False)
class F1ScoreMulti(_MultiLabelScore):
    """F1 score of multi-label predictions."""

    thresh: Thresh = 0.5
    sigmoid: bool = True
    average: str = "macro"
    name: ClassVar[str] = "f1_score"
    _kind: ClassVar[str] = "fbeta"


@dataclass(eq=False)
class PrecisionMulti(_MultiLabelScore):
    """Precision of multi-label predictions."""

    thresh: Thresh = 0.5
    sigmoid: bool = True
    average: str = "macro"
    name: ClassVar[str] = "precision_score"
    _kind: ClassVar[str] = "precision"


@dataclass(eq=False)
class RecallMulti(_MultiLabelScore):
    """Recall of multi-label predictions."""

    thresh: Thresh = 0.5
    sigmoid: bool = True
    average: str = "macro"
    name: ClassVar[str] = "recall_score"
    _kind: ClassVar[str] = "recall"


# ---------------------------------------------------------------------------------------------
# Threshold search


def _with_thresh(metric: Callable, thresh: Thresh) -> Callable:
    """`metric` with its threshold set to `thresh`."""
    if dataclasses.is_dataclass(metric) and any(f.name == "thresh" for f in dataclasses.fields(metric)):
        return dataclasses.replace(metric, thresh=thresh)
    try:
        params = inspect.signature(metric).parameters
    except (TypeError, ValueError):
        params = {}
    if "thresh" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return functools.partial(metric, thresh=thresh)
    raise TypeError(f"{metric_name(metric)} takes no threshold: use a multi-label metric such as FBetaMulti(beta=2)")


def _best(grid: Sequence[float], score: Callable[[float], float]) -> tuple[float, float]:
    """The grid value with the highest score; among (near-)ties the smallest one. NaN scores never win."""
    best_t, best_s = grid[0], math.nan
    for t in grid:
        s = score(t)
        # A tolerance, so that equal scores reached through different float sums still count as ties.
        if not math.isnan(s) and (math.isnan(best_s) or s > best_s + 1e-12):
            best_t, best_s = t, s
    return best_t, best_s


@overload
def find_best_threshold(
    preds: Tensor,
    targs: Tensor,
    metric: Callable | None = ...,
    thresholds: Sequence[float] | None = ...,
    per_class: Literal[False] = ...,
) -> tuple[float, float]: ...
@overload
def find_best_threshold(
    preds: Tensor,
    targs: Tensor,
    metric: Callable | None = ...,
    thresholds: Sequence[float] | None = ...,
    *,
    per_class: Literal[True],
) -> tuple[list[float], float]: ...


def find_best_threshold(
    preds: Tensor,
    targs: Tensor,
    metric: Callable | None = None,
    thresholds: Sequence[float] | None = None,
    per_class: bool = False,
) -> tuple[float, float] | tuple[list[float], float]:
    """The threshold that gives `metric` its highest value on these predictions, and that value.

    `metric` is a multi-label metric with a `thresh` (default `FBetaMulti(beta=2)`, F2 per sample);
    `thresholds` defaults to 0.05, 0.06, ..., 0.95. Among equal scores the smallest threshold wins.

    With `per_class=True` it returns one threshold per class: starting from the best single threshold,
    each class in turn gets the grid value that maximises the metric with the other classes' thresholds
    held fixed. For macro averages that is the best grid value per class; for "samples" and "micro" it
    is a greedy improvement that never scores below the single threshold. Pass the list back as
    `thresh=`. A threshold tuned on the validation set flatters that set's score.
    """
    metric = FBetaMulti(beta=2) if metric is None else metric
    grid = sorted(float(t) for t in (DEFAULT_THRESHOLDS if thresholds is None else thresholds))
    if not grid:
        raise ValueError("thresholds is empty")
    if getattr(metric, "sigmoid", False) and dataclasses.is_dataclass(metric):
        # Apply the sigmoid once, not once per candidate; the comparisons are unchanged.
        preds, metric = _as_probs(preds, True), dataclasses.replace(metric, sigmoid=False)
    # Fail now, not inside the loop, on a metric without a threshold.
    _with_thresh(metric, grid[0])

    best_t, best_s = _best(grid, lambda t: float(_with_thresh(metric, t)(preds, targs)))
    if not per_class:
        return best_t, best_s
    per = [best_t] * preds.shape[-1]
    for c in range(len(per)):

        def score(t: float, c: int = c) -> float:
            trial = per.copy()
            trial[c] = t
            return float(_with_thresh(metric, trial)(preds, targs))

        per[c], s = _best(grid, score)
        best_s = s if not math.isnan(s) else best_s
    return per, best_s
