"""audit and the image-property pass on real digit files with planted problems whose truth is known."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageFilter

from nbtrain import ImageDataLoaders, Resize, audit, vision_learner
from nbtrain.audit import COLUMNS, MODEL_THRESHOLDS, BalanceSummary, issue_counts, threshold_notes
from nbtrain.image_properties import (
    HASH_BITS,
    THRESHOLDS,
    brightness,
    fine_detail,
    hash_neighbours,
    measure_file,
    measure_images,
    perceptual_hash,
    sharpness,
)
from nbtrain.samples import make_mnist_sample


def _change(path: Path, fn) -> None:
    with Image.open(path) as im:
        out = fn(im.convert("L"))
    out.save(path)


PLANTS = {
    "dark": lambda im: Image.fromarray((np.asarray(im, np.float32) * 0.2).astype(np.uint8)),
    "overexposed": lambda im: Image.fromarray((255 - (255 - np.asarray(im, np.float32)) * 0.2).astype(np.uint8)),
    "blurry": lambda im: im.filter(ImageFilter.GaussianBlur(1.5)),
    "low_information": lambda im: Image.fromarray(
        (np.full((28, 28), 90.0) + np.random.default_rng(0).normal(0, 1.5, (28, 28))).astype(np.uint8)
    ),
    "odd_size": lambda im: im.resize((84, 84), Image.Resampling.NEAREST),
    "odd_aspect": lambda im: im.resize((70, 28), Image.Resampling.NEAREST),
}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """120 real MNIST digits; one file changed per property type, a training digit copied byte for
    byte into valid (leakage), a digit copied within train, and a file that is not an image."""
    root = make_mnist_sample(tmp_path_factory.mktemp("audit") / "digits", n=120, noise=0.0, seed=2).path
    (root / "labels.csv").unlink()
    train = sorted((root / "train").rglob("*.png"))
    truth = {}
    for kind, fn, f in zip(PLANTS, PLANTS.values(), train[::7]):
        _change(f, fn)
        truth[kind] = f
    src = train[3]
    leak = root / "valid" / src.parent.name / f"copy_{src.name}"
    shutil.copyfile(src, leak)
    dup_src = train[5]
    dup = dup_src.parent / f"again_{dup_src.name}"
    shutil.copyfile(dup_src, dup)
    broken = root / "train" / "3" / "broken.png"
    broken.write_bytes(b"this is not a png")
    truth.update(leak=(leak, src), dup=(dup, dup_src), broken=broken)
    return root, truth


@pytest.fixture(scope="module")
def folder_table(planted):
    root, _ = planted
    return audit(root, n_workers=2)


def _flagged(table, issue):
    return table[table["flagged"] & (table["issue"] == issue)]


# ---------------------------------------------------------------------------------------------
# Scores of arrays


def test_a_darkened_image_keeps_its_sharpness_and_a_blurred_one_loses_fine_detail():
    rng = np.random.default_rng(0)
    img = Image.fromarray((rng.random((64, 64)) > 0.5).astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(0.7))
    g = np.asarray(img, np.float32) / 255
    dark = g * 0.2
    assert sharpness(dark) == pytest.approx(sharpness(g), rel=0.05)
    assert brightness(dark)[0] < 0.25 < brightness(g)[0]
    blurred = np.asarray(img.filter(ImageFilter.GaussianBlur(2)), np.float32) / 255
    assert fine_detail(blurred) < 0.8 * fine_detail(g)
    assert sharpness(blurred) < 0.5 * sharpness(g)


def test_a_resized_copy_has_a_near_hash_and_another_digit_does_not(planted):
    root, _ = planted
    a, b = sorted((root / "train" / "1").glob("0*.png"))[:2]

    def h(path, size=None):
        with Image.open(path) as im:
            im = im.convert("L")
            if size:
                im = im.resize(size, Image.Resampling.BICUBIC)
            return perceptual_hash(np.asarray(im.resize((32, 32), Image.Resampling.BILINEAR), np.float32))

    def bits(x, y):
        return int(np.unpackbits(np.bitwise_xor(np.frombuffer(x, np.uint8), np.frombuffer(y, np.uint8))).sum())

    assert bits(h(a), h(a, (25, 25))) <= THRESHOLDS["near_duplicate_bits"] < bits(h(a), h(b))


def test_hash_neighbours_finds_the_nearest_hash_as_a_full_comparison_does():
    rng = np.random.default_rng(1)
    hashes = [rng.integers(0, 256, 32, dtype=np.uint8).tobytes() for _ in range(40)]
    hashes[7] = hashes[3][:31] + bytes([hashes[3][31] ^ 0b10])  # one bit apart
    valid = np.ones(40, bool)
    valid[9] = False
    best, arg = hash_neighbours(hashes, valid, chunk=6)
    assert best[7] == 1 and arg[7] == 3 and arg[3] == 7
    assert arg[9] == -1 and best[9] == HASH_BITS and 9 not in set(arg.tolist())
    bits = np.unpackbits(np.frombuffer(b"".join(hashes), np.uint8).reshape(40, 32), axis=1)[:, :HASH_BITS]
    d = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    np.fill_diagonal(d, 999)
    d[:, 9] = 999
    ok = np.arange(40) != 9
    assert np.array_equal(best[ok], d.min(1)[ok])


# ---------------------------------------------------------------------------------------------
# A plain folder, before any model


def test_audit_of_a_folder_has_the_table_columns_and_reads_split_and_label(folder_table, planted):
    root, truth = planted
    assert list(folder_table.columns) == COLUMNS
    assert folder_table["path"].map(lambda p: isinstance(p, Path) and p.is_absolute()).all()
    assert set(folder_table["split"]) == {"train", "valid"}
    row = folder_table[(folder_table["path"] == truth["dark"]) & (folder_table["issue"] == "dark")].iloc[0]
    assert row["split"] == "train" and row["label"] == truth["dark"].parent.name
    assert folder_table["label"].ne("").all()


@pytest.mark.parametrize("kind", list(PLANTS))
def test_each_planted_property_is_flagged_alone_with_its_threshold_named(folder_table, planted, kind):
    _, truth = planted
    rows = _flagged(folder_table, kind)
    assert list(rows["path"]) == [truth[kind]], rows[["path", "reason"]]
    row = rows.iloc[0]
    assert f"{kind} threshold" in row["reason"]
    assert math.isfinite(row["threshold"])
    assert row["threshold"] == pytest.approx(THRESHOLDS[kind])


def test_an_exact_copy_is_flagged_once_and_names_the_file_it_copies(folder_table, planted):
    _, truth = planted
    dup, src = truth["dup"]
    rows = _flagged(folder_table, "exact_duplicate")
    assert set(rows["path"]) == {dup, truth["leak"][0]}
    assert rows.set_index("path").loc[dup, "other"] == src  # the other one is kept, unflagged
    kept = folder_table[(folder_table["issue"] == "exact_duplicate") & (folder_table["path"] == src)]
    assert len(kept) == 1 and not kept["flagged"].item()


def test_a_copy_across_train_and_valid_is_leakage_of_the_valid_copy(folder_table, planted):
    _, truth = planted
    leak, src = truth["leak"]
    rows = _flagged(folder_table, "leakage")
    assert list(rows["path"]) == [leak]
    assert rows.iloc[0]["split"] == "valid" and rows.iloc[0]["other"] == src and "train" in rows.iloc[0]["reason"]


def test_a_file_that_is_not_an_image_is_reported_unreadable_and_the_rest_still_scored(folder_table, planted):
    _, truth = planted
    rows = _flagged(folder_table, "unreadable")
    assert list(rows["path"]) == [truth["broken"]]
    assert "cannot be decoded" in rows.iloc[0]["reason"]
    assert set(folder_table.loc[folder_table["path"] == truth["broken"], "issue"]) == {"unreadable"}
    assert measure_file(truth["broken"])[-1].startswith("cannot be decoded")


def test_a_digit_dataset_is_grey_so_nothing_is_flagged_grayscale(folder_table):
    rows = folder_table[folder_table["issue"] == "grayscale"]
    assert len(rows) and not rows["flagged"].any()
    assert "is grey, so none is flagged" in rows.iloc[0]["reason"]


def test_a_grey_picture_among_colour_ones_is_flagged_grayscale(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(12):
        a = np.zeros((32, 32, 3), np.uint8)
        a[..., i % 3] = rng.integers(100, 255, (32, 32))
        a[8:24, 8:24] = rng.integers(0, 255, 3)
        Image.fromarray(a).save(tmp_path / f"c{i}.png")
    grey = tmp_path / "c5.png"
    with Image.open(grey) as im:
        im.convert("L").convert("RGB").save(grey)
    table = audit(tmp_path)
    assert list(_flagged(table, "grayscale")["path"]) == [grey.absolute()]
    assert set(table["split"]) == {""} and set(table["label"]) == {""}


def test_overriding_a_threshold_changes_what_is_flagged(planted):
    root, truth = planted
    stricter = audit(root, thresholds={"dark": 0.999, "class_z": -1.0})
    assert len(_flagged(stricter, "dark")) > 1
    assert (stricter.loc[stricter["issue"] == "dark", "threshold"] == 0.999).all()
    assert (
        "0.999" in _flagged(stricter, "dark").iloc[0]["reason"]
        or "1.00" in _flagged(stricter, "dark").iloc[0]["reason"]
    )
    looser = audit(root, thresholds={"odd_aspect": 3.0})
    assert truth["odd_aspect"] not in set(_flagged(looser, "odd_aspect")["path"])


def test_the_balance_summary_counts_each_class_and_survives_joining_tables(folder_table):
    balance = folder_table.attrs["balance"]
    assert isinstance(balance, BalanceSummary)
    t = balance.table
    assert list(t.index) == [str(c) for c in range(10)]
    assert (t["train"] + t["valid"]).sum() == (folder_table["issue"] == "unreadable").sum()  # every file
    assert t["share"].sum() == pytest.approx(1.0)
    joined = pd.concat([folder_table, folder_table.head(3)])
    assert joined.attrs["balance"] is balance
    counts = issue_counts(folder_table)
    assert counts["exact_duplicate"] == 2 and counts["dark"] == 1


def test_measure_images_keeps_the_order_of_the_files(planted):
    root, truth = planted
    files = sorted(root.rglob("*.png"))[:30]
    stats = measure_images(files, n_workers=3, chunk=4)
    assert list(stats["path"]) == files
    assert (stats["width"] > 0).sum() == sum(f != truth["broken"] for f in files)


# ---------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_gives_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        audit(tmp_path / "nowhere")
    f = tmp_path / "a.png"
    Image.new("L", (8, 8)).save(f)
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        audit(f)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        audit(tmp_path / "empty")
    with pytest.raises(TypeError, match="Learner, DataLoaders or the path"):
        audit(42)
    with pytest.raises(ValueError, match="No threshold is called 'darkness'.*'dark'"):
        audit(tmp_path, thresholds={"darkness": 0.1})
    with pytest.raises(ValueError, match="label_method must be 'oof'.*or 'loss'"):
        audit(tmp_path, label_method="confidence")


def test_every_threshold_says_why_it_is_what_it_is():
    notes = threshold_notes()
    assert set(THRESHOLDS) <= set(notes) and {"label", "outlier"} <= set(notes)
    assert all(isinstance(v, float | int) and len(why) > 20 for v, why in notes.values())


# ---------------------------------------------------------------------------------------------
# With a model


@pytest.fixture(scope="module")
def model_table(tmp_path_factory):
    """80 real digits and a pretrained mobilenet_v2 (head untrained: its features are ImageNet's), with
    a picture of sharp colour blocks planted among the digits, and a training digit copied into valid."""
    root = make_mnist_sample(tmp_path_factory.mktemp("audit_model") / "digits", n=80, noise=0.0, seed=4).path
    (root / "labels.csv").unlink()
    blocks = np.random.default_rng(0).integers(0, 256, (14, 14, 3)).astype(np.uint8)
    outlier = root / "train" / "4" / "blocks.png"
    Image.fromarray(blocks).resize((28, 28), Image.Resampling.NEAREST).save(outlier)
    src = sorted((root / "train" / "2").glob("*.png"))[0]
    leak = root / "valid" / "2" / f"copy_{src.name}"
    shutil.copyfile(src, leak)
    dls = ImageDataLoaders.from_folder(root, item_tfms=Resize(32), bs=16, seed=0)
    learn = vision_learner(dls, "mobilenet_v2")
    return audit(learn, label_method="loss", with_bar=False), outlier, (leak, src)


def test_audit_of_a_learner_flags_the_outlier_among_the_first_and_names_its_threshold(model_table):
    table, outlier, _ = model_table
    rows = table[table["issue"] == "outlier"].sort_values("score", ascending=False).reset_index(drop=True)
    top = rows.head(2)
    assert outlier in set(top["path"]), rows.head(3)["reason"].tolist()
    row = top[top["path"] == outlier].iloc[0]
    assert row["flagged"] and "pretrained" in row["reason"]
    assert "outlier threshold" in row["reason"] and row["threshold"] == MODEL_THRESHOLDS["outlier"]
    assert rows["flagged"].sum() <= 2


def test_outliers_found_even_when_they_cluster_together(tmp_path):
    """Twelve photos spread over the digit classes are each other's nearest images, more of them than
    the neighbours a distance averages over, and fine-tuning on digits pulls them into the digits'
    clusters; in the pretrained body's features each is still unlike the class it was put in.
    (Distance to the nearest images in the fine-tuned features put 4 of them in the first 12.)"""
    from nbtrain.samples import foolbox_photos

    root = make_mnist_sample(tmp_path / "digits", n=100, noise=0.0, seed=6).path
    (root / "labels.csv").unlink()
    strays = []
    for j, src in enumerate(foolbox_photos()[:12]):
        dest = root / "train" / str(j % 10) / f"photo_{j}.png"
        with Image.open(src) as im:
            im.convert("RGB").resize((28, 28), Image.Resampling.BILINEAR).save(dest)
        strays.append(dest)
    dls = ImageDataLoaders.from_folder(root, item_tfms=Resize(32), bs=16, seed=0)
    learn = vision_learner(dls, "mobilenet_v2")
    learn.fine_tune(2, base_lr=1e-2, freeze_epochs=0, lr_mult=1.0)
    table = audit(learn, label_method="loss", with_bar=False)
    rows = table[table["issue"] == "outlier"].sort_values("score", ascending=False)
    found = set(rows["path"].head(12)) & {p.absolute() for p in strays}
    assert len(found) >= 10, rows.head(14)[["path", "score"]]


def test_a_group_of_drawings_among_photos_is_ranked_first_by_the_evidence_together(tmp_path):
    """Six tinted digits spread over the classes of 80 photo quarters are each other's nearest images,
    and the last layer sees them little farther from the photos than the most isolated quarters; their
    neighbours' labels, texture and detail together put them first."""
    from nbtrain.embeddings import image_embeddings, image_features_and_texture
    from nbtrain.samples import foolbox_photos, mnist_arrays

    root = tmp_path / "photos"
    for src in foolbox_photos():
        with Image.open(src) as im:
            im = im.convert("RGB").resize((224, 224), Image.Resampling.BICUBIC)
        for q, (x, y) in enumerate([(0, 0), (112, 0), (0, 112), (112, 112)]):
            dest = root / ("valid" if q == 3 else "train") / src.stem / f"q{q}.jpg"
            dest.parent.mkdir(parents=True, exist_ok=True)
            im.crop((x, y, x + 112, y + 112)).save(dest, quality=90)
    rng = np.random.default_rng(0)
    digits, _ = mnist_arrays()
    classes = sorted(d.name for d in (root / "train").iterdir())
    strays = set()
    for j in range(6):
        d = digits[int(rng.integers(len(digits)))].astype(np.float32) / 255
        rgb = (d[..., None] * rng.uniform(0.3, 1.0, size=3) * 255).astype(np.uint8)
        dest = root / "train" / classes[int(rng.integers(len(classes)))] / f"digit_{j}.png"
        Image.fromarray(rgb, "RGB").resize((112, 112), Image.Resampling.NEAREST).save(dest)
        strays.add(dest.absolute())
    dls = ImageDataLoaders.from_folder(root, item_tfms=Resize(112), bs=32, seed=0)
    learn = vision_learner(dls, "mobilenet_v2")
    table = audit(learn, label_method="loss", with_bar=False)
    rows = table[table["issue"] == "outlier"].sort_values("score", ascending=False)
    assert len(set(rows["path"].head(6)) & strays) >= 5 and strays <= set(rows["path"].head(8)), rows.head(8)
    assert rows["reason"].str.contains("robust SD").all()
    feats, texture = image_features_and_texture(learn, dls.train.plain())
    assert texture is not None and texture.shape == (len(dls.train.dataset), 16)  # mobilenet_v2's first block
    assert torch.allclose(feats, image_embeddings(learn, dls.train.plain()), atol=1e-5)  # the same pass's features


@pytest.mark.parametrize("n", [200, 1000])
def test_the_default_outlier_threshold_flags_the_strays_and_no_digit_whatever_the_size(tmp_path, n):
    """Three photos among n real digits are flagged and not one digit is, with the default threshold:
    raised for 203 images, at its base for 1,003."""
    from nbtrain.samples import foolbox_photos

    root = make_mnist_sample(tmp_path / "digits", n=n, noise=0.0, seed=7).path
    (root / "labels.csv").unlink()
    strays = set()
    for j, src in enumerate(foolbox_photos()[:3]):
        dest = root / "train" / str(3 * j) / f"photo_{j}.png"
        with Image.open(src) as im:
            im.convert("RGB").resize((28, 28), Image.Resampling.BILINEAR).save(dest)
        strays.add(dest.absolute())
    dls = ImageDataLoaders.from_folder(root, item_tfms=Resize(32), bs=32, seed=0)
    table = audit(vision_learner(dls, "mobilenet_v2"), label_method="loss", with_bar=False)
    rows = _flagged(table, "outlier")
    assert set(rows["path"]) == strays, table[table["issue"] == "outlier"].head(5)[["path", "score"]]
    assert rows["reason"].str.contains("outlier threshold").all()


def test_audit_of_a_learner_scores_labels_and_reports_leakage(model_table):
    table, _, (leak, src) = model_table
    labels = table[table["issue"] == "label"]
    assert len(labels) == 81 + 1  # every image, the copy included
    assert labels["prediction"].notna().all() and (labels["score"] >= 0).all()
    assert "label threshold" in labels.iloc[0]["reason"]
    leaks = _flagged(table, "leakage")
    assert list(leaks["path"]) == [leak] and leaks.iloc[0]["other"] == src
    assert "error" in table.attrs["balance"].table.columns


def test_a_learner_without_a_body_gets_labels_but_no_outlier_rows(tmp_path):
    from torch import nn

    from nbtrain import Learner

    root = make_mnist_sample(tmp_path / "d", n=40, noise=0.0, seed=5).path
    (root / "labels.csv").unlink()
    dls = ImageDataLoaders.from_folder(root, item_tfms=Resize(28), bs=8, seed=0)
    learn = Learner(dls, nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, dls.c)))
    table = audit(learn, label_method="loss", with_bar=False)
    assert (table["issue"] == "label").sum() == 40
    assert not (table["issue"] == "outlier").any()


# ---------------------------------------------------------------------------------------------
# Judged against the image's own class


def _photo_classes(root: Path, dark_class: bool = True) -> dict[str, Path]:
    """Twelve crops of each of four of foolbox's photos, one class each; the first class made dark as a
    whole (a fifth of its brightness, as a night scene), with one truly black file planted in it."""
    from nbtrain.samples import foolbox_photos

    rng = np.random.default_rng(0)
    for c, src in enumerate(foolbox_photos()[:4]):
        with Image.open(src) as im:
            a = np.asarray(im.convert("RGB").resize((160, 160)), dtype=np.float32)
        for j in range(12):
            x, y = rng.integers(0, 96, size=2)
            crop = a[y : y + 64, x : x + 64] * (0.2 if c == 0 and dark_class else 1.0)
            dest = root / f"class{c}" / f"{j:02d}.png"
            dest.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(crop.astype(np.uint8)).save(dest)
    black = root / "class0" / "black.png"
    Image.fromarray(np.full((64, 64, 3), 2, np.uint8)).save(black)
    return {"black": black.absolute()}


def test_a_naturally_dark_class_is_not_flagged_but_a_black_file_in_it_is(tmp_path):
    truth = _photo_classes(tmp_path)
    table = audit(tmp_path)
    dark = _flagged(table, "dark")
    assert set(dark["path"]) <= {truth["black"]}, dark[["path", "reason"]]
    low = _flagged(table, "low_information")
    assert truth["black"] in set(dark["path"]) | set(low["path"])  # reported once, as one or the other
    assert not _flagged(table, "dark")["path"].map(lambda p: p.parent.name == "class0" and p.name != "black.png").any()


def test_a_class_dark_as_a_whole_gets_one_line_in_the_balance_summary(tmp_path):
    _photo_classes(tmp_path)
    notes = audit(tmp_path).attrs["balance"].notes
    assert any(n.startswith("class 'class0':") and n.endswith("of its images are dark") for n in notes), notes
    assert not any("class1" in n for n in notes)
    assert "of its images are dark" in repr(audit(tmp_path).attrs["balance"])


def test_a_dark_image_in_a_bright_class_says_how_unusual_it_is_for_its_class(tmp_path):
    _photo_classes(tmp_path, dark_class=False)
    target = tmp_path / "class2" / "03.png"
    with Image.open(target) as im:
        Image.fromarray((np.asarray(im, dtype=np.float32) * 0.2).astype(np.uint8)).save(target)
    rows = _flagged(audit(tmp_path), "dark")
    assert list(rows["path"]) == [target.absolute()]
    assert "of its class" in rows.iloc[0]["reason"] and "class_z" in rows.iloc[0]["reason"]


def _digits_among_photos(root: Path, classes: list[str]) -> tuple[set[Path], pd.DataFrame, pd.DataFrame]:
    """Photo classes with one MNIST digit planted in each of `classes` (a class may repeat); the strays,
    the audit of a pretrained learner, and its outlier rows, highest score first."""
    from nbtrain.samples import mnist_arrays

    _photo_classes(root, dark_class=False)
    (root / "class0" / "black.png").unlink()
    digits, _ = mnist_arrays()
    strays = set()
    for j, c in enumerate(classes):
        dest = root / c / f"digit_{j:02d}.png"
        Image.fromarray(digits[j * 3]).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR).save(dest)
        strays.add(dest.absolute())
    dls = ImageDataLoaders.from_folder(root, valid_pct=0.2, item_tfms=Resize(64), bs=16, seed=0)
    table = audit(vision_learner(dls, "mobilenet_v2"), label_method="loss", with_bar=False)
    return strays, table, table[table["issue"] == "outlier"].sort_values("score", ascending=False)


def test_a_group_of_digits_among_photo_classes_ranks_first_and_names_outlier_and_property(tmp_path):
    strays, table, rows = _digits_among_photos(tmp_path, [f"class{j}" for j in range(4)])
    assert set(rows["path"].head(4)) == strays, rows.head(6)[["path", "score", "reason"]]
    grey = set(_flagged(table, "grayscale")["path"])
    both = rows[rows["path"].isin(grey & strays)]
    assert len(both) and both["reason"].str.contains("also flagged .*grayscale").all()
    assert both["flagged"].any()


def test_a_group_of_digits_outnumbering_the_photos_of_its_class_ranks_first(tmp_path):
    # All in one class, more than its twelve photos: the class's own median look is theirs.
    strays, _, rows = _digits_among_photos(tmp_path, ["class1"] * 14)
    assert set(rows["path"].head(14)) == strays, rows.head(16)[["path", "score", "reason"]]


def _looks(grey_first: bool, rng: np.random.Generator) -> pd.DataFrame:
    """A class of 20 with nearly equal detail (its last image a little smoother), and a class of 60 in
    colour with detail spread widely, so that the dataset's spread is wide."""
    first = np.r_[np.exp(rng.normal(0, 0.02, 19)), 0.6]
    second = np.exp(rng.normal(0, 1.0, 60))
    return pd.DataFrame(
        {
            "error": "",
            "is_grey": np.r_[np.full(20, grey_first), np.zeros(60, bool)],
            "colour": np.r_[np.full(20, 0.0 if grey_first else 0.3), rng.uniform(0.2, 0.4, 60)],
            "sharpness": np.r_[first, second],
            "fine_detail": 1.0,
            "contrast": 0.5,
        }
    )


def test_a_grey_class_judges_detail_more_finely_as_colour_tells_nothing_there():
    from nbtrain.audit import outlier_evidence

    rng = np.random.default_rng(0)
    feats = torch.tensor(np.r_[rng.normal(0, 1, (20, 16)) + 3, rng.normal(0, 1, (60, 16)) - 3], dtype=torch.float32)
    targets = np.r_[np.zeros(20, int), np.ones(60, int)]
    in_grey = outlier_evidence(feats, None, _looks(True, np.random.default_rng(1)), targets, 5)["detail"]
    in_colour = outlier_evidence(feats, None, _looks(False, np.random.default_rng(1)), targets, 5)["detail"]
    assert in_grey[19] > in_colour[19] + 1
    assert in_grey[19] == in_grey[:20].max()
    np.testing.assert_allclose(in_grey[20:], in_colour[20:])
