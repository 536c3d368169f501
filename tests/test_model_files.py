"""Model files that are not what they seem: code in pickles, fastai exports, junk, other architectures,
and saves killed with SIGKILL halfway."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
import torchvision

from nbtrain import ImageDataLoaders, Resize, load_learner, vision_learner
from nbtrain.fileops import atomic_write
from nbtrain.persistence import CheckpointMismatchError, atomic_torch_save, safe_load
from testkit import badzoo


class RunsCode:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Learner:
    """What a fastai export is: a pickled instance of a class (here one named like fastai's)."""

    def __init__(self):
        self.model = torch.nn.Linear(4, 2)
        self.path, self.model_dir = Path("."), "models"


@pytest.fixture(scope="module")
def dls(tmp_path_factory):
    root = badzoo.make_dataset(tmp_path_factory.mktemp("zoo") / "data")
    return ImageDataLoaders.from_folder(root, item_tfms=Resize(32), bs=4, num_workers=0, device="cpu")


@pytest.fixture(scope="module")
def mobilenet(dls, tmp_path_factory):
    return vision_learner(dls, "mobilenet_v2", pretrained=False, path=tmp_path_factory.mktemp("mobilenet"))


def _weights(learn) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in learn.model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


PICKLES = {
    "code as the whole object": lambda p, m: torch.save(RunsCode(m), p),
    "code inside the dict": lambda p, m: torch.save({"model": RunsCode(m)}, p),
    "code, torch's legacy format": lambda p, m: torch.save(RunsCode(m), p, _use_new_zipfile_serialization=False),
    "code, plain pickle.dump": lambda p, m: p.write_bytes(pickle.dumps(RunsCode(m))),
    "fastai-style pickled Learner": lambda p, m: torch.save(Learner(), p),
    "fastai-style, plain pickle": lambda p, m: p.write_bytes(pickle.dumps(Learner())),
}


@pytest.mark.parametrize("kind", list(PICKLES))
def test_pickled_objects_are_refused_and_never_run(kind, mobilenet, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pth"
    PICKLES[kind](path, marker)
    before = _weights(mobilenet)
    for load in (mobilenet.load, load_learner):
        with warnings_ignored(), pytest.raises(ValueError, match="does not unpickle") as err:
            load(path)
        msg = str(err.value)
        assert str(path) in msg and "fastai" in msg and "\x1b" not in msg
        if kind.startswith("fastai") and "plain" not in kind:
            assert "Learner" in msg  # names what the file would import
    assert not marker.exists()
    assert _same(before, _weights(mobilenet))


JUNK = {
    "empty file": lambda p, ckpt: p.write_bytes(b""),
    "text file": lambda p, ckpt: p.write_text("weights go here\n"),
    "HTML error page": lambda p, ckpt: p.write_text(badzoo.HTML_404),
    "torn checkpoint": lambda p, ckpt: p.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2]),
    "JPEG named .pth": lambda p, ckpt: p.write_bytes(badzoo.exif_rotated_jpeg(p.with_suffix(".jpg")).read_bytes()),
}


@pytest.mark.parametrize("kind", list(JUNK))
def test_junk_model_file_gets_a_clear_message(kind, mobilenet, tmp_path):
    ckpt = mobilenet.save("good")
    path = tmp_path / "junk.pth"
    JUNK[kind](path, ckpt)
    before = _weights(mobilenet)
    for load in (mobilenet.load, load_learner):
        with pytest.raises(ValueError, match="is not a readable model file") as err:
            load(path)
        assert str(path) in str(err.value)
    assert _same(before, _weights(mobilenet))


def test_checkpoint_from_another_architecture_gets_a_clear_message(dls, mobilenet, tmp_path):
    resnet = vision_learner(dls, "resnet18", pretrained=False, path=tmp_path)
    before = _weights(mobilenet)
    with pytest.raises(CheckpointMismatchError) as err:
        mobilenet.load(resnet.save("resnet"))
    msg = str(err.value)
    assert "resnet18" in msg and "mobilenet_v2" in msg and "same architecture" in msg
    assert "size mismatch" not in msg and len(msg) < 400  # a sentence, not torch's shape dump
    # a bare state_dict has no metadata: the tensors themselves are compared
    bare = tmp_path / "bare.pth"
    torch.save(resnet.model.state_dict(), bare)
    with pytest.raises(CheckpointMismatchError, match="does not fit this model.*another architecture"):
        mobilenet.load(bare)
    torch.save(torchvision.models.resnet18().state_dict(), bare)  # torchvision's own, other key names
    with pytest.raises(CheckpointMismatchError, match="does not fit this model"):
        mobilenet.load(bare)
    assert _same(before, _weights(mobilenet))  # a refused load changes nothing
    # an export whose architecture name does not match its weights
    export = torch.load(resnet.export(tmp_path / "export.pth"), weights_only=True)
    assert load_learner(tmp_path / "export.pth").model.arch == "resnet18"
    export["arch"] = "mobilenet_v2"
    torch.save(export, tmp_path / "lying.pth")
    with pytest.raises(CheckpointMismatchError, match="does not fit this model"):
        load_learner(tmp_path / "lying.pth")


def test_a_checkpoint_is_not_an_export_and_says_so(mobilenet):
    with pytest.raises(ValueError, match="not a file written by Learner.export"):
        load_learner(mobilenet.save("plain"))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_save_killed_at_random_moments_leaves_the_old_checkpoint_or_a_complete_new_one(tmp_path):
    trials = badzoo.kill_during_save(tmp_path, trials=10, seed=0)
    assert all(t.child == "killed" for t in trials), trials
    assert all(t.found in ("old", "new") for t in trials), trials  # "old": same sha256 as before the kill
    assert sum(t.mid_save for t in trials) >= 5, trials  # most kills cut a save off halfway
    assert all(not t.other_files for t in trials), trials  # no partial file under a checkpoint's name
    assert all(t.temp_files <= 1 for t in trials), trials  # a save removes the temp file of a killed one
    models = tmp_path / "models"
    names = os.listdir(models)
    assert all(n == "ckpt.pth" or (n.startswith(".ckpt.pth.") and n.endswith(".tmp")) for n in names), names
    # the hidden temp files of killed saves are not offered as saved models
    dls = ImageDataLoaders.from_folder(tmp_path / "data", item_tfms=Resize(32), bs=4, num_workers=0, device="cpu")
    learn = vision_learner(dls, "resnet18", pretrained=False, path=tmp_path)
    learn.load("ckpt")
    with pytest.raises(FileNotFoundError, match=r"Saved models: \['ckpt'\]"):
        learn.load("nope")


class warnings_ignored:
    """torch warns about the pickle protocol of a plain pickle.dump before refusing it."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", UserWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


class FailsToPickle:
    def __reduce__(self):
        raise RuntimeError("cannot be written")


def test_a_save_that_fails_halfway_leaves_the_old_file_intact_and_no_temporary_file(mobilenet, tmp_path):
    path = tmp_path / "models" / "kept.pth"
    weights = mobilenet.model.state_dict()
    atomic_torch_save({"model": weights}, path)
    old = path.read_bytes()
    with pytest.raises(RuntimeError, match="cannot be written"):  # torch.save fails partway
        atomic_torch_save({"model": weights, "last": FailsToPickle()}, path)
    assert path.read_bytes() == old and [p.name for p in path.parent.iterdir()] == ["kept.pth"]
    assert set(safe_load(path)["model"]) == set(weights)


def test_the_one_atomic_write_keeps_a_csv_whole_when_its_writer_fails(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("fname,label\na.png,cat\n")

    def half_then_fail(f) -> None:
        f.write("fname,label\n")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail, text=True)
    assert path.read_text() == "fname,label\na.png,cat\n" and [p.name for p in tmp_path.iterdir()] == ["labels.csv"]
