"""The recorder of training dynamics, on tiny real digits: every training image's margin and loss per epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nbtrain import ImageDataLoaders, Learner, MixUp, Resize
from nbtrain.dynamics import TrainingDynamics, batch_margins
from nbtrain.scores import area_under_margin, forgetting_events, neighbour_vote


def linear_learner(path, bs: int = 40) -> Learner:
    """A linear model on 16-pixel digits: no batch norm or dropout, so training mode predicts as eval does."""
    dls = ImageDataLoaders.from_folder(path, item_tfms=Resize(16), bs=bs, seed=0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, len(dls.vocab)))
    return Learner(dls, model)


def test_every_learner_records_dynamics_by_default(mnist_small):
    learn = linear_learner(mnist_small)
    assert isinstance(learn.dynamics, TrainingDynamics)
    assert learn.dynamics.n_epochs == 0


def test_each_training_image_is_recorded_once_per_epoch(mnist_small):
    learn = linear_learner(mnist_small, bs=40)  # 240 training images: six full batches, none dropped
    learn.fit(2, lr=1e-3)
    rec = learn.dynamics
    assert rec.margins.shape == rec.losses.shape == (2, len(learn.dls.train.dataset))
    assert not rec.margins.isnan().any() and not rec.losses.isnan().any()
    learn.fit(1, lr=1e-3)  # a second fit extends the history
    assert rec.n_epochs == 3


def test_a_dropped_last_batch_leaves_its_images_unrecorded_that_epoch(mnist_small):
    learn = linear_learner(mnist_small, bs=64)  # 240 = 3 full batches of 64 + 48 dropped
    learn.fit(1, lr=1e-3)
    assert int((~learn.dynamics.margins[0].isnan()).sum()) == 3 * 64


def test_recorded_margins_match_a_direct_computation_for_a_fixed_model(mnist_small):
    learn = linear_learner(mnist_small)
    learn.fit(1, lr=0.0)  # the weights stay as they are, so every step sees the same model
    logits, targets, idx = learn.outputs(learn.dls.train.plain())
    given = logits.gather(1, targets[:, None]).squeeze(1)
    other = logits.scatter(1, targets[:, None], float("-inf")).amax(1)
    expected = torch.full((len(learn.dls.train.dataset),), float("nan"))
    expected[idx] = given - other
    torch.testing.assert_close(learn.dynamics.margins[0], expected, rtol=1e-4, atol=1e-4)
    ce = nn.functional.cross_entropy(logits, targets, reduction="none")
    torch.testing.assert_close(learn.dynamics.losses[0][idx], ce, rtol=1e-4, atol=1e-4)


def test_margins_under_bf16_autocast_are_recorded_in_float32(mnist_small):
    learn = linear_learner(mnist_small)
    learn.amp = torch.bfloat16
    learn.fit(1, lr=1e-3)
    assert learn.dynamics.margins.dtype == torch.float32
    assert not learn.dynamics.margins.isnan().any()


def test_batch_margins_is_the_given_logit_minus_the_largest_other():
    logits = torch.tensor([[2.0, 1.0, 0.5], [0.0, 3.0, 1.0]], dtype=torch.bfloat16)
    margin, loss = batch_margins(logits, torch.tensor([0, 2]))
    assert margin.dtype == torch.float32
    torch.testing.assert_close(margin, torch.tensor([1.0, -2.0]))
    assert loss[1] > loss[0]


def test_mixed_batches_are_not_recorded(mnist_small):
    learn = linear_learner(mnist_small)
    learn.fit(1, lr=1e-3, cbs=MixUp())
    assert learn.dynamics.n_epochs == 0


def test_lr_find_records_nothing_and_the_training_state_keeps_the_records(mnist_small):
    learn = linear_learner(mnist_small)
    learn.fit(1, lr=1e-3)
    before = learn.dynamics.margins.clone()
    learn.lr_find(num_it=5, show_plot=False)
    torch.testing.assert_close(learn.dynamics.margins, before)
    state = learn.training_state()
    learn.fit(1, lr=1e-3)
    learn.load_training_state(state)
    torch.testing.assert_close(learn.dynamics.margins, before)


def test_area_under_margin_averages_the_epochs_that_saw_each_item():
    m = np.array([[1.0, np.nan, -1.0], [3.0, np.nan, 0.0]])
    aum = area_under_margin(m)
    assert aum[0] == 2.0 and np.isnan(aum[1]) and aum[2] == -0.5


def test_forgetting_counts_right_to_wrong_and_never_learned_items_count_every_epoch():
    m = np.array([[1.0, -1.0, 1.0], [-1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [-1.0, -2.0, 2.0]])
    assert forgetting_events(m).tolist() == [2, 4, 0]


def test_neighbour_vote_counts_the_neighbours_labels():
    targets = np.array([0, 0, 1, 1])
    idx = np.array([[1, 2], [0, -1], [3, 0], [2, 1]])
    vote = neighbour_vote(idx, targets, 2, prior=0.0)
    np.testing.assert_allclose(vote, [[0.5, 0.5], [1.0, 0.0], [0.5, 0.5], [0.5, 0.5]])


@pytest.mark.filterwarnings("ignore:No GPU")
def test_two_processes_record_what_one_process_records(mnist_small):
    """Each process records its part of every batch; the parts are merged after each epoch and come home."""

    def learner() -> Learner:
        dls = ImageDataLoaders.from_folder(mnist_small, item_tfms=Resize(16), bs=40, seed=0, num_workers=0)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, dls.c))  # no batch norm: halves would differ
        return Learner(dls, model, opt_func=torch.optim.SGD)

    one, two = learner(), learner()
    one.fit(2, lr=0.1)
    two.fit(2, lr=0.1, n_gpus=2)
    assert two.dynamics.margins.shape == (2, len(two.dls.train.dataset))
    assert not two.dynamics.margins.isnan().any()
    torch.testing.assert_close(two.dynamics.margins, one.dynamics.margins, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(two.dynamics.losses, one.dynamics.losses, rtol=1e-4, atol=1e-4)


class _TwoHeads(nn.Module):
    """A model whose output is not one row of class scores per image: (batch, classes, 2)."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2 * n_classes))
        self.n = n_classes

    def forward(self, x):
        return self.body(x).view(len(x), self.n, 2)


def test_a_model_that_is_not_one_class_per_image_trains_and_records_nothing(mnist_small):
    dls = ImageDataLoaders.from_folder(mnist_small, item_tfms=Resize(16), bs=40, seed=0)
    learn = Learner(dls, _TwoHeads(len(dls.vocab)), loss_func=lambda p, y: nn.functional.cross_entropy(p.mean(-1), y))
    learn.fit(1, lr=1e-3)
    assert learn.epochs_trained == 1
    assert learn.dynamics.n_epochs == 0


def test_fine_tune_keeps_each_images_features_in_the_frozen_body(mnist_small):
    from nbtrain import vision_learner

    dls = ImageDataLoaders.from_folder(mnist_small, item_tfms=Resize(32), bs=64, seed=0)
    learn = vision_learner(dls, "mobilenet_v2")
    learn.fine_tune(1)
    feats = learn.dynamics.frozen_features
    train, valid = feats["train"].float(), feats["valid"].float()
    assert len(train) == len(dls.train.dataset) and len(valid) == len(dls.valid.dataset)
    # Every validation image is seen; training images only in full batches (the last is dropped).
    assert not valid.isnan().any()
    seen = ~train.isnan().any(dim=1)
    assert int(seen.sum()) == len(train) // 64 * 64
    torch.testing.assert_close(train[seen].norm(dim=1), torch.ones(int(seen.sum())), atol=1e-2, rtol=0)


def test_a_plain_fit_or_a_model_without_a_body_keeps_no_features(mnist_small):
    from nbtrain import vision_learner

    learn = linear_learner(mnist_small)
    learn.fit(1, lr=1e-3)
    assert learn.dynamics.frozen_features == {}
    dls = ImageDataLoaders.from_folder(mnist_small, item_tfms=Resize(32), bs=64, seed=0)
    unfrozen = vision_learner(dls, "mobilenet_v2")
    unfrozen.unfreeze()
    unfrozen.fit(1, lr=1e-4)
    unfrozen.freeze()  # the body has trained: frozen now, it is no longer the pretrained one
    unfrozen.fit(1, lr=1e-4)
    assert unfrozen.dynamics.frozen_features == {}


def test_a_frozen_body_that_was_never_pretrained_keeps_no_features(mnist_small):
    from nbtrain import vision_learner

    dls = ImageDataLoaders.from_folder(mnist_small, item_tfms=Resize(32), bs=64, seed=0)
    learn = vision_learner(dls, "mobilenet_v2", pretrained=False)
    learn.freeze()  # frozen, but random: no stand-in for the pretrained body
    learn.fit(1, lr=1e-3)
    assert learn.dynamics.frozen_features == {}
