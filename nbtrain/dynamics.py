"""Training dynamics: each training image's margin and loss every time training sees it.

A wrong label shows in how training treats the image: the model keeps scoring its given label below
another class until it memorises it (the area under the margin, Pleiss et al. 2020; the loss across
epochs, O2U-Net 2019). `TrainingDynamics` is on by default in every learner; it keeps, per epoch, one
value per training image, indexed by the image's dataset index. Each step's values stay on the model's
device until the epoch ends, then go to the CPU in one copy: no step waits for the device. The scores
made from the records live in `nbtrain.label_issues`; this module only records.

While the body is frozen (fine_tune's first epochs) it is the pretrained body, and the recorder also
keeps each image's features in it (the body's output, average-pooled, unit length, float16): the label
rankings read them instead of passing over the images with the pretrained body again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import distributed
from .callbacks import Callback, CutMix, MixUp


def batch_margins(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each item's margin (its given label's logit minus the largest other) and plain cross-entropy,
    in float32 whatever precision the model ran in."""
    z = logits.detach().float()
    t = targets.long()[:, None]
    given = z.gather(1, t).squeeze(1)
    other = z.scatter(1, t, float("-inf")).amax(dim=1)
    return given - other, F.cross_entropy(z, t.squeeze(1), reduction="none")


def pooled_features(f: torch.Tensor) -> torch.Tensor:
    """A body's output as one unit-length float32 vector per image (average-pooled over the image)."""
    f = f.float()
    return F.normalize(f.mean(dim=(2, 3)) if f.ndim == 4 else f.flatten(1), dim=1)


class TrainingDynamics(Callback):
    """Records each training image's margin and loss at every step that sees it.

    `margins` and `losses` are (epochs, n_train) float32 arrays: row e holds what epoch e's step gave
    each image, NaN where an epoch did not see it (a dropped last batch). Records grow across fits
    (fine_tune's frozen and unfrozen epochs make one history) and start afresh when the training set
    changes size. Batches mixed by MixUp or CutMix are not recorded: a mixed image shows two labels, so
    its margin against its own says little. Multi-label training records nothing.
    """

    order = 50  # after the mixing callbacks have decided the batch
    skip_in_lr_find = True

    def __init__(self) -> None:
        self.margins = torch.empty(0, 0)
        self.losses = torch.empty(0, 0)
        self._steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None  # (idx, margin, loss)
        self._mixing = False
        # "train"/"valid" -> (n, d) features in the frozen body, NaN rows for images it did not see
        self.frozen_features: dict[str, torch.Tensor] = {}
        self._seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (idx, features)
        self._hook = None
        self._validating = False
        # Once an epoch has trained the body, a frozen body is no longer the pretrained one.
        self.body_trained = False

    @property
    def n_epochs(self) -> int:
        return len(self.margins)

    def before_fit(self) -> None:
        n = len(self.learn.dls.train.dataset)
        if self.margins.shape[1:] != (n,):
            self.margins, self.losses = torch.empty(0, n), torch.empty(0, n)
            self.frozen_features = {}
        self._mixing = any(isinstance(cb, (MixUp, CutMix)) for cb in self.learn.cbs)
        body = getattr(self.learn.model, "body", None)
        # Under DDP each process would see its part of the images: the rankings make their own pass then.
        if isinstance(body, torch.nn.Module) and not self.learn.dls.multi_label and not distributed.is_distributed():
            self._hook = body.register_forward_hook(self._body_output)

    def after_fit(self) -> None:
        if self._hook is not None:
            self._hook.remove()
        self._hook, self._seen = None, []

    def _body_output(self, module: torch.nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        learn = self.learn
        idx = getattr(learn, "idx", None)
        model = learn.model
        if idx is None or self.body_trained or not getattr(model, "body_frozen", False):
            return
        if not getattr(model, "pretrained", False):
            return  # a frozen random body is no stand-in for the pretrained one
        if self._steps is None or self._mixing if learn.training else not self._validating:
            return
        self._seen.append((idx, pooled_features(out.detach()).half()))

    def before_validate(self) -> None:
        self._seen, self._validating = [], True

    def after_validate(self) -> None:
        self._validating = False
        self._keep_features("valid", len(self.learn.dls.valid.dataset))

    def after_cancel_validate(self) -> None:
        self._seen, self._validating = [], False

    def _keep_features(self, split: str, n: int) -> None:
        """Each image's frozen-body features as the part just ended saw them, over what earlier parts saw."""
        seen, self._seen = self._seen, []
        if not seen:
            return
        new = torch.full((n, seen[0][1].shape[1]), float("nan"), dtype=torch.float16)
        new[torch.cat([i for i, _ in seen]).long().cpu()] = torch.cat([f for _, f in seen]).cpu()
        old = self.frozen_features.get(split)
        if old is not None and old.shape == new.shape:
            new = torch.where(new.isnan(), old, new)
        self.frozen_features[split] = new

    def before_train(self) -> None:
        self._steps = []
        self._seen = []

    def after_loss(self) -> None:
        learn = self.learn
        idx = getattr(learn, "idx", None)
        if not learn.training or self._steps is None or idx is None or self._mixing or learn.dls.multi_label:
            return
        if learn.pred.ndim != 2 or learn.yb[0].ndim != 1:
            return  # a custom model or loss that is not one class per image: nothing to record, never a crash
        self._steps.append((idx, *batch_margins(learn.pred, learn.yb[0])))

    def after_train(self) -> None:
        steps, self._steps = self._steps, None
        if steps is None:
            return
        self._keep_features("train", self.margins.shape[1])
        if not getattr(self.learn.model, "body_frozen", False):
            self.body_trained = True
        n = self.margins.shape[1]
        epoch = torch.full((2, n), float("nan"))
        if steps:
            idx = torch.cat([s[0] for s in steps]).long().cpu()
            epoch[:, idx] = torch.stack([torch.cat([s[k] for s in steps]) for k in (1, 2)]).cpu()
        epoch = _merged_across_processes(epoch)
        if epoch.isnan().all():
            return  # nothing was recorded (mixed or multi-label batches)
        self.margins = torch.cat([self.margins, epoch[0][None]])
        self.losses = torch.cat([self.losses, epoch[1][None]])

    def after_cancel_train(self) -> None:
        self._steps = None  # a training part cut short: its epoch is left out rather than half recorded
        self._seen = []

    def state_dict(self) -> dict:
        """The records, as plain tensors: the learner's training state carries them home from DDP processes."""
        frozen = {k: v.clone() for k, v in self.frozen_features.items()}
        return {
            "margins": self.margins.clone(),
            "losses": self.losses.clone(),
            "frozen_features": frozen,
            "body_trained": self.body_trained,
        }

    def load_state_dict(self, state: dict) -> None:
        self.margins, self.losses = state["margins"].clone(), state["losses"].clone()
        self.frozen_features = {k: v.clone() for k, v in state.get("frozen_features", {}).items()}
        self.body_trained = bool(state.get("body_trained", self.body_trained))

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_steps"], state["_seen"], state["_hook"] = None, [], None
        return state


def _merged_across_processes(values: torch.Tensor) -> torch.Tensor:
    """Each process recorded the images of its own part of each batch: the element-wise value that any
    process recorded (NaN where none did); `values` itself outside distributed training."""
    if not distributed.is_distributed():
        return values
    seen = ~values.isnan()
    # Means over the processes: their ratio is the mean of the values recorded, the world size cancels.
    total = distributed.mean_across(torch.where(seen, values, torch.zeros_like(values)))
    count = distributed.mean_across(seen.float())
    return torch.where(count > 0, total / torch.where(count > 0, count, 1.0), torch.full_like(total, float("nan")))
