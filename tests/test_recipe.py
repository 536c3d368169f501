"""The training recipe: defaults that adapt to the data, explicit arguments that win, fastai's values one
argument away."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import nbtrain
from nbtrain import ImageDataLoaders, Learner, Resize, vision_learner
from nbtrain.lr_suggestions import frozen_head_rate, minimum, valley
from nbtrain.recipe import FASTAI, NBTRAIN, distance, get_recipe, unfrozen_rates


@pytest.fixture(scope="module")
def dls(mnist_small):
    return ImageDataLoaders.from_folder(mnist_small, item_tfms=Resize(32), bs=32, seed=0)


def test_near_data_gets_fastais_base_rate_and_far_data_one_fast_rate():
    assert unfrozen_rates(0.0, 10, NBTRAIN) == pytest.approx((2e-3, 10.0))
    assert unfrozen_rates(0.9, 10, NBTRAIN) == pytest.approx((1e-2, 1.0))  # chance level for 10 classes
    # In between, both move monotonically: the worse the frozen head, the faster the body.
    mults = [unfrozen_rates(e, 10, NBTRAIN)[1] for e in (0.05, 0.12, 0.18, 0.25, 0.4)]
    assert mults == sorted(mults, reverse=True) and 1.0 <= mults[-1] < mults[0] <= 10.0
    # The error is scaled by chance level: 40% error is 0.8 of the way to chance for 2 classes, far.
    assert distance(0.4, 2, NBTRAIN) == 1.0 and distance(0.05, 2, NBTRAIN) == 0.0


def test_a_given_base_lr_sets_the_near_end_and_far_data_keeps_the_far_rate():
    assert unfrozen_rates(0.0, 10, NBTRAIN, base_lr=1e-3) == pytest.approx((1e-3, 10.0))
    assert unfrozen_rates(0.9, 10, NBTRAIN, base_lr=1e-3) == pytest.approx((1e-2, 1.0))
    assert unfrozen_rates(0.9, 10, NBTRAIN, base_lr=5e-2) == pytest.approx((5e-2, 1.0))  # never below the start
    # Halfway, log-linear between the start and the far rate.
    assert unfrozen_rates(0.18, 10, NBTRAIN, base_lr=1e-3)[0] == pytest.approx(math.sqrt(1e-3 * 1e-2))


def test_no_probe_means_halfway():
    base, mult = unfrozen_rates(float("nan"), 10, NBTRAIN)
    assert mult == pytest.approx(10**0.5) and 2e-3 < base < 1e-2
    assert unfrozen_rates(None, 10, NBTRAIN) == (base, mult)


def test_small_batches_lower_the_whole_network_rate_and_large_ones_keep_it():
    assert unfrozen_rates(0.9, 10, NBTRAIN, bs=8) == pytest.approx((5e-3, 1.0))  # sqrt(8 / 32) of 1e-2
    assert unfrozen_rates(0.9, 10, NBTRAIN, bs=256) == pytest.approx((1e-2, 1.0))
    assert unfrozen_rates(0.0, 10, NBTRAIN, bs=8) == pytest.approx((2e-3, 10.0))  # near data: fastai's base rate
    assert unfrozen_rates(0.9, 10, NBTRAIN, bs=1)[0] == pytest.approx(2e-3)  # never under the head-only rate


def test_fastai_recipe_has_fastais_values():
    r = get_recipe("fastai")
    assert (r["base_lr"], r["lr_mult"], r["freeze_epochs"], r["pct_start"], r["div"]) == (2e-3, 100.0, 1, 0.3, 5.0)
    assert r["label_smoothing"] == 0.0 and r["lr"] == 1e-3
    # Whatever the probe says, fastai's rates do not move.
    assert unfrozen_rates(0.9, 10, FASTAI) == (2e-3, 100.0)


def test_unknown_recipe_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="fastai"):
        get_recipe("fast")
    with pytest.raises(ValueError, match="base_lr"):
        get_recipe({"base_rate": 1e-3})
    assert get_recipe({"lr_mult": 10.0})["lr_mult"] == 10.0


def test_default_loss_smooths_single_label_and_explicit_loss_wins(dls):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, dls.c))
    assert Learner(dls, model).loss_func.label_smoothing == pytest.approx(NBTRAIN["label_smoothing"])
    assert Learner(dls, model, recipe="fastai").loss_func.label_smoothing == 0.0
    plain = nn.CrossEntropyLoss()
    assert Learner(dls, model, loss_func=plain).loss_func is plain
    assert Learner(dls, model).lr == NBTRAIN["lr"] and Learner(dls, model, lr=3e-3).lr == 3e-3


def test_fastai_recipe_trains_the_body_100x_slower_whatever_the_data(dls):
    torch.manual_seed(0)
    learn = vision_learner(dls, "mobilenet_v2", recipe="fastai")
    assert learn.loss_func.label_smoothing == 0.0
    learn.fine_tune(1)
    rates = learn.fine_tune_rates
    assert rates["head"] == pytest.approx(1e-3) and rates["body"] == pytest.approx(1e-5)
    assert math.isfinite(rates["probe_error"])  # the head-only epoch ran and was validated


def test_explicit_arguments_win_over_the_recipe(dls):
    torch.manual_seed(0)
    learn = vision_learner(dls, "mobilenet_v2")
    learn.fine_tune(1, base_lr=4e-3, lr_mult=7, freeze_epochs=0, pct_start=0.5)
    rates = learn.fine_tune_rates
    assert rates["head"] == pytest.approx(2e-3) and rates["body"] == pytest.approx(2e-3 / 7)
    n = len(learn.dls.train)
    assert len(learn.recorder.values) == 1  # no frozen epoch
    lrs = learn.recorder.lrs[-n:]
    assert max(lrs) == pytest.approx(2e-3, rel=0.05) and lrs.index(max(lrs)) >= n // 2 - 1


def test_default_fine_tune_probes_then_picks_the_bodys_rate(dls):
    torch.manual_seed(0)
    learn = vision_learner(dls, "mobilenet_v2", metrics=nbtrain.error_rate)
    learn.fine_tune(1)
    rates = learn.fine_tune_rates
    # The probe is the frozen epoch's validation error, the same number as its error_rate column.
    assert rates["probe_error"] == pytest.approx(learn.recorder.values[0][2])
    assert (rates["head"] * 2, rates["lr_mult"]) == pytest.approx(
        unfrozen_rates(rates["probe_error"], dls.c, NBTRAIN, bs=dls.train.bs)
    )


def test_lr_find_suggests_the_recipes_rate_where_the_loss_still_falls_there(dls):
    torch.manual_seed(0)
    learn = vision_learner(dls, "mobilenet_v2")
    result = learn.lr_find(num_it=60, show_plot=False, suggest_funcs=(valley, minimum))
    lrs, losses = learn.recorder.lr_find_lrs, learn.recorder.lr_find_losses
    # The head's loss still falls at the recipe's rate, so following the suggestion trains as the default.
    assert lrs[losses.index(min(losses))] > NBTRAIN["base_lr"]
    assert result.valley == NBTRAIN["base_lr"]
    assert min(losses) < losses[0]


def test_a_curve_that_blows_up_before_the_recipes_rate_gives_the_valley_and_a_flat_noisy_one_does_not():
    stopped = torch.logspace(-7, math.log10(6e-3), 80)  # lr_find stops once the loss is 4x its lowest
    rising = (torch.log10(stopped) + 4.0) ** 2 + 1.0  # lowest at 1e-4, over 2.5x that at 2e-3
    lr, (x, y) = frozen_head_rate(stopped, rising, NBTRAIN["base_lr"])
    assert lr == pytest.approx(valley(stopped, rising)[0]) and lr < 1e-4 and x == lr
    assert frozen_head_rate(stopped[:60], rising[:60], NBTRAIN["base_lr"])[0] < 1e-4  # stopped before 2e-3
    lrs = torch.logspace(-7, 1, 100)
    # Batches of 8 with flipped labels: flat within noise, its minimum at the first rate, rising only late.
    gen = torch.Generator().manual_seed(0)
    flat = 0.7 + 0.05 * torch.randn(100, generator=gen) + torch.where(lrs > 3e-2, torch.log10(lrs / 3e-2), 0.0)
    flat[0] = 0.5
    assert frozen_head_rate(lrs, flat, NBTRAIN["base_lr"])[0] == NBTRAIN["base_lr"]
    assert minimum(lrs, flat)[0] < 1e-7  # where fastai's minimum rule would send it


def test_following_lr_find_gives_the_defaults_rates_on_far_data(dls):
    torch.manual_seed(0)
    learn = vision_learner(dls, "mobilenet_v2")
    suggestion = learn.lr_find(num_it=40, show_plot=False).valley
    learn.fine_tune(1, base_lr=suggestion)
    rates = learn.fine_tune_rates
    base, mult = unfrozen_rates(rates["probe_error"], dls.c, NBTRAIN, bs=dls.train.bs)
    # 32 px digits are far from ImageNet: the same unfrozen rates as the default, whatever the suggestion.
    assert distance(rates["probe_error"], dls.c, NBTRAIN) == 1.0
    assert (rates["head"] * 2, rates["lr_mult"]) == pytest.approx((base, mult))
