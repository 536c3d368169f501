"""The Learner: the training loop and its events, the training state, and the methods users call.

One loop, `Learner._fit`, runs every fit: `fit`, `fit_one_cycle`, `fine_tune` and `lr_find` (see
`nbtrain.schedule`) are fits with a schedule or a callback. What is not the loop lives beside it:
predictions (`nbtrain.predictions`), model files (`nbtrain.persistence`), the summary
(`nbtrain.summary`), progress (`nbtrain.progress`); the Learner's methods of those names call them.
Mixed precision is `torch.amp`.
"""

from __future__ import annotations

import copy
import functools
import inspect
import pickle
import warnings
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from . import distributed, persistence, predictions, schedule
from .augmentation import Normalize
from .callbacks import (
    Callback,
    Events,
    TrainingInterrupted,
    check_event_names,
)
from .data import DataError, DataLoader, DataLoaders
from .datablock import MaskBlock
from .dynamics import TrainingDynamics
from .environment import mixed_precision, release_device_memory
from .locations import output_dir
from .loop import FitLoop, as_list
from .lr_suggestions import valley
from .models import VisionModel, channels_last_friendly, create_vision_model
from .recipe import get_recipe
from .recorder import Recorder
from .summary import ModelSummary


def _param_groups(model: nn.Module, wd: float) -> list[dict]:
    """The optimizer's groups: body and head apart (a VisionModel's), each with weight decay on weights
    only, not on biases and norm layers, as fastai."""
    groups = model.param_groups() if isinstance(model, VisionModel) else [list(model.parameters())]
    out = []
    for g, params in enumerate(groups):
        out.append({"params": [p for p in params if p.ndim > 1], "weight_decay": wd, "group": g})
        out.append({"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "group": g})
    return out


def _default_loss(multi_label: bool, label_smoothing: float = 0.0) -> nn.Module:
    return nn.BCEWithLogitsLoss() if multi_label else nn.CrossEntropyLoss(label_smoothing=label_smoothing)


@dataclass
class TrainingState:
    """Everything a fit changes, on the CPU: what `Learner.training_state` takes and
    `Learner.load_training_state` restores (lr_find puts it back; processes started for DDP send it home)."""

    model: dict[str, torch.Tensor]
    opt: dict | None
    recorder: dict
    epochs_trained: int
    body_frozen: bool | None
    loader_rng: list[torch.Tensor]
    dynamics: dict | None = None  # the TrainingDynamics records, when the learner keeps them

    def to_dict(self) -> dict:
        """Plain data and tensors only, so `torch.load(weights_only=True)` can read it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainingState:
        return cls(**d)


def _to_cpu(obj: object) -> object:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return copy.deepcopy(obj)


def _launches_processes(method: Callable) -> Callable:
    """The one place where a training method's `n_gpus` > 1 starts that many processes (with
    `start_method`), which run the method with the other arguments (`_fit_in_processes`)."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def run(self: Learner, *args, **kwargs):
        given = signature.bind(self, *args, **kwargs).arguments
        if not distributed.should_launch(given.get("n_gpus")):
            return method(self, *args, **kwargs)
        passed = {k: v for k, v in given.items() if k not in ("self", "n_gpus", "start_method", "kwargs")}
        passed.update(given.get("kwargs", {}))
        return _fit_in_processes(self, method.__name__, (), passed, given["n_gpus"], given.get("start_method"))

    return run


class Learner:
    """Trains `model` on `dls`, with `loss_func` and `metrics`.

    `opt_func` builds the optimizer from parameter groups (torch's AdamW by default, with decoupled
    weight decay `wd`, as fastai's Adam). `cbs` are callbacks run in every fit (see
    `nbtrain.callbacks`). Models, logs and exports go to `path/model_dir`, or to /kaggle/working when
    the data sits in Kaggle's read-only input. `recipe` holds the defaults of `fine_tune`,
    `fit_one_cycle`, `lr` and the loss (`nbtrain.recipe`): "nbtrain", or "fastai" for fastai's values.
    """

    def __init__(
        self,
        dls: DataLoaders,
        model: nn.Module,
        loss_func: Callable | None = None,
        opt_func: Callable = torch.optim.AdamW,
        lr: float | None = None,
        metrics: Sequence[Callable] | Callable | None = None,
        path: Path | str | None = None,
        model_dir: str = "models",
        wd: float = 0.01,
        thresh: float = 0.5,
        cbs: Sequence[Callback] | Callback | None = None,
        recipe: str | dict | None = None,
    ):
        self.recipe = get_recipe(recipe)
        lr = self.recipe["lr"] if lr is None else lr
        self.dls, self.opt_func, self.lr, self.wd, self.thresh = dls, opt_func, lr, wd, thresh
        self.loss_func = (
            loss_func if loss_func is not None else _default_loss(dls.multi_label, self.recipe["label_smoothing"])
        )
        self.metrics = metrics
        self.path = Path(path) if path is not None else dls.path
        self.model_dir = model_dir
        self.model = model.to(dls.device)
        self.recorder = Recorder()
        self.opt: torch.optim.Optimizer | None = None
        self.amp: str | torch.dtype | None = "auto"
        self.scaler: torch.amp.GradScaler | None = None
        self.cbs: list[Callback] = []
        # On by default: recording each image's margin costs little next to a step, and ranks labels later.
        self.add_cbs([TrainingDynamics(), *as_list(cbs)])
        self.epochs_trained = 0
        # What callbacks read during a fit (fastai's names).
        self.epoch = self.n_epoch = self.iter = self.n_iter = 0
        self.training = False
        self.xb: tuple = ()
        self.yb: tuple = ()
        self.idx: torch.Tensor | None = None  # the batch's dataset indices; None for a stand-in batch
        self.pred = self.loss = self.loss_grad = None

    # -- set-up ---------------------------------------------------------------------------------

    @property
    def metrics(self) -> list[Callable]:
        return self._metrics

    @metrics.setter
    def metrics(self, metrics: Sequence[Callable] | Callable | None) -> None:
        """One metric or several, as fastai's `learn.metrics = partial(accuracy_multi, thresh=0.1)`."""
        self._metrics = list(metrics) if isinstance(metrics, (list, tuple)) else ([metrics] if metrics else [])

    @property
    def device(self) -> torch.device:
        return self.dls.device

    @property
    def data(self) -> DataLoaders:
        """fastai v1's name for `dls`: the course's `learn.data = data` trains on other loaders."""
        return self.dls

    @data.setter
    def data(self, dls: DataLoaders) -> None:
        self.dls = dls

    @property
    def output_path(self) -> Path:
        """Where `save`, `export` and the cleaner's journals write."""
        return output_dir(self.path, self.model_dir)

    @property
    def pct_train(self) -> float:
        """How far through the current fit's training steps, from 0 to 1."""
        return (self.epoch * self.n_iter + self.iter) / max(1, self.n_epoch * self.n_iter)

    def create_opt(self) -> torch.optim.Optimizer:
        kwargs = {}
        if self.opt_func in (torch.optim.AdamW, torch.optim.Adam):
            kwargs = {"betas": (0.9, 0.99), "eps": 1e-5}
            # The fused kernel also lets GradScaler.step skip its host sync on the GPU.
            if self.device.type == "cuda":
                kwargs["fused"] = True
        self.opt = self.opt_func(_param_groups(self.model, self.wd), lr=self.lr, **kwargs)
        return self.opt

    def freeze(self) -> None:
        """Train only the new head; the pretrained body keeps its weights (and runs without gradients)."""
        if not isinstance(self.model, VisionModel):
            raise TypeError("freeze() needs a model with a pretrained body and a head; vision_learner makes one.")
        self.model.body_frozen = True
        self.model.body.requires_grad_(False)

    def unfreeze(self) -> None:
        """Train the whole model."""
        if isinstance(self.model, VisionModel):
            self.model.body_frozen = False
        self.model.requires_grad_(True)

    def freeze_to(self, n: int) -> None:
        """fastai's freeze_to: 0 (or more) unfreezes everything, a negative number freezes the body."""
        self.freeze() if n < 0 else self.unfreeze()

    # -- mixed precision: decided here, used by every pass ----------------------------------------

    def to_fp16(self) -> Learner:
        """Mixed precision in float16, with a gradient scaler (the choice for T4 and P100 GPUs).

        It needs a CUDA GPU: elsewhere the learner says so and trains in float32 (`mixed_precision`)."""
        if self.device.type != "cuda":
            warnings.warn(
                f"to_fp16(): float16 mixed precision needs a CUDA GPU; on {self.device.type} this learner "
                "trains in float32 (to_bf16() gives mixed precision on CPUs with AMX).",
                stacklevel=2,
            )
        self.amp = torch.float16
        return self

    def to_bf16(self) -> Learner:
        """Mixed precision in bfloat16 (Ampere GPUs and later, or CPUs with AMX)."""
        self.amp = torch.bfloat16
        return self

    def to_fp32(self) -> Learner:
        """Full precision."""
        self.amp = None
        return self

    def _amp_dtype(self) -> torch.dtype | None:
        return mixed_precision(self.device, self.amp)[0]

    def autocast(self):
        """The autocast context of this learner's precision, for a forward pass."""
        dtype = self._amp_dtype()
        dev = self.device.type if self.device.type in ("cuda", "cpu", "mps") else "cpu"
        return torch.autocast(dev, dtype=dtype, enabled=dtype is not None)

    def make_scaler(self) -> torch.amp.GradScaler | None:
        """A gradient scaler when training in float16 on a GPU (bfloat16 and fp32 need none)."""
        return torch.amp.GradScaler("cuda") if mixed_precision(self.device, self.amp)[1] else None

    # -- the training state ---------------------------------------------------------------------

    def training_state(self, with_opt: bool = True) -> TrainingState:
        """A CPU copy of what training changes: weights, optimizer, recorder, epochs, frozen body, loader RNGs."""
        return TrainingState(
            model=_to_cpu(self.model.state_dict()),
            opt=_to_cpu(self.opt.state_dict()) if (with_opt and self.opt is not None) else None,
            recorder=_to_cpu(asdict(self.recorder)),
            epochs_trained=self.epochs_trained,
            body_frozen=getattr(self.model, "body_frozen", None),
            loader_rng=[dl.rng_state() for dl in self.dls.loaders],
            dynamics=self.dynamics.state_dict() if self.dynamics is not None else None,
        )

    def load_training_state(self, state: TrainingState) -> None:
        """Put back what `training_state` took; the optimizer is rebuilt for the current parameters."""
        self.model.load_state_dict(state.model)
        if state.body_frozen is not None:
            self.freeze() if state.body_frozen else self.unfreeze()
        if state.opt is not None:
            self.create_opt().load_state_dict(state.opt)  # torch moves its tensors to the parameters' device
        else:
            self.opt = None
        self.recorder = Recorder(**copy.deepcopy(state.recorder))
        self.epochs_trained = state.epochs_trained
        for dl, rng in zip(self.dls.loaders, state.loader_rng):
            dl.set_rng_state(rng)
        if state.dynamics is not None and self.dynamics is not None:
            self.dynamics.load_state_dict(state.dynamics)

    # -- callbacks and their events ---------------------------------------------------------------

    @property
    def dynamics(self) -> TrainingDynamics | None:
        """The recorder of each training image's margin and loss (`nbtrain.dynamics`), None when removed."""
        return next((cb for cb in self.cbs if isinstance(cb, TrainingDynamics)), None)

    def add_cbs(self, cbs: Sequence[Callback] | Callback | None) -> None:
        for cb in as_list(cbs):
            if isinstance(cb, type):
                raise TypeError(f"cbs takes callback objects: write {cb.__name__}(), not {cb.__name__}.")
            if not isinstance(cb, Callback):
                raise TypeError(f"{cb!r} is not a Callback. Subclass nbtrain.callbacks.Callback.")
            check_event_names(cb)
            cb.learn = self
            self.cbs.append(cb)
        self._sort_cbs()

    def remove_cbs(self, cbs: Sequence[Callback]) -> None:
        for cb in cbs:
            if cb in self.cbs:
                self.cbs.remove(cb)
        self._sort_cbs()

    @contextmanager
    def added_cbs(self, cbs: Sequence[Callback] | Callback | None):
        """Callbacks for the length of a `with` block (one fit)."""
        before = list(self.cbs)
        self.add_cbs(cbs)
        try:
            yield self
        finally:
            self.cbs = before
            self._sort_cbs()

    def _sort_cbs(self) -> None:
        """Sort the callbacks by `order` (lower first, ties as added) and take their events' methods:
        done when callbacks come or go (and so once per fit), never per event."""
        self.cbs.sort(key=lambda cb: cb.order)
        self._events = Events(self.cbs)

    @property
    def events(self) -> Events:
        """The callbacks' event methods, in order: what the training loop runs each stage in."""
        return self._events

    # -- training -------------------------------------------------------------------------------

    @_launches_processes
    def fit(
        self,
        n_epoch: int,
        lr: float | slice | None = None,
        wd: float | None = None,
        cbs: Sequence[Callback] | Callback | None = None,
        n_gpus: int | None = None,
        start_method: str | None = None,
        *,
        scheduler: Callable | None = None,
        progress: bool = True,
    ) -> None:
        """Train `n_epoch` epochs at a constant learning rate, or on the schedule `scheduler` builds.

        `cbs` are callbacks for this fit only. `n_gpus` > 1 trains on that many GPUs at once, in
        processes started from here with `start_method` (see `nbtrain.distributed`); `bs` stays the
        size of the whole batch. `scheduler(optimizer, total_steps)` returns a torch scheduler, stepped
        after every batch (`schedule.one_cycle`). `progress=False` shows no bar and no epoch table.
        """
        if wd is not None:
            self.wd = wd
        FitLoop(self).run(n_epoch, self.lr if lr is None else lr, scheduler, as_list(cbs), progress)

    @_launches_processes
    def fit_one_cycle(
        self,
        n_epoch: int,
        lr_max: float | slice | None = None,
        div: float = 25.0,
        div_final: float = 1e5,
        pct_start: float = 0.25,
        moms: tuple[float, float, float] = (0.95, 0.85, 0.95),
        wd: float | None = None,
        cbs: Sequence[Callback] | Callback | None = None,
        n_gpus: int | None = None,
        start_method: str | None = None,
        *,
        max_lr: float | slice | None = None,
    ) -> None:
        """Train with the one-cycle policy: the learning rate warms up from lr_max/div to lr_max over
        `pct_start` of the steps, then anneals (cosine) to lr_max/div_final, while momentum moves
        the opposite way between moms[0] and moms[1]. `cbs`, `n_gpus` and `start_method` as in `fit`.
        `max_lr` is fastai v1's name for `lr_max` (`max_lr=slice(1e-6, 1e-4)`)."""
        if max_lr is not None:
            if lr_max is not None:
                raise ValueError(f"fit_one_cycle got lr_max={lr_max!r} and max_lr={max_lr!r}: give one of them.")
            lr_max = max_lr
        schedule.fit_one_cycle(
            self, n_epoch, lr_max, div=div, div_final=div_final, pct_start=pct_start, moms=moms, wd=wd, cbs=cbs
        )

    @_launches_processes
    def fine_tune(
        self,
        epochs: int,
        base_lr: float | None = None,
        freeze_epochs: int | None = None,
        lr_mult: float | None = None,
        pct_start: float | None = None,
        div: float | None = None,
        cbs: Sequence[Callback] | Callback | None = None,
        n_gpus: int | None = None,
        start_method: str | None = None,
        **kwargs,
    ) -> None:
        """Transfer learning: `freeze_epochs` with only the head training, then `epochs` of the whole
        model, the head at `base_lr / 2` and the body `lr_mult` times slower.

        What is not given comes from the learner's recipe (`nbtrain.recipe`); by default the head-only
        epoch is a probe of how well the pretrained features fit the data, which sets the rates
        (`schedule.fine_tune` says how); they are then in `self.fine_tune_rates`. fastai's exact
        recipe: `vision_learner(..., recipe="fastai")`, or here `lr_mult=100`. `cbs` run in both stages;
        `n_gpus` and `start_method` as in `fit`: both stages run in the same processes. Interrupting
        the first stage stops the whole call."""
        schedule.fine_tune(self, epochs, base_lr, freeze_epochs, lr_mult, pct_start, div, cbs=cbs, **kwargs)

    def lr_find(
        self,
        start_lr: float = 1e-7,
        end_lr: float = 10,
        num_it: int = 100,
        stop_div: bool = True,
        show_plot: bool = True,
        suggest_funcs: Sequence[Callable] | Callable = (valley,),
    ) -> tuple:
        """Train briefly with an exponentially growing learning rate and suggest one.

        It is a fit with the `schedule.LRFinder` callback: the same training step as `fit`. The weights,
        optimizer, batch-norm statistics and random state are put back afterwards, in memory (no file
        is written), so what trains next trains exactly as it would have without this call. Returns
        fastai's `SuggestedLRs`, one field per function of `suggest_funcs` (`valley`, `slide`,
        `minimum`, `steep`, or one's own with their signature); `schedule.lr_find` says what `valley`
        gives with the body frozen.
        """
        return schedule.lr_find(self, start_lr, end_lr, num_it, stop_div, show_plot, suggest_funcs)

    def validate(self, ds_idx: int = 1, dl: DataLoader | None = None) -> list[float]:
        """[loss, *metrics] on the validation set (or another loader)."""
        dl = dl or predictions.plain_loader(self, ds_idx)
        out, targ, _ = predictions.outputs(self, dl, fill_cache=True)
        with torch.no_grad():
            loss = float(self.loss_func(out, targ)) if len(out) else float("nan")
            vals = [float(m(out, targ)) for m in self.metrics]
            single = len(out) and not self.dls.multi_label and out.ndim == 2
            self.recorder.valid_error = float((out.argmax(1) != targ).float().mean()) if single else float("nan")
        return [loss, *vals]

    # -- predictions (nbtrain.predictions) ------------------------------------------------------

    def outputs(
        self, dl: DataLoader, forward: Callable[[torch.Tensor], torch.Tensor] | None = None, with_bar: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(outputs, targets, indices)` of `forward` (the model by default; e.g. its body for features)
        over every readable item of `dl`, with this learner's precision."""
        return predictions.outputs(self, dl, forward=forward, with_bar=with_bar)

    def item_losses(self, out: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
        """One loss per item, with this learner's loss function."""
        return predictions.item_losses(self, out, targ)

    def get_preds(
        self,
        ds_idx: int = 1,
        dl: DataLoader | Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
        with_loss: bool = False,
        act: Callable | None = None,
        with_bar: bool = False,
        ds_type: predictions.DatasetType | None = None,
    ):
        """`(probs, targets)`, or `(probs, targets, losses)` with one loss per item.

        Items come in dataset order and without augmentation, the training set (ds_idx=0) included.
        A file that cannot be decoded gets a row of NaN. `dl` is another loader, or batches already
        made, as fastai's `learn.get_preds(dl=[(x,y)])`; `ds_type` (also as the first argument) is fastai v1's
        name of the set, `DatasetType.Test` the test set the loaders hold.
        """
        return predictions.get_preds(self, ds_idx, dl, with_loss, act, with_bar, ds_type)

    def predict(self, item: object):
        """`(label, index, probs)` for one image: anything `PILImage.create` takes (a path, bytes, an
        open file, an array, a tensor, a PIL image, an ipywidgets FileUpload's value).

        For multi-label data the label is the list of classes above `thresh`, and index a boolean mask.
        """
        return predictions.predict(self, item)

    def show_results(self, ds_idx: int = 1, max_n: int = 9, figsize: tuple[float, float] | None = None):
        """Images with their label and the prediction (green when right, red when wrong); returns the figure."""
        return predictions.show_results(self, ds_idx, max_n, figsize)

    def tta(
        self,
        ds_idx: int = 1,
        dl: DataLoader | None = None,
        n: int = 4,
        item_tfms: Sequence | None = None,
        batch_tfms: Sequence | None = None,
        beta: float | None = 0.25,
        use_max: bool = False,
    ):
        """Test-time augmentation, as fastai's: `(preds, targs)` from `n` passes with the training
        augmentation (random crops, flips...) averaged, then mixed with the plain pass as
        `(1 - beta) * augmented + beta * plain`. `use_max` takes the element-wise maximum of all
        passes instead; `beta=None` returns `((augmented, plain), targs)`. `item_tfms`/`batch_tfms`
        replace the loader's augmentation for the augmented passes.
        """
        return predictions.tta(self, ds_idx, dl, n, item_tfms, batch_tfms, beta, use_max)

    def summary(self) -> ModelSummary:
        """The model's layers with their output shapes (from one batch through the model), parameter
        counts and whether they train, then the totals, optimizer, loss and precision. Prints as a
        table; `.df` is the same as a pandas DataFrame."""
        return ModelSummary.of(self)

    # -- files (nbtrain.persistence) --------------------------------------------------------------

    def save(self, name: str, with_opt: bool = True) -> Path:
        """Write the model (and optimizer) to `output_path/name.pth`, atomically: a save that is cut
        off leaves the previous file intact."""
        return persistence.save(self, name, with_opt)

    def load(self, name: str | Path, with_opt: bool = True, strict: bool = True) -> Learner:
        """Read a file written by `save` (a name in `output_path`, or a path)."""
        persistence.load(self, name, with_opt, strict)
        return self

    def export(self, fname: str | Path = "export.pkl") -> Path:
        """Write what `load_learner` needs to predict to `path/fname`: weights plus plain metadata.

        The name is fastai's, so the book's `load_learner(path/'export.pkl')` finds it; the file holds
        no pickled objects (tensors and plain values, read with `weights_only=True`)."""
        return persistence.export(self, fname)


def _fit_in_processes(
    learn: Learner, method: str, args: tuple, kwargs: dict, n_procs: int, start_method: str | None
) -> None:
    """Run `learn.<method>(*args, **kwargs)` in `n_procs` processes, one per GPU, then take what
    process 0 ended with (weights, optimizer, recorder, epochs, frozen body, loader RNGs)."""
    device = learn.device
    distributed.check_devices(device, n_procs)
    start_method = distributed.start_method_for(device, start_method)
    state = learn.training_state()
    clone = copy.copy(learn)
    clone.opt, clone.scaler, clone.cbs = None, None, list(learn.cbs)
    if start_method != "fork":
        # Decoded images stay behind: each process fills its own cache.
        clone.dls = learn.dls.without_caches()
        clone = distributed.dumps(clone, "learn")  # here, so that an error names learn's attribute
    # The processes get the weights and optimizer state from the CPU copy; this process lets go of
    # its GPU memory, which process 0 is about to need.
    learn.opt = None
    learn.model.to("cpu")
    release_device_memory(device)
    seed = int(torch.randint(2**31 - n_procs, ()))
    try:
        res = distributed.launch(
            _process_job,
            n_procs,
            clone,
            method,
            args,
            kwargs,
            state.to_dict(),
            seed,
            backend=distributed.default_backend(device),
            start_method=start_method,
        )
        if res is None:
            raise distributed.DistributedError("The training processes ended without sending back the weights.")
        state = TrainingState.from_dict(res)
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            "stopped by the user; every process was ended, and the learner is as it was before this call."
        ) from None
    finally:
        learn.model.to(device)
        learn.load_training_state(state)  # what they reached, or what it had before on failure


def _process_job(learn: Learner | bytes, method: str, args: tuple, kwargs: dict, state: dict, seed: int) -> dict | None:
    """What each process started by `Learner._fit_in_processes` runs; process 0 sends back its state."""
    if isinstance(learn, bytes):
        learn = pickle.loads(learn)
    device = distributed.rank_device(learn.device)
    learn.dls.to(device)
    learn.model.to(device)
    learn.load_training_state(TrainingState.from_dict(state))
    torch.manual_seed(seed + distributed.rank())  # dropout and augmentation draw differently in each process
    getattr(learn, method)(*args, **kwargs)
    return learn.training_state().to_dict() if distributed.is_main() else None


# ---------------------------------------------------------------------------------------------
# Making learners


def unet_learner(*args, **kwargs) -> Learner:
    """fastai's segmentation learner, which nbtrain does not build: it says so, and what to use instead."""
    raise DataError(MaskBlock.unsupported())


def vision_learner(
    dls: DataLoaders,
    arch: str | Callable,
    metrics: Sequence[Callable] | Callable | None = None,
    pretrained: bool = True,
    weights: object = None,
    loss_func: Callable | None = None,
    opt_func: Callable = torch.optim.AdamW,
    lr: float | None = None,
    path: Path | str | None = None,
    model_dir: str = "models",
    normalize: bool = True,
    channels_last: bool | None = None,
    verbose: bool = False,
    recipe: str | dict | None = None,
    **kwargs,
) -> Learner:
    """A Learner for a torchvision architecture (a model function or its name) with a new head.

    With `pretrained`, the body keeps its ImageNet weights (found offline when cached; see
    `nbtrain.models`), is frozen for the first epochs of `fine_tune`, and the inputs are normalised
    with the statistics the weights were trained with. `weights` picks other weights: a torchvision
    enum, its name such as "IMAGENET1K_V1", or a path to a local .pth file. `recipe` sets the
    defaults of training and the loss (`nbtrain.recipe`): "fastai" gives fastai's exact recipe
    (plain cross-entropy, body always 100x slower than the head).
    """
    model, _ = create_vision_model(arch, dls.c, pretrained=pretrained, weights=weights, verbose=verbose)
    if normalize:
        dls.set_normalize(Normalize())
    learn = Learner(
        dls,
        model,
        loss_func=loss_func,
        opt_func=opt_func,
        lr=lr,
        metrics=metrics,
        path=path,
        model_dir=model_dir,
        recipe=recipe,
        **kwargs,
    )
    if channels_last is None:
        # Measured: 1.7x faster on a 2-core CPU (oneDNN) for mobilenet_v2; cuDNN gains too. MPS does not.
        channels_last = dls.device.type in ("cuda", "cpu")
    if channels_last and channels_last_friendly(model):
        learn.model.to(memory_format=torch.channels_last)
        dls.set_memory_format(torch.channels_last)
    if pretrained or weights is not None:
        learn.freeze()
    return learn


def load_learner(fname: Path | str, cpu: bool = True, file: str = "export.pkl") -> Learner:
    """A Learner rebuilt from `export()`'s file, ready for `predict`, without the training data.
    Given a folder (fastai v1's `load_learner(path)`), the file is `fname/file`.

    The file is read with `weights_only=True`: it cannot run code (`persistence.read_export`).
    """
    fname = Path(fname) / file if Path(fname).is_dir() else fname
    return Learner(**persistence.read_export(fname, cpu))
