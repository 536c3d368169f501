"""Bad files scraped from the web, fed to every entry point: each is handled or refused clearly, and no file is lost.

The zoo (testkit/badzoo.py) writes real files: truncated JPEG and PNG, an empty file, text and an HTML page
named .jpg, CMYK, 16-bit, palette-with-transparency, RGBA, greyscale, an animated GIF, a 1x1 image, a
genuine decompression bomb, an EXIF-rotated photo, unicode and space-containing names, symlinks that
loop, dangle, or lead outside the dataset, a class folder with a name full of shell-unfriendly
characters, a class folder that is a link out of the dataset, and labels like '../x'. `badzoo.EXPECTED`
is the decided outcome of each (case, entry point); every run also checks, by sha256 and link target,
that every file under the test's folder (the dataset and the folder outside it) is where it should be.
"""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
from torch import nn

from nbtrain import ImageDataLoaders, Learner, Resize, fileops, get_image_files, load_image, verify_images
from nbtrain.cleaner import DELETE, ImageClassifierCleaner
from testkit import badzoo

PARAMS = [(c.name, e) for c in badzoo.CASES for e in badzoo.ENTRIES if badzoo.EXPECTED[c.name][e] != "n/a"]


@pytest.fixture(scope="module")
def learn(tmp_path_factory):
    return badzoo.tiny_learner(tmp_path_factory.mktemp("clean"))


def test_every_case_has_a_decided_outcome_at_every_entry_point():
    assert set(badzoo.EXPECTED) == {c.name for c in badzoo.CASES}
    assert all(set(v) == set(badzoo.ENTRIES) for v in badzoo.EXPECTED.values())


@pytest.mark.parametrize("case, entry", PARAMS, ids=[f"{c}|{e}" for c, e in PARAMS])
def test_bad_input_is_handled_or_refused_clearly_and_loses_no_file(case, entry, tmp_path, learn):
    r = badzoo.run(case, entry, tmp_path, learn)
    assert r.outcome == r.expected, r.detail
    assert not r.lost and not r.extra, (r.lost, r.extra)


def test_symlink_loops_never_hang_the_walk_and_are_named(tmp_path):
    root = badzoo.make_dataset(tmp_path / "data")
    (root / "train" / "a" / "up").symlink_to("..", target_is_directory=True)
    (root / "train" / "b" / "x").symlink_to("y")  # x -> y -> x
    (root / "train" / "b" / "y").symlink_to("x")
    (root / "valid" / "a" / "self").symlink_to(root / "valid" / "a", target_is_directory=True)
    out: dict = {}

    def walk() -> None:
        out["files"] = get_image_files(root)
        out["bad"] = verify_images(out["files"])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out["dls"] = ImageDataLoaders.from_folder(root, item_tfms=Resize(16), bs=4, num_workers=0, device="cpu")
        out["warnings"] = [str(w.message) for w in caught]

    t = threading.Thread(target=walk, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "walking a dataset with symlink loops did not finish"
    assert len(out["files"]) == len(set(out["files"])) == 6 and out["bad"] == []
    assert len(out["dls"].train_ds) + len(out["dls"].valid_ds) == 6
    links = [w for w in out["warnings"] if "Not following" in w]
    assert len(links) == 2  # one per split folder, each naming its links
    for name in ("up", "x", "y"):
        assert str(root / "train" / ("a" if name == "up" else "b") / name) in links[0]
    assert str(root / "valid" / "a" / "self") in links[1]


def test_exif_rotated_photo_is_upright_in_the_batches(tmp_path):
    root = badzoo.make_dataset(tmp_path / "data")
    rotated = badzoo.exif_rotated_jpeg(root / "train" / "a" / "rotated.jpg")
    assert load_image(rotated).size == (20, 40)
    dls = ImageDataLoaders.from_folder(
        root, item_tfms=Resize((40, 20), method="squish"), bs=8, num_workers=0, device="cpu"
    )
    i = dls.train_ds.items.index(rotated)
    for x, _, idx in dls.train.plain().iter_with_index():
        if i in idx.tolist():
            img = x[idx.tolist().index(i)]
            break
    assert img.shape == (3, 40, 20)
    top, bottom = img[:, 4:16].mean(dim=(1, 2)), img[:, 24:36].mean(dim=(1, 2))
    assert top[0] > 0.8 and top[2] < 0.2  # red on top
    assert bottom[2] > 0.8 and bottom[0] < 0.2  # blue below


def test_cleaner_shows_a_broken_file_first_and_apply_never_touches_a_link_target(tmp_path):
    root, truncated = badzoo.plant(badzoo.CASE_BY_NAME["truncated JPEG"], tmp_path)
    outside = tmp_path / "outside"
    link = badzoo.CASE_BY_NAME["symlink to outside"].make(root, outside).path
    badzoo.CASE_BY_NAME["odd class name"].make(root, outside)
    before = badzoo.snapshot(tmp_path)
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_folder(root, item_tfms=Resize(16), bs=4, num_workers=0, seed=0, device="cpu")
    learn = Learner(
        dls,
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, dls.c)
        ),
    )
    with pytest.warns(UserWarning, match="truncated.jpg"):  # once, when scoring decodes it
        cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=4, height=badzoo.THUMB, width=badzoo.THUMB)
    cleaner.dd_cats.value, cleaner.dd_ds.value = "a", "Train"
    assert cleaner.fns[0] == truncated.path  # unreadable ranks first
    assert "unreadable" in cleaner.cells[0].caption.value
    assert badzoo._is_placeholder(cleaner.cells[0].image.value)
    cleaner.cells[0].menu.value = DELETE
    cleaner.set_choice(link, DELETE)
    cleaner.set_choice(root / "train" / "a" / "1.png", badzoo.ODD_CLASS)
    with pytest.raises(ValueError, match="not <Keep>, <Delete> or one of the classes"):
        cleaner.set_choice(root / "train" / "a" / "0.png", "../x")
    report = cleaner.apply()
    assert report.summary() == "2 deleted, 1 relabelled" and not report.errors
    ((src, dst),) = report.moved
    assert dst.parent == root / "train" / badzoo.ODD_CLASS
    expected = dict(before)
    for gone in (truncated.path, link):
        del expected[str(gone.relative_to(tmp_path))]
    expected[str(dst.relative_to(tmp_path))] = expected.pop(str(src.relative_to(tmp_path)))
    assert badzoo.snapshot(tmp_path) == expected  # the link's target outside is untouched
    assert (outside / "secret.png").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the broken file is gone: no more warnings
        learn.fit(1)


@pytest.mark.parametrize("trash", [False, True])
def test_deleting_a_symlink_unlinks_the_link_never_its_target(tmp_path, trash):
    root, planted = badzoo.plant(badzoo.CASE_BY_NAME["symlink to outside"], tmp_path)
    inside = badzoo.CASE_BY_NAME["symlink inside"].make(root, tmp_path / "outside").path
    target_out, target_in = planted.path.resolve(), inside.resolve()
    before = badzoo.snapshot(tmp_path)
    report = fileops.apply_actions(
        [fileops.Action("delete", planted.path), fileops.Action("delete", inside)], root, trash=trash
    )
    assert len(report.deleted) == 2 and not report.errors
    assert not planted.path.is_symlink() and not inside.is_symlink()
    after = badzoo.snapshot(tmp_path)
    assert after[str(target_out.relative_to(tmp_path))] == before[str(target_out.relative_to(tmp_path))]
    assert after[str(target_in.relative_to(tmp_path))] == before[str(target_in.relative_to(tmp_path))]
    if trash:  # the links wait in the trash; undo brings them back as links
        fileops.undo(report.journal)
        assert badzoo.snapshot(tmp_path) == before
