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
from .dynamics import pooled_features
from .embeddings import image_embeddings
from .learner import Learner, vision_learner
from .linear_probe import linear_oof_probs
from .models import VisionModel, pretrained_body
from .neighbours import cosine_knn
from .scores import SPLITS, area_under_margin, item_scores, neighbour_vote, score_table, split_frame

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
    ranking: str = "oof",
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
        ranking: "oof", these fold models; another ranks a trained Learner's labels as `rank_labels`
            does, e.g. "auto" or "oof-linear" (the cheaper out-of-fold ranking), and the fold-model
            arguments do not apply.

    Returns:
        The cleaner's score table (see `nbtrain.scores`), so `ImageClassifierCleaner(learn,
        ranking=table)` shows it; `loss` is -log of the out-of-fold probability of the given label, and
        `table.attrs["oof"]` holds the probabilities (`OutOfFoldProbs`). Interrupting it stops every fold.
    """
    if ranking != "oof":
        check_ranking(ranking)
        if not isinstance(learn_or_dls, Learner):
            raise TypeError(f"ranking={ranking!r} ranks a trained Learner's labels; pass the Learner, not DataLoaders.")
        return rank_labels(learn_or_dls, ranking, with_bar=with_bar)
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
    table = _out_of_fold_table(train_ds, valid_ds, train_probs, valid_sum / folds, fold)
    table.attrs["ranking"] = {"name": "oof", "asked": "oof", "why": RANKING_NOTES["oof"]}
    return table


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


def _probs_table(train_ds, valid_ds, train_probs: torch.Tensor, valid_probs: torch.Tensor) -> pd.DataFrame:
    """The score table of probabilities that are not the learner's own; `loss` is -log p(given label)."""
    frames = []
    for split, ds, probs in ((SPLITS[0], train_ds, train_probs), (SPLITS[1], valid_ds, valid_probs)):
        if len(ds):
            frames.append(split_frame(ds, split, item_scores(probs, ds.targets, _nll(probs, ds.targets))))
    return pd.concat(frames, ignore_index=True)


def _out_of_fold_table(
    train_ds, valid_ds, train_probs: torch.Tensor, valid_probs: torch.Tensor, fold: np.ndarray
) -> pd.DataFrame:
    """The score table of the out-of-fold probabilities, with them in `attrs["oof"]`."""
    table = _probs_table(train_ds, valid_ds, train_probs, valid_probs)
    parts = [(train_probs, fold), (valid_probs, np.full(len(valid_ds), -1))] if len(valid_ds) else [(train_probs, fold)]
    table.attrs["oof"] = OutOfFoldProbs(
        tuple(table["path"]),
        np.concatenate([p.numpy() for p, _ in parts]).astype(np.float32),
        np.concatenate([f for _, f in parts]),
        tuple(train_ds.vocab),
    )
    return table


# ---------------------------------------------------------------------------------------------
# One ranking argument: the model's loss, its training dynamics, the neighbours' labels, out-of-fold

RANKINGS = ("auto", "loss", "dynamics", "neighbours", "oof-linear", "oof")
RANKING_NOTES = {
    "loss": "the trained model's own loss",
    "dynamics": "each training image's mean loss over the epochs that saw it, recorded while training",
    "neighbours": "the labels around each image in the pretrained body's features (its nearest images' "
    "labels and out-of-fold linear classifiers)",
    "oof-linear": "out-of-fold linear classifiers on the pretrained body's features",
    "oof": "out-of-fold models (find_label_issues: several more trainings)",
}
# kNN size of the neighbours' vote: enough neighbours to outvote a few wrong labels among them.
NEIGHBOURS_K = 10
# "auto" weighs the trained and the pretrained features' probabilities by their accuracy to this power:
# the more accurate dominates, as a model that trained too briefly must not drown the pretrained features.
AUTO_POWER = 8


def check_ranking(ranking: object) -> None:
    """A clear error for a ranking that is not one of RANKINGS nor a score table."""
    if isinstance(ranking, pd.DataFrame) or ranking in RANKINGS:
        return
    raise ValueError(
        f"ranking must be one of {', '.join(repr(r) for r in RANKINGS)} or a table from find_label_issues(), "
        f"not {ranking!r}."
    )


def rank_labels(
    learn: Learner, ranking: str | pd.DataFrame = "auto", with_bar: bool = True, **oof_kwargs
) -> pd.DataFrame:
    """The cleaner's score table (`nbtrain.scores`), ranked as `ranking` says: most suspicious first by `loss`.

    `ranking`: "loss", the model's own loss; "dynamics", each training image's mean loss over the epochs
    that saw it (recorded by `learn.dynamics`); "neighbours", the probability of each image's label
    among the pretrained body's features (the mean of its nearest images' labels and out-of-fold linear
    classifiers), with no training of the network; "oof-linear", those classifiers alone, the cheaper
    out-of-fold ranking; "oof", `find_label_issues`' fold models (extra keyword arguments go to it);
    "auto", out-of-fold linear classifiers on the trained model's own features blended with "neighbours",
    each weighted by how well it predicts the given labels (`auto_weights`): no training of the network
    beyond the user's own; or a table, returned as it is. `attrs["ranking"]` says which and why.
    """
    check_ranking(ranking)
    if isinstance(ranking, pd.DataFrame):
        return ranking
    problem = _features_problem(learn)
    if ranking in ("neighbours", "oof-linear") and problem is not None:
        raise ValueError(f"ranking={ranking!r} cannot rank these labels: {problem}. Use ranking='loss'.")
    if ranking == "oof":
        table = find_label_issues(learn, with_bar=with_bar, **oof_kwargs)
    elif ranking == "oof-linear":
        table = linear_label_issues(learn)
    elif ranking == "dynamics":
        table = _dynamics_table(learn, with_bar)
    elif ranking == "loss" or (ranking == "auto" and problem is not None):
        table = score_table(learn, with_bar=with_bar)
    else:
        return _feature_table(learn, ranking)
    why = RANKING_NOTES[ranking] if ranking != "auto" else f"{RANKING_NOTES['loss']}: {problem}"
    table.attrs["ranking"] = {"name": "loss" if ranking == "auto" else ranking, "asked": ranking, "why": why}
    if ranking == "auto":
        print(f"Ranking labels by the model's own loss, as {why}.")
    return table


def auto_weights(own_acc: float, feature_acc: float, power: float = AUTO_POWER) -> tuple[float, float]:
    """The weights "auto" gives the probabilities from the model's own features and from the pretrained
    ones, from the out-of-fold accuracy of each on the given training labels; they sum to 1."""
    a, b = max(own_acc, 1e-6) ** power, max(feature_acc, 1e-6) ** power
    return a / (a + b), b / (a + b)


def _feature_table(learn: Learner, ranking: str) -> pd.DataFrame:
    """The "neighbours" or "auto" table, from probabilities in features (see `rank_labels`)."""
    train_ds, valid_ds = learn.dls.train.dataset, learn.dls.valid.dataset
    c, n, targets = len(train_ds.vocab), len(train_ds), train_ds.targets.numpy()
    fold = fold_assignment(targets, 5, 0)
    train_f, valid_f = pretrained_features(learn)
    lin = np.concatenate(linear_oof_probs(train_f, targets, fold, c, valid_f))
    every_target = np.concatenate([targets, valid_ds.targets.numpy()])
    vote = neighbour_vote(cosine_knn(torch.cat([train_f, valid_f]), NEIGHBOURS_K)[1].numpy(), every_target, c)
    probs = (lin + vote) / 2
    info = {"name": "neighbours", "asked": ranking, "why": RANKING_NOTES["neighbours"]}
    if ranking == "auto":
        own_train, own_valid = _split_features(learn, None)
        own = np.concatenate(linear_oof_probs(own_train, targets, fold, c, own_valid))
        own_acc, feat_acc = (float(np.mean(p[:n].argmax(1) == targets)) for p in (own, lin))
        w_own, w_feat = auto_weights(own_acc, feat_acc)
        probs = w_own * own + w_feat * probs
        info = {
            "name": "own features+neighbours",
            "asked": "auto",
            "weights": {"own features": w_own, "neighbours": w_feat},
            "why": f"out-of-fold linear classifiers on the trained model's features, weighted {w_own:.2f} (they "
            f"agree with {own_acc:.0%} of the given training labels), and the pretrained features' neighbours, "
            f"weighted {w_feat:.2f} (their classifiers agree with {feat_acc:.0%}); the blend ranks wrong "
            "labels that the trained model has partly memorised, with no training beyond yours (bench/label_noise.py)",
        }
        print(f"Ranking labels by {info['why']}.")
    table = _probs_table(train_ds, valid_ds, torch.from_numpy(probs[:n]).float(), torch.from_numpy(probs[n:]).float())
    table.attrs["ranking"] = info
    # The probabilities behind the ranking, for whoever judges labels from them (the audit does).
    table.attrs["probs"] = OutOfFoldProbs(
        tuple(table["path"]), probs.astype(np.float32), np.full(len(probs), -1), tuple(train_ds.vocab)
    )
    return table


def _features_problem(learn: Learner) -> str | None:
    """Why the pretrained features cannot rank this learner's labels, or None when they can."""
    if learn.dls.multi_label:
        return "multi-label data has no single label for the neighbours to agree with"
    if not isinstance(learn.model, VisionModel):
        return "the model is not one vision_learner made, so it has no pretrained body"
    if len(learn.dls.train.dataset) < 2 * 5:
        return "too few training images for out-of-fold classifiers"
    return None


def _dynamics_table(learn: Learner, with_bar: bool) -> pd.DataFrame:
    """The model's score table with each recorded training image's `loss` its mean over the epochs."""
    problem = _records_problem(learn)
    if problem is not None:
        raise ValueError(
            f"ranking='dynamics' needs the margins recorded while this learner trained, and there are none: "
            f"{problem}. Train it (fine_tune or fit) first, or use ranking='loss' or 'neighbours'."
        )
    table = score_table(learn, with_bar=with_bar)
    train = np.flatnonzero((table["split"] == SPLITS[0]).to_numpy())
    score = area_under_margin(learn.dynamics.losses.numpy())
    keep = np.isfinite(score) & table["readable"].to_numpy()[train]
    loss = table["loss"].to_numpy(dtype=np.float64)
    loss[train[keep]] = score[keep]
    table["loss"] = loss
    return table


def _records_problem(learn: Learner) -> str | None:
    """Why the learner's training dynamics cannot rank its training set, or None when they can."""
    rec = learn.dynamics
    if learn.dls.multi_label:
        return "multi-label data records none"
    if rec is None:
        return "the TrainingDynamics callback was removed"
    if rec.n_epochs == 0:
        return (
            "the learner was not trained in this session, or only with MixUp or CutMix (a loaded or exported "
            "learner keeps no records)"
        )
    if rec.margins.shape[1] != len(learn.dls.train.dataset):
        return "the training set changed since the learner was trained"
    return None


def pretrained_features(learn: Learner) -> tuple[torch.Tensor, torch.Tensor]:
    """The (training, validation) images' features in the pretrained body of the learner's architecture:
    they have seen no label of this dataset, the wrong ones included. Those recorded while the body
    was frozen (fine_tune's first epochs) when there are, else from a pass without augmentation; the
    learner's own body when the pretrained weights are not on this machine."""
    recorded = _recorded_features(learn)
    return recorded if recorded is not None else _split_features(learn, pretrained_body(learn.model))


def _recorded_features(learn: Learner) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The features `learn.dynamics` kept while the body was frozen, i.e. still the pretrained one; the
    few training images that no batch showed (a dropped last batch) from a pass of the pretrained body in
    training mode, as the frozen epochs ran it. None when there are no such records (a plain fit, a
    loaded learner)."""
    rec, train, valid = learn.dynamics, learn.dls.train, learn.dls.valid
    if rec is None or not isinstance(learn.model, VisionModel):
        return None
    train_f, valid_f = rec.frozen_features.get("train"), rec.frozen_features.get("valid")
    n_valid = len(valid.dataset)
    if train_f is None or len(train_f) != len(train.dataset) or (n_valid and valid_f is None):
        return None
    train_f = train_f.float()
    valid_f = valid_f.float() if n_valid else torch.empty(0, train_f.shape[1])
    missing = np.flatnonzero(train_f.isnan().any(dim=1).numpy())
    if len(valid_f) != n_valid or valid_f.isnan().any(dim=1).sum() > train.bs or len(missing) > 2 * train.bs:
        return None
    if len(missing):
        body = pretrained_body(learn.model)
        if body is None:
            return None
        body = body.to(learn.device).train()
        dl = train.plain().new(dataset=train.dataset.subset(missing, train=False), shuffle=False, drop_last=False)
        filled, _, idx = learn.outputs(dl, forward=lambda x: pooled_features(body(x)))
        train_f[torch.as_tensor(missing[idx.numpy()])] = filled.float().cpu()
    return train_f, valid_f


def _split_features(learn: Learner, body: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(training, validation) features of `body` (None: the learner's own), without augmentation."""
    train, valid = learn.dls.train, learn.dls.valid
    feats = image_embeddings(learn, train.plain(), body=body)
    empty = torch.empty(0, feats.shape[1])
    return feats, image_embeddings(learn, valid.plain(), body=body) if len(valid.dataset) else empty


def linear_label_issues(learn: Learner, folds: int = 5, seed: int | None = 0) -> pd.DataFrame:
    """The cheaper out-of-fold ranking: `folds` linear classifiers on the pretrained body's features of
    the training images, each image scored by the one that never saw it (validation images by their
    mean). At most one forward pass of the body (see `pretrained_features`) and seconds of fitting,
    against `find_label_issues`' K trainings.
    Returns the score table with `attrs["oof"]`, as `find_label_issues`."""
    train_ds, valid_ds = learn.dls.train.dataset, learn.dls.valid.dataset
    targets = train_ds.targets.numpy()
    fold = fold_assignment(targets, folds, seed)
    train_f, valid_f = pretrained_features(learn)
    train_p, valid_p = linear_oof_probs(train_f, targets, fold, len(train_ds.vocab), valid_f)
    return _out_of_fold_table(train_ds, valid_ds, torch.from_numpy(train_p), torch.from_numpy(valid_p), fold)
