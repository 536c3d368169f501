"""The one training loop: every fit, lr_find's included, and the fold models run it.

Each stage runs inside its events (`callbacks.Events.run`, fastai's `_with_events`), so callbacks see
the same events in the same order whatever started the fit. The loop keeps no state of its own: what
callbacks read during a fit (`learn.epoch`, `learn.iter`, `learn.loss`, ...) is on the learner, as in
fastai.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from . import distributed
from .callbacks import (
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelStepException,
    CancelTrainException,
    CancelValidException,
    TrainingInterrupted,
)
from .data import Batch
from .metrics import metric_name
from .progress import ProgressCallback
from .recorder import smooth

if TYPE_CHECKING:
    from .learner import Learner


def slice_lrs(lr: float | slice) -> tuple[float, float]:
    """(body lr, head lr) from fastai's conventions: a number, slice(hi) or slice(lo, hi)."""
    if isinstance(lr, slice):
        hi = lr.stop
        lo = lr.start if lr.start is not None else hi / 10
        return float(lo), float(hi)
    return float(lr), float(lr)


def set_lrs(opt: torch.optim.Optimizer, lr: float | slice) -> None:
    """The body's groups at the low end of `lr`, the head's at the high end (one group: the high end)."""
    lo, hi = slice_lrs(lr)
    n_groups = max(g["group"] for g in opt.param_groups) + 1
    for g in opt.param_groups:
        g["lr"] = lo if n_groups > 1 and g["group"] < n_groups - 1 else hi


def momentum(opt: torch.optim.Optimizer) -> float:
    g = opt.param_groups[-1]
    return float(g["betas"][0]) if "betas" in g else float(g.get("momentum", 0.0))


def as_list(cbs: Sequence[Callback] | Callback | None) -> list[Callback]:
    return [cbs] if isinstance(cbs, Callback) else list(cbs or [])


class FitLoop:
    """`n_epoch` epochs of a learner, each a training part and validation, every stage in its events."""

    def __init__(self, learn: Learner):
        self.learn = learn

    def run(
        self, n_epoch: int, lr: float | slice, scheduler: Callable | None, cbs: list[Callback], progress: bool
    ) -> None:
        """The one loop that every fit runs: `n_epoch` epochs, each a training part and validation."""
        learn = self.learn
        train_model = distributed.training_model(learn.model, learn.dls, learn.device)
        if learn.opt is None:
            learn.create_opt()
        for g in learn.opt.param_groups:
            g["weight_decay"] = learn.wd if g["weight_decay"] else 0.0
        set_lrs(learn.opt, lr)
        n_batches = len(learn.dls.train)
        if n_batches == 0:
            raise ValueError(
                f"The training loader has no full batch: {learn.dls.train.n} images and "
                f"bs={learn.dls.train.bs}. Use a smaller bs."
            )
        if learn.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed-size batches: let cuDNN pick its fastest kernels
        sched = scheduler(learn.opt, n_epoch * n_batches) if scheduler is not None else None
        learn.scaler = learn.make_scaler()
        learn.recorder.metric_names = ["train_loss", "valid_loss", *[metric_name(m) for m in learn.metrics]]
        learn.n_epoch, learn.epoch, learn.iter, learn.n_iter = n_epoch, 0, 0, n_batches
        with learn.added_cbs([*cbs, ProgressCallback()] if progress else cbs):
            for cb in learn.cbs:
                cb.learn = learn  # a callback that travelled to another process belongs to its learner there
            try:
                learn.opt.zero_grad(set_to_none=True)
                learn.events.run(lambda: self._epochs(train_model, sched), "fit", CancelFitException, after="finally")
            except KeyboardInterrupt as e:
                learn.opt.zero_grad(set_to_none=True)
                learn.model.eval()
                if isinstance(e, TrainingInterrupted):
                    raise
                raise TrainingInterrupted(
                    f"stopped by the user in epoch {learn.epoch + 1} of {n_epoch}; the learner keeps the weights "
                    "it had reached and can be used, saved or trained further."
                ) from None

    def _epochs(self, train_model: nn.Module, sched: object) -> None:
        learn = self.learn
        for epoch in range(learn.n_epoch):
            learn.epoch, stop = epoch, False
            try:
                learn.events.run(
                    lambda: self._one_epoch(train_model, sched), "epoch", CancelEpochException, after="always"
                )
            except CancelFitException:
                stop = True
            # Every process stops after the same epoch, whichever decided to.
            if distributed.any_across(stop):
                raise CancelFitException

    def _one_epoch(self, train_model: nn.Module, sched: object) -> None:
        learn = self.learn
        train_loss = self._train_part(train_model, sched)
        valid = self._valid_part()
        learn.recorder.values.append([train_loss, *valid])
        learn.recorder.epoch_iters.append(len(learn.recorder.losses))
        learn.epochs_trained += 1

    def _train_part(self, train_model: nn.Module, sched: object) -> float:
        learn = self.learn
        learn.training = True
        learn.model.train()
        dl = distributed.process_part(learn.dls.train)
        losses: list[torch.Tensor] = []
        ended: list[bool] = []  # the batches ran out, or were cancelled: every process took the same steps

        def batches() -> None:
            for learn.iter, batch in enumerate(dl.batches()):
                learn.loss = None  # a batch cancelled before its loss has none to record
                self._one_batch(train_model, batch)
                if learn.loss is not None:
                    losses.append(learn.loss)
                learn.recorder.lrs.append(learn.opt.param_groups[-1]["lr"])
                learn.recorder.moms.append(momentum(learn.opt))
                if sched is not None:
                    sched.step()
            ended.append(True)

        try:
            learn.events.run(batches, "train", CancelTrainException)
            ended.append(True)
        finally:
            values = torch.stack(losses).float() if losses else torch.empty(0)
            if ended:
                # Each process has its part's loss of every step; their mean is the whole batch's.
                # Not after an error: the other processes would wait for this one forever.
                values = distributed.mean_across(values)
            learn.recorder.losses.extend(values.cpu().tolist())
        smoothed = smooth(learn.recorder.losses)
        return smoothed[-1] if smoothed else float("nan")

    def _valid_part(self) -> list[float]:
        learn = self.learn
        nothing = [float("nan")] * (1 + len(learn.metrics))
        if not learn.dls.valid.n:
            return nothing
        learn.training = False
        values = learn.events.run(learn.validate, "validate", CancelValidException)
        return nothing if values is None else values

    def _one_batch(self, model: nn.Module, batch: Batch) -> None:
        """The one training step: every fit (lr_find's too) and the fold models take it."""
        learn = self.learn
        learn.xb, learn.yb = (batch.x,), (batch.y,)
        learn.idx = None if batch.stand_in else batch.idx
        learn.events.run(
            lambda: self._forward_backward_step(model, batch.stand_in), "batch", CancelBatchException, after="always"
        )

    def _forward_backward_step(self, model: nn.Module, stand_in: bool) -> None:
        learn = self.learn
        with learn.autocast():
            learn.pred = model(*learn.xb)
            learn.events("after_pred")
            learn.loss_grad = learn.loss_func(learn.pred, *learn.yb)
        if stand_in:  # keeps this process in step with the others, and must teach nothing
            learn.loss_grad = learn.loss_grad * 0
        learn.loss = learn.loss_grad.detach()
        learn.events("after_loss")
        learn.events("before_backward")
        (learn.scaler.scale(learn.loss_grad) if learn.scaler is not None else learn.loss_grad).backward()
        learn.events("after_backward")
        learn.events.run(self._step, "step", CancelStepException)
        learn.opt.zero_grad(set_to_none=True)

    def _step(self) -> None:
        learn = self.learn
        if learn.scaler is not None:
            learn.scaler.step(learn.opt)
            learn.scaler.update()
        else:
            learn.opt.step()
