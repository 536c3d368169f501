"""lr_find's suggestion rules, as fastai's: `valley`, `slide`, `minimum`, `steep`.

Each is a pure function of the learning-rate finder's curve, `(lrs, losses, num_it)` with the
losses smoothed, and returns `(suggested lr, (lr, loss) of the point to mark on the plot)`, so
`learn.lr_find(suggest_funcs=(minimum, steep))` takes them, or a function of one's own written the
same way, as in fastai.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

Suggestion = tuple[float, tuple[float, float]]


def _curve(
    lrs: Sequence[float] | torch.Tensor, losses: Sequence[float] | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(lrs, dtype=torch.float64), torch.as_tensor(losses, dtype=torch.float64)


def on_curve(lr: float, lrs: Sequence[float] | torch.Tensor, losses: Sequence[float] | torch.Tensor) -> float:
    """The curve's loss at `lr` (interpolated in log lr), to mark a suggestion on the plot."""
    lrs, losses = _curve(lrs, losses)
    return float(np.interp(np.log10(lr), np.log10(lrs.numpy()), losses.numpy()))


def valley(
    lrs: Sequence[float] | torch.Tensor, losses: Sequence[float] | torch.Tensor, num_it: int | None = None
) -> Suggestion:
    """The middle of the longest steadily descending stretch of the curve (fastai's default)."""
    lrs, losses = _curve(lrs, losses)
    n = len(losses)
    if n < 3:
        return float(lrs[0]), (float(lrs[0]), float(losses[0]))
    lds = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
        if lds[end] < lds[i]:
            end, start = i, i - lds[i]
    third = (end - start) / 3
    idx = min(n - 1, start + int(third) + int(third / 2))
    return float(lrs[idx]), (float(lrs[idx]), float(losses[idx]))


def slide(
    lrs: Sequence[float] | torch.Tensor,
    losses: Sequence[float] | torch.Tensor,
    num_it: int | None = None,
    lr_diff: int = 15,
    thresh: float = 0.005,
    adjust_value: float = 1.0,
) -> Suggestion:
    """fastai's interval slide rule: from the end of the curve, the last rate before the slope of the
    loss stops changing (by more than `thresh` over `lr_diff` points), times `adjust_value`."""
    lrs, losses = _curve(lrs, losses)
    grad = np.gradient(losses.numpy()) if len(losses) > 1 else np.zeros(len(losses))
    r_idx, l_idx = -1, -1 - lr_diff
    local_min_lr = float(lrs[max(l_idx, -len(lrs))])
    while l_idx >= -len(losses) and abs(grad[r_idx] - grad[l_idx]) > thresh:
        local_min_lr = float(lrs[l_idx])
        r_idx, l_idx = r_idx - 1, l_idx - 1
    lr = local_min_lr * adjust_value
    return lr, (lr, on_curve(lr, lrs, losses))


def minimum(
    lrs: Sequence[float] | torch.Tensor, losses: Sequence[float] | torch.Tensor, num_it: int | None = None
) -> Suggestion:
    """A tenth of the rate at the lowest loss (the book's "Minimum/10"); the point marked is the minimum."""
    lrs, losses = _curve(lrs, losses)
    idx = int(losses.argmin())
    return float(lrs[idx]) / 10, (float(lrs[idx]), float(losses[idx]))


def steep(
    lrs: Sequence[float] | torch.Tensor, losses: Sequence[float] | torch.Tensor, num_it: int | None = None
) -> Suggestion:
    """The rate where the loss falls fastest against log(lr)."""
    lrs, losses = _curve(lrs, losses)
    if len(lrs) < 2:
        return float(lrs[0]), (float(lrs[0]), float(losses[0]))
    grads = (losses[1:] - losses[:-1]) / (lrs[1:].log() - lrs[:-1].log())
    idx = int(grads.argmin())
    return float(lrs[idx]), (float(lrs[idx]), float(losses[idx]))


def frozen_head_rate(
    lrs: Sequence[float] | torch.Tensor, losses: Sequence[float] | torch.Tensor, base_lr: float
) -> Suggestion:
    """fine_tune's `base_lr` read from a frozen head's curve: `base_lr` (the recipe's rate) unless,
    past the lowest loss, the loss there has climbed halfway to where the finder stopped, or the
    finder stopped before it; then `valley`. A frozen head's valley sits at a third to a half of the
    recipe's rate on every data set measured, and fine_tune following it trained worse than the
    recipe. The test is on the rise, not on where the minimum lies: a noisy, flat curve has its
    minimum anywhere."""
    lrs, losses = _curve(lrs, losses)
    at_base = on_curve(base_lr, lrs, losses)
    lowest = int(losses.argmin())
    low, high = float(losses[lowest]), float(losses[lowest:].max())
    if base_lr > float(lrs[-1]) or (base_lr > float(lrs[lowest]) and at_base > low + 0.5 * (high - low)):
        return valley(lrs, losses)
    return base_lr, (base_lr, at_base)
