"""Where the code runs: mixed precision per device, Kaggle detection, read-only data, offline weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision import models as tvm

import nbtrain
from nbtrain import ImageDataLoaders, Learner, Resize, fileops
from nbtrain.environment import autocast_dtype, mixed_precision
from nbtrain.fileops import copy_to_working
from nbtrain.locations import is_kaggle, is_read_only_location, output_dir
from nbtrain.models import WeightsUnavailableError, offline_candidates, pretrained_state_dict

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


# -- mixed precision ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "capability, dtype",
    [
        ((9, 0), torch.bfloat16),  # H100
        ((8, 9), torch.bfloat16),  # L4, RTX 4090
        ((8, 6), torch.bfloat16),  # A10, RTX 3090
        ((8, 0), torch.bfloat16),  # A100
        ((7, 5), torch.float16),  # T4: is_bf16_supported() says True, through slow emulation
        ((7, 0), torch.float16),  # V100
        ((6, 0), torch.float16),  # P100
        ((6, 1), None),  # GTX 1080: fp16 at a fraction of fp32's speed
    ],
)
def test_auto_precision_follows_the_compute_capability(capability, dtype):
    assert autocast_dtype(CUDA, capability=capability) is dtype
    # Only fp16 needs the gradient scaler: bf16 has fp32's range.
    assert mixed_precision(CUDA, "auto", capability=capability) == (dtype, dtype is torch.float16)


def test_grad_scaler_only_for_fp16_on_cuda():
    assert mixed_precision(CUDA, "auto", capability=(7, 5)) == (torch.float16, True)
    assert mixed_precision(CUDA, "auto", capability=(8, 6)) == (torch.bfloat16, False)
    assert mixed_precision(CUDA, torch.float16, capability=(8, 0)) == (torch.float16, True)
    assert mixed_precision(CUDA, None) == (None, False)
    assert mixed_precision(CPU, "auto") == (None, False)  # the CPU stays in fp32 unless asked
    assert mixed_precision(CPU, torch.float16) == (None, False)  # emulated on the CPU: fp32 instead
    assert mixed_precision(CPU, torch.bfloat16) == (torch.bfloat16, False)


class DtypeSpy(nn.Module):
    """A tiny CNN that records the dtype its convolution computes in."""

    def __init__(self, c: int):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, c)
        self.seen: set[torch.dtype] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        self.seen.add(h.dtype)
        return self.head(h.relu().mean((2, 3)))


def test_bf16_trains_and_predicts_on_the_cpu(mnist_small):
    dls = ImageDataLoaders.from_folder(mnist_small, item_tfms=Resize(16), bs=32, seed=0, num_workers=0)
    learn = Learner(dls, DtypeSpy(dls.c), metrics=nbtrain.error_rate).to_bf16()
    before = learn.model.conv.weight.detach().clone()
    learn.fit(1, lr=1e-2)
    assert learn.model.seen == {torch.bfloat16}
    assert learn.scaler is None and learn.model.conv.weight.dtype == torch.float32  # fp32 master weights
    assert not torch.equal(before, learn.model.conv.weight)
    assert all(torch.isfinite(torch.tensor(learn.recorder.losses)))
    label, idx, probs = learn.predict(dls.valid_ds.items[0])
    assert probs.dtype == torch.float32 and probs.sum().item() == pytest.approx(1, abs=1e-3)
    assert label in dls.vocab
    learn.to_fp32()
    learn.model.seen.clear()
    learn.predict(dls.valid_ds.items[0])
    assert learn.model.seen == {torch.float32}
    with pytest.warns(UserWarning, match="needs a CUDA GPU; on cpu this learner trains in float32"):
        learn.to_fp16()
    assert learn._amp_dtype() is None and learn.make_scaler() is None


# -- Kaggle and read-only data -------------------------------------------------------------------


def test_kaggle_is_detected_from_its_environment_variables(monkeypatch):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.delenv("KAGGLE_URL_BASE", raising=False)
    assert not is_kaggle()
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert is_kaggle() and nbtrain.is_kaggle()


@pytest.fixture
def read_only_copy(mnist_small, tmp_path):
    """A copy of `mnist_small` with no write permission anywhere, as /kaggle/input's datasets are."""
    import shutil

    dest = tmp_path / "input" / "digits"
    shutil.copytree(mnist_small, dest)
    for dirpath, _, filenames in os.walk(dest):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o444)
    for dirpath, _, _ in sorted(os.walk(dest), reverse=True):
        os.chmod(dirpath, 0o555)
    yield dest
    for dirpath, _, _ in os.walk(dest):
        os.chmod(dirpath, 0o755)


def test_outputs_of_read_only_data_go_to_the_working_folder(read_only_copy, tmp_path):
    working = tmp_path / "working"
    working.mkdir()
    assert is_read_only_location(read_only_copy)
    assert output_dir(read_only_copy, kaggle_working=working) == working / "models"
    writable = tmp_path / "mine"
    writable.mkdir()
    assert output_dir(writable, kaggle_working=working) == writable / "models"
    # Kaggle's input mount counts as read-only by its place, whatever its permissions say.
    fake_input = tmp_path / "kaggle_input"
    (fake_input / "ds").mkdir(parents=True)
    assert is_read_only_location(fake_input / "ds", kaggle_input=fake_input)
    assert output_dir(fake_input / "ds", kaggle_input=fake_input, kaggle_working=working) == working / "models"


def test_a_learner_on_read_only_data_saves_outside_it(read_only_copy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # off Kaggle, the working folder is the current one
    dls = ImageDataLoaders.from_folder(read_only_copy, item_tfms=Resize(16), bs=32, seed=0, num_workers=0)
    learn = Learner(dls, DtypeSpy(dls.c))
    saved = learn.save("stage1")
    assert saved == tmp_path / "models" / "stage1.pth" and saved.is_file()


def test_copy_to_working_makes_the_data_cleanable(read_only_copy, tmp_path, capsys):
    working = tmp_path / "working"
    victim = sorted((read_only_copy / "train" / "3").iterdir())[0]
    with pytest.raises(fileops.ReadOnlyDatasetError, match="copy_dataset"):
        fileops.apply_actions([fileops.Action("delete", victim)], read_only_copy)

    path = copy_to_working(read_only_copy, working=working)
    assert path == working / "digits" and not is_read_only_location(path)
    assert len(nbtrain.get_image_files(path)) == len(nbtrain.get_image_files(read_only_copy))
    report = fileops.apply_actions([fileops.Action("delete", path / victim.relative_to(read_only_copy))], path)
    assert report.journal is not None and working in report.journal.parents  # the journal lives in the copy
    assert victim.exists()  # the original is untouched
    # Run again (a notebook re-run), it keeps the cleaned copy rather than failing or copying afresh.
    assert copy_to_working(read_only_copy, working=working) == path
    assert "already" in capsys.readouterr().out
    assert not (path / victim.relative_to(read_only_copy)).exists()


# -- pretrained weights in attached datasets ---------------------------------------------------------


@pytest.fixture
def attached(tmp_path) -> Path:
    """A fake /kaggle/input with torchvision resnet18 weights under an older file name."""
    root = tmp_path / "kaggle_input"
    folder = root / "pytorch-pretrained-models"
    folder.mkdir(parents=True)
    torch.save(tvm.resnet18(weights=None).state_dict(), folder / "resnet18-5c106cde.pth")
    torch.save({"not": torch.zeros(1)}, folder / "resnet18-0broken.pth")  # sorts first; is not resnet18's
    torch.save({"x": torch.zeros(1)}, folder / "resnet18_finetuned_cats.pt")  # not a .pth
    torch.save({"x": torch.zeros(1)}, folder / "vgg16_bn-6c64b313.pth")  # vgg16_bn's, not vgg16's
    return root


def test_weights_named_after_the_architecture_are_found_and_named(attached, tmp_path, monkeypatch, capsys):
    names = [p.name for p in offline_candidates("resnet18-f37072fd.pth", arch="resnet18", roots=[attached])]
    assert names == ["resnet18-0broken.pth", "resnet18-5c106cde.pth"]
    assert offline_candidates("vgg16-397923af.pth", arch="vgg16", roots=[attached]) == []
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    state, source = pretrained_state_dict("resnet18", search_roots=[attached])
    assert Path(source).name == "resnet18-5c106cde.pth" and "layer4.1.bn2.weight" in state
    assert f"Using pretrained resnet18 weights from {source}" in capsys.readouterr().out


def test_missing_weights_on_kaggle_say_what_to_attach(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    with pytest.raises(WeightsUnavailableError) as err:
        pretrained_state_dict("resnet34", search_roots=[tmp_path / "nothing"])
    msg = str(err.value)
    assert "attach a dataset holding resnet34-b627a593.pth" in msg and "'pytorch pretrained models'" in msg
    assert "pretrained=False" in msg
