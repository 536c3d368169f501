"""Linear classifiers on fixed features, scored out of fold: arrays in, probabilities out.

A forward pass of a network's body gives each image's features; a multinomial logistic regression on
them, fitted K times on K-1 folds, scores every item with a classifier that never saw its label. It
takes seconds on a CPU where training the network K times takes as many trainings.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

# The L2 penalty of the linear classifiers on pretrained features: enough to keep a few hundred images
# from being fitted label by label (see bench/label_noise.py).
LINEAR_L2 = 0.1
# L-BFGS steps of each linear fit: stopping early regularises as the penalty does, and keeps the fit quick.
LINEAR_ITERS = 15


def linear_oof_probs(
    feats: torch.Tensor,
    targets: np.ndarray,
    fold: np.ndarray,
    n_classes: int,
    others: torch.Tensor | None = None,
    l2: float = LINEAR_L2,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Out-of-fold probabilities of linear classifiers (multinomial logistic regression with an L2
    penalty) on fixed features: item i is scored by the classifier fitted on the folds other than
    `fold[i]`; the rows of `others` (e.g. the validation set) by the mean of the fold classifiers.
    Features are standardised with the fitted items' mean and spread; NaN rows give NaN."""
    x, ok = _standardised(feats)
    extra, extra_ok = _standardised(others, like=feats) if others is not None else (None, None)
    y = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    out = np.full((len(x), n_classes), np.nan, dtype=np.float32)
    extra_sum = None if extra is None else torch.zeros(len(extra), n_classes)
    folds = np.unique(fold)
    for k in folds:
        fit = torch.as_tensor(fold != k) & ok
        w, b = _fit_linear(x[fit], y[fit], n_classes, l2)
        held = torch.as_tensor(fold == k) & ok
        out[held.numpy()] = torch.softmax(x[held] @ w + b, 1).numpy()
        if extra is not None:
            extra_sum += torch.softmax(extra @ w + b, 1)
    if extra is None:
        return out, None
    extra_probs = (extra_sum / len(folds)).numpy()
    extra_probs[~extra_ok.numpy()] = np.nan
    return out, extra_probs


def _standardised(feats: torch.Tensor, like: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(features scaled to mean 0 and spread 1 per column, by `like`'s statistics; readable rows)."""
    x = torch.as_tensor(feats, dtype=torch.float32)
    ref = x if like is None else torch.as_tensor(like, dtype=torch.float32)
    ok, ref_ok = ~x.isnan().any(1), ~ref.isnan().any(1)
    mean, std = ref[ref_ok].mean(0), ref[ref_ok].std(0) + 1e-6
    return torch.where(ok[:, None], (x - mean) / std, torch.zeros_like(x)), ok


def _fit_linear(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of a multinomial logistic regression, by L-BFGS on the whole set at once."""
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=LINEAR_ITERS, history_size=10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + l2 * (w**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()
