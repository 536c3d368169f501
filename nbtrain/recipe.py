"""The hyperparameters behind `vision_learner(...)` + `fine_tune(epochs)`, each with the reason for its value.

`vision_learner`, `Learner.fine_tune` and `Learner.fit_one_cycle` read their defaults from here; every
argument passed explicitly still wins. `vision_learner(..., recipe="fastai")` gives fastai's exact
values instead (one argument away).

Why not fastai's: fastai trains the pretrained body 100 times slower than the head. That suits photos
like ImageNet's, whose features already separate the classes, but leaves a body unable to adapt to
data far from them (digits, scans, greyscale, small images) in a few epochs. So the recipe decides
how fast the body trains from what the head-only epoch shows: the frozen head's validation error,
scaled so 0 is perfect and 1 is chance. Where the features separate the classes (error at most
`near_error`) it is fastai's base rate with the body 10x (not 100x) slower than the head; where they
do not (at least `far_error`) body and head train at one rate, `far_base_lr`, as
`find_label_issues`' fold models do; in between both rates move log-linearly. The head-only epoch is
the probe, so this costs no extra time.
"""

from __future__ import annotations

import math

NBTRAIN: dict = {
    # fine_tune's first stage, head only, and the head rate on near-ImageNet data: fastai's value,
    # which its recipe was tuned with for photos.
    "base_lr": 2e-3,
    # The base rate where the ImageNet features do not separate the classes: the whole network learns
    # a new domain in a few epochs (the fold models' rate; 2e-2 diverged on small digit sets).
    "far_base_lr": 1e-2,
    # The batch size far_base_lr was chosen at. Smaller batches scale it by sqrt(bs / far_bs), Adam's
    # square-root rule, since at small batches the whole network diverges at the full rate.
    "far_bs": 32,
    # None: decided after the head-only epoch, between near_lr_mult and far_lr_mult (see above).
    "lr_mult": None,
    # fastai's 100 all but freezes the body even on ImageNet's own photos; 10 lowers the error there
    # at every budget and noise level (docs/recipes-measured.md), 3 does not with flipped labels.
    "near_lr_mult": 10.0,
    "far_lr_mult": 1.0,  # the body must move as fast as the head to learn digits or scans
    # The frozen head's error (0 perfect, 1 chance) that counts as near and as far: crops of ImageNet
    # photos sit at the first, MNIST at 64 px at the second, tiny digits far beyond.
    "near_error": 0.1,
    "far_error": 0.3,
    # Without a validation set (or for multi-label data) there is no error to read: halfway.
    "unknown_position": 0.5,
    # One head-only epoch: cheap (no gradients through the body) and it is the probe.
    "freeze_epochs": 1,
    "pct_start": 0.3,  # fastai's warm-up for the unfrozen stage
    "div": 5.0,  # fastai's: the unfrozen stage starts at a fifth of its peak rate
    # Single-label cross-entropy's smoothing when no loss_func is given: with 10% of labels wrong it
    # lowers the error against the true labels, and on clean labels it costs nothing measurable.
    "label_smoothing": 0.1,
    # fit_one_cycle's lr_max when none is given (fastai's default rate).
    "lr": 1e-3,
}

FASTAI: dict = {
    "base_lr": 2e-3,
    "far_base_lr": 2e-3,
    "lr_mult": 100.0,
    "near_lr_mult": 100.0,
    "far_lr_mult": 100.0,
    "far_bs": 32,
    "near_error": 0.1,
    "far_error": 0.3,
    "unknown_position": 0.0,
    "freeze_epochs": 1,
    "pct_start": 0.3,
    "div": 5.0,
    "label_smoothing": 0.0,
    "lr": 1e-3,
}

RECIPES = {"nbtrain": NBTRAIN, "fastai": FASTAI}


def get_recipe(recipe: str | dict | None) -> dict:
    """The recipe by name ("nbtrain", the default, or "fastai"), or a dict of values overriding nbtrain's."""
    if recipe is None:
        return dict(NBTRAIN)
    if isinstance(recipe, dict):
        unknown = set(recipe) - set(NBTRAIN)
        if unknown:
            raise ValueError(f"Unknown recipe keys {sorted(unknown)}; the keys are {sorted(NBTRAIN)}.")
        return {**NBTRAIN, **recipe}
    if recipe not in RECIPES:
        raise ValueError(f"Unknown recipe {recipe!r}: use one of {sorted(RECIPES)}, or a dict of values.")
    return dict(RECIPES[recipe])


def distance(frozen_error: float | None, n_classes: int, recipe: dict) -> float:
    """How far the data is from the body's pretraining, in [0, 1], from the head-only model's error."""
    if frozen_error is None or not math.isfinite(frozen_error) or n_classes < 2:
        return recipe["unknown_position"]
    scaled = frozen_error / (1 - 1 / n_classes)  # 0 perfect, 1 chance
    lo, hi = recipe["near_error"], recipe["far_error"]
    return min(1.0, max(0.0, (scaled - lo) / (hi - lo)))


def unfrozen_rates(
    frozen_error: float | None, n_classes: int, recipe: dict, base_lr: float | None = None, bs: int | None = None
) -> tuple[float, float]:
    """(base_lr, lr_mult) for fine_tune's unfrozen stage: near data gets near_*, far data far_*,
    log-linear in between. A `base_lr` given replaces the recipe's at the near end only: far data
    still trains at the far rate, because a head's rate says nothing about how fast a body must move
    to learn a new domain (a lower start would lower both). A batch size under `far_bs` lowers the
    far rate (square-root rule); larger ones keep it. The far rate is never below the start."""
    t = distance(frozen_error, n_classes, recipe)
    start = recipe["base_lr"] if base_lr is None else base_lr
    far = recipe["far_base_lr"] * min(1.0, math.sqrt(bs / recipe["far_bs"])) if bs else recipe["far_base_lr"]
    base = start * max(1.0, far / start) ** t
    mult = recipe["near_lr_mult"] * (recipe["far_lr_mult"] / recipe["near_lr_mult"]) ** t
    return base, mult
