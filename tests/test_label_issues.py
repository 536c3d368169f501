"""find_label_issues and find_duplicates on real MNIST digits written as files, with planted wrong labels
and planted copies whose truth is known."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from nbtrain import ImageDataLoaders, Learner, Resize, vision_learner
from nbtrain.cleaner import DELETE, ImageClassifierCleaner
from nbtrain.embeddings import find_duplicates
from nbtrain.label_issues import (
    OutOfFoldProbs,
    auto_size,
    auto_weights,
    find_label_issues,
    fold_assignment,
    rank_labels,
)
from nbtrain.neighbours import nearest_neighbours
from nbtrain.samples import make_mnist_sample
from nbtrain.scores import SORTS

SCORE_COLUMNS = [
    "path",
    "split",
    "labels",
    "target",
    "pred_idx",
    "prob",
    "loss",
    "self_confidence",
    "margin",
    "readable",
]


def flipped_paths(sample) -> set[Path]:
    return {sample.path / f for f in sample.flipped}


# ---------------------------------------------------------------------------------------------
# Folds


def test_folds_are_stratified_balanced_and_seeded():
    rng = np.random.default_rng(0)
    targets = rng.choice(5, size=203, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    fold = fold_assignment(targets, 4, seed=7)
    assert set(fold.tolist()) == {0, 1, 2, 3}
    sizes = np.bincount(fold, minlength=4)
    assert sizes.max() - sizes.min() <= 1
    for c in range(5):
        per_fold = np.bincount(fold[targets == c], minlength=4)
        assert per_fold.max() - per_fold.min() <= 1, (c, per_fold)  # every fold gets its share of every class
    assert np.array_equal(fold, fold_assignment(targets, 4, seed=7))
    assert not np.array_equal(fold, fold_assignment(targets, 4, seed=8))


def test_auto_size_trains_small_images_at_their_own_size(tmp_path):
    small = tmp_path / "small.png"
    Image.new("L", (28, 28)).save(small)
    big = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(big)
    assert auto_size([Resize(64)], [small]) == 32  # MNIST at 64 px: the fold models train at 32
    assert auto_size([Resize(32)], [small]) is None  # already there
    assert auto_size([Resize(64)], [big]) is None  # photos keep the learner's size
    assert auto_size([], [small]) is None


def test_nearest_neighbours_in_chunks_match_the_full_matrix():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(57, 8), dim=1)
    emb[5] = float("nan")
    best, arg = nearest_neighbours(emb, chunk_bytes=4 * 57 * 3)  # three rows at a time
    sim = emb.nan_to_num(0) @ emb.nan_to_num(0).T
    sim.fill_diagonal_(float("-inf"))
    sim[:, 5] = sim[5, :] = float("-inf")
    ok = torch.arange(57) != 5
    assert torch.equal(arg[ok], sim.argmax(1)[ok]) and torch.allclose(best[ok], sim.max(1).values[ok])
    assert arg[5] == -1 and best[5] == float("-inf")


# ---------------------------------------------------------------------------------------------
# A quick run on a tiny real dataset: the table's shape, the probabilities behind it, the cleaner


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """80 real MNIST digits, 10% of the training labels flipped."""
    return make_mnist_sample(tmp_path_factory.mktemp("li") / "mnist80", n=80, noise=0.1, seed=3)


@pytest.fixture(scope="module")
def tiny_run(tiny):
    """A learner on `tiny` (as a user has it before cleaning), its weights, and the table of a quick run."""
    dls = ImageDataLoaders.from_folder(tiny.path, item_tfms=Resize(32), bs=16, seed=0)
    learn = vision_learner(dls, "mobilenet_v2")
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    table = find_label_issues(learn, folds=2, epochs=1, min_steps=0, seed=0, with_bar=False)
    return learn, before, table


@pytest.fixture(scope="module")
def tiny_table(tiny_run):
    learn, _, table = tiny_run
    return learn.dls, table


def test_table_has_the_score_columns_for_every_image(tiny_table):
    dls, table = tiny_table
    assert list(table.columns) == SCORE_COLUMNS
    assert len(table) == len(dls.train_ds) + len(dls.valid_ds)
    assert set(table["path"]) == set(dls.train_ds.items) | set(dls.valid_ds.items)
    assert (table.loc[table["split"] == "Train", "path"] == pd.Series(dls.train_ds.items)).all()
    assert table["readable"].all() and np.isfinite(table["loss"]).all()
    assert table["margin"].between(0, 1).all() and table["self_confidence"].between(0, 1).all()
    # margin > 0.5 exactly when the given label is the prediction
    assert ((table["margin"] > 0.5) == (table["pred_idx"] == table["target"])).all()


def test_the_probabilities_behind_the_table_are_kept_and_read_only(tiny_table):
    dls, table = tiny_table
    oof = table.attrs["oof"]
    assert isinstance(oof, OutOfFoldProbs) and oof.vocab == tuple(dls.vocab)
    assert np.allclose(oof.probs.sum(1), 1, atol=1e-4)
    some = list(table["path"].iloc[[5, 2, 40]])
    p = oof.for_paths(some)
    given = [table.loc[table["path"] == q, "target"].item() for q in some]
    assert np.allclose(p[np.arange(3), given], table.set_index("path").loc[some, "self_confidence"])
    is_train = (table["split"] == "Train").to_numpy()
    assert (oof.fold[~is_train] == -1).all()
    assert np.array_equal(oof.fold[is_train], fold_assignment(dls.train_ds.targets.numpy(), 2, 0))
    with pytest.raises(ValueError):
        oof.probs[0, 0] = 1.0
    assert table.sort_values("loss").attrs["oof"] is oof  # sorting and filtering share it, not copy it


def test_the_cleaner_shows_the_table_and_sorts_by_each_score(tiny_table):
    dls, table = tiny_table
    learn = Learner(dls, torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(dls.c)))
    cleaner = ImageClassifierCleaner(learn, max_n=100, ranking=table)
    cleaner.dd_cats.value = "3"
    for key, ascending in SORTS.items():
        cleaner.dd_sort.value = key
        shown = cleaner.view[key].tolist()
        assert shown == sorted(shown, reverse=not ascending) and len(shown) > 0
        assert list(cleaner.view["path"]) == cleaner.fns


def test_the_learner_is_left_as_it_was(tiny_run):
    learn, before, _ = tiny_run
    after = learn.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert learn.opt is None and learn.model.body_frozen  # neither trained nor unfrozen


def test_bad_arguments_are_refused(tiny_table):
    dls, _ = tiny_table
    with pytest.raises(ValueError, match="folds"):
        find_label_issues(dls, folds=1)
    with pytest.raises(ValueError, match="size"):
        find_label_issues(dls, size="big")


# ---------------------------------------------------------------------------------------------
# The ranking puts planted flips first


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """400 real MNIST digits (40 of each), 10% of the 320 training labels moved to a wrong class."""
    return make_mnist_sample(tmp_path_factory.mktemp("li") / "mnist400", n=400, noise=0.1, seed=0)


@pytest.mark.slow
def test_out_of_fold_ranking_puts_the_planted_flips_first(planted):
    """The default recipe on 400 real digits at 64 px (the fold models train at 32, the digits' own size).

    Measured here: of the k = 32 worst by out-of-fold loss, 21 to 26 are planted flips (precision
    0.66 to 0.81; 0.69 to 0.78 by margin) from run to run, where a random order gives 0.10 and the
    in-sample loss of fastai's recipe (fine_tune(2)) 0.34 to 0.66. With only 32 flips one image is
    0.03, so the threshold (0.6) sits two images under the lowest run seen.
    """
    flipped = flipped_paths(planted)
    dls = ImageDataLoaders.from_folder(planted.path, item_tfms=Resize(64), bs=16, seed=0)
    table = find_label_issues(dls, "mobilenet_v2", seed=0, with_bar=False)
    train = table[table["split"] == "Train"]
    k = len(flipped)
    assert k == 32 and len(train) == 320
    precision = {}
    for key in ("loss", "self_confidence", "margin"):
        order = list(train.sort_values(key, ascending=SORTS[key], kind="stable")["path"])
        precision[key] = np.mean([p in flipped for p in order[:k]])
    assert precision["loss"] >= 0.6 and precision["margin"] >= 0.6, precision
    assert precision["self_confidence"] == precision["loss"]  # the same order: loss = -log(self-confidence)
    # Nearly every planted flip is among the worst fifth of the training set.
    worst = set(train.sort_values("loss", ascending=False)["path"].iloc[: len(train) // 5])
    assert len(flipped & worst) >= 0.9 * k, len(flipped & worst)


# ---------------------------------------------------------------------------------------------
# Near-duplicates: planted copies of files, within the training set and across train and valid


def test_planted_copies_are_found_and_a_cross_split_copy_is_leakage(mnist_copy):
    """Copies of files planted in the 300-digit sample, found with an ImageNet mobilenet_v2's features:
    a copy in the same class, one in the validation set (leakage), one under another class."""
    train3 = sorted((mnist_copy / "train" / "3").glob("*.png"))
    train5 = sorted((mnist_copy / "train" / "5").glob("*.png"))
    same_split = (train3[0], mnist_copy / "train" / "3" / "copy_same.png")
    leak = (train5[0], mnist_copy / "valid" / "5" / "copy_leak.png")
    mislabelled = (train3[1], mnist_copy / "train" / "8" / "copy_as_8.png")
    planted = [same_split, leak, mislabelled]
    for src, dst in planted:
        shutil.copy(src, dst)
    dls = ImageDataLoaders.from_folder(mnist_copy, item_tfms=Resize(64), bs=32, seed=0)
    learn = vision_learner(dls, "mobilenet_v2")  # ImageNet features, untrained head: no training needed
    pairs = find_duplicates(learn)
    found = {frozenset((r.path_a, r.path_b)): r for r in pairs.itertuples()}
    for pair in planted:
        assert frozenset(pair) in found, pair
        assert found[frozenset(pair)].similarity > 0.9999
    assert found[frozenset(leak)].cross_split
    assert {found[frozenset(leak)].split_a, found[frozenset(leak)].split_b} == {"Train", "Valid"}
    assert not found[frozenset(same_split)].cross_split and not found[frozenset(mislabelled)].cross_split
    # The planted pairs come first: nothing else is as similar as a copy (the most similar two
    # distinct digits of this sample: 0.94).
    top = {frozenset((a, b)) for a, b in zip(pairs["path_a"][:3], pairs["path_b"][:3])}
    assert top == {frozenset(p) for p in planted}
    assert pairs["similarity"].is_monotonic_decreasing and (pairs["similarity"] >= 0.97).all()
    # The cleaner's view shows each pair side by side, names the leak, and deletes one copy.
    cleaner = ImageClassifierCleaner(learn, max_n=6, duplicates=pairs, frontend="plain")
    cleaner.dd_view.value = "duplicates"
    assert set(cleaner.fns) == {p for pair in planted for p in pair}
    captions = {c.path: c.caption.value for c in cleaner.cells if c.path is not None}
    assert all("leakage" in captions[p] for p in leak)
    assert not any("leakage" in captions[p] for p in same_split + mislabelled)
    cleaner.set_choice(leak[1], DELETE)
    cleaner.apply()
    assert not leak[1].exists() and leak[0].exists()
    assert leak[1] not in learn.dls.valid_ds.items


def test_texture_is_the_spread_of_the_bodys_second_module_and_none_for_a_short_body(mnist_small):
    from nbtrain import ImageDataLoaders, Learner, Resize
    from nbtrain.embeddings import image_embeddings, image_features_and_texture
    from nbtrain.models import VisionModel, create_head

    dls = ImageDataLoaders.from_folder(mnist_small, item_tfms=Resize(16), bs=16, seed=0)
    torch.manual_seed(0)
    body = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, padding=1)
    )
    learn = Learner(dls, VisionModel(body, create_head(32, dls.c)))
    dl = dls.train.plain()
    feats, texture = image_features_and_texture(learn, dl)
    assert torch.allclose(feats, image_embeddings(learn, dl), atol=1e-6)
    spread, _, idx = learn.outputs(dl, forward=lambda x: body[1](body[0](x)).std(dim=(2, 3), correction=0))
    assert texture.shape == (len(dl.dataset), 16) and torch.allclose(texture[idx], spread.cpu(), atol=1e-6)
    short = Learner(
        dls, VisionModel(torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), torch.nn.ReLU()), create_head(32, dls.c))
    )
    feats2, none = image_features_and_texture(short, dl)
    assert none is None and feats2.shape == (len(dl.dataset), 32)


# ---------------------------------------------------------------------------------------------
# One ranking argument


@pytest.fixture(scope="module")
def trained_tiny(tiny):
    """A learner on `tiny` trained one quick fine_tune, its training dynamics recorded as by default."""
    dls = ImageDataLoaders.from_folder(tiny.path, item_tfms=Resize(32), bs=16, seed=0)
    learn = vision_learner(dls, "mobilenet_v2")
    learn.fine_tune(1)
    return learn


@pytest.mark.parametrize("ranking", ["dynamics", "neighbours", "auto", "loss", "oof-linear"])
def test_each_ranking_gives_a_table_the_cleaner_shows(trained_tiny, ranking):
    table = rank_labels(trained_tiny, ranking, with_bar=False)
    assert list(table.columns) == SCORE_COLUMNS
    assert len(table) == len(trained_tiny.dls.train_ds) + len(trained_tiny.dls.valid_ds)
    assert np.isfinite(table["loss"]).all()
    assert table.attrs["ranking"]["asked"] == ranking and table.attrs["ranking"]["why"]
    cleaner = ImageClassifierCleaner(trained_tiny, max_n=100, ranking=table)
    assert len(cleaner.view) > 0


def test_the_dynamics_ranking_scores_training_images_by_their_mean_recorded_loss(trained_tiny):
    table = rank_labels(trained_tiny, "dynamics", with_bar=False)
    train = table[table["split"] == "Train"]
    losses = trained_tiny.dynamics.losses.numpy().astype(np.float64)
    seen = ~np.isnan(losses).all(0)  # an image in a dropped last batch every epoch keeps the model's loss
    assert seen.sum() > len(seen) // 2
    expected = np.nanmean(losses[:, seen], axis=0)
    np.testing.assert_allclose(train["loss"].to_numpy()[seen], expected, rtol=1e-6)


def test_auto_says_what_it_ranks_by_and_why(trained_tiny, capsys):
    table = rank_labels(trained_tiny, "auto", with_bar=False)
    info = table.attrs["ranking"]
    assert info["name"] == "own features+neighbours" and "weighted" in info["why"]
    assert sum(info["weights"].values()) == pytest.approx(1.0)
    assert "Ranking labels by out-of-fold linear classifiers" in capsys.readouterr().out


def test_auto_weighs_the_more_accurate_source_more():
    own, features = auto_weights(0.4, 0.85)
    assert features > 0.99 and own + features == pytest.approx(1.0)
    assert auto_weights(0.9, 0.9) == pytest.approx((0.5, 0.5))


def test_the_cheaper_out_of_fold_ranking_keeps_its_probabilities(trained_tiny):
    table = find_label_issues(trained_tiny, ranking="oof-linear")
    oof = table.attrs["oof"]
    assert np.allclose(oof.probs.sum(1), 1, atol=1e-4)
    assert (oof.fold[(table["split"] == "Train").to_numpy()] >= 0).all()
    with pytest.raises(TypeError, match="pass the Learner"):
        find_label_issues(trained_tiny.dls, ranking="auto")


def test_a_bad_ranking_name_is_refused_with_the_choices(trained_tiny):
    with pytest.raises(ValueError, match="'auto', 'loss', 'dynamics', 'neighbours', 'oof-linear', 'oof'"):
        rank_labels(trained_tiny, "forgetting")
    with pytest.raises(ValueError, match="ranking must be one of"):
        ImageClassifierCleaner(trained_tiny, ranking="margin")


def test_dynamics_without_records_is_refused_saying_why_and_what_to_use(tiny):
    dls = ImageDataLoaders.from_folder(tiny.path, item_tfms=Resize(32), bs=16, seed=0)
    learn = vision_learner(dls, "mobilenet_v2")  # as loaded from an export: never trained here
    with pytest.raises(ValueError, match="needs the margins recorded.*not trained in this session.*ranking='loss'"):
        rank_labels(learn, "dynamics")


def test_auto_falls_back_to_the_loss_without_a_pretrained_body_and_says_so(tiny_table, capsys):
    dls, _ = tiny_table
    learn = Learner(dls, torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(dls.c)))
    table = rank_labels(learn, "auto", with_bar=False)
    assert table.attrs["ranking"]["name"] == "loss"
    assert "no pretrained body" in table.attrs["ranking"]["why"]
    assert "Ranking labels by the model's own loss" in capsys.readouterr().out
    with pytest.raises(ValueError, match="ranking='neighbours' cannot rank.*no pretrained body.*'loss'"):
        rank_labels(learn, "neighbours")


def test_the_audit_judges_labels_by_a_ranking_with_probabilities(trained_tiny):
    from nbtrain import audit

    table = audit(trained_tiny, ranking="neighbours", with_bar=False)
    assert len(table) and "issue" in table.columns
    with pytest.raises(ValueError, match="or a ranking 'auto'"):
        audit(trained_tiny, ranking="dynamics", with_bar=False)


def test_pair_flips_move_each_digit_into_the_one_it_is_taken_for(tmp_path):
    from nbtrain.samples import DIGIT_CONFUSED

    sample = make_mnist_sample(tmp_path / "pair", n=200, noise=0.2, seed=0, flip="pair")
    flipped = sample.labels[sample.labels["flipped"]]
    assert len(flipped) == round(0.2 * (~sample.labels["is_valid"]).sum())
    assert all(DIGIT_CONFUSED[int(t)] == int(g) for t, g in zip(flipped["true_label"], flipped["label"]))
    with pytest.raises(ValueError, match="flip must be"):
        make_mnist_sample(tmp_path / "bad", n=200, flip="random")


def test_auto_ranks_a_learner_without_a_validation_set(trained_tiny):
    from nbtrain.data import DataLoaders

    dls = trained_tiny.dls
    nothing = dls.valid.new(dataset=dls.valid.dataset.subset([], train=False))
    learn = Learner(DataLoaders(dls.train, nothing, path=dls.path), trained_tiny.model)
    table = rank_labels(learn, "auto", with_bar=False)
    assert (table["split"] == "Train").all() and len(table) == len(dls.train_ds)


def test_linear_classifiers_out_of_fold_doubt_a_label_its_features_contradict():
    from nbtrain.linear_probe import linear_oof_probs

    rng = np.random.default_rng(0)
    targets = np.repeat([0, 1, 2], 30)
    feats = torch.tensor(rng.normal(size=(90, 8)) + 4 * np.eye(8)[targets], dtype=torch.float32)
    given = targets.copy()
    given[5] = 2  # a class-0 image labelled 2
    fold = fold_assignment(given, 3, 0)
    probs, extra = linear_oof_probs(feats, given, fold, 3, others=feats[:4])
    p_given = probs[np.arange(90), given]
    assert p_given.argmin() == 5 and np.median(p_given) > 0.5  # the L2 penalty keeps them modest
    assert extra.shape == (4, 3) and np.allclose(extra.sum(1), 1, atol=1e-5)


def test_features_recorded_with_the_body_frozen_stand_in_for_a_pass_of_the_pretrained_body(trained_tiny):
    from nbtrain.label_issues import pretrained_features

    recorded = trained_tiny.dynamics.frozen_features
    train, valid = pretrained_features(trained_tiny)
    seen = ~recorded["train"].isnan().any(dim=1)
    assert not seen.all()  # the dropped last batch: those images come from a pass of their own
    assert not train.isnan().any()
    torch.testing.assert_close(train[seen], recorded["train"][seen].float())
    torch.testing.assert_close(valid, recorded["valid"].float())


def test_without_recorded_features_the_pretrained_features_come_from_a_pass(trained_tiny):
    from nbtrain.label_issues import pretrained_features

    rec = trained_tiny.dynamics
    kept = dict(rec.frozen_features)
    try:
        rec.frozen_features = {}
        train, valid = pretrained_features(trained_tiny)
        assert not train.isnan().any() and len(valid) == len(trained_tiny.dls.valid_ds)
        assert not torch.allclose(valid, kept["valid"].float(), atol=1e-3)  # eval mode, ImageNet statistics
    finally:
        rec.frozen_features = kept
