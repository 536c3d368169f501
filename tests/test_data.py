"""The loaders on real image files: labels, splits, image modes, and a clear error for every bad input."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import nbtrain
from nbtrain import DataError, ImageDataLoaders, Resize, aug_transforms, get_image_files, load_image, verify_images


def _classes(root: Path) -> list[str]:
    return sorted(d.name for d in (root / "train").iterdir() if d.is_dir())


def test_from_folder_labels_are_parent_folders_and_split_follows_folders(mnist_small):
    dls = ImageDataLoaders.from_folder(mnist_small, item_tfms=Resize(32), bs=16)
    assert dls.vocab == _classes(mnist_small) == [str(i) for i in range(10)]
    assert dls.c == 10
    n_train = len(get_image_files(mnist_small / "train"))
    n_valid = len(get_image_files(mnist_small / "valid"))
    assert (len(dls.train_ds), len(dls.valid_ds)) == (n_train, n_valid)
    for ds in (dls.train_ds, dls.valid_ds):
        for path, target in zip(ds.items, ds.targets.tolist()):
            assert dls.vocab[target] == path.parent.name
    assert all("valid" in p.parts for p in dls.valid_ds.items)
    x, y = dls.one_batch()
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (16,)


def test_from_folder_valid_pct_is_random_seeded_and_sized(mnist_small):
    a = ImageDataLoaders.from_folder(mnist_small, valid_pct=0.25, seed=42, item_tfms=Resize(32))
    b = ImageDataLoaders.from_folder(mnist_small, valid_pct=0.25, seed=42, item_tfms=Resize(32))
    c = ImageDataLoaders.from_folder(mnist_small, valid_pct=0.25, seed=7, item_tfms=Resize(32))
    total = len(get_image_files(mnist_small))
    assert len(a.valid_ds) == round(0.25 * total) and len(a.train_ds) + len(a.valid_ds) == total
    assert a.valid_ds.items == b.valid_ds.items
    assert a.valid_ds.items != c.valid_ds.items
    assert not set(a.train_ds.items) & set(a.valid_ds.items)


def test_from_df_and_from_csv_use_the_table_labels_and_valid_column(mnist_small, tmp_path):
    files = get_image_files(mnist_small)
    df = pd.DataFrame(
        {
            "name": [str(f.relative_to(mnist_small)) for f in files],
            "label": [f.parent.name for f in files],
            "is_valid": ["valid" in f.parts for f in files],
        }
    )
    dls = ImageDataLoaders.from_df(
        df, path=mnist_small, fn_col="name", label_col="label", valid_col="is_valid", item_tfms=Resize(32)
    )
    assert dls.vocab == [str(i) for i in range(10)]
    assert len(dls.valid_ds) == int(df.is_valid.sum())
    assert [p.parent.name for p in dls.train_ds.items] == [dls.vocab[t] for t in dls.train_ds.targets.tolist()]
    csv = mnist_small / "table.csv"
    df.to_csv(csv, index=False)
    try:
        dls2 = ImageDataLoaders.from_csv(mnist_small, "table.csv", valid_col="is_valid", item_tfms=Resize(32))
    finally:
        csv.unlink()
    assert dls2.valid_ds.items == dls.valid_ds.items
    assert dls2.table is not None and dls2.table.csv_path == csv


def test_from_name_re_takes_the_label_from_the_file_name(mnist_small, tmp_path):
    # Oxford-IIIT Pets style names: <breed>_<number>.jpg
    for i, f in enumerate(get_image_files(mnist_small)[:40]):
        breed = "great_pyrenees" if int(f.parent.name) % 2 else "Abyssinian"
        Image.open(f).convert("RGB").save(tmp_path / f"{breed}_{i}.jpg")
    fnames = get_image_files(tmp_path)
    dls = ImageDataLoaders.from_name_re(
        tmp_path, fnames, r"^(.+)_\d+\.jpg$", valid_pct=0.2, seed=0, item_tfms=Resize(28)
    )
    assert dls.vocab == ["Abyssinian", "great_pyrenees"]
    for ds in (dls.train_ds, dls.valid_ds):
        for p, t in zip(ds.items, ds.targets.tolist()):
            assert p.name.startswith(dls.vocab[t] + "_")
    assert len(dls.valid_ds) == 8


def _write(path: Path, mode: str = "RGB", size=(20, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path)
    return path


@pytest.mark.parametrize(
    "case, match",
    [
        ("empty", "No image files"),
        ("class_without_images", "has no images"),
        ("single_class", "Only one class"),
        ("no_valid_folder", "No 'valid' folder"),
        ("non_image_files", "not images"),
        ("text_named_jpg", "not usable images"),
    ],
)
def test_bad_dataset_layouts_get_a_clear_error_that_names_the_fix(tmp_path, case, match):
    root = tmp_path / "data"
    root.mkdir()
    if case != "empty":
        for split in ("train", "valid"):
            for cls in ("cat", "dog"):
                for i in range(3):
                    _write(root / split / cls / f"{i}.png")
    if case == "class_without_images":
        (root / "train" / "bird").mkdir()
    if case == "single_class":
        import shutil

        shutil.rmtree(root / "train" / "dog")
        shutil.rmtree(root / "valid" / "dog")
    if case == "no_valid_folder":
        import shutil

        shutil.rmtree(root / "valid")
    if case == "non_image_files":
        (root / "train" / "cat" / "notes.pdf").write_text("not an image")
    if case == "text_named_jpg":
        (root / "train" / "cat" / "page.jpg").write_text("<html>404 not found</html>")
    before = sorted(p for p in root.rglob("*"))
    with pytest.raises(DataError, match=match) as err:
        ImageDataLoaders.from_folder(root, item_tfms=Resize(16))
    msg = str(err.value)
    if case in ("class_without_images", "non_image_files", "text_named_jpg"):
        assert str(root) in msg  # names the path
    assert sorted(p for p in root.rglob("*")) == before  # destroys nothing


@pytest.mark.parametrize("pct", [0, 1, 1.5, -0.1])
def test_valid_pct_outside_zero_one_is_refused(mnist_small, pct):
    with pytest.raises(DataError, match="valid_pct must be between 0 and 1"):
        ImageDataLoaders.from_folder(mnist_small, valid_pct=pct)


def test_non_image_file_can_be_skipped_on_request(tmp_path):
    for split in ("train", "valid"):
        for cls in ("a", "b"):
            for i in range(2):
                _write(tmp_path / split / cls / f"{i}.png")
    (tmp_path / "train" / "a" / "bad.jpg").write_bytes(b"")
    with pytest.warns(UserWarning, match="bad.jpg"):
        dls = ImageDataLoaders.from_folder(tmp_path, item_tfms=Resize(16), bad_files="skip")
    assert len(dls.train_ds) == 4


def test_truncated_file_met_during_training_is_skipped_with_one_warning(tmp_path):
    for split in ("train", "valid"):
        for cls in ("a", "b"):
            for i in range(4):
                arr = (np.random.default_rng(i).random((24, 24, 3)) * 255).astype(np.uint8)
                p = tmp_path / split / cls / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(p)
    broken = tmp_path / "train" / "a" / "0.png"
    broken.write_bytes(broken.read_bytes()[:200])  # header intact, pixels cut off
    dls = ImageDataLoaders.from_folder(tmp_path, item_tfms=Resize(16), bs=4, num_workers=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = [b for b in dls.train.new(shuffle=False, drop_last=False)]
        again = [b for b in dls.train.new(shuffle=False, drop_last=False)]
    named = [w for w in caught if "0.png" in str(w.message)]
    assert len(named) == 1, [str(w.message) for w in named]
    assert sum(len(y) for _, y in batches) == 7 == sum(len(y) for _, y in again)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "LA"])
def test_any_pil_mode_becomes_rgb(tmp_path, mode):
    path = tmp_path / ("img.tif" if mode in ("CMYK",) else "img.png")
    img = Image.new(mode, (10, 8))
    if mode == "P":
        img.info["transparency"] = 0
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (10, 8)


def test_sixteen_bit_image_keeps_its_contrast(tmp_path):
    arr = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    out = np.asarray(load_image(path))
    assert out.min() == 0 and out.max() >= 250


def test_verify_images_lists_files_that_cannot_be_opened(tmp_path):
    good = _write(tmp_path / "good.png")
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert sorted(verify_images([good, bad, empty])) == sorted([bad, empty])


@pytest.mark.parametrize("method", ["crop", "squish", "pad"])
def test_resize_methods_give_the_asked_size(method):
    img = Image.new("RGB", (40, 20), "white")
    out = Resize((16, 24), method, pad_mode="zeros")(img)
    assert out.size == (24, 16)
    if method == "pad":
        arr = np.asarray(out)
        assert arr[0, 0].sum() == 0 and arr[8, 12].sum() == 255 * 3


def test_resize_pad_reflects_by_default_as_fastai():
    img = Image.new("RGB", (40, 20), "white")
    img.paste((255, 0, 0), (0, 0, 40, 2))  # a red top edge, mirrored into the top padding
    arr = np.asarray(Resize(40, "pad")(img))
    assert arr.shape == (40, 40, 3)
    assert tuple(arr[8, 20]) == (255, 255, 255) and arr[9, 20, 1] < 128  # padding reflects, then the red edge
    assert np.asarray(Resize(40, "pad", pad_mode="border")(img))[0, 20, 1] < 128  # border repeats the red edge


def test_random_resized_crop_is_random_on_train_and_centred_on_valid():
    arr = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(arr)
    t = nbtrain.RandomResizedCrop(32, min_scale=0.35)
    train = {np.asarray(t(img, train=True)).tobytes() for _ in range(5)}
    valid = {np.asarray(t(img, train=False)).tobytes() for _ in range(3)}
    assert len(train) > 1 and len(valid) == 1


def test_batch_augmentation_changes_each_image_differently_and_only_in_training(mnist_small):
    dls = ImageDataLoaders.from_folder(mnist_small, item_tfms=Resize(32), batch_tfms=aug_transforms(), bs=8)
    plain = dls.train.new(shuffle=False, augment=False).one_batch()[0]
    aug = dls.train.new(shuffle=False).one_batch()[0]
    assert aug.shape == plain.shape
    diffs = (aug - plain).abs().flatten(1).mean(1)
    assert (diffs > 0).sum() >= 6 and len(set(diffs.tolist())) > 1
    v1, v2 = dls.valid.one_batch()[0], dls.valid.one_batch()[0]
    assert torch.equal(v1, v2)


def test_show_batch_draws_labelled_images(mnist_small, tmp_path):
    dls = ImageDataLoaders.from_folder(mnist_small, item_tfms=Resize(32), bs=16)
    fig = dls.show_batch(max_n=6)
    out = tmp_path / "batch.png"
    fig.savefig(out)
    assert out.stat().st_size > 1000
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 6 and set(titles) <= set(dls.vocab)
