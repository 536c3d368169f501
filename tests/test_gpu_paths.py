"""The GPU paths, checked on the CPU: the device each process picks, the one training step and its
gradient scaler, processes that stay in step when a share of a batch is unreadable, predictions that
are never augmented, and the memory a notebook lets go of before it starts processes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import nbtrain
from nbtrain import ImageDataLoaders, Learner, RandomResizedCrop, Resize, distributed
from nbtrain.data import ImageDataset
from nbtrain.environment import default_device
from nbtrain.scores import score_table


class TinyCNN(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, c)
        )

    def forward(self, x):
        return self.net(x)


def test_under_torchrun_the_device_is_this_ranks_gpu_before_any_fit(monkeypatch, mnist_small):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("NBTRAIN_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert default_device() == torch.device("cuda", 1)
    # The loaders (and so the learner's model) take it when they are built, not at the first fit.
    dls = ImageDataLoaders.from_folder(mnist_small, item_tfms=Resize(16), bs=16, seed=0)
    assert dls.device == torch.device("cuda", 1)


def test_an_optimizer_loaded_before_the_first_fit_lives_where_the_parameters_do(mnist_small, tmp_path):
    dls = ImageDataLoaders.from_folder(mnist_small, item_tfms=Resize(16), bs=16, seed=0, num_workers=0)
    learn = Learner(dls, TinyCNN(dls.c), path=tmp_path)
    learn.fit(1)
    learn.save("m", with_opt=True)
    fresh = Learner(dls, TinyCNN(dls.c), path=tmp_path).load("m", with_opt=True)
    devices = {t.device for s in fresh.opt.state.values() for t in s.values() if torch.is_tensor(t) and t.ndim}
    assert devices == {next(fresh.model.parameters()).device}


class StubScaler:
    """Stands in for torch.amp.GradScaler (fp16 on a GPU) and counts its calls."""

    def __init__(self):
        self.scaled = self.stepped = self.updated = 0

    def scale(self, loss):
        self.scaled += 1
        return loss * 1.0

    def step(self, opt):
        self.stepped += 1
        opt.step()

    def update(self):
        self.updated += 1


def test_lr_find_and_fit_take_the_same_step_with_its_gradient_scaler(mnist_small, monkeypatch):
    dls = ImageDataLoaders.from_folder(mnist_small, item_tfms=Resize(16), bs=16, seed=0, num_workers=0)
    learn = Learner(dls, TinyCNN(dls.c))
    stub = StubScaler()
    monkeypatch.setattr(learn, "make_scaler", lambda: stub)
    learn.fit(1)
    n = len(dls.train)
    assert (stub.scaled, stub.stepped, stub.updated) == (n, n, n)
    learn.lr_find(num_it=5, show_plot=False, stop_div=False)
    assert (stub.scaled, stub.stepped, stub.updated) == (n + 5, n + 5, n + 5)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _unreadable_share_data(root: Path) -> Path:
    """16 digit-like images in two classes, where items 1 and 3 (process 1's whole share of the first
    batch of 4, unshuffled) are truncated: their headers pass, their pixels fail to decode."""
    rng = np.random.default_rng(0)
    for i in range(16):
        label = "a" if i % 2 else "b"
        folder = root / "train" / label if i < 12 else root / "valid" / label
        folder.mkdir(parents=True, exist_ok=True)
        arr = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
        data = _png(Image.fromarray(arr))
        (folder / f"{i:02d}.png").write_bytes(data[: len(data) // 2] if i in (1, 3) else data)
    return root


def _fit_with_an_unreadable_share(root: str) -> dict:
    files = sorted(Path(root).rglob("*.png"), key=lambda p: p.name)
    labels = [p.parent.name for p in files]
    valid = [i for i, p in enumerate(files) if p.parent.parent.name == "valid"]
    dls = ImageDataLoaders.from_lists(
        root, files, labels, valid_idx=valid, bs=4, shuffle=False, num_workers=0, item_tfms=Resize(16), device="cpu"
    )
    torch.manual_seed(0)
    learn = Learner(dls, TinyCNN(2), opt_func=torch.optim.SGD, lr=0.1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learn.fit(2)
    checksum = round(float(sum(p.double().sum() for p in learn.model.parameters())), 9)
    return {"checksums": sorted(distributed.union_across({checksum})), "steps": len(learn.recorder.lrs)}


def test_processes_stay_in_step_when_one_share_of_a_batch_is_unreadable(tmp_path):
    root = _unreadable_share_data(tmp_path / "data")
    res = distributed.launch(_fit_with_an_unreadable_share, 2, str(root), backend="gloo")
    # Both processes took every step (3 batches of 4, 2 epochs) and hold the same weights.
    assert res["steps"] == 6 and len(res["checksums"]) == 1


def test_two_prediction_passes_with_random_crops_agree_and_are_centre_crops(mnist_small):
    dls = ImageDataLoaders.from_folder(
        mnist_small, item_tfms=RandomResizedCrop(16, min_scale=0.3), bs=16, seed=0, num_workers=0
    )
    torch.manual_seed(0)
    learn = Learner(dls, TinyCNN(dls.c))
    first, _ = learn.get_preds(ds_idx=0)
    second, _ = learn.get_preds(ds_idx=0)
    assert torch.equal(first, second)
    ds = dls.train_ds
    centre = ImageDataset(ds.items, ds.labels, ds.vocab, ds.multi_label, ds.item_tfms, train=False)
    expected, _ = learn.get_preds(dl=dls.train.new(dataset=centre, shuffle=False, drop_last=False, augment=False))
    assert torch.equal(first, expected)
    # The cleaner's table is built from the same passes.
    a, b = score_table(learn, with_bar=False), score_table(learn, with_bar=False)
    assert a["loss"].tolist() == b["loss"].tolist()


def test_starting_processes_from_a_notebook_lets_go_of_the_optimizer_and_device_memory(mnist_small, monkeypatch):
    dls = ImageDataLoaders.from_folder(mnist_small, item_tfms=Resize(16), bs=16, seed=0, num_workers=0)
    learn = Learner(dls, TinyCNN(dls.c))
    learn.fit(1)
    assert learn.opt is not None and learn.opt.state
    seen, released = {}, []
    monkeypatch.setattr(nbtrain.learner, "release_device_memory", lambda device: released.append(device))

    def fake_launch(fn, n, clone, method, args, kwargs, state, seed, **kw):
        seen.update(
            opt=learn.opt,
            device=next(learn.model.parameters()).device,
            state_devices={
                t.device.type for s in state["opt"]["state"].values() for t in s.values() if torch.is_tensor(t)
            },
        )
        return state

    monkeypatch.setattr(distributed, "launch", fake_launch)
    monkeypatch.setattr(distributed, "check_devices", lambda device, n: None)
    learn.fit(1, n_gpus=2)
    assert seen["opt"] is None and seen["device"].type == "cpu" and seen["state_devices"] == {"cpu"}
    assert released == [learn.device]
    assert learn.opt is not None and learn.opt.state  # given back afterwards


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_fp16_fit_and_lr_find_both_scale_the_loss(mnist_small):
    dls = ImageDataLoaders.from_folder(mnist_small, item_tfms=Resize(16), bs=16, seed=0, num_workers=0, device="cuda")
    learn = Learner(dls, TinyCNN(dls.c)).to_fp16()
    made = []
    real = learn.make_scaler

    def spy():
        made.append(real())
        return made[-1]

    learn.make_scaler = spy
    learn.fit(1)
    learn.lr_find(num_it=5, show_plot=False, stop_div=False)
    assert len(made) == 2 and all(isinstance(s, torch.amp.GradScaler) and s.get_scale() > 0 for s in made)
    assert learn.opt.defaults.get("fused") is True
