"""Callbacks: code that runs at named points of the learner's one training loop, as fastai's do.

A callback subclasses `Callback` and defines any of the event methods in `EVENTS` (no arguments);
it reads and changes the learner through `self.learn`. A method named like an event that is none
(`after_epcoh`) is refused when the callback is added. One batch runs:

    before_batch -> forward -> after_pred -> loss -> after_loss -> before_backward -> backward
    -> after_backward -> before_step -> step -> after_step -> zero_grad -> after_batch

Raising a `Cancel*Exception` skips the rest of that stage: `CancelBatchException` skips the rest of
the batch (no step, no zero_grad) and runs `after_cancel_batch`; `CancelFitException` ends the fit
after `after_cancel_fit`; `after_fit` always runs. Under DDP, stop from `after_epoch`: the learner
makes every process stop after the same epoch.
"""

from __future__ import annotations

import copy
import csv
import difflib
import math
import operator
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .distributed import broadcast, is_main, world_size
from .environment import in_notebook
from .locations import output_dir

if TYPE_CHECKING:
    from .learner import Learner

EVENTS = (
    "before_fit",
    "before_epoch",
    "before_train",
    "before_batch",
    "after_pred",
    "after_loss",
    "before_backward",
    "after_backward",
    "before_step",
    "after_step",
    "after_cancel_step",
    "after_cancel_batch",
    "after_batch",
    "after_cancel_train",
    "after_train",
    "before_validate",
    "after_cancel_validate",
    "after_validate",
    "after_cancel_epoch",
    "after_epoch",
    "after_cancel_fit",
    "after_fit",
)


class CancelFitException(Exception):
    """End the fit now (after `after_cancel_fit` and `after_fit`)."""


class CancelEpochException(Exception):
    """Skip the rest of this epoch."""


class CancelTrainException(Exception):
    """Skip the rest of this epoch's training part."""


class CancelValidException(Exception):
    """Skip this epoch's validation."""


class CancelBatchException(Exception):
    """Skip the rest of this batch: no optimizer step and no zero_grad."""


class CancelStepException(Exception):
    """Skip this batch's optimizer step (the gradients are still zeroed)."""


class TrainingInterrupted(KeyboardInterrupt):
    """The user stopped training (Ctrl-C, or the notebook's interrupt button).

    It ends the whole call (both stages of `fine_tune`, every fold of `find_label_issues`); the learner
    keeps the weights it had reached. A notebook shows its one line rather than a traceback.
    """

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of the traceback
        return [f"{type(self).__name__}: {self}"]


def check_event_names(cb: Callback) -> None:
    """Refuse a method named like an event that is none (a misspelt `after_epcoh` would never run)."""
    for name in dir(cb):
        if name.startswith(("before_", "after_")) and name not in EVENTS and callable(getattr(cb, name, None)):
            close = difflib.get_close_matches(name, EVENTS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise AttributeError(
                f"{type(cb).__name__}.{name} is named like an event of the training loop but is not "
                f"one, so it would never run: {hint}The events are {', '.join(EVENTS)}."
            )


class Callback:
    """Base class: override the events you need. `order` sorts callbacks (lower runs first).

    `lr_find` trains briefly and then puts the learner back: callbacks that keep a record of epochs or
    write files (trackers, loggers, plots) set `skip_in_lr_find`, and sit out its fit.
    """

    order: int = 0
    skip_in_lr_find: bool = False
    learn: Learner

    @property
    def name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        return f"{self.name}()"

    def __getstate__(self) -> dict:
        # Sent to other processes without its learner: each process gives it its own.
        state = dict(self.__dict__)
        state.pop("learn", None)
        return state


class Events:
    """Each event's callback methods, in the callbacks' order, taken once from callbacks already sorted
    (the learner makes a new one when its callbacks change): an event is a walk over a ready list."""

    def __init__(self, cbs: Sequence[Callback]):
        self.handlers = {e: [fn for cb in cbs if (fn := getattr(cb, e, None)) is not None] for e in EVENTS}

    def __call__(self, name: str) -> None:
        for fn in self.handlers[name]:
            fn()

    def run(self, f: Callable[[], object], stage: str, cancel: type[Exception], after: str = "done") -> object:
        """before_<stage>, `f()`, after_<stage>, as fastai's `_with_events`; returns what `f` returns.

        A `cancel` raised in them skips the rest and runs after_cancel_<stage> (and returns None).
        `after` says when after_<stage> runs: "done" only when the stage ran to its end (train,
        validate, step), "always" after a cancel too (epoch, batch), "finally" even after an error (fit).
        """
        before_name, after_name, cancel_name = _STAGE_EVENTS[stage]
        out = None
        try:
            try:
                self(before_name)
                out = f()
                if after == "done":
                    self(after_name)
            except cancel:
                out = None
                self(cancel_name)
            if after == "always":
                self(after_name)
        finally:
            if after == "finally":
                self(after_name)
        return out


_STAGE_EVENTS = {
    s: (f"before_{s}", f"after_{s}", f"after_cancel_{s}")
    for s in ("fit", "epoch", "train", "validate", "batch", "step")
}


# ---------------------------------------------------------------------------------------------
# Tracking a monitored value: the best epoch, and stopping when it no longer improves


def _is_less(comp: Callable) -> bool:
    return comp in (np.less, operator.lt, np.less_equal, operator.le)


class TrackerCallback(Callback):
    """Follows `monitor` (a column of the epoch table) and notes when an epoch beats the best so far.
    In distributed training the first process's value decides.

    `comp` decides what is better: by default lower for a loss or an error, higher otherwise (as in
    fastai). An epoch counts as better only by more than `min_delta`, so noise does not reset the
    count. `reset_on_fit=False` keeps the best across several `fit` calls.
    """

    order = 60
    skip_in_lr_find = True

    def __init__(
        self,
        monitor: str = "valid_loss",
        comp: Callable | None = None,
        min_delta: float = 0.0,
        reset_on_fit: bool = True,
    ):
        if comp is None:
            comp = np.less if ("loss" in monitor or "error" in monitor) else np.greater
        self.monitor, self.comp, self.reset_on_fit = monitor, comp, reset_on_fit
        self.min_delta = -abs(min_delta) if _is_less(comp) else abs(min_delta)
        self.best: float | None = None
        self.new_best = False

    def _initial_best(self) -> float:
        return float("inf") if _is_less(self.comp) else -float("inf")

    def before_fit(self) -> None:
        names = self.learn.recorder.metric_names
        if self.monitor not in names:
            raise ValueError(
                f"{type(self).__name__} monitors {self.monitor!r}, which is not a column of the epoch "
                f"table. Columns: {names}. Pass monitor= one of them (a metric's column exists "
                "when the metric is in the learner's metrics=)."
            )
        if self.best is None or self.reset_on_fit:
            self.best = self._initial_best()
        self.epochs_seen = 0

    def current(self) -> float:
        """This epoch's value of the monitored column, as the first process has it: every process then
        makes the same decision (and the same `learn.save` calls, which wait for one another)."""
        return float(broadcast(self.learn.recorder.last(self.monitor)))

    def after_epoch(self) -> None:
        value = self.current()
        # NaN compares false: an epoch without a valid value never becomes the best.
        self.new_best = bool(self.comp(value - self.min_delta, self.best))
        if self.new_best:
            self.best = value
        self.epochs_seen += 1


class SaveModelCallback(TrackerCallback):
    """Saves the model whenever `monitor` improves, and loads the best at the end of the fit.

    On Kaggle a session can end at any time and the best epoch is rarely the last: the file
    `fname.pth` in `learn.output_path` always holds the best weights so far, written atomically
    (a save that is cut off leaves the previous one intact). `every_epoch=True` (or an int k)
    saves `fname_{epoch}` every (k-th) epoch instead and loads nothing at the end.
    """

    order = TrackerCallback.order + 1

    def __init__(
        self,
        monitor: str = "valid_loss",
        comp: Callable | None = None,
        min_delta: float = 0.0,
        fname: str = "model",
        every_epoch: bool | int = False,
        with_opt: bool = False,
        reset_on_fit: bool = True,
    ):
        super().__init__(monitor, comp, min_delta, reset_on_fit)
        self.fname, self.every_epoch, self.with_opt = fname, every_epoch, with_opt
        self.last_saved_path: Path | None = None
        self.best_epoch: int | None = None

    def before_fit(self) -> None:
        super().before_fit()
        self.saved_this_fit = False

    def _save(self, name: str) -> None:
        self.last_saved_path = self.learn.save(name, with_opt=self.with_opt)
        self.saved_this_fit = True

    def after_epoch(self) -> None:
        epoch = self.learn.epoch
        if self.every_epoch:
            if epoch % int(self.every_epoch) == 0:
                self._save(f"{self.fname}_{epoch}")
            return
        super().after_epoch()
        if self.new_best:
            if is_main():
                print(f"Better model found at epoch {epoch} with {self.monitor} value: {self.best}.", flush=True)
            self.best_epoch = epoch
            self._save(self.fname)

    def after_fit(self) -> None:
        # Only a file saved in this fit: an older one may come from another model or another run.
        if not self.every_epoch and getattr(self, "saved_this_fit", False):
            self.learn.load(self.fname, with_opt=self.with_opt)


class EarlyStoppingCallback(TrackerCallback):
    """Stops training when `monitor` has not improved for `patience` epochs.

    With SaveModelCallback as well, the learner ends with the best epoch's weights rather than the
    last one's. In distributed training every process sees the same epoch table, and the learner
    makes them stop after the same epoch.
    """

    order = TrackerCallback.order + 3

    def __init__(
        self,
        monitor: str = "valid_loss",
        comp: Callable | None = None,
        min_delta: float = 0.0,
        patience: int = 1,
        reset_on_fit: bool = True,
    ):
        if patience < 1:
            raise ValueError(
                f"patience must be 1 or more (epochs without improvement before stopping), not {patience}."
            )
        super().__init__(monitor, comp, min_delta, reset_on_fit)
        self.patience = patience
        self.stopped_epoch: int | None = None

    def before_fit(self) -> None:
        super().before_fit()
        self.wait = 0
        self.stopped_epoch = None

    def after_epoch(self) -> None:
        super().after_epoch()
        if self.new_best:
            self.wait = 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = self.learn.epoch
            if is_main():
                print(f"No improvement since epoch {self.learn.epoch - self.wait}: early stopping.", flush=True)
            raise CancelFitException()


# ---------------------------------------------------------------------------------------------
# Showing and logging progress


class ShowGraphCallback(Callback):
    """A plot of the training loss (per batch) and validation loss (per epoch) that redraws in place
    in the notebook after each epoch. Outside a notebook, and in all but the first process, it does
    nothing, so a script that uses it runs unchanged."""

    order = 65
    skip_in_lr_find = True

    def before_fit(self) -> None:
        self.active = in_notebook() and is_main()
        self.handle = None
        rec = self.learn.recorder
        self.start_loss, self.start_value = len(rec.losses), len(rec.values)
        self.valid_x: list[int] = []

    def after_epoch(self) -> None:
        if not getattr(self, "active", False):
            return
        import matplotlib.pyplot as plt
        from IPython.display import display

        rec = self.learn.recorder
        losses = rec.losses[self.start_loss :]
        self.valid_x.append(len(losses))
        valid = [row[1] for row in rec.values[self.start_value :]]
        per_epoch = max(1, self.valid_x[0])
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(range(len(losses)), losses, label="train")
        ax.plot(self.valid_x[: len(valid)], valid, "o-", label="valid")
        ax.set_xlim(0, max(len(losses), self.learn.n_epoch * per_epoch))
        ax.set_xlabel("batch")
        ax.set_ylabel("loss")
        ax.legend()
        fig.tight_layout()
        if self.handle is None:
            self.handle = display(fig, display_id=True)
        else:
            self.handle.update(fig)
        plt.close(fig)  # shown through the handle only, not again at the end of the cell

    def __getstate__(self) -> dict:
        state = super().__getstate__()  # without its learner, as every callback
        state.pop("handle", None)
        return state


class CSVLogger(Callback):
    """Writes the epoch table to `fname` (in the learner's output folder unless absolute), one row per
    epoch, flushed to disk as it goes, so the history survives a session that ends mid-training.

    `append=True` adds to an existing file (its header is written once). Only the first process writes.
    """

    order = 60
    skip_in_lr_find = True

    def __init__(self, fname: str | Path = "history.csv", append: bool = False):
        self.fname, self.append = Path(fname), append
        self.file = None

    @property
    def path(self) -> Path:
        """The CSV file's full path."""
        if self.fname.is_absolute():
            return self.fname
        return output_dir(self.learn.path, ".") / self.fname

    def read_log(self):
        """The file as a pandas DataFrame."""
        import pandas as pd

        return pd.read_csv(self.path)

    def before_fit(self) -> None:
        if not is_main():
            return
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        has_rows = self.append and path.exists() and path.stat().st_size > 0
        self.file = path.open("a" if self.append else "w", newline="")
        self.writer = csv.writer(self.file)
        if not has_rows:
            self._write(["epoch", *self.learn.recorder.metric_names, "time"])

    def before_epoch(self) -> None:
        self.start = time.time()

    def _write(self, row: Sequence[object]) -> None:
        self.writer.writerow(row)
        self.file.flush()
        os.fsync(self.file.fileno())

    def after_epoch(self) -> None:
        if self.file is None:
            return
        m, s = divmod(int(round(time.time() - self.start)), 60)
        self._write([self.learn.epoch, *[repr(float(v)) for v in self.learn.recorder.values[-1]], f"{m:02d}:{s:02d}"])

    def after_fit(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def __getstate__(self) -> dict:
        state = super().__getstate__()  # without its learner, as every callback
        for k in ("file", "writer"):
            state.pop(k, None)
        return state


# ---------------------------------------------------------------------------------------------
# Changing the training step


class GradientAccumulation(Callback):
    """Steps the optimizer once every `n_acc` samples, summing the gradients of the batches between.

    A large effective batch on a small GPU: with bs=8 and n_acc=32, each step has the gradient that
    one batch of 32 would give (each batch's loss for backward is scaled by bs/n_acc, as fastai does).
    Counts samples across all processes in distributed training. BatchNorm still sees batches of `bs`.
    """

    order = -20

    def __init__(self, n_acc: int = 32):
        if n_acc < 1:
            raise ValueError(f"n_acc is a number of samples per optimizer step (e.g. 32), not {n_acc}.")
        self.n_acc = n_acc
        self.count = 0  # also when lr_find takes training steps without a fit

    def before_fit(self) -> None:
        self.count = 0

    def _bs(self) -> int:
        return len(self.learn.yb[0]) * world_size()

    def after_loss(self) -> None:
        if self.learn.training:
            self.learn.loss_grad = self.learn.loss_grad * (self._bs() / self.n_acc)

    def before_step(self) -> None:
        self.count += self._bs()
        if self.count < self.n_acc:
            raise CancelBatchException()  # no step and no zero_grad: the gradients add up
        self.count = 0


class _MixHandler(Callback):
    """What MixUp and CutMix share: mix each training batch with a shuffled copy of itself.

    For single-label targets (class indices) the loss is mixed: lam * loss(pred, y) + (1 - lam) *
    loss(pred, y_shuffled); for multi-label (float) targets the targets themselves are mixed. The
    learner's loss function is swapped only while training and put back for validation and after
    the fit, so validation loss and metrics are the plain ones.
    """

    order = -10  # before other callbacks see the batch

    def __init__(self, alpha: float):
        if alpha <= 0:
            raise ValueError(f"alpha must be positive (the Beta distribution's parameter), not {alpha}.")
        self.alpha = alpha
        self.old_loss_func = None

    def _distrib(self) -> torch.distributions.Beta:
        a = torch.tensor(float(self.alpha))
        return torch.distributions.Beta(a, a)

    def before_train(self) -> None:
        if self.old_loss_func is None:  # not still swapped in from a training part that was cut short
            self.old_loss_func, self.learn.loss_func = self.learn.loss_func, self.loss_func

    def after_train(self) -> None:
        if self.old_loss_func is not None:
            self.learn.loss_func, self.old_loss_func = self.old_loss_func, None

    def after_cancel_train(self) -> None:
        self.after_train()

    def after_cancel_fit(self) -> None:
        self.after_train()

    def after_fit(self) -> None:
        self.after_train()

    def loss_func(self, pred: torch.Tensor, *yb: torch.Tensor) -> torch.Tensor:
        """The original loss on the mixed batch: both targets weighted by `lam`."""
        if not self.learn.training or not getattr(self, "mix_loss", False):
            return self.old_loss_func(pred, *yb)
        lf = copy.copy(self.old_loss_func)
        reduction = getattr(lf, "reduction", "mean")
        if hasattr(lf, "reduction"):
            lf.reduction = "none"
            a, b = lf(pred, *self.yb1), lf(pred, *yb)
        else:
            a = torch.stack([self.old_loss_func(p[None], t[None]) for p, t in zip(pred, self.yb1[0])])
            b = torch.stack([self.old_loss_func(p[None], t[None]) for p, t in zip(pred, yb[0])])
        loss = torch.lerp(a, b, self.lam.to(a.dtype))
        return loss.sum() if reduction == "sum" else loss.mean()

    def before_batch(self) -> None:
        if not self.learn.training:
            return
        x, y = self.learn.xb[0], self.learn.yb[0]
        shuffle = torch.randperm(len(y), device=x.device)
        mixed, self.lam = self.mix(x, shuffle)
        self.learn.xb = (mixed,)
        self.yb1 = (y[shuffle],)
        self.mix_loss = not torch.is_floating_point(y)
        if not self.mix_loss:  # multi-hot targets: mix them; the loss stays as it is
            lam = self.lam.view(-1, *[1] * (y.ndim - 1)) if self.lam.ndim else self.lam
            self.learn.yb = (torch.lerp(y[shuffle], y, lam.to(y.dtype)),)

    def mix(self, x: torch.Tensor, shuffle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixed batch, and the weight of each image's own label (one per image, or one for all)."""
        raise NotImplementedError


class MixUp(_MixHandler):
    """MixUp (Zhang et al., 2018): blend each training image with another of the batch, with a
    weight drawn from Beta(alpha, alpha) and kept above 0.5, and blend their labels the same way."""

    def __init__(self, alpha: float = 0.4):
        super().__init__(alpha)

    def mix(self, x: torch.Tensor, shuffle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lam = self._distrib().sample((len(x),)).to(x.device)
        lam = torch.maximum(lam, 1 - lam)  # the original image dominates
        return torch.lerp(x[shuffle], x, lam.view(-1, *[1] * (x.ndim - 1)).to(x.dtype)), lam


class CutMix(_MixHandler):
    """CutMix (Yun et al., 2019): paste a random rectangle from another image of the batch, and weight
    the labels by the areas, with the rectangle's share drawn from Beta(alpha, alpha)."""

    def __init__(self, alpha: float = 1.0):
        super().__init__(alpha)

    def mix(self, x: torch.Tensor, shuffle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2:]
        x1, y1, x2, y2 = self.rand_bbox(w, h, float(self._distrib().sample()))
        x = x.clone()
        x[..., y1:y2, x1:x2] = x[shuffle][..., y1:y2, x1:x2]
        return x, torch.tensor(1 - ((x2 - x1) * (y2 - y1)) / float(w * h), device=x.device)  # the area left

    @staticmethod
    def rand_bbox(w: int, h: int, lam: float) -> tuple[int, int, int, int]:
        """A box of about (1 - lam) of the image's area, centred uniformly at random, clipped to the image."""
        cut = math.sqrt(1.0 - lam)
        cut_w, cut_h = round(w * cut), round(h * cut)
        cx, cy = int(torch.randint(0, w, (1,))), int(torch.randint(0, h, (1,)))
        x1, y1 = min(max(cx - cut_w // 2, 0), w), min(max(cy - cut_h // 2, 0), h)
        x2, y2 = min(max(cx + cut_w // 2, 0), w), min(max(cy + cut_h // 2, 0), h)
        return x1, y1, x2, y2
