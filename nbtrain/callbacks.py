"""Callbacks: code that runs at named points of the learner's one training loop, as fastai's do.

A callback subclasses `Callback` and defines any of the event methods in `EVENTS` (no arguments);
it reads and changes the learner through `self.learn`. One batch runs:

    before_batch -> forward -> after_pred -> loss -> after_loss -> before_backward -> backward
    -> after_backward -> before_step -> step -> after_step -> zero_grad -> after_batch

Raising a `Cancel*Exception` skips the rest of that stage: `CancelBatchException` skips the rest of
the batch (no step, no zero_grad) and runs `after_cancel_batch`; `CancelFitException` ends the fit
after `after_cancel_fit`; `after_fit` always runs. Under DDP, stop from `after_epoch`: the learner
makes every process stop after the same epoch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .learner import Learner

EVENTS = (
    "before_fit", "before_epoch", "before_train", "before_batch", "after_pred", "after_loss", "before_backward",
    "after_backward", "before_step", "after_step", "after_cancel_step", "after_cancel_batch", "after_batch",
    "after_cancel_train", "after_train", "before_validate", "after_cancel_validate", "after_validate",
    "after_cancel_epoch", "after_epoch", "after_cancel_fit", "after_fit",
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


class Callback:
    """Base class: override the events you need. `order` sorts callbacks (lower runs first)."""

    order: int = 0
    learn: "Learner"

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
