"""The offline sample datasets: real images written as files in the layouts users' datasets have."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nbtrain.samples import (
    SampleDataset,
    make_digits_sample,
    make_mnist_sample,
    make_multilabel_mnist,
    make_photos_sample,
    mnist_arrays,
)

DIGITS = [str(d) for d in range(10)]


def _files(root: Path) -> set[str]:
    """Every visible file under `root`, relative to it, with forward slashes."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")}


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Inode and modification time of every file under `root` (hidden ones too): any rewrite changes it."""
    return {p.relative_to(root).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def mnist300(tmp_path_factory) -> SampleDataset:
    return make_mnist_sample(tmp_path_factory.mktemp("ds") / "mnist300", n=300, noise=0.1, seed=0)


def test_mnist_sample_writes_real_pngs_in_fastai_layout(mnist300):
    root = mnist300.path
    assert sorted(d.name for d in (root / "train").iterdir()) == DIGITS
    assert sorted(d.name for d in (root / "valid").iterdir()) == DIGITS
    pngs = sorted(root.glob("*/*/*.png"))
    assert len(pngs) == 300
    assert _files(root) == {p.relative_to(root).as_posix() for p in pngs} | {"labels.csv"}
    mnist, _ = mnist_arrays()
    for p in pngs[::37]:
        with Image.open(p) as img:
            assert img.format == "PNG" and img.mode == "L" and img.size == (28, 28)
            # The pixels are the real MNIST digit the file name points to, not something synthetic.
            assert np.array_equal(np.asarray(img), mnist[int(p.stem)])


def test_mnist_sample_is_balanced_and_split_by_valid_pct(mnist300):
    labels = mnist300.labels
    assert labels["true_label"].value_counts().to_dict() == {d: 30 for d in DIGITS}
    assert labels["is_valid"].sum() == 60
    assert (labels[labels["is_valid"]]["true_label"].value_counts() == 6).all()


def test_flipped_fraction_is_the_noise_asked_for(mnist300):
    labels = mnist300.labels
    train = labels[~labels["is_valid"]]
    assert train["flipped"].sum() == round(0.1 * len(train)) == 24
    assert not labels[labels["is_valid"]]["flipped"].any(), "the validation labels stay clean by default"
    assert (labels["flipped"] == (labels["label"] != labels["true_label"])).all()
    assert sorted(mnist300.flipped) == sorted(labels.loc[labels["flipped"], "fname"])


def test_labels_csv_agrees_with_the_folders(mnist300):
    root = mnist300.path
    on_disk = pd.read_csv(root / "labels.csv", dtype={"label": str, "true_label": str})
    pd.testing.assert_frame_equal(on_disk, mnist300.labels)
    assert set(on_disk["fname"]) == _files(root) - {"labels.csv"}
    for row in on_disk.itertuples():
        split, label, _ = row.fname.split("/")
        assert label == row.label
        assert split == ("valid" if row.is_valid else "train")
    mnist_labels = mnist_arrays()[1]
    truth = {f"{i:05d}": str(c) for i, c in enumerate(mnist_labels)}
    assert all(truth[Path(f).stem] == t for f, t in zip(on_disk["fname"], on_disk["true_label"]))


def test_rebuilding_with_the_same_arguments_is_a_no_op(mnist300):
    before = _snapshot(mnist300.path)
    again = make_mnist_sample(mnist300.path, n=300, noise=0.1, seed=0)
    assert _snapshot(mnist300.path) == before
    assert again.path == mnist300.path and again.flipped == mnist300.flipped
    pd.testing.assert_frame_equal(again.labels, mnist300.labels)


def test_the_same_seed_gives_the_same_dataset(mnist300, tmp_path):
    other = make_mnist_sample(tmp_path / "again", n=300, noise=0.1, seed=0)
    pd.testing.assert_frame_equal(other.labels, mnist300.labels)
    different = make_mnist_sample(tmp_path / "seed1", n=300, noise=0.1, seed=1)
    assert set(different.labels["fname"]) != set(mnist300.labels["fname"])


def test_other_arguments_replace_an_earlier_sample(tmp_path):
    dest = tmp_path / "mnist"
    make_mnist_sample(dest, n=100, noise=0.0, seed=0)
    noisy = make_mnist_sample(dest, n=120, noise=0.25, seed=0)
    assert len(_files(dest)) == 121
    train = noisy.labels[~noisy.labels["is_valid"]]
    assert noisy.labels["flipped"].sum() == train["flipped"].sum() == round(0.25 * len(train))
    assert json.loads((dest / ".nbtrain-sample.json").read_text())["n"] == 120
    assert [p.name for p in tmp_path.iterdir()] == ["mnist"], "no temporary folder is left beside it"


def test_noise_valid_flips_the_validation_labels_too(tmp_path):
    labels = make_mnist_sample(tmp_path / "m", n=200, noise=0.2, seed=3, noise_valid=True).labels
    assert labels[labels["is_valid"]]["flipped"].sum() == round(0.2 * 40)
    assert labels[~labels["is_valid"]]["flipped"].sum() == round(0.2 * 160)


def test_size_resizes_the_written_images(tmp_path):
    sample = make_mnist_sample(tmp_path / "m64", n=20, noise=0.0, size=64)
    with Image.open(sample.path / sample.labels["fname"][0]) as img:
        assert img.size == (64, 64)


def test_a_failed_build_leaves_nothing_that_looks_finished(tmp_path):
    with pytest.raises(ValueError, match="n must be between 1 and 5000"):
        make_mnist_sample(tmp_path / "m", n=10_000)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_is_not_a_sample_is_never_overwritten(tmp_path):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "cat.jpg").write_bytes(b"my own file")
    with pytest.raises(FileExistsError, match="not a sample dataset made by nbtrain"):
        make_mnist_sample(mine, n=20)
    assert _files(mine) == {"cat.jpg"}
    assert [p.name for p in tmp_path.iterdir()] == ["photos"]


def test_digits_sample_upscales_sklearn_digits_to_full_range_pngs(tmp_path):
    sample = make_digits_sample(tmp_path / "digits", n=200, noise=0.05, seed=0, size=32)
    labels = sample.labels
    assert len(labels) == 200 and labels["is_valid"].sum() == 40
    assert labels[~labels["is_valid"]]["flipped"].sum() == round(0.05 * 160)
    for row in labels.head(20).itertuples():
        assert Path(row.fname).parent.name == row.label
        with Image.open(sample.path / row.fname) as img:
            assert img.size == (32, 32) and img.mode == "L"
    pixels = np.stack([np.asarray(Image.open(sample.path / f)) for f in labels["fname"][:50]])
    assert pixels.max() == 255 and pixels.min() == 0, "0..16 is stretched to 0..255"


def test_digits_sample_writes_all_1797_by_default(tmp_path):
    sample = make_digits_sample(tmp_path / "digits", noise=0.0, size=8)
    assert len(sample.labels) == 1797 and len(_files(sample.path)) == 1798


def test_multilabel_mnist_pairs_two_real_digits_with_both_labels(tmp_path):
    sample = make_multilabel_mnist(tmp_path / "ml", n=100, seed=0)
    labels = pd.read_csv(sample.path / "labels.csv", dtype={"labels": str})
    assert list(labels.columns) == ["fname", "labels", "is_valid"]
    assert len(labels) == 100 and labels["is_valid"].sum() == 20
    assert _files(sample.path) == set(labels["fname"]) | {"labels.csv"}
    assert all(f.startswith("images/") for f in labels["fname"])
    mnist, mnist_y = mnist_arrays()
    by_digit = {d: mnist[mnist_y == d] for d in range(10)}
    single = 0
    for row in labels.itertuples():
        digits = row.labels.split(" ")
        assert digits == sorted(set(digits)) and 1 <= len(digits) <= 2
        single += len(digits) == 1
        with Image.open(sample.path / row.fname) as img:
            assert img.size == (56, 28)  # width, height: two 28x28 digits side by side
            a = np.asarray(img)
        halves = (a[:, :28], a[:, 28:])
        # Each half is a real MNIST image of one of the labelled digits.
        for half in halves:
            assert any((by_digit[int(d)] == half).all(axis=(1, 2)).any() for d in digits)
    assert single > 0, "a pair of the same digit gets one label"


def _have_foolbox_files() -> bool:
    try:
        return any("imagenet_" in str(f) for f in distribution("foolbox").files or [])
    except PackageNotFoundError:
        return False


@pytest.mark.skipif(not _have_foolbox_files(), reason="pip install --no-deps foolbox==3.3.4 ships the photos")
def test_photos_sample_copies_foolboxs_imagenet_jpegs_into_class_folders(tmp_path):
    root = make_photos_sample(tmp_path / "photos")
    assert root == (tmp_path / "photos").absolute()
    labels = pd.read_csv(root / "labels.csv")
    assert len(labels) == 20 and (root / "bull_mastiff" / "imagenet_00_243.jpg").is_file()
    assert sorted(labels.loc[labels["label"] == "jeep", "imagenet_idx"]) == [609, 609]
    for row in labels.itertuples():
        with Image.open(root / row.fname) as img:
            assert img.format == "JPEG" and img.mode == "RGB" and min(img.size) >= 64
        assert Path(row.fname).parent.name == row.label
    assert "foolbox" not in sys.modules, "foolbox (and its heavy dependencies) is never imported"
    assert make_photos_sample(tmp_path / "photos") == root


def test_sample_data_dir_follows_the_environment(tmp_path):
    # In a child process, so this process's environment is never changed.
    code = """if True:
        import json, os, sys
        from nbtrain import locations as ds
        out = []
        for env in json.loads(sys.argv[1]):
            for k in ("NBTRAIN_DATA", "NBTRAIN_HOME"):
                os.environ.pop(k, None)
            os.environ.update(env)
            out.append([str(ds.sample_data_dir()), str(ds.archive_dir())])
        print(json.dumps(out))
    """
    envs = [{"NBTRAIN_DATA": str(tmp_path / "d")}, {"NBTRAIN_HOME": str(tmp_path / "h")}, {}]
    done = subprocess.run([sys.executable, "-c", code, json.dumps(envs)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    home = Path.home() / ".nbtrain"
    assert json.loads(done.stdout) == [
        [str(tmp_path / "d"), str(home / "archive")],
        [str(tmp_path / "h" / "data"), str(tmp_path / "h" / "archive")],
        [str(home / "data"), str(home / "archive")],
    ]
