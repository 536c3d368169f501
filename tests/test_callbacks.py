"""The callbacks on real digits: best-epoch saving, early stopping, the CSV log, gradient accumulation,
MixUp and CutMix, and the stopping callbacks across 2 gloo processes."""

from __future__ import annotations

import csv
import hashlib
import os
import random
import signal
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import nbtrain
from nbtrain import (
    Callback,
    CancelFitException,
    CSVLogger,
    CutMix,
    EarlyStoppingCallback,
    GradientAccumulation,
    ImageDataLoaders,
    Learner,
    MixUp,
    Resize,
    SaveModelCallback,
    ShowGraphCallback,
)
from nbtrain.distributed import rank
from nbtrain.persistence import safe_load
from testkit.tiny_models import small_cnn

pytestmark = pytest.mark.filterwarnings("ignore:No GPU")


def tiny_cnn(c: int) -> nn.Module:
    """No BatchNorm: its statistics depend on how a batch is split."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, c)
    )


class Scripted:
    """A metric column whose value at each epoch is given in advance (one list per process), so a
    test knows which epoch is best and when training must stop."""

    name = "scripted"

    def __init__(self, *per_process: list[float]):
        self.per_process, self.calls = per_process, 0

    def __call__(self, out: torch.Tensor, targ: torch.Tensor) -> float:
        seq = self.per_process[min(rank(), len(self.per_process) - 1)]
        self.calls += 1
        return seq[min(self.calls - 1, len(seq) - 1)]


def weights_hash(state: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class EpochWeights(Callback):
    """Keeps the hash of the weights at the end of every epoch."""

    def __init__(self):
        self.hashes: list[str] = []

    def after_epoch(self) -> None:
        self.hashes.append(weights_hash(self.learn.model.state_dict()))


def make_learner(path, tmp_path, metric=None, model_fn=tiny_cnn, bs=16, **kwargs) -> Learner:
    dls = ImageDataLoaders.from_folder(path, item_tfms=Resize(16), bs=bs, seed=0, num_workers=0, **kwargs)
    torch.manual_seed(0)
    return Learner(dls, model_fn(dls.c), metrics=[metric] if metric else nbtrain.error_rate, path=tmp_path)


# -- The events ----------------------------------------------------------------------------------------


class EveryEvent(Callback):
    """Notes every event it receives, with the epoch and batch, and raises `raise_at`'s exception once,
    at the first event it names for which its test on the learner holds."""

    def __init__(self, raise_at: tuple | None = None):
        self.seen: list[str] = []
        self.raise_at, self.raised = raise_at, None


def _note(event: str):
    def handler(self) -> None:
        self.seen.append(f"{event}:{self.learn.epoch}:{self.learn.iter}")
        if self.raise_at and self.raised is None and self.raise_at[0] == event and self.raise_at[1](self.learn):
            self.raised = len(self.seen) - 1
            raise self.raise_at[2]()

    return handler


for _event_name in nbtrain.callbacks.EVENTS:
    setattr(EveryEvent, _event_name, _note(_event_name))

BATCH = [
    "before_batch",
    "after_pred",
    "after_loss",
    "before_backward",
    "after_backward",
    "before_step",
    "after_step",
    "after_batch",
]


def _events_of(mnist_small, tmp_path, raise_at=None) -> tuple[list[str], int | None]:
    """The events of a fit of 2 epochs of 2 batches, and where `raise_at` raised."""
    learn = make_learner(mnist_small, tmp_path, bs=96)
    cb = EveryEvent(raise_at)
    learn.fit(2, lr=1e-3, cbs=cb)
    return [e.split(":")[0] for e in cb.seen], cb.raised


def test_the_events_of_a_fit_come_in_fastais_order(mnist_small, tmp_path):
    epoch = [
        "before_epoch",
        "before_train",
        *BATCH,
        *BATCH,
        "after_train",
        "before_validate",
        "after_validate",
        "after_epoch",
    ]
    assert _events_of(mnist_small, tmp_path)[0] == ["before_fit", *epoch, *epoch, "after_fit"]


@pytest.mark.parametrize(
    "raise_at, expected_tail",
    [
        # A cancelled batch skips its step (and zero_grad) and still ends with after_batch.
        (
            ("after_pred", lambda learn: learn.training and learn.iter == 1, nbtrain.CancelBatchException),
            ["after_pred", "after_cancel_batch", "after_batch"],
        ),
        # A cancelled step still ends its batch.
        (
            ("before_step", lambda learn: True, nbtrain.CancelStepException),
            ["before_step", "after_cancel_step", "after_batch"],
        ),
        # A cancelled training part skips after_train; validation follows.
        (
            ("after_batch", lambda learn: learn.training, nbtrain.CancelTrainException),
            ["after_batch", "after_cancel_train", "before_validate"],
        ),
        # A cancelled validation skips after_validate; the epoch ends.
        (
            ("before_validate", lambda learn: True, nbtrain.CancelValidException),
            ["before_validate", "after_cancel_validate", "after_epoch"],
        ),
        # A cancelled epoch still ends with after_epoch; the next one starts.
        (
            ("after_train", lambda learn: True, nbtrain.CancelEpochException),
            ["after_train", "after_cancel_epoch", "after_epoch", "before_epoch"],
        ),
        # A cancelled fit runs after_cancel_fit, then after_fit.
        (("before_epoch", lambda learn: True, CancelFitException), ["before_epoch", "after_cancel_fit", "after_fit"]),
    ],
)
def test_a_cancel_exception_runs_after_cancel_then_what_its_stage_promises(
    mnist_small, tmp_path, raise_at, expected_tail
):
    events, raised = _events_of(mnist_small, tmp_path, raise_at)
    assert events[raised : raised + len(expected_tail)] == expected_tail


def test_a_batch_cancelled_before_its_loss_records_no_loss_even_the_first(mnist_small, tmp_path):
    class SkipFirst(Callback):
        def after_pred(self) -> None:
            if self.learn.training and self.learn.iter == 0:
                raise nbtrain.CancelBatchException

    learn = make_learner(mnist_small, tmp_path)
    learn.fit(2, 1e-3, cbs=SkipFirst())
    assert len(learn.recorder.losses) == 2 * (len(learn.dls.train) - 1)
    assert all(np.isfinite(learn.recorder.losses)) and len(learn.recorder.values) == 2


def test_a_misspelt_event_method_is_refused_when_the_callback_is_added(mnist_small, tmp_path):
    class Misspelt(Callback):
        def after_epcoh(self) -> None:
            pass

    learn = make_learner(mnist_small, tmp_path)
    for add in (
        lambda: learn.add_cbs(Misspelt()),
        lambda: learn.fit(1, cbs=Misspelt()),
        lambda: Learner(learn.dls, tiny_cnn(learn.dls.c), cbs=Misspelt()),
    ):
        with pytest.raises(AttributeError, match=r"Misspelt\.after_epcoh .*did you mean after_epoch\?"):
            add()
    assert learn.recorder.values == []  # refused before any training
    learn.add_cbs([MixUp(), GradientAccumulation()])  # methods that are not named like events are fine


def test_callbacks_are_sorted_once_per_fit_not_on_every_event(mnist_small, tmp_path):
    class CountsOrderReads(Callback):
        reads = 0

        @property
        def order(self) -> int:
            CountsOrderReads.reads += 1
            return 0

    def reads_during(n_epoch: int) -> int:
        learn = make_learner(mnist_small, tmp_path, bs=16)
        learn.add_cbs(CountsOrderReads())
        before = CountsOrderReads.reads
        learn.fit(n_epoch, lr=1e-3)
        return CountsOrderReads.reads - before

    one, three = reads_during(1), reads_during(3)
    assert one == three and one <= 4  # the sorts as the fit's callbacks come and go, not one per batch


# -- SaveModelCallback -------------------------------------------------------------------------------


def test_save_model_ends_with_the_weights_of_the_best_epoch(mnist_small, tmp_path, capsys):
    learn = make_learner(mnist_small, tmp_path, Scripted([0.5, 0.2, 0.4, 0.6]))
    seen = EpochWeights()
    learn.fit(4, lr=1e-2, cbs=[seen, SaveModelCallback(monitor="scripted", comp=np.less)])
    assert len(set(seen.hashes)) == 4  # the weights moved every epoch
    assert weights_hash(learn.model.state_dict()) == seen.hashes[1]
    saved = safe_load(tmp_path / "models" / "model.pth")
    assert weights_hash(saved["model"]) == seen.hashes[1] and saved["opt"] is None
    assert "Better model found at epoch 1 with scripted value: 0.2." in capsys.readouterr().out


def test_save_model_every_epoch_keeps_one_file_per_epoch_and_the_last_weights(mnist_small, tmp_path):
    learn = make_learner(mnist_small, tmp_path)
    seen = EpochWeights()
    learn.fit(3, lr=1e-2, cbs=[seen, SaveModelCallback(every_epoch=True, fname="ep", with_opt=True)])
    for epoch in range(3):
        saved = safe_load(tmp_path / "models" / f"ep_{epoch}.pth")
        assert weights_hash(saved["model"]) == seen.hashes[epoch] and saved["opt"] is not None
    assert weights_hash(learn.model.state_dict()) == seen.hashes[-1]


def test_save_model_with_a_metric_that_is_not_in_the_table_says_which_columns_exist(mnist_small, tmp_path):
    learn = make_learner(mnist_small, tmp_path)
    with pytest.raises(ValueError, match=r"accuracy.*\['train_loss', 'valid_loss', 'error_rate'\]"):
        learn.fit(1, cbs=SaveModelCallback(monitor="accuracy"))


def test_a_kill_during_the_best_epochs_save_leaves_the_previous_best_file_intact(mnist_small, tmp_path):
    """A forked child runs the callback's epoch ends (no training: a forked process must not compute
    with the parent's thread pool): epoch 0 saves, then epoch 1, better, saves new weights and is
    killed during that save, or at a random moment. The file is epoch 0's byte for byte, or epoch 1's complete."""
    from nbtrain.models import create_vision_model

    # A resnet18 (45 MB) so that a save takes long enough to be cut off.
    learn = make_learner(
        mnist_small, tmp_path, model_fn=lambda c: create_vision_model("resnet18", c, pretrained=False)[0]
    )
    path = tmp_path / "models" / "model.pth"
    start = time.perf_counter()
    learn.save("timing")
    t_save = time.perf_counter() - start
    (tmp_path / "models" / "timing.pth").unlink()
    marker = [k for k, v in learn.model.state_dict().items() if v.dtype.is_floating_point][-1]
    rng = random.Random(0)
    outcomes = []
    for trial in range(5):
        path.unlink(missing_ok=True)
        r, w = os.pipe()
        go_r, go_w = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a process with threads
            pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                os.close(go_w)
                cb = SaveModelCallback()
                cb.learn = learn
                learn.recorder.metric_names, learn.recorder.values = ["train_loss", "valid_loss", "error_rate"], []
                cb.before_fit()
                for epoch, valid_loss in enumerate([0.5, 0.2]):
                    if epoch == 1:
                        learn.model.state_dict()[marker].numpy()[...] = 7.0  # the new weights
                        os.write(w, b"1")
                        os.read(go_r, 1)  # the parent has read epoch 0's file
                    learn.epoch = epoch
                    learn.recorder.values.append([1.0, valid_loss, 0.5])
                    cb.after_epoch()
                time.sleep(60)
            finally:
                os._exit(1)
        os.close(w)
        os.close(go_r)
        assert os.read(r, 1) == b"1"
        os.close(r)
        old = hashlib.sha256(path.read_bytes()).hexdigest()  # epoch 0's save, complete
        os.write(go_w, b"1")
        os.close(go_w)
        if trial < 3:  # kill as soon as the new save's temporary file has some bytes: surely mid-save
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(
                n.endswith(".tmp") and (path.parent / n).stat().st_size > 0 for n in os.listdir(path.parent)
            ):
                time.sleep(0.0005)
        else:  # at a random moment
            time.sleep(rng.uniform(0, 1.5 * t_save))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status)
        torn = any(n.endswith(".tmp") for n in os.listdir(path.parent))
        if hashlib.sha256(path.read_bytes()).hexdigest() == old:
            outcomes.append("old, killed mid-save" if torn else "old")
        else:
            saved = safe_load(path)["model"]  # complete: it loads, with epoch 1's marker
            assert set(saved) == set(learn.model.state_dict()) and bool((saved[marker] == 7.0).all())
            outcomes.append("new")
    assert outcomes[:3] == ["old, killed mid-save"] * 3, outcomes


# -- EarlyStoppingCallback ---------------------------------------------------------------------------


def test_early_stopping_stops_after_patience_epochs_without_improvement(mnist_small, tmp_path, capsys):
    learn = make_learner(mnist_small, tmp_path, Scripted([0.5, 0.4, 0.45, 0.41, 0.3, 0.2]))
    stop = EarlyStoppingCallback(monitor="scripted", comp=np.less, patience=2)
    learn.fit(6, lr=1e-3, cbs=stop)
    assert len(learn.recorder.values) == 4 and learn.epochs_trained == 4  # epochs 2 and 3 did not improve
    assert stop.stopped_epoch == 3
    assert "No improvement since epoch 1: early stopping." in capsys.readouterr().out


def test_early_stopping_needs_more_than_min_delta_to_count_an_improvement(mnist_small, tmp_path):
    learn = make_learner(mnist_small, tmp_path, Scripted([0.5, 0.45, 0.44, 0.43, 0.1]))
    learn.fit(5, lr=1e-3, cbs=EarlyStoppingCallback(monitor="scripted", comp=np.less, min_delta=0.02, patience=2))
    assert len(learn.recorder.values) == 4


def test_early_stopping_on_a_metric_to_maximise(mnist_small, tmp_path):
    learn = make_learner(mnist_small, tmp_path, Scripted([0.5, 0.6, 0.55, 0.7, 0.6, 0.65, 0.9]))
    # A column named neither loss nor error: higher is better, as in fastai.
    learn.fit(7, lr=1e-3, cbs=EarlyStoppingCallback(monitor="scripted", patience=2))
    assert len(learn.recorder.values) == 6


def test_patience_must_be_at_least_one():
    with pytest.raises(ValueError, match="patience"):
        EarlyStoppingCallback(patience=0)


def test_fine_tune_passes_the_callbacks_to_both_stages(mnist_small, tmp_path):
    from nbtrain.models import VisionModel

    def tiny_vision_model(c: int) -> VisionModel:
        return VisionModel(
            nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, c)),
            "tiny",
        )

    learn = make_learner(mnist_small, tmp_path, model_fn=tiny_vision_model)
    logger = CSVLogger(append=True)
    learn.fine_tune(1, freeze_epochs=1, cbs=[logger])
    assert len(logger.read_log()) == 2 and learn.epochs_trained == 2


# -- CSVLogger ---------------------------------------------------------------------------------------


def test_csv_logger_rows_equal_the_recorder_and_the_printed_table(mnist_small, tmp_path, capsys):
    learn = make_learner(mnist_small, tmp_path)
    logger = CSVLogger()
    learn.fit(3, lr=1e-2, cbs=logger)
    printed = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()]
    with open(tmp_path / "history.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "train_loss", "valid_loss", "error_rate", "time"] == printed[0]
    assert len(rows) == 4
    for epoch, (row, values, shown) in enumerate(zip(rows[1:], learn.recorder.values, printed[1:])):
        assert int(row[0]) == epoch == int(shown[0])
        assert [float(v) for v in row[1:-1]] == values  # full precision
        assert [f"{float(v):.6f}" for v in row[1:-1]] == shown[1:-1]  # what the table printed
    df = logger.read_log()
    assert list(df.columns) == rows[0] and len(df) == 3


def test_csv_logger_append_adds_rows_under_one_header(mnist_small, tmp_path):
    learn = make_learner(mnist_small, tmp_path)
    learn.fit(1, lr=1e-2, cbs=CSVLogger("log.csv"))
    learn.fit(2, lr=1e-2, cbs=CSVLogger("log.csv", append=True))
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert len(lines) == 4 and lines[0].startswith("epoch,") and not lines[2].startswith("epoch")
    learn.fit(1, lr=1e-2, cbs=CSVLogger("log.csv"))
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 2  # append=False starts the file afresh


# -- GradientAccumulation ----------------------------------------------------------------------------


class FirstStepGrads(Callback):
    """Keeps the gradients of the first optimizer step, then ends the fit."""

    order = 50  # after GradientAccumulation: only batches that step get here

    def __init__(self):
        self.grads = None

    def before_step(self) -> None:
        self.grads = [p.grad.detach().clone() for p in self.learn.model.parameters()]
        raise CancelFitException()


def test_gradient_accumulation_over_four_batches_of_8_gives_the_gradient_of_one_batch_of_32(mnist_small, tmp_path):
    grads = {}
    for bs, cbs in ((32, []), (8, [GradientAccumulation(n_acc=32)])):
        learn = make_learner(mnist_small, tmp_path, bs=bs, shuffle=False)  # the same first 32 images
        first = FirstStepGrads()
        learn.fit(1, lr=1e-2, cbs=[*cbs, first])
        grads[bs] = first.grads
    for a, b in zip(grads[32], grads[8]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_gradient_accumulation_steps_once_per_n_acc_samples(mnist_small, tmp_path):
    class CountSteps(Callback):
        steps = 0

        def after_step(self) -> None:
            CountSteps.steps += 1

    learn = make_learner(mnist_small, tmp_path, bs=8, shuffle=False)
    learn.fit(1, lr=1e-2, cbs=[GradientAccumulation(n_acc=32), CountSteps()])
    assert CountSteps.steps == len(learn.dls.train) * 8 // 32


# -- MixUp and CutMix --------------------------------------------------------------------------------


class Batches(Callback):
    """The batch before (order -100) or after (order 100) the mixing callbacks change it."""

    def __init__(self, order: int):
        self.order, self.xs, self.ys = order, [], []

    def before_batch(self) -> None:
        if self.learn.training:
            self.xs.append(self.learn.xb[0].clone())
            self.ys.append(self.learn.yb[0].clone())


@pytest.mark.parametrize("mix", [MixUp, CutMix])
def test_mixing_trains_the_loss_falls_and_validation_is_untouched(mnist_small, tmp_path, mix):
    torch.manual_seed(0)
    learn = make_learner(mnist_small, tmp_path, model_fn=small_cnn)
    plain_loss = learn.loss_func
    before, after = Batches(-100), Batches(100)
    learn.fit_one_cycle(4, 1e-2, cbs=[before, mix(), after])
    losses = learn.recorder.losses
    n = len(learn.dls.train)
    assert np.mean(losses[-n:]) < 0.8 * np.mean(losses[:5])
    assert learn.loss_func is plain_loss  # put back after the fit
    assert learn.recorder.values[-1][1] == pytest.approx(learn.validate()[0], rel=1e-5)  # the plain loss
    changed = [not torch.equal(a, b) for a, b in zip(before.xs, after.xs)]
    assert sum(changed) >= len(changed) // 2  # the images were mixed
    assert all(torch.equal(a, b) for a, b in zip(before.ys, after.ys))  # class indices: the loss is mixed instead


class StopTrainingPartAt(Callback):
    """Ends each epoch's training part after `n` batches (CancelTrainException: no after_train)."""

    def __init__(self, n: int):
        self.n = n

    def after_batch(self) -> None:
        if self.learn.training and self.learn.iter + 1 >= self.n:
            raise nbtrain.CancelTrainException()


@pytest.mark.parametrize("mix", [MixUp, CutMix])
def test_mixing_survives_a_training_part_cut_short_and_puts_the_loss_back(mnist_small, tmp_path, mix):
    """A training part ended by CancelTrainException skips after_train: the next epoch must not take
    the mixing loss for the learner's own (it would then call itself)."""
    learn = make_learner(mnist_small, tmp_path, model_fn=small_cnn)
    plain_loss = learn.loss_func
    learn.fit(3, 1e-3, cbs=[mix(), StopTrainingPartAt(2)])
    assert len(learn.recorder.values) == 3 and np.isfinite(learn.recorder.losses).all()
    assert learn.loss_func is plain_loss


def test_cutmix_pastes_a_rectangle_and_leaves_the_rest_of_the_image(mnist_small, tmp_path):
    learn = make_learner(mnist_small, tmp_path)
    before, after = Batches(-100), Batches(100)
    learn.fit(1, lr=1e-3, cbs=[before, CutMix(), after])
    for a, b in zip(before.xs, after.xs):
        same = (a == b).all(dim=1)  # (bs, H, W): pixels left as they were
        assert bool(
            same[:, 0, :].any() or same[:, -1, :].any() or same[:, :, 0].any() or same[:, :, -1].any() or same.all()
        )


def test_mixup_mixes_multi_label_targets(mnist_small, tmp_path):
    labels = [[p.parent.name] for p in sorted(mnist_small.rglob("*.png"))]
    files = sorted(mnist_small.rglob("*.png"))
    dls = ImageDataLoaders.from_lists(
        mnist_small, files, labels, multi_label=True, item_tfms=Resize(16), bs=16, seed=0, num_workers=0
    )
    learn = Learner(dls, tiny_cnn(dls.c), path=tmp_path)
    before, after = Batches(-100), Batches(100)
    learn.fit(1, lr=1e-3, cbs=[before, MixUp(), after])
    y0, y1 = before.ys[0], after.ys[0]
    assert not torch.equal(y0, y1) and torch.allclose(y1.sum(1), torch.ones(len(y1)))  # soft targets


def test_show_graph_does_nothing_outside_a_notebook(mnist_small, tmp_path):
    learn = make_learner(mnist_small, tmp_path)
    graph = ShowGraphCallback()
    learn.fit(1, lr=1e-3, cbs=graph)
    assert graph.handle is None and len(learn.recorder.values) == 1


# -- Distributed -------------------------------------------------------------------------------------


def test_the_first_process_decides_and_both_stop_after_the_same_epoch(mnist_small, tmp_path):
    # Process 1's column keeps improving; process 0's is best at epoch 1 and then gets worse. Process 0
    # decides: the best saved is epoch 1's, and both stop after epoch 3 (patience 2).
    metric = Scripted([0.5, 0.2, 0.4, 0.6, 0.7, 0.8], [0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    learn = make_learner(mnist_small, tmp_path, metric, bs=32)
    learn.fit(
        6,
        lr=1e-2,
        n_gpus=2,
        cbs=[
            SaveModelCallback(monitor="scripted", comp=np.less),
            EarlyStoppingCallback(monitor="scripted", comp=np.less, patience=2),
        ],
    )
    assert learn.epochs_trained == 4
    assert [v[2] for v in learn.recorder.values] == [0.5, 0.2, 0.4, 0.6]
    saved = safe_load(tmp_path / "models" / "model.pth")
    assert weights_hash(saved["model"]) == weights_hash(learn.model.state_dict())  # the best, loaded at the end


def test_callbacks_with_state_of_their_own_are_pickled_without_their_learner_or_open_files(mnist_small, tmp_path):
    import pickle

    learn = make_learner(mnist_small, tmp_path)
    logger, graph = CSVLogger(), ShowGraphCallback()
    learn.add_cbs([logger, graph])
    logger.before_fit()  # an open file, as during a fit
    try:
        for cb in (logger, graph, SaveModelCallback(), MixUp()):
            cb.learn = learn
            copy = pickle.loads(pickle.dumps(cb))
            assert "learn" not in copy.__dict__ and "file" not in copy.__dict__
    finally:
        logger.after_fit()


def test_lr_find_leaves_no_checkpoint_log_row_or_tracker_state_behind(mnist_small, tmp_path):
    learn = make_learner(mnist_small, tmp_path)
    save, log, stop = SaveModelCallback(fname="best"), CSVLogger("history.csv"), EarlyStoppingCallback(patience=1)
    learn.add_cbs([save, log, stop])
    num_it = 2 * len(learn.dls.train) + 1  # three epochs' worth
    learn.lr_find(num_it=num_it, end_lr=1e-2, show_plot=False)
    assert len(learn.recorder.lr_find_lrs) == num_it - 5  # every batch ran: early stopping sat out
    assert not (learn.output_path / "best.pth").exists() and not (learn.output_path / "history.csv").exists()
    assert {save, log, stop} <= set(learn.cbs)  # back for the real fit
    learn.fit(1, 1e-3)
    assert (learn.output_path / "best.pth").exists() and len(log.read_log()) == 1
