"""Wrong labels found with out-of-fold predictions, and the same picture twice found with the model's features.

A model scores the images it was trained on too kindly: it has partly memorised their labels, the wrong
ones included. `find_label_issues` trains K short models, each on K-1 folds of the training set, and
scores every training image with the one model that never saw it (cross-validation, as cleanlab
requires); a validation image is scored by the average of the K models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from .augmentation import RandomResizedCrop, Resize
from .data import DataLoader, DataLoaders
from .learner import Learner, vision_learner
from .models import VisionModel
from .scores import SPLITS, item_scores, split_frame

# The fold models' network: small and quick to train K times, and its ImageNet weights can be had offline.
DEFAULT_ARCH = "mobilenet_v2"


# ---------------------------------------------------------------------------------------------
# Out-of-fold probabilities


@dataclass(frozen=True, eq=False)
class OutOfFoldProbs:
    """The probabilities behind a table from `find_label_issues`: `probs[i]` belongs to `paths[i]`.

    `fold[i]` is the fold the image was held out in, or -1 for a validation image (scored by every
    fold model). pandas copies a table's `attrs` whenever the table is filtered or sorted; this object
    is read-only, so the copies share it rather than copying the array, and the cleaner stays quick.
    """

    paths: tuple[Path, ...]
    probs: np.ndarray
    fold: np.ndarray
    vocab: tuple[str, ...]
    _row: dict[Path, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.probs.setflags(write=False)
        self.fold.setflags(write=False)
        object.__setattr__(self, "_row", {p: i for i, p in enumerate(self.paths)})

    def __deepcopy__(self, memo: dict) -> OutOfFoldProbs:
        return self

    def for_paths(self, paths: Sequence[Path | str]) -> np.ndarray:
        """The rows of `probs` for `paths`, e.g. `oof.for_paths(table["path"])` after filtering the table."""
        return self.probs[[self._row[Path(p)] for p in paths]]


def fold_assignment(targets: np.ndarray, folds: int, seed: int | None = 0) -> np.ndarray:
    """A fold number in [0, folds) for each item, stratified: every fold gets its share of every class."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(targets), dtype=np.int64)
    start = 0
    for c in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == c))
        # Dealing on from where the previous class stopped keeps the folds' sizes within one of each other.
        out[idx] = (start + np.arange(len(idx))) % folds
        start += len(idx)
    return out


@dataclass
class _Recipe:
    """What each fold model is built and trained with."""

    arch: str | Callable
    pretrained: bool
    item_tfms: list
    batch_tfms: list
    bs: int
    normalize: bool
    metrics: list
    amp: object = "auto"


def _recipe_of(
    learn_or_dls: Learner | DataLoaders, arch: str | Callable | None, pretrained: bool, bs: int | None
) -> tuple[_Recipe, DataLoaders]:
    if isinstance(learn_or_dls, Learner):
        learn, dls = learn_or_dls, learn_or_dls.dls
        if arch is None:
            if not isinstance(learn.model, VisionModel):
                raise TypeError(
                    "find_label_issues rebuilds the learner's model for each fold, which needs a model "
                    "made by vision_learner. For another model, pass the DataLoaders and arch=."
                )
            arch = learn.model.arch
        metrics, amp = list(learn.metrics), learn.amp
    elif isinstance(learn_or_dls, DataLoaders):
        dls, metrics, amp = learn_or_dls, [], "auto"
        arch = arch or DEFAULT_ARCH
    else:
        raise TypeError(f"find_label_issues needs a Learner or DataLoaders, not {type(learn_or_dls).__name__}.")
    if dls.multi_label:
        raise ValueError(
            "find_label_issues is for single-label data. For multi-label data, rank by the "
            "learner's own loss: ImageClassifierCleaner(learn, ranking='loss')."
        )
    recipe = _Recipe(
        arch=arch,
        pretrained=pretrained,
        item_tfms=list(dls.item_tfms),
        batch_tfms=list(dls.train.batch_tfms),
        bs=bs or dls.train.bs,
        normalize=dls.train.normalize is not None or not isinstance(learn_or_dls, Learner),
        metrics=metrics,
        amp=amp,
    )
    return recipe, dls


def _at_size(tfms: Sequence, size: int) -> list:
    """The item transforms with their output size changed to `size`, each keeping its kind and method."""
    out = []
    for t in tfms:
        if isinstance(t, Resize):
            out.append(Resize(size, t.method))
        elif isinstance(t, RandomResizedCrop):
            out.append(RandomResizedCrop(size, t.min_scale, t.ratio))
        else:
            out.append(t)
    return out or [Resize(size)]


def _tfm_size(tfms: Sequence) -> int | None:
    """The longer side the item transforms bring images to, or None when they do not resize."""
    sides = [max(t.size) for t in tfms if isinstance(t, (Resize, RandomResizedCrop))]
    return max(sides) if sides else None


def _native_size(items: Sequence[Path], n: int = 64) -> int | None:
    """The longest side among up to `n` files spread over `items`, read from their headers only."""
    if not items:
        return None
    step = max(1, len(items) // n)
    sides = []
    for p in list(items)[::step][:n]:
        try:
            with Image.open(p) as img:
                sides.append(max(img.size))
        except Exception:  # a bad file is the loaders' business, not the size's
            continue
    return max(sides) if sides else None


def auto_size(tfms: Sequence, items: Sequence[Path], smallest: int = 32) -> int | None:
    """The image size the fold models train at by default: the learner's, unless the images themselves
    are smaller. Then it is their own size rounded up to a multiple of 32 (at least `smallest`):
    upsampling 28-pixel digits to 64 pixels costs compute and adds nothing to see. None keeps the
    learner's transforms as they are."""
    target, native = _tfm_size(tfms), _native_size(items)
    if target is None or native is None:
        return None
    size = max(smallest, -(-native // 32) * 32)
    return size if size < target else None


def _source_loaders(dls: DataLoaders, recipe: _Recipe, size: int | None) -> tuple[DataLoader, DataLoader]:
    """The training and validation loaders the folds are cut from: the learner's own (and their
    decoded images), or new ones when the images must come at another size."""
    if size is None:
        return dls.train, dls.valid
    recipe.item_tfms = _at_size(recipe.item_tfms, size)
    loaders = []
    for dl in (dls.train, dls.valid):
        loaders.append(dl.new(dataset=dl.dataset.with_item_tfms(recipe.item_tfms)))
    return loaders[0], loaders[1]


def _fold_learner(
    train: DataLoader, held_out: DataLoader, recipe: _Recipe, label_smoothing: float, path: Path
) -> Learner:
    dls = DataLoaders(train, held_out, path=path)
    # No metrics: a fold model is not validated while it trains (see find_label_issues).
    learn = vision_learner(
        dls,
        recipe.arch,
        metrics=[],
        pretrained=recipe.pretrained,
        loss_func=nn.CrossEntropyLoss(label_smoothing=label_smoothing),
        normalize=recipe.normalize,
    )
    learn.amp = recipe.amp
    return learn


def _nll(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log p(given label): the plain cross-entropy of each item, NaN for unreadable files."""
    p = probs.gather(1, targets.long()[:, None]).squeeze(1)
    return -torch.log(p.clamp_min(1e-12))


def find_label_issues(
    learn_or_dls: Learner | DataLoaders,
    arch: str | Callable | None = None,
    folds: int = 4,
    epochs: int = 6,
    freeze_epochs: int = 0,
    size: int | str | None = "auto",
    base_lr: float = 1e-2,
    label_smoothing: float = 0.1,
    pretrained: bool = True,
    bs: int | None = None,
    seed: int | None = 0,
    with_bar: bool = True,
    lr_mult: float = 1.0,
    min_steps: int = 150,
) -> pd.DataFrame:
    """Score every training and validation image by out-of-fold predictions: likely wrong labels score worst.

    The training set is split into `folds` stratified folds; for each, a fresh model is trained on the
    others with `fine_tune(epochs, base_lr, freeze_epochs, lr_mult)` and predicts the held-out fold and
    the validation set. A training image is scored by the model that never saw it, a validation image by
    the average of the `folds` models. The learner itself is neither trained nor changed; the models
    train on its device. The recipe (the whole network at one rate from the first step, label
    smoothing, images at their own size when smaller than the learner's) was chosen with
    bench/label_noise.py; docs/label-issues.md gives the figures.

    Args:
        learn_or_dls: a Learner (its architecture, transforms, batch size, metrics and precision are
            reused) or DataLoaders (then `arch` is used, mobilenet_v2 by default).
        arch: the architecture of the fold models, when not the learner's.
        folds: how many models; each trains on (folds-1)/folds of the training set.
        epochs, freeze_epochs, base_lr, lr_mult: each fold model's `fine_tune`.
        min_steps: each fold model trains for at least this many batches, so a small dataset gets
            more epochs: a few epochs of a few hundred images are too few steps to learn from.
        size: "auto" keeps the learner's image size unless the files are smaller (then their own
            size, rounded up to a multiple of 32); an int sets it; None keeps the learner's.
        label_smoothing: of the fold models' cross-entropy (the scores are the plain probabilities).
        seed: makes folds, initial heads, shuffling and augmentation reproducible (the global RNG is
            restored afterwards); None for fresh randomness.

    Returns:
        The cleaner's score table (see `nbtrain.scores`), so `ImageClassifierCleaner(learn,
        ranking=table)` shows it; `loss` is -log of the out-of-fold probability of the given label, and
        `table.attrs["oof"]` holds the probabilities (`OutOfFoldProbs`). Interrupting it stops every fold.
    """
    if folds < 2:
        raise ValueError(f"folds must be at least 2 (each model needs a held-out part), not {folds}.")
    recipe, dls = _recipe_of(learn_or_dls, arch, pretrained, bs)
    if size == "auto":
        size = auto_size(recipe.item_tfms, dls.train.dataset.items)
    elif size is not None and not isinstance(size, int):
        raise ValueError(f"size must be 'auto', an int or None, not {size!r}.")
    train_src, valid_src = _source_loaders(dls, recipe, size)
    train_ds, valid_ds = train_src.dataset, valid_src.dataset
    n_train, c = len(train_ds), len(train_ds.vocab)
    if n_train < folds:
        raise ValueError(f"The training set has {n_train} images, fewer than folds={folds}.")
    for src in (train_src, valid_src) if len(valid_ds) else (train_src,):
        src.fill_cache()  # decoded once, for every fold

    fold = fold_assignment(train_ds.targets.numpy(), folds, seed)
    fine_tune_args = dict(
        epochs=_fold_epochs(fold, folds, recipe.bs, epochs, min_steps),
        base_lr=base_lr,
        freeze_epochs=freeze_epochs if recipe.pretrained else 0,
        lr_mult=lr_mult,
    )
    train_probs = torch.full((n_train, c), float("nan"))
    valid_sum = torch.zeros(len(valid_ds), c)
    with tqdm(total=folds, desc="out-of-fold models", disable=None if with_bar else True, unit="model") as bar:
        for k in range(folds):
            held_idx = np.flatnonzero(fold == k)
            seeds = None if seed is None else (seed, k)
            held, valid = _fold_predictions(
                train_src, valid_src, np.flatnonzero(fold != k), held_idx, recipe, label_smoothing, dls.path,
                fine_tune_args, seeds,
            )  # fmt: skip
            train_probs[torch.as_tensor(held_idx)] = held
            if valid is not None:
                valid_sum += valid
            bar.update(1)
    return _out_of_fold_table(train_ds, valid_ds, train_probs, valid_sum / folds, fold)


def _fold_epochs(fold: np.ndarray, folds: int, bs: int, epochs: int, min_steps: int) -> int:
    """`epochs`, or more where a small training set gives fewer than `min_steps` batches."""
    # The fit loaders drop a last partial batch, when there is more than one batch.
    smallest_fit = len(fold) - int(np.bincount(fold, minlength=folds).max())
    steps_per_epoch = smallest_fit // bs if smallest_fit > bs else 1
    return max(epochs, -(-min_steps // steps_per_epoch))


def _fold_predictions(
    train_src: DataLoader,
    valid_src: DataLoader,
    fit_idx: np.ndarray,
    held_idx: np.ndarray,
    recipe: _Recipe,
    label_smoothing: float,
    path: Path,
    fine_tune_args: dict,
    seed: tuple[int, int] | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Train one fold model on `fit_idx` and predict the held-out images and the validation set."""
    train_ds, valid_ds = train_src.dataset, valid_src.dataset
    fit_ds = train_ds.subset(fit_idx, train=True)
    fit_dl = train_src.new(
        dataset=fit_ds,
        bs=recipe.bs,
        shuffle=True,
        drop_last=len(fit_ds) > recipe.bs,
        batch_tfms=recipe.batch_tfms,
        seed=None if seed is None else seed[0] + seed[1],
    )
    held_ds = train_ds.subset(held_idx, train=False)
    device = train_src.device
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed[0] * 1009 + seed[1])
        # No validation during training (it would cost a pass over the held-out fold every epoch); the
        # held-out fold is predicted once, at the end.
        nothing = valid_src.new(dataset=train_ds.subset(held_idx[:0], train=False), augment=False)
        learn = _fold_learner(fit_dl, nothing, recipe, label_smoothing, path)
        args = dict(fine_tune_args)
        learn.fine_tune(args.pop("epochs"), **args)
    # Through the fold's own loader settings (normalisation, memory format), which the model was trained with.
    plain = learn.dls.valid
    held, _ = learn.get_preds(dl=plain.new(dataset=held_ds, shuffle=False, drop_last=False))
    valid = (
        learn.get_preds(dl=plain.new(dataset=valid_ds, shuffle=False, drop_last=False))[0] if len(valid_ds) else None
    )
    return held, valid


def _out_of_fold_table(
    train_ds, valid_ds, train_probs: torch.Tensor, valid_probs: torch.Tensor, fold: np.ndarray
) -> pd.DataFrame:
    """The score table of the out-of-fold probabilities, with them in `attrs["oof"]`."""
    frames, all_probs, all_fold = [], [], []
    for split, ds, probs, f in (
        (SPLITS[0], train_ds, train_probs, fold),
        (SPLITS[1], valid_ds, valid_probs, np.full(len(valid_ds), -1)),
    ):
        if not len(ds):
            continue
        targets = ds.targets
        frames.append(split_frame(ds, split, item_scores(probs, targets, _nll(probs, targets))))
        all_probs.append(probs.numpy())
        all_fold.append(f)
    table = pd.concat(frames, ignore_index=True)
    table.attrs["oof"] = OutOfFoldProbs(
        tuple(table["path"]),
        np.concatenate(all_probs).astype(np.float32),
        np.concatenate(all_fold),
        tuple(train_ds.vocab),
    )
    return table
