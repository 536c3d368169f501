"""ClassificationInterpretation and every plot, on small learners trained on real MNIST files.

The numbers are checked against what is computed here independently (scikit-learn's confusion matrix and
classification report, the loss recomputed from the probabilities). Every plot is written to a PNG
file and checked to be a real, non-blank picture whose titles and labels say what they should. Set
NBTRAIN_PLOTS_DIR to a folder to keep a copy of each PNG there, to look at them.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn import metrics as skm
from torch import nn

from nbtrain import (
    ClassificationInterpretation,
    F1ScoreMulti,
    ImageDataLoaders,
    Learner,
    Resize,
    accuracy_multi,
    error_rate,
)
from nbtrain.samples import make_multilabel_mnist
from testkit.tiny_models import small_cnn

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def learn(mnist_small):
    """Single label: 240 training and 60 validation real MNIST files, trained a few seconds."""
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_folder(mnist_small, item_tfms=Resize(28), bs=32, seed=0)
    learn = Learner(dls, small_cnn(dls.c), metrics=error_rate)
    learn.fit_one_cycle(4, 1e-2)
    return learn


@pytest.fixture(scope="module")
def interp(learn):
    return ClassificationInterpretation.from_learner(learn, ds_idx=1)


@pytest.fixture(scope="module")
def ml_learn(tmp_path_factory):
    """Multi-label: 300 images of two real MNIST digits side by side, labelled with both, from the CSV."""
    sample = make_multilabel_mnist(tmp_path_factory.mktemp("pairs") / "pairs", n=300, seed=0)
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_csv(
        sample.path, label_col="labels", label_delim=" ", valid_col="is_valid", bs=32, seed=0
    )
    # A threshold of 0.2, as for Kaggle's planet: this briefly trained model is rarely surer than 0.5.
    learn = Learner(dls, small_cnn(dls.c), metrics=[accuracy_multi, F1ScoreMulti(average="samples")], thresh=0.2)
    learn.fit_one_cycle(5, 1e-2)
    return learn


# ---------------------------------------------------------------------------------------------
# PNG files


def save_png(fig, tmp_path: Path, name: str, min_size: tuple[int, int] = (250, 200)) -> Path:
    """Write `fig` as a PNG, check it is a real, non-blank picture, close the figure; keep a copy in
    $NBTRAIN_PLOTS_DIR when that is set."""
    out = tmp_path / f"{name}.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    with Image.open(out) as img:
        img.verify()
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width >= min_size[0] and img.height >= min_size[1], img.size
        grey = np.asarray(img.convert("L"), dtype=np.float64)
        colours = len(np.unique(np.asarray(img.convert("RGB")).reshape(-1, 3), axis=0))
    # Not blank, not a single flat colour: text, lines and images make many shades.
    assert grey.std() > 8 and colours > 32, (name, grey.std(), colours)
    assert len(data) > 5_000, (name, len(data))
    keep = os.environ.get("NBTRAIN_PLOTS_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(out, Path(keep) / out.name)
    return out


def titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes if ax.get_title()]


# ---------------------------------------------------------------------------------------------
# Numbers against independent computations


def test_from_learner_gives_the_validation_predictions(learn, interp):
    probs, targs, losses = learn.get_preds(ds_idx=1, with_loss=True)
    assert torch.equal(interp.targs, targs) and torch.allclose(interp.probs, probs)
    assert len(interp.items) == len(learn.dls.valid_ds) == 60
    assert interp.items == learn.dls.valid_ds.items


def test_confusion_matrix_and_most_confused_match_sklearn(learn, interp):
    probs, targs = learn.get_preds(ds_idx=1)
    c = len(learn.dls.vocab)
    cm = skm.confusion_matrix(targs.numpy(), probs.numpy().argmax(axis=1), labels=list(range(c)))
    assert np.array_equal(interp.confusion_matrix(), cm)
    vocab = learn.dls.vocab
    for min_val in [1, 2]:
        rows = interp.most_confused(min_val=min_val)
        expected = {
            (vocab[i], vocab[j], int(cm[i, j])) for i in range(c) for j in range(c) if i != j and cm[i, j] >= min_val
        }
        assert set(rows) == expected and len(rows) == len(expected)
        counts = [n for _, _, n in rows]
        assert counts == sorted(counts, reverse=True), "largest first"
        assert all(isinstance(a, str) and isinstance(p, str) and isinstance(n, int) for a, p, n in rows)
    # A model this small still confuses some digits: the check above is not vacuous.
    assert interp.most_confused(1) and sum(n for *_, n in interp.most_confused(1)) == int(cm.sum() - np.trace(cm))
    assert interp.most_confused(min_val=int(cm.sum()) + 1) == []


def test_top_losses_are_the_largest_losses_in_order(learn, interp):
    probs, targs = learn.get_preds(ds_idx=1)
    # The loss recomputed from the probabilities with the learner's own loss: -log p(actual class),
    # mixed with the mean -log p over the classes by its label smoothing (0.1 by default), as torch does.
    eps = getattr(learn.loss_func, "label_smoothing", 0.0)
    logp = torch.log(probs)
    recomputed = -(1 - eps) * logp[torch.arange(len(targs)), targs] - eps * logp.mean(dim=1)
    losses, idxs = interp.top_losses(9)
    assert len(idxs) == 9 and len(set(idxs.tolist())) == 9
    assert torch.all(losses[:-1] >= losses[1:]), "largest first"
    assert torch.allclose(losses, recomputed[idxs], atol=1e-4)
    assert losses[0] == pytest.approx(float(recomputed.max()), abs=1e-4)
    assert float(losses[-1]) >= float(torch.sort(recomputed, descending=True).values[8]) - 1e-4
    # No k: every item, ordered; largest=False: the smallest ones.
    all_losses, all_idxs = interp.top_losses()
    assert sorted(all_idxs.tolist()) == list(range(len(targs)))
    small, _ = interp.top_losses(3, largest=False)
    assert torch.allclose(small, torch.sort(recomputed).values[:3], atol=1e-4)


def test_classification_report_equals_sklearns(learn, interp, capsys):
    probs, targs = learn.get_preds(ds_idx=1)
    vocab = learn.dls.vocab
    expected = skm.classification_report(
        targs.numpy(),
        probs.numpy().argmax(axis=1),
        labels=list(range(len(vocab))),
        target_names=vocab,
        output_dict=True,
        zero_division=0,
    )
    df = interp.print_classification_report()
    printed = capsys.readouterr().out
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["precision", "recall", "f1-score", "support"]
    assert list(df.index) == [*vocab, "macro avg", "weighted avg"]
    for row in df.index:
        for col in df.columns:
            assert df.loc[row, col] == pytest.approx(expected[row][col], abs=1e-12), (row, col)
    assert df["support"].dtype.kind == "i" and df.loc["macro avg", "support"] == len(targs)
    assert "precision" in printed and "macro avg" in printed and vocab[0] in printed


def test_multi_label_report_equals_sklearns_and_has_no_confusion_matrix(ml_learn):
    interp = ClassificationInterpretation.from_learner(ml_learn)
    probs, targs = ml_learn.get_preds()
    y, yhat = targs.numpy().astype(int), (probs.numpy() > ml_learn.thresh).astype(int)
    vocab = ml_learn.dls.vocab
    expected = skm.classification_report(y, yhat, target_names=vocab, output_dict=True, zero_division=0)
    df = interp.classification_report()
    for row in [*vocab, "macro avg", "weighted avg"]:
        for col in df.columns:
            assert df.loc[row, col] == pytest.approx(expected[row][col], abs=1e-12), (row, col)
    with pytest.raises(ValueError, match="single-label"):
        interp.confusion_matrix()
    with pytest.raises(ValueError, match="single-label"):
        interp.most_confused()
    # Top losses: the per-item mean of the binary cross-entropies, largest first.
    bce = nn.functional.binary_cross_entropy(probs, targs, reduction="none").mean(dim=1)
    losses, idxs = interp.top_losses(5)
    assert torch.all(losses[:-1] >= losses[1:]) and torch.allclose(losses, bce[idxs], atol=1e-4)
    assert losses[0] == pytest.approx(float(bce.max()), abs=1e-4)


# ---------------------------------------------------------------------------------------------
# Plots, each written to a PNG file


def test_plot_confusion_matrix_counts_and_normalized(interp, tmp_path):
    cm = interp.confusion_matrix()
    vocab = interp.vocab
    fig = interp.plot_confusion_matrix()
    ax = fig.axes[0]
    assert ax.get_title() == "Confusion matrix" and ax.get_xlabel() == "Predicted" and ax.get_ylabel() == "Actual"
    assert [t.get_text() for t in ax.get_xticklabels()] == vocab == [t.get_text() for t in ax.get_yticklabels()]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert len(cells) == cm.size and all(cells[i, j] == str(cm[i, j]) for i in range(len(cm)) for j in range(len(cm)))
    save_png(fig, tmp_path, "confusion_matrix")

    fig = interp.plot_confusion_matrix(normalize=True, title="Confusion matrix (normalized)")
    ax = fig.axes[0]
    assert ax.get_title() == "Confusion matrix (normalized)"
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): float(t.get_text()) for t in ax.texts}
    for i in range(len(cm)):
        row = [cells[i, j] for j in range(len(cm))]
        assert sum(row) == pytest.approx(1.0, abs=0.06) and row[i] == pytest.approx(cm[i, i] / cm[i].sum(), abs=0.005)
    save_png(fig, tmp_path, "confusion_matrix_normalized")


TOP_LOSS_TITLE = re.compile(r"^(?P<pred>.+)/(?P<actual>.+)\n(?P<loss>\d+\.\d\d) / (?P<prob>\d\.\d\d)$")


def test_plot_top_losses_titles_say_prediction_actual_loss_probability(interp, tmp_path):
    fig = interp.plot_top_losses(9)
    losses, idxs = interp.top_losses(9)
    shown = titles(fig)
    assert len(shown) == 9
    for title, loss, i in zip(shown, losses.tolist(), idxs.tolist()):
        m = TOP_LOSS_TITLE.match(title)
        assert m, title
        p = int(interp.probs[i].argmax())
        assert m["pred"] == interp.vocab[p] and m["actual"] == interp.vocab[int(interp.targs[i])]
        assert float(m["loss"]) == pytest.approx(loss, abs=0.006)
        assert float(m["prob"]) == pytest.approx(float(interp.probs[i, p]), abs=0.006)
    assert fig.get_suptitle() == "prediction/actual\nloss / probability"
    # Each panel shows the image file itself.
    images = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert len(images) == 9 and all(im.shape[:2] == (28, 28) for im in images)
    save_png(fig, tmp_path, "top_losses")


def test_show_batch_png(learn, tmp_path):
    fig = learn.dls.show_batch(max_n=9)
    shown = titles(fig)
    assert len(shown) == 9 and set(shown) <= set(learn.dls.vocab)
    save_png(fig, tmp_path, "show_batch")


def test_show_results_titles_actual_then_prediction_coloured(learn, tmp_path):
    fig = learn.show_results(max_n=9)
    probs, targs = learn.get_preds(ds_idx=1)
    vocab = learn.dls.vocab
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert len(axes) == 9
    for k, ax in enumerate(axes):  # the first images of the validation set, in order
        actual, pred = vocab[int(targs[k])], vocab[int(probs[k].argmax())]
        assert ax.get_title() == f"{actual}\n{pred}"
        assert matplotlib.colors.same_color(ax.title.get_color(), "green" if actual == pred else "red")
    save_png(fig, tmp_path, "show_results")


def test_plot_loss_png(learn, tmp_path):
    fig = learn.recorder.plot_loss()
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == {"train", "valid"}
    assert len(lines["valid"].get_xdata()) == len(learn.recorder.values) == 4
    assert len(lines["train"].get_xdata()) == len(learn.recorder.losses) - 5  # skip_start=5
    assert ax.get_xlabel() == "batch" and ax.get_ylabel() == "loss"
    save_png(fig, tmp_path, "plot_loss")


def test_lr_find_plot_png(learn, tmp_path):
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    suggestion = learn.lr_find(num_it=30, show_plot=False)
    assert all(torch.equal(v, before[k]) for k, v in learn.model.state_dict().items())
    fig = learn.recorder.plot_lr_find(suggestion.valley)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "learning rate"
    assert any(t.get_text().startswith("valley: ") for t in ax.get_legend().get_texts())
    curve = ax.get_lines()[0]
    assert len(curve.get_xdata()) >= 10 and all(np.isfinite(curve.get_ydata()))
    save_png(fig, tmp_path, "lr_find")


def test_multi_label_show_batch_and_show_results_png(ml_learn, tmp_path):
    vocab = ml_learn.dls.vocab
    fig = ml_learn.dls.show_batch(max_n=9)
    shown = titles(fig)
    assert len(shown) == 9
    for t in shown:  # every label of the image, joined with ";"
        labels = t.split(";")
        assert 1 <= len(labels) <= 2 and set(labels) <= set(vocab), t
    save_png(fig, tmp_path, "multilabel_show_batch")

    fig = ml_learn.show_results(max_n=9)
    probs, targs = ml_learn.get_preds()
    for k, ax in enumerate([ax for ax in fig.axes if ax.get_title()]):
        actual = ";".join(v for v, t in zip(vocab, targs[k]) if t > 0.5)
        pred = ";".join(v for v, p in zip(vocab, probs[k]) if p > ml_learn.thresh) or "(none)"
        assert ax.get_title() == f"{actual}\n{pred}"
    save_png(fig, tmp_path, "multilabel_show_results")


def test_multi_label_plot_top_losses_png(ml_learn, tmp_path):
    interp = ClassificationInterpretation.from_learner(ml_learn)
    fig = interp.plot_top_losses(6)
    losses, idxs = interp.top_losses(6)
    for title, loss, i in zip(titles(fig), losses.tolist(), idxs.tolist()):
        m = TOP_LOSS_TITLE.match(title)
        assert m, title
        assert m["actual"] == ml_learn.dls.label_of(interp.targs[i])
        assert m["pred"] == ml_learn.dls.label_of(interp.decoded[i])
        assert float(m["loss"]) == pytest.approx(loss, abs=0.006)
    images = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert len(images) == 6 and all(im.shape[:2] == (28, 56) for im in images)  # both digits, side by side
    save_png(fig, tmp_path, "multilabel_top_losses")


def test_plots_survive_a_learner_with_nothing_confused(learn, tmp_path):
    # A perfect model: no pair is confused, the matrix is diagonal, and every plot still draws.
    probs, targs = learn.get_preds(ds_idx=1)
    perfect = torch.nn.functional.one_hot(targs, len(learn.dls.vocab)).float()
    interp = ClassificationInterpretation(learn, 1, perfect, targs, torch.zeros(len(targs)))
    assert interp.most_confused() == []
    assert np.array_equal(np.diag(interp.confusion_matrix()), np.bincount(targs.numpy(), minlength=10))
    report = interp.classification_report()
    assert (report["f1-score"] == 1.0).all()
    save_png(interp.plot_confusion_matrix(normalize=True), tmp_path, "confusion_matrix_perfect")
    assert not math.isnan(float(interp.top_losses(1).losses[0]))
