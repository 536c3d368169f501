"""Callbacks: small objects the Learner calls at fixed points of its one training loop.

The events follow fastai's names, so callbacks written for fastai's course port with little change.
A callback is a plain class with any of these methods (no arguments; the state is on `self.learn`):

    before_fit
      before_epoch
        before_train
          before_batch  after_pred  after_loss  before_backward  after_backward
          before_step  after_step  after_cancel_batch  after_batch          (once per batch)
        after_train
        before_validate  ...the same batch events, without backward and step...  after_validate
      after_epoch
    after_cancel_fit  after_fit

Raising one of the `Cancel*Exception`s from an event skips the rest of that stage; `after_fit`
always runs. Callbacks travel to the processes of distributed training by pickling, so they are
module-level classes holding plain data.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the learner imports this module, never the other way round
    from .learner import Learner

EVENTS = (
    "before_fit", "before_epoch", "before_train", "before_batch", "after_pred", "after_loss",
    "before_backward", "after_backward", "before_step", "after_step", "after_cancel_batch", "after_batch",
    "after_train", "before_validate", "after_validate", "after_epoch", "after_cancel_fit", "after_fit",
)


class CancelFitException(Exception):
    """Stop training now; `after_cancel_fit` and `after_fit` still run."""


class CancelEpochException(Exception):
    """Skip the rest of this epoch (training and validation)."""


class CancelTrainException(Exception):
    """Skip the rest of this epoch's training part."""


class CancelValidException(Exception):
    """Skip this epoch's validation."""


class CancelBatchException(Exception):
    """Skip the rest of this batch: no backward, no step."""


class CancelStepException(Exception):
    """Skip the optimizer step of this batch."""


class Callback:
    """Base class: subclass it and define the events you need.

    `order` sorts callbacks (lower runs first). `learn` is set by the Learner when the callback is
    added, so an event reads and may change the training state through it (`learn.xb`, `learn.loss`...).
    """

    order: int = 0
    learn: "Learner"

    def __call__(self, event: str) -> None:
        """Run the method named `event`, if this callback defines it."""
        method = getattr(self, event, None)
        if method is not None:
            method()

    @property
    def name(self) -> str:
        """The class name in snake case without 'Callback', as fastai names callbacks on a learner."""
        name = type(self).__name__
        if name.endswith("Callback") and name != "Callback":
            name = name[: -len("Callback")]
        return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
