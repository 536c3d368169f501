"""Multi-label classification end to end, on images of two real MNIST digits side by side labelled with both.

The dataset is `make_multilabel_mnist`: `images/<id>.png` (28 x 56 pixels) and `labels.csv` with the
space-delimited digits ("3 7", or "4" for two 4s) and an `is_valid` column, as Kaggle's "planet" has.
A small CNN trained from scratch for a few seconds stands in for a pretrained model (the slow test at
the end runs `vision_learner`). The cleaner is driven as a person drives it, by setting its widgets.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from sklearn import metrics as skm
from torch import nn

from nbtrain import (
    AccuracyMulti,
    F1ScoreMulti,
    FBetaMulti,
    ImageDataLoaders,
    Learner,
    Resize,
    accuracy_multi,
    find_best_threshold,
    vision_learner,
)
from nbtrain.cleaner import DELETE, KEEP, ImageClassifierCleaner
from nbtrain.samples import make_multilabel_mnist
from testkit.tiny_models import small_cnn

DIGITS = [str(d) for d in range(10)]
CSV_ARGS = dict(label_col="labels", label_delim=" ", valid_col="is_valid")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """400 pairs of real digits: 320 to train on, 80 to validate. Read-only use."""
    return make_multilabel_mnist(tmp_path_factory.mktemp("pairs") / "pairs", n=400, seed=0)


@pytest.fixture(scope="module")
def trained(pairs):
    """A learner from `from_csv`, trained 6 epochs (about 5 s on two CPU cores)."""
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_csv(pairs.path, bs=16, seed=0, **CSV_ARGS)
    learn = Learner(dls, small_cnn(dls.c), metrics=[accuracy_multi, FBetaMulti(beta=2, thresh=0.2)])
    with contextlib.redirect_stdout(io.StringIO()):
        learn.fit_one_cycle(6, 1e-2)
    return learn


def digest(root: Path) -> dict[str, tuple[str, int]]:
    """Relative path -> (sha256, inode) of every image under root: any change, rewrite or move shows."""
    return {
        p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_ino)
        for p in sorted(root.rglob("*.png"))
    }


# ---------------------------------------------------------------------------------------------
# Loading


def test_from_csv_gives_multi_hot_targets_from_the_space_delimited_labels(pairs):
    dls = ImageDataLoaders.from_csv(pairs.path, bs=16, seed=0, **CSV_ARGS)
    table = pd.read_csv(pairs.path / "labels.csv", dtype={"labels": str})
    assert dls.multi_label and dls.vocab == DIGITS and dls.c == 10
    rows = table.set_index("fname")
    for ds, valid in [(dls.train_ds, False), (dls.valid_ds, True)]:
        assert len(ds) == int((table["is_valid"] == valid).sum())
        assert ds.targets.shape == (len(ds), 10) and ds.targets.dtype == torch.float32
        assert set(ds.targets.unique().tolist()) == {0.0, 1.0}
        for path, target in zip(ds.items, ds.targets):
            row = rows.loc[path.relative_to(pairs.path).as_posix()]
            assert bool(row["is_valid"]) == valid
            expected = torch.zeros(10)
            expected[[int(d) for d in row["labels"].split(" ")]] = 1
            assert torch.equal(target, expected), (path, row["labels"])
    # Both kinds of row are there: two different digits (two labels) and two of the same digit (one).
    n_labels = dls.train_ds.targets.sum(dim=1)
    assert set(n_labels.tolist()) == {1.0, 2.0}
    x, y = dls.one_batch()
    assert x.shape == (16, 3, 28, 56) and y.shape == (16, 10)


def test_from_df_with_label_delim_is_the_same_as_from_csv(pairs):
    df = pd.read_csv(pairs.path / "labels.csv")
    a = ImageDataLoaders.from_df(df, path=pairs.path, bs=16, seed=0, **CSV_ARGS)
    b = ImageDataLoaders.from_csv(pairs.path, bs=16, seed=0, **CSV_ARGS)
    assert a.multi_label and a.vocab == b.vocab
    for da, db in [(a.train_ds, b.train_ds), (a.valid_ds, b.valid_ds)]:
        assert da.items == db.items and torch.equal(da.targets, db.targets)
    # Without label_delim the same table is single-label, "3 7" being one class.
    single = ImageDataLoaders.from_df(df, path=pairs.path, label_col="labels", valid_col="is_valid")
    assert not single.multi_label and any(" " in v for v in single.vocab)


def test_from_csv_reads_numeric_labels_and_an_empty_cell_as_text(pairs, tmp_path):
    # Single-digit labels and one image with none (as the cleaner writes when every label is unselected):
    # pandas alone would read the column as floats, and the labels would become "3.0".
    table = pd.read_csv(pairs.path / "labels.csv", dtype={"labels": str}).head(40)
    table["labels"] = table["labels"].str.split(" ").str[0]
    table.loc[5, "labels"] = ""
    shutil.copytree(pairs.path / "images", tmp_path / "images")
    table.to_csv(tmp_path / "labels.csv", index=False)
    dls = ImageDataLoaders.from_csv(tmp_path, bs=8, seed=0, **CSV_ARGS)
    assert set(dls.vocab) <= set(DIGITS)
    labels = {
        p.relative_to(tmp_path).as_posix(): lab
        for ds in (dls.train_ds, dls.valid_ds)
        for p, lab in zip(ds.items, ds.labels)
    }
    assert labels[table.loc[5, "fname"]] == []
    assert labels[table.loc[0, "fname"]] == [table.loc[0, "labels"]]


def test_bce_with_logits_is_chosen_automatically(pairs):
    dls = ImageDataLoaders.from_csv(pairs.path, bs=16, seed=0, **CSV_ARGS)
    assert isinstance(Learner(dls, small_cnn(10)).loss_func, nn.BCEWithLogitsLoss)
    learn = vision_learner(dls, "mobilenet_v2")
    assert isinstance(learn.loss_func, nn.BCEWithLogitsLoss)
    x, y = dls.one_batch()
    assert learn.loss_func(learn.model(x), y).ndim == 0  # multi-hot float targets fit it as they are
    # Single-label data keeps cross-entropy.
    df = pd.read_csv(pairs.path / "labels.csv", dtype={"labels": str})
    single = ImageDataLoaders.from_df(df, path=pairs.path, label_col="labels", valid_col="is_valid")
    assert isinstance(Learner(single, small_cnn(single.c)).loss_func, nn.CrossEntropyLoss)


# ---------------------------------------------------------------------------------------------
# Training, metrics, thresholds, predictions


def test_trains_end_to_end_to_the_stated_level(trained):
    """The levels, and why. Trivial models: all-negative scores accuracy_multi 0.82 (there are 1.8
    labels among 10 per image) and F2 0; all-positive scores F2 0.52 (at 0.2) and finds every digit.
    Six epochs from scratch measured accuracy_multi 0.90, F2@0.2 0.75, macro ROC AUC 0.94, and every
    digit of the image predicted at 0.2 for 75% of the validation images. The bars sit clearly above
    the trivial models and leave room for run-to-run variation (other CPUs, other torch versions)."""
    learn = trained
    rec = learn.recorder
    assert rec.metric_names == ["train_loss", "valid_loss", "accuracy_multi", "fbeta_score"]
    first, last = rec.values[0], rec.values[-1]
    # The validation BCE falls, below the 0.47 of a model that knows only how often each digit occurs
    # (measured 0.27).
    assert last[1] < first[1] and last[1] < 0.4

    probs, targs = learn.get_preds()
    y = targs.numpy().astype(int)
    trivial_accuracy = 1 - y.mean()
    acc = accuracy_multi(probs, targs, sigmoid=False)
    assert acc == pytest.approx(last[2], abs=1e-6)  # the epoch table's value, from the same predictions
    assert acc >= max(0.85, trivial_accuracy + 0.04), (acc, trivial_accuracy)
    f2 = FBetaMulti(beta=2, thresh=0.2, sigmoid=False)(probs, targs)
    assert f2 >= 0.65, f2
    # Independent of any threshold: how well each label's probability ranks its positives first.
    auc = skm.roc_auc_score(y, probs.numpy(), average="macro")
    assert auc >= 0.88, auc
    # Every digit of the image among the predictions at 0.2, for most images (an all-negative model: none).
    yhat = probs.numpy() > 0.2
    all_found = ((yhat & (y == 1)).sum(axis=1) == y.sum(axis=1)).mean()
    assert all_found >= 0.55, all_found


def test_metrics_on_the_trained_model_equal_sklearns(trained):
    probs, targs = trained.get_preds()
    y = targs.numpy().astype(int)
    for thresh in [0.2, 0.5]:
        yhat = (probs.numpy() > thresh).astype(int)
        assert accuracy_multi(probs, targs, thresh=thresh, sigmoid=False) == pytest.approx(
            skm.accuracy_score(y.ravel(), yhat.ravel()), abs=1e-12
        )
        for average in ["samples", "macro"]:
            assert FBetaMulti(beta=2, thresh=thresh, sigmoid=False, average=average)(probs, targs) == pytest.approx(
                skm.fbeta_score(y, yhat, beta=2, average=average, zero_division=0), abs=1e-12
            )
            assert F1ScoreMulti(thresh=thresh, sigmoid=False, average=average)(probs, targs) == pytest.approx(
                skm.f1_score(y, yhat, average=average, zero_division=0), abs=1e-12
            )


def test_best_threshold_is_picked_on_the_validation_set_for_a_chosen_metric(trained):
    probs, targs = trained.get_preds(ds_idx=1)
    for metric in [
        FBetaMulti(beta=2, sigmoid=False),
        F1ScoreMulti(average="macro", sigmoid=False),
        AccuracyMulti(sigmoid=False),
    ]:
        t, score = find_best_threshold(probs, targs, metric)
        grid = [round(0.05 + 0.01 * i, 2) for i in range(91)]
        scores = [dataclasses.replace(metric, thresh=g)(probs, targs) for g in grid]
        assert t in grid and score == max(scores) and t == grid[scores.index(max(scores))]  # smallest of ties
        assert score >= dataclasses.replace(metric, thresh=0.5)(probs, targs)
    # F2 rewards recall, so its best threshold is lower than accuracy's.
    t_f2, _ = find_best_threshold(probs, targs, FBetaMulti(beta=2, sigmoid=False))
    t_acc, _ = find_best_threshold(probs, targs, AccuracyMulti(sigmoid=False))
    assert t_f2 < t_acc
    # The same search from the raw outputs, with the metric's sigmoid.
    assert find_best_threshold(torch.logit(probs), targs, FBetaMulti(beta=2))[0] == t_f2
    # Used as the learner's threshold, predictions follow it.
    learn = copy.copy(trained)
    learn.thresh = t_f2
    labels, mask, p = learn.predict(trained.dls.valid_ds.items[0])
    assert labels == [d for d, v in zip(DIGITS, p) if v > t_f2]


def test_predict_returns_every_label_above_the_threshold(trained):
    probs, targs = trained.get_preds()
    learn = copy.copy(trained)  # the same model, with its own threshold
    checked_two = False
    for i in range(0, len(probs), 8):
        path = learn.dls.valid_ds.items[i]
        for thresh in [0.5, 0.2, 0.05]:
            learn.thresh = thresh
            labels, mask, p = learn.predict(path)
            assert torch.allclose(p, probs[i], atol=1e-5)
            assert mask.dtype == torch.bool and torch.equal(mask, p > thresh)
            assert labels == [d for d, v in zip(DIGITS, p) if v > thresh]  # every one, in vocab order
            checked_two |= len(labels) >= 2
        # A threshold just under the second-highest probability: exactly the top two come back.
        top = torch.sort(probs[i], descending=True).values
        learn.thresh = float((top[1] + top[2]) / 2)
        labels, _, _ = learn.predict(path)
        assert len(labels) == 2 and set(labels) == {DIGITS[j] for j in torch.topk(probs[i], 2).indices.tolist()}
    assert checked_two


# ---------------------------------------------------------------------------------------------
# The cleaner on multi-label data


@pytest.fixture
def cleaner_setup(pairs, trained, tmp_path):
    """A private copy of the dataset, its loaders from the CSV, and a learner with the trained weights."""
    root = tmp_path / "pairs"
    shutil.copytree(pairs.path, root)
    dls = ImageDataLoaders.from_csv(root, bs=16, seed=0, **CSV_ARGS)
    learn = Learner(dls, copy.deepcopy(trained.model))
    return root, learn


def test_cleaner_lists_multi_label_images_by_loss_with_toggles(cleaner_setup):
    root, learn = cleaner_setup
    cleaner = ImageClassifierCleaner(learn, max_n=6)
    assert cleaner.multi_label
    cleaner.dd_cats.value = "3"
    cleaner.dd_ds.value = "Valid"
    _, targs, losses = learn.get_preds(ds_idx=1, with_loss=True)
    by_path = dict(zip(learn.dls.valid_ds.items, losses.tolist()))
    with_3 = [p for p, t in zip(learn.dls.valid_ds.items, targs) if t[3] > 0.5]
    assert set(cleaner.view["path"]) == set(with_3)  # every valid image that has the label 3
    shown = [by_path[p] for p in cleaner.fns]
    assert len(shown) == min(6, len(with_3)) and shown == sorted(shown, reverse=True)  # highest loss first
    assert shown[0] == pytest.approx(max(by_path[p] for p in with_3))
    cell = cleaner.cells[0]
    assert cell.menu.options == (KEEP, DELETE) and list(cell.labels.options) == DIGITS
    # The toggles start at the image's own labels; the caption says labels, prediction and loss.
    own = tuple(d for d, t in zip(DIGITS, targs[learn.dls.valid_ds.items.index(cleaner.fns[0])]) if t > 0.5)
    assert cell.labels.value == own and "3" in own
    assert "labels: " in cell.caption.value and "predicted: " in cell.caption.value and "loss" in cell.caption.value
    cleaner.dd_ds.value = "Train"
    assert all(p in learn.dls.train_ds.items for p in cleaner.fns)


def test_cleaner_keep_delete_and_label_toggles_rewrite_the_csv_atomically(cleaner_setup):
    root, learn = cleaner_setup
    csv = root / "labels.csv"
    before_csv = csv.read_bytes()
    before_inode = csv.stat().st_ino
    images_before = digest(root)
    cleaner = ImageClassifierCleaner(learn, max_n=6)
    cleaner.dd_cats.value = "3"
    cleaner.dd_ds.value = "Train"
    to_delete, to_relabel, kept, back = cleaner.fns[:4]
    labels_of = {p: tuple(sorted(lab)) for p, lab in zip(learn.dls.train_ds.items, learn.dls.train_ds.labels)}

    cleaner.cells[0].menu.value = DELETE
    new_labels = tuple(sorted((set(labels_of[to_relabel]) - {"3"}) | {"8"}))  # 3 toggled off, 8 on
    cleaner.cells[1].labels.value = new_labels
    cleaner.cells[2].menu.value = KEEP  # the default: no change
    cleaner.cells[3].labels.value = tuple(d for d in labels_of[back] if d != "3")
    cleaner.cells[3].labels.value = labels_of[back]  # toggled back to its own labels: a keep
    assert cleaner.delete() == [0]
    assert cleaner.change() == [(1, new_labels)]
    assert cleaner.summary.value.startswith("<b>1 to delete, 1 to relabel</b>")
    # The choices stay when the view changes and comes back.
    cleaner.dd_ds.value = "Valid"
    cleaner.dd_ds.value = "Train"
    assert cleaner.values()[:4] == [DELETE, frozenset(new_labels), KEEP, KEEP]
    assert cleaner.cells[1].labels.value == new_labels

    # A dry run changes nothing.
    cleaner.apply(dry_run=True)
    assert csv.read_bytes() == before_csv

    df = cleaner.apply()
    # The CSV on disk changed: one row fewer, one row relabelled (sorted, space-delimited), the rest as they were.
    old = pd.read_csv(io.BytesIO(before_csv), dtype={"labels": str})
    new = pd.read_csv(csv, dtype={"labels": str})
    rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    assert len(new) == len(old) - 1 and rel(to_delete) not in set(new["fname"])
    assert new.set_index("fname").loc[rel(to_relabel), "labels"] == " ".join(new_labels)
    unchanged = old[~old["fname"].isin([rel(to_delete), rel(to_relabel)])].reset_index(drop=True)
    assert new[~new["fname"].isin([rel(to_relabel)])].reset_index(drop=True).equals(unchanged)
    assert list(new.columns) == ["fname", "labels", "is_valid"]  # no index column added
    assert df.reset_index(drop=True).astype(str).equals(new.astype(str))
    # Atomically: a new file renamed over the old one (a new inode), no temporary file left, a backup kept.
    assert csv.stat().st_ino != before_inode
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]
    backups = list(root.glob("labels.csv.bak-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == before_csv
    # No image file touched: the deleted one is only gone from the table.
    assert digest(root) == images_before and to_delete.exists()

    # The learner follows, and the table reads back as the loaders now are.
    assert to_delete not in learn.dls.train_ds.items
    i = learn.dls.train_ds.items.index(to_relabel)
    assert [d for d, t in zip(DIGITS, learn.dls.train_ds.targets[i]) if t > 0.5] == list(new_labels)
    again = ImageDataLoaders.from_csv(root, bs=16, seed=0, **CSV_ARGS)
    assert again.train_ds.items == learn.dls.train_ds.items
    assert torch.equal(again.train_ds.targets, learn.dls.train_ds.targets)
    assert cleaner.choices == {} and cleaner.summary.value.startswith("<b>0 to delete, 0 to relabel</b>")


# ---------------------------------------------------------------------------------------------
# A pretrained model, fastai's way


@pytest.mark.slow
def test_vision_learner_on_pairs_from_df_trains_to_the_stated_level(tmp_path):
    """mobilenet_v2 with ImageNet weights, unfrozen (digits are far from photos), 4 epochs on 800 pairs at
    32 x 64, from a DataFrame. Measured: best macro F1 0.89, macro ROC AUC 0.975, accuracy_multi 0.955
    (about 150 CPU-seconds). Asserted: 0.75, 0.93 and 0.90; the trivial models score macro F1 0.31 (all
    positive), AUC 0.5 and accuracy_multi 0.82 (all negative)."""
    sample = make_multilabel_mnist(tmp_path / "pairs", n=1000, seed=0)
    df = pd.read_csv(sample.path / "labels.csv")
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_df(df, path=sample.path, item_tfms=Resize((32, 64)), bs=32, seed=0, **CSV_ARGS)
    learn = vision_learner(dls, "mobilenet_v2", metrics=[accuracy_multi, FBetaMulti(beta=2, thresh=0.2)])
    assert isinstance(learn.loss_func, nn.BCEWithLogitsLoss)
    learn.unfreeze()
    learn.fit_one_cycle(4, 2e-3)
    probs, targs = learn.get_preds()
    t, f1 = find_best_threshold(probs, targs, F1ScoreMulti(average="macro", sigmoid=False))
    assert f1 >= 0.75, (t, f1)
    assert skm.roc_auc_score(targs.numpy().astype(int), probs.numpy(), average="macro") >= 0.93
    assert accuracy_multi(probs, targs, sigmoid=False) >= 0.90
    learn.thresh = t
    labels, _, p = learn.predict(dls.valid_ds.items[0])
    assert labels == [d for d, v in zip(DIGITS, p) if v > t]
