"""Test-time augmentation as fastai computes it, and the model summary's counts."""

from __future__ import annotations

import pytest
import torch

import nbtrain
from nbtrain import ImageDataLoaders, Learner, RandomResizedCrop, aug_transforms, vision_learner
from testkit.tiny_models import small_cnn


@pytest.fixture(scope="module")
def aug_learner(mnist_small):
    """A small CNN trained one epoch on digits, with random crops and flips as its augmentation."""
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_folder(
        mnist_small, item_tfms=RandomResizedCrop(16, min_scale=0.5), batch_tfms=aug_transforms(), bs=16, seed=0
    )
    learn = Learner(dls, small_cnn(dls.c), metrics=nbtrain.error_rate)
    learn.fit_one_cycle(1, 1e-2)
    return learn


def test_tta_returns_one_row_per_validation_image_and_the_targets(aug_learner):
    preds, targs = aug_learner.tta(n=2)
    assert preds.shape == (len(aug_learner.dls.valid_ds), aug_learner.dls.c)
    assert torch.equal(targs, aug_learner.dls.valid_ds.targets)
    assert torch.allclose(preds.sum(1), torch.ones(len(preds)), atol=1e-5)


def test_tta_mixes_the_augmented_mean_and_the_plain_pass_with_beta(aug_learner):
    torch.manual_seed(1)
    (aug, plain), _ = aug_learner.tta(n=3, beta=None)
    torch.manual_seed(1)
    mixed, _ = aug_learner.tta(n=3, beta=0.25)
    assert torch.allclose(mixed, 0.75 * aug + 0.25 * plain, atol=1e-6)
    assert torch.allclose(plain, aug_learner.get_preds()[0])
    assert not torch.allclose(aug, plain)  # the augmented passes saw other crops and flips


def test_tta_with_beta_one_is_the_plain_prediction(aug_learner):
    preds, _ = aug_learner.tta(n=1, beta=1.0)
    assert torch.allclose(preds, aug_learner.get_preds()[0])


def test_tta_use_max_takes_the_largest_probability_of_all_passes(aug_learner):
    torch.manual_seed(2)
    (aug_mean, plain), _ = aug_learner.tta(n=2, beta=None)
    torch.manual_seed(2)
    best, _ = aug_learner.tta(n=2, use_max=True)
    assert bool((best >= plain - 1e-7).all())
    assert bool((best >= aug_mean - 1e-7).all())  # the max of the passes is at least their mean


def test_tta_on_a_test_loader(aug_learner):
    files = aug_learner.dls.valid_ds.items[:5]
    preds, _ = aug_learner.tta(dl=aug_learner.dls.test_dl(files), n=1)
    assert preds.shape == (5, aug_learner.dls.c)


def test_tta_refuses_zero_passes(aug_learner):
    with pytest.raises(ValueError, match="get_preds"):
        aug_learner.tta(n=0)


def test_summary_counts_every_parameter_once_and_shows_output_shapes(aug_learner):
    s = aug_learner.summary()
    total = sum(p.numel() for p in aug_learner.model.parameters())
    assert int(s.df["params"].sum()) == total
    assert f"Total params: {total:,}" in s and "Optimizer used: AdamW" in s and "CrossEntropyLoss" in s
    assert "Precision: " in s
    last = s.df.iloc[-1]
    assert last["type"] == "Linear" and last["output_shape"][1] == aug_learner.dls.c


def test_summary_shows_the_frozen_body_as_not_trainable(mnist_small):
    dls = ImageDataLoaders.from_folder(mnist_small, item_tfms=nbtrain.Resize(32), bs=8, seed=0)
    learn = vision_learner(dls, "mobilenet_v2")  # pretrained: the body starts frozen
    s = learn.summary()
    frozen = sum(p.numel() for p in learn.model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in learn.model.parameters() if p.requires_grad)
    assert frozen > 0 and trainable > 0
    assert int(s.df.loc[~s.df["trainable"], "params"].sum()) == frozen
    assert f"Total non-trainable params: {frozen:,}" in s and f"Total trainable params: {trainable:,}" in s
    learn.unfreeze()
    assert bool(learn.summary().df.query("params > 0")["trainable"].all())
