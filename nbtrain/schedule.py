"""Training schedules over `Learner.fit`, as fastai's callback/schedule.py: the one-cycle policy,
`fine_tune`, and the learning-rate finder, a callback on fit's own loop (one training step for all).

The functions take the learner as their first argument (the Learner's methods of the same names
call them) and use its public methods only: this module sits below the learner.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch.optim.lr_scheduler import OneCycleLR
from tqdm.auto import tqdm

from . import distributed
from .callbacks import Callback, CancelFitException, CancelValidException, TrainingInterrupted
from .environment import in_notebook
from .lr_suggestions import frozen_head_rate, on_curve, valley
from .models import VisionModel
from .recipe import unfrozen_rates
from .recorder import smooth

if TYPE_CHECKING:
    from .learner import Learner


# ---------------------------------------------------------------------------------------------
# The one-cycle policy and transfer learning


def one_cycle(
    opt: torch.optim.Optimizer,
    total_steps: int,
    div: float = 25.0,
    div_final: float = 1e5,
    pct_start: float = 0.25,
    moms: tuple[float, float, float] = (0.95, 0.85, 0.95),
) -> OneCycleLR:
    """torch's OneCycleLR peaking at the optimizer's current rates: what `fit(scheduler=...)` takes."""
    m_hi, m_lo, _ = moms
    return OneCycleLR(
        opt,
        max_lr=[g["lr"] for g in opt.param_groups],
        total_steps=total_steps,
        pct_start=pct_start,
        anneal_strategy="cos",
        cycle_momentum=True,
        base_momentum=m_lo,
        max_momentum=m_hi,
        div_factor=div,
        final_div_factor=div_final / div,
    )


def fit_one_cycle(
    learn: Learner,
    n_epoch: int,
    lr_max: float | slice | None = None,
    div: float = 25.0,
    div_final: float = 1e5,
    pct_start: float = 0.25,
    moms: tuple[float, float, float] = (0.95, 0.85, 0.95),
    wd: float | None = None,
    cbs: Sequence[Callback] | Callback | None = None,
) -> None:
    """`Learner.fit_one_cycle`: `fit` with the one-cycle schedule."""
    learn.fit(
        n_epoch,
        lr_max,
        wd=wd,
        cbs=cbs,
        scheduler=partial(one_cycle, div=div, div_final=div_final, pct_start=pct_start, moms=moms),
    )


def fine_tune(
    learn: Learner,
    epochs: int,
    base_lr: float | None = None,
    freeze_epochs: int | None = None,
    lr_mult: float | None = None,
    pct_start: float | None = None,
    div: float | None = None,
    cbs: Sequence[Callback] | Callback | None = None,
    **kwargs,
) -> None:
    """`Learner.fine_tune`: the head alone, then the whole model.

    By default the head-only epoch is also a probe: where its validation error shows the pretrained
    features already separate the classes, the body trains 10x slower than the head (fastai: 100x)
    at fastai's base rate; where they do not (digits, scans, small greyscale images), body and head
    train at one rate 5x higher. With `lr_mult` not given, a `base_lr` given is the head-only rate
    and the near end of this scaling, while far data still trains at the recipe's far rate (a head's
    rate says nothing of how fast the body must move); with both given, the head trains at
    `base_lr / 2` and the body `lr_mult` times slower, as in fastai.
    """
    r = learn.recipe
    freeze_epochs = r["freeze_epochs"] if freeze_epochs is None else freeze_epochs
    pct_start = r["pct_start"] if pct_start is None else pct_start
    div = r["div"] if div is None else div
    probe = float("nan")
    if isinstance(learn.model, VisionModel) and freeze_epochs > 0:
        learn.freeze()
        fit_one_cycle(
            learn, freeze_epochs, slice(r["base_lr"] if base_lr is None else base_lr), pct_start=0.99, cbs=cbs, **kwargs
        )
        probe = learn.recorder.valid_error
    if lr_mult is None and r["lr_mult"] is None:  # the probe sets the body's multiplier and scales base_lr
        base_lr, lr_mult = unfrozen_rates(probe, learn.dls.c, r, base_lr, bs=learn.dls.train.bs)
    elif base_lr is None:
        base_lr = r["base_lr"]
    lr_mult = r["lr_mult"] if lr_mult is None else lr_mult
    base_lr /= 2
    learn.fine_tune_rates = {"body": base_lr / lr_mult, "head": base_lr, "lr_mult": lr_mult, "probe_error": probe}
    learn.unfreeze()
    fit_one_cycle(learn, epochs, slice(base_lr / lr_mult, base_lr), pct_start=pct_start, div=div, cbs=cbs, **kwargs)


# ---------------------------------------------------------------------------------------------
# The learning-rate finder


class LRFinder(Callback):
    """lr_find's part of a fit: the rate of every training batch grows exponentially from `start_lr`
    to `end_lr` over `num_it` batches; validation is skipped, and the fit ends after `num_it`
    batches, or once the smoothed loss exceeds 4x its lowest (`stop_div`)."""

    order = 1000  # sets the next rate and decides to stop after every other callback's after_batch

    def __init__(self, start_lr: float = 1e-7, end_lr: float = 10, num_it: int = 100, stop_div: bool = True):
        self.start_lr, self.end_lr, self.num_it, self.stop_div = start_lr, end_lr, num_it, stop_div

    def _set_next_lr(self) -> None:
        self.lr = self.start_lr * (self.end_lr / self.start_lr) ** (len(self.lrs) / max(1, self.num_it - 1))
        for g in self.learn.opt.param_groups:
            g["lr"] = self.lr

    def before_fit(self) -> None:
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.best = float("inf")
        self.bar = tqdm(total=self.num_it, desc="lr_find", leave=False, disable=None)
        self._set_next_lr()

    def after_batch(self) -> None:
        if self.learn.loss is None:  # a batch another callback cancelled before its loss
            return
        value = float(self.learn.loss)
        self.lrs.append(self.lr)
        self.losses.append(value)
        self.bar.update(1)
        smoothed = smooth(self.losses)[-1]
        self.best = min(self.best, smoothed)
        diverged = self.stop_div and (not math.isfinite(value) or smoothed > 4 * self.best)
        # Every process stops at the same batch, whichever saw the loss diverge.
        if distributed.any_across(diverged or len(self.lrs) >= self.num_it):
            raise CancelFitException()
        self._set_next_lr()

    def before_validate(self) -> None:
        raise CancelValidException()

    def after_fit(self) -> None:
        self.bar.close()


def suggested_lrs(suggest_funcs: Sequence[Callable]) -> type:
    """fastai's `SuggestedLRs`: a named tuple with one field per suggestion function, named after it."""
    return collections.namedtuple("SuggestedLRs", [getattr(f, "func", f).__name__ for f in suggest_funcs])


def lr_find(
    learn: Learner,
    start_lr: float = 1e-7,
    end_lr: float = 10,
    num_it: int = 100,
    stop_div: bool = True,
    show_plot: bool = True,
    suggest_funcs: Sequence[Callable] | Callable = (valley,),
) -> tuple:
    """`Learner.lr_find`: a fit with `LRFinder` from a fresh optimizer, then the learner put back.

    With the body frozen and the default recipe, `valley` is for `fine_tune(base_lr=...)`: the
    recipe's `base_lr` unless the loss is already climbing there, else the valley
    (`lr_suggestions.frozen_head_rate`; the head's own valley trains worse).
    """
    funcs = tuple(suggest_funcs) if isinstance(suggest_funcs, (list, tuple)) else (suggest_funcs,)
    result_type = suggested_lrs(funcs)  # before training: a bad function fails at once
    state = learn.training_state()
    learn.create_opt()
    finder = LRFinder(start_lr, end_lr, num_it, stop_div)
    # Augmentation and dropout draw from torch's global generators: they are given back too.
    devices = [learn.device] if learn.device.type == "cuda" else []
    paused = [cb for cb in learn.cbs if cb.skip_in_lr_find]  # no checkpoints, log rows or plots of a trial
    learn.remove_cbs(paused)
    try:
        with torch.random.fork_rng(devices=devices):
            learn.fit(math.ceil(num_it / max(1, len(learn.dls.train))), start_lr, cbs=finder, progress=False)
    except TrainingInterrupted:
        raise TrainingInterrupted("lr_find stopped by the user; the learner is as it was before.") from None
    finally:
        learn.add_cbs(paused)
        learn.load_training_state(state)
    smoothed = smooth(finder.losses)
    # The last few points are where the loss blows up; they carry no advice.
    keep = max(3, len(smoothed) - 5)
    learn.recorder.lr_find_lrs, learn.recorder.lr_find_losses = finder.lrs[:keep], smoothed[:keep]
    curve = torch.tensor(finder.lrs[:keep]), torch.tensor(smoothed[:keep])
    suggestions = {name: _suggestion(f, *curve, num_it) for name, f in zip(result_type._fields, funcs)}
    if (
        "valley" in suggestions
        and learn.recipe["lr_mult"] is None
        and isinstance(learn.model, VisionModel)
        and learn.model.body_frozen
    ):
        # For fine_tune's base_lr, which the frozen head's own valley is not (see frozen_head_rate).
        suggestions["valley"] = frozen_head_rate(*curve, learn.recipe["base_lr"])
    if show_plot:
        _show(learn.recorder.plot_lr_find(points={n: p for n, (_, p) in suggestions.items()}))
    return result_type(*(lr for lr, _ in suggestions.values()))


def _suggestion(
    func: Callable, lrs: torch.Tensor, losses: torch.Tensor, num_it: int
) -> tuple[float, tuple[float, float]]:
    """What a suggestion function gives, as fastai's do: `(lr, (lr, loss) to mark)`; a bare rate is
    taken too, marked on the curve."""
    out = func(lrs, losses, num_it)
    if isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], (tuple, list)):
        return float(out[0]), (float(out[1][0]), float(out[1][1]))
    lr = float(out)
    return lr, (lr, on_curve(lr, lrs, losses))


def _show(fig) -> None:
    """Show a figure in a notebook; in a script the caller keeps it."""
    if in_notebook():
        import matplotlib.pyplot as plt
        from IPython.display import display

        display(fig)
        plt.close(fig)
