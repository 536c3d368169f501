"""Cleaning without touching an image: the cleaner writes its decisions as a label table, the next run's
loaders (every `ImageDataLoaders.from_*` and `DataBlock`) read it, and a cleaned copy is made from it
with hard links. Real files throughout: read-only MNIST digits, and pets-style names that hold the label."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from nbtrain import (
    CategoryBlock,
    DataBlock,
    DataError,
    ImageBlock,
    ImageDataLoaders,
    LabelTableError,
    Learner,
    RandomSplitter,
    RegexLabeller,
    Resize,
    cleaned_copy,
    get_image_files,
    parent_label,
    read_label_table,
    resize_images,
    using_attr,
)
from nbtrain.cleaner import DELETE, ImageClassifierCleaner
from nbtrain.label_table import loader_items, make_label_table, write_label_table
from testkit.tiny_models import small_cnn

PETS_PAT = r"^(.+)_\d+\.png$"


def snapshot(root: Path, skip: str | None = None) -> dict[str, tuple[str, int]]:
    """Relative path -> (sha256, st_mtime_ns) of every file under `root` (but those in a `skip` folder)."""
    return {
        p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and (skip is None or skip not in p.relative_to(root).parts)
    }


def _set_writable(root: Path, writable: bool) -> None:
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        os.chmod(p, mode | stat.S_IWUSR if writable else mode & ~0o222)


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """The current folder of the run: where the output (tables, a read-only dataset's decision log) goes."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture
def read_only_mnist(mnist_small, tmp_path):
    """A copy of the digits with every write bit taken off, as /kaggle/input is."""
    root = tmp_path / "input" / "mnist"
    shutil.copytree(mnist_small, root)
    _set_writable(root, False)
    yield root
    _set_writable(root, True)  # so pytest can remove it


@pytest.fixture
def pets(tmp_path) -> Path:
    """Real PNGs in one folder, named `<breed>_<n>.png` as Oxford-IIIT Pets: the label is in the name."""
    root = tmp_path / "pets" / "images"
    root.mkdir(parents=True)
    for k in range(24):
        breed = ("beagle", "Bengal", "pug")[k % 3]
        Image.new("RGB", (20, 20), (37 * k % 255, 80 * (k % 3), 90)).save(root / f"{breed}_{k}.png")
    return root


def _train(dls) -> Learner:
    torch.manual_seed(0)
    learn = Learner(dls, small_cnn(dls.c))
    learn.fit(1, 3e-3)
    return learn


def _items(dls) -> dict[Path, str]:
    return {Path(f): str(lab) for f, lab in zip(*loader_items(dls))}


# -- the acceptance: decisions reach the next run's loaders, no image changes ----------------------------


def test_read_only_dataset_is_cleaned_through_a_label_table_and_no_file_changes(read_only_mnist, work, capsys):
    before = snapshot(read_only_mnist)
    dls = ImageDataLoaders.from_folder(read_only_mnist, item_tfms=Resize(16), bs=16, seed=0, num_workers=0)
    cleaner = ImageClassifierCleaner(_train(dls), frontend="plain", max_n=10)
    items = sorted(_items(dls))
    doomed, relabelled = items[:2], {items[5]: "3", items[40]: "8"}
    for p in doomed:
        cleaner.state.toggle_delete(p)
    for p, label in relabelled.items():
        cleaner.state.set_choice(p, label)

    table = cleaner.write_label_table()
    assert table == work / "mnist_labels.csv" and f"Wrote the label table {table}" in capsys.readouterr().out

    again = ImageDataLoaders.from_folder(
        read_only_mnist, item_tfms=Resize(16), bs=16, seed=0, num_workers=0, label_table=table
    )
    assert f"Using the label table {table}: 2 relabelled, 2 left out." in capsys.readouterr().out
    now = _items(again)
    assert set(now) == set(items) - set(doomed)
    assert {p: now[p] for p in relabelled} == relabelled
    assert all(now[p] == p.parent.name for p in now if p not in relabelled)
    assert snapshot(read_only_mnist) == before  # every byte, every mtime, the same file list


def _buttons(box) -> dict:
    return {b.description: b for row in box.children for b in getattr(row, "children", ()) if hasattr(b, "on_click")}


def test_the_apply_button_on_read_only_data_offers_the_label_table_and_writes_it(read_only_mnist, work):
    before = snapshot(read_only_mnist)
    dls = ImageDataLoaders.from_folder(read_only_mnist, item_tfms=Resize(16), bs=16, seed=0, num_workers=0)
    cleaner = ImageClassifierCleaner(_train(dls), frontend="plain", max_n=10)
    items = sorted(_items(dls))
    cleaner.state.toggle_delete(items[0])
    cleaner.state.set_choice(items[7], "2")

    cleaner.apply_button.click()
    assert "read-only" in cleaner.apply_box.children[0].value
    buttons = _buttons(cleaner.apply_box)
    assert buttons["Yes, apply 2 changes"].disabled  # the files cannot take it
    buttons["Write a label table instead"].click()

    table = work / "mnist_labels.csv"
    assert "Wrote the label table" in cleaner.apply_box.children[0].value and table.is_file()
    again = ImageDataLoaders.from_folder(read_only_mnist, item_tfms=Resize(16), bs=16, seed=0, label_table=table)
    now = _items(again)
    assert items[0] not in now and now[items[7]] == "2"
    assert snapshot(read_only_mnist) == before


def test_pets_style_names_are_relabelled_and_deleted_through_the_table_without_renaming(pets, work, capsys):
    before = snapshot(pets.parent, skip=".nbtrain")  # the decision log lives in the dataset's .nbtrain
    files = get_image_files(pets)
    dls = ImageDataLoaders.from_name_re(
        pets, files, PETS_PAT, valid_pct=0.25, seed=0, item_tfms=Resize(16), bs=6, num_workers=0
    )
    cleaner = ImageClassifierCleaner(_train(dls), frontend="plain", max_n=24)
    beagle = next(f for f in files if f.name.startswith("beagle"))
    bengal = next(f for f in files if f.name.startswith("Bengal"))
    cleaner.state.set_choice(beagle, "pug")
    cleaner.state.toggle_delete(bengal)
    assert cleaner.choices == {beagle: "pug", bengal: DELETE}
    table = cleaner.write_label_table(dest=work / "tables")
    assert table == work / "tables" / "images_labels.csv"
    # Writing again with the same choices gives the same bytes (rows sorted by file, no time stamp).
    assert cleaner.write_label_table(dest=work / "again.csv").read_bytes() == table.read_bytes()

    # The next run: the same call, the table in place of the file names' labels, and a DataBlock.
    again = ImageDataLoaders.from_name_re(
        pets, files, PETS_PAT, valid_pct=0.25, seed=0, item_tfms=Resize(16), bs=6, num_workers=0, label_table=table
    )
    block = DataBlock(
        (ImageBlock, CategoryBlock),
        get_items=get_image_files,
        get_y=using_attr(RegexLabeller(PETS_PAT), "name"),
        splitter=RandomSplitter(0.25, seed=0),
        item_tfms=Resize(16),
    ).dataloaders(pets, bs=6, num_workers=0, label_table=table)
    assert capsys.readouterr().out.count(f"Using the label table {table}: 1 relabelled, 1 left out.") == 2
    for got in (again, block):
        labels = _items(got)
        assert bengal not in labels and labels[beagle] == "pug" and len(labels) == len(files) - 1
    assert snapshot(pets.parent, skip=".nbtrain") == before
    assert sorted(get_image_files(pets)) == sorted(files) and beagle.exists() and bengal.exists()


def test_a_cleaner_on_loaders_from_a_table_applies_to_the_table_not_the_images(read_only_mnist, work, capsys):
    before = snapshot(read_only_mnist)
    dls = ImageDataLoaders.from_folder(read_only_mnist, item_tfms=Resize(16), bs=16, seed=0, num_workers=0)
    table = ImageClassifierCleaner(_train(dls), frontend="plain").write_label_table()
    dls = ImageDataLoaders.from_folder(
        read_only_mnist, item_tfms=Resize(16), bs=16, seed=0, num_workers=0, label_table=table
    )
    cleaner = ImageClassifierCleaner(_train(dls), frontend="plain")
    first, second = sorted(_items(dls))[:2]
    cleaner.set_choice(first, DELETE)
    cleaner.set_choice(second, "9")
    cleaner.apply()
    rows = read_label_table(table).set_index("file")["label"]
    root = read_only_mnist
    assert first.relative_to(root).as_posix() not in rows and rows[second.relative_to(root).as_posix()] == "9"
    assert snapshot(read_only_mnist) == before
    assert first not in _items(cleaner.learn.dls)


def test_a_saved_review_replayed_headless_writes_the_same_table_byte_for_byte(read_only_mnist, work):
    dls = ImageDataLoaders.from_folder(read_only_mnist, item_tfms=Resize(16), bs=16, seed=0, num_workers=0)
    learn = _train(dls)
    by_hand = ImageClassifierCleaner(learn, frontend="plain", log=False)
    items = sorted(_items(dls))
    by_hand.set_choice(items[3], DELETE)
    by_hand.set_choice(items[50], "2")
    interactive = by_hand.write_label_table(dest=work / "by-hand.csv")
    saved = by_hand.save_choices(work / "choices.csv")
    headless = ImageClassifierCleaner(learn, frontend="plain", log=False, choices=saved)
    assert headless.write_label_table(dest=work / "replayed.csv").read_bytes() == interactive.read_bytes()


# -- every way of building loaders reads the table the same way -------------------------------------------


def _builders(pets: Path, files: list[Path]) -> dict:
    name_of = {f: re.match(PETS_PAT, f.name).group(1) for f in files}
    df = pd.DataFrame({"fname": [f.name for f in files], "breed": [name_of[f] for f in files]})
    df.to_csv(pets.parent / "breeds.csv", index=False)
    kw = {"item_tfms": Resize(16), "bs": 6, "num_workers": 0, "seed": 0}
    return {
        "from_name_re": lambda t: ImageDataLoaders.from_name_re(pets, files, PETS_PAT, label_table=t, **kw),
        "from_name_func": lambda t: ImageDataLoaders.from_name_func(
            pets, files, lambda n: n.rsplit("_", 1)[0], label_table=t, **kw
        ),
        "from_path_re": lambda t: ImageDataLoaders.from_path_re(
            pets, files, r"/([^/]+)_\d+\.png$", label_table=t, **kw
        ),
        "from_path_func": lambda t: ImageDataLoaders.from_path_func(
            pets, files, lambda p: p.name.rsplit("_", 1)[0], label_table=t, **kw
        ),
        "from_lists": lambda t: ImageDataLoaders.from_lists(
            pets, files, [name_of[f] for f in files], label_table=t, **kw
        ),
        "from_df": lambda t: ImageDataLoaders.from_df(
            df, path=pets, fn_col="fname", label_col="breed", label_table=t, **kw
        ),
        "from_csv": lambda t: ImageDataLoaders.from_csv(
            pets.parent, "breeds.csv", folder="images", label_col="breed", label_table=t, **kw
        ),
        "DataBlock": lambda t: DataBlock(
            (ImageBlock, CategoryBlock),
            get_items=get_image_files,
            get_y=lambda p: p.name.rsplit("_", 1)[0],
            item_tfms=Resize(16),
        ).dataloaders(pets, bs=6, num_workers=0, label_table=t),
    }


@pytest.mark.parametrize(
    "builder",
    [
        "from_name_re",
        "from_name_func",
        "from_path_re",
        "from_path_func",
        "from_lists",
        "from_df",
        "from_csv",
        "DataBlock",
    ],
)
def test_every_builder_takes_the_tables_labels_and_leaves_out_what_it_leaves_out(builder, pets, work, capsys):
    files = get_image_files(pets)
    build = _builders(pets, files)[builder]
    dls = build(None)
    items, labels = loader_items(dls)
    gone, moved = files[0], files[1]
    table = write_label_table(
        make_label_table(items, labels, pets, deleted=[gone], relabelled={moved: "sphynx"}), work / "t.csv"
    )
    again = build(table)
    assert f"Using the label table {table}: 1 relabelled, 1 left out." in capsys.readouterr().out
    now = _items(again)
    assert gone not in now and now[moved] == "sphynx" and len(now) == len(files) - 1
    assert "sphynx" in again.vocab  # a class new to the dataset is fine


def test_from_folder_and_datablock_give_the_same_items_and_classes_from_one_table(mnist_small, work):
    dls = ImageDataLoaders.from_folder(mnist_small, valid_pct=0.2, seed=0, item_tfms=Resize(16), num_workers=0)
    items, labels = loader_items(dls)
    only_ones = [f for f, lab in zip(items, labels) if lab == "1"]
    table = write_label_table(
        make_label_table(items, labels, mnist_small, deleted=only_ones[1:], relabelled={only_ones[0]: "7"}), work
    )
    a = ImageDataLoaders.from_folder(mnist_small, valid_pct=0.2, seed=0, item_tfms=Resize(16), label_table=table)
    b = DataBlock(
        (ImageBlock, CategoryBlock), get_items=get_image_files, get_y=parent_label, splitter=RandomSplitter(seed=0)
    ).dataloaders(mnist_small, label_table=table)
    assert _items(a) == _items(b) and a.vocab == b.vocab and "1" not in a.vocab


def test_bool_labels_from_a_label_function_come_back_as_bools(pets, work):
    def is_cat(name):
        return name[0].isupper()

    files = get_image_files(pets)
    kw = {"valid_pct": 0.25, "seed": 0, "item_tfms": Resize(16), "num_workers": 0}
    dls = ImageDataLoaders.from_name_func(pets, files, is_cat, **kw)
    dog = next(f for f in files if not is_cat(f.name))
    items, labels = loader_items(dls)
    table = write_label_table(make_label_table(items, labels, pets, relabelled={dog: True}), work)
    again = ImageDataLoaders.from_name_func(pets, files, is_cat, label_table=table, **kw)
    assert again.vocab == [False, True]
    labels = dict(zip(*loader_items(again)))
    assert labels[dog] is True and all(type(v) is bool for v in labels.values())


def test_multi_label_tables_hold_space_separated_labels_and_empty_for_none(tmp_path, work):
    from nbtrain.samples import make_multilabel_mnist

    root = make_multilabel_mnist(tmp_path / "pairs", n=40, seed=0).path
    kw = {"label_col": "labels", "label_delim": " ", "valid_col": "is_valid", "num_workers": 0, "item_tfms": Resize(16)}
    dls = ImageDataLoaders.from_csv(root, **kw)
    items, labels = loader_items(dls)
    table = write_label_table(
        make_label_table(
            items, labels, root, multi_label=True, deleted=[items[0]], relabelled={items[1]: ["2", "5"], items[2]: []}
        ),
        work,
    )
    df = read_label_table(table)
    assert list(df.columns) == ["file", "labels", "root"] and "" in set(df["labels"]) and "2 5" in set(df["labels"])
    again = ImageDataLoaders.from_csv(root, label_table=table, **kw)
    now = dict(zip(*loader_items(again)))
    assert items[0] not in now and sorted(now[items[1]]) == ["2", "5"] and now[items[2]] == []
    with pytest.raises(DataError, match="is a multi-label table"):
        ImageDataLoaders.from_csv(root, label_col="labels", num_workers=0, label_table=table)
    # The table is plain fastai CSV: from_csv reads it on its own.
    plain = ImageDataLoaders.from_csv(root, table, label_delim=" ", num_workers=0, item_tfms=Resize(16))
    assert len(plain.train_ds.items) + len(plain.valid_ds.items) == len(df)


# -- bad tables: a clear error, nothing changed ---------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("name,label\ntrain/3/x.png,3\n", "has the columns \\['name', 'label'\\]"),
        ("file,label\ntrain/3/nowhere.png,3\n", "1 of the 1 files in the label table .* do not exist"),
        ("file,label\ntrain/3/a.png,3\ntrain/3/a.png,4\n", "more than once"),
        ("file,label\ntrain/3/a.png,\n", "have no label"),
        ("file,label,labels\ntrain/3/a.png,3,3\n", "either 'label'"),
    ],
)
def test_a_bad_table_is_refused_with_what_to_fix(text, message, mnist_small, work):
    bad = work / "bad.csv"
    bad.write_text(text)
    before = snapshot(mnist_small)
    with pytest.raises(DataError, match=message):
        ImageDataLoaders.from_folder(mnist_small, label_table=bad, num_workers=0)
    assert snapshot(mnist_small) == before and bad.read_text() == text


def test_a_table_for_another_dataset_is_refused(mnist_small, pets, work):
    files = get_image_files(pets)
    table = write_label_table(make_label_table(files, ["x"] * len(files), pets), work)
    with pytest.raises(DataError, match="None of the loaders' .* files is in the label table"):
        ImageDataLoaders.from_folder(mnist_small, label_table=table, num_workers=0)
    with pytest.raises(DataError, match="No label table at"):
        ImageDataLoaders.from_folder(mnist_small, label_table=work / "missing.csv", num_workers=0)


def test_a_table_that_leaves_out_every_validation_image_is_refused(mnist_small, work):
    dls = ImageDataLoaders.from_folder(mnist_small, num_workers=0)
    table = write_label_table(make_label_table(dls.train_ds.items, dls.train_ds.labels, mnist_small), work)
    with pytest.raises(DataError, match="leaves out every validation image"):
        ImageDataLoaders.from_folder(mnist_small, label_table=table, num_workers=0)


def test_writing_never_overwrites_a_csv_that_is_not_a_label_table(pets, work):
    own = work / "labels.csv"
    own.write_text("fname,breed\nbeagle_0.png,beagle\n")
    files = get_image_files(pets)
    with pytest.raises(LabelTableError, match="not a label table"):
        write_label_table(make_label_table(files, ["x"] * len(files), pets), own)
    assert own.read_text() == "fname,breed\nbeagle_0.png,beagle\n"
    with pytest.raises(LabelTableError, match="holds a space"):
        make_label_table(files, [["great dane"]] * len(files), pets, multi_label=True)


# -- the cleaned copy -----------------------------------------------------------------------------------


def _digits_table(root: Path, work: Path) -> tuple[Path, list[Path], Path]:
    files = get_image_files(root)
    table = make_label_table(files, [f.parent.name for f in files], root, deleted=files[:3], relabelled={files[3]: "9"})
    return write_label_table(table, work), files, files[3]


def test_a_cleaned_copy_hard_links_into_class_folders_and_leaves_the_source_alone(mnist_small, work, capsys):
    before = snapshot(mnist_small)
    table, files, relabelled = _digits_table(mnist_small, work)
    dest = cleaned_copy(table, work / "clean")
    assert "hard-linked" in capsys.readouterr().out
    copied = {p.relative_to(dest).as_posix(): p for p in get_image_files(dest)}
    assert len(copied) == len(files) - 3
    assert {p.parent.name for p in copied.values()} == {str(d) for d in range(10)}
    moved = next(p for p in copied.values() if os.path.samefile(p, relabelled))
    assert moved.parent.name == "9"
    src_inodes = {f.stat().st_ino for f in files[3:]}
    assert {p.stat().st_ino for p in copied.values()} == src_inodes  # the same files: no byte copied
    assert snapshot(mnist_small) == before
    dls = ImageDataLoaders.from_folder(dest, valid_pct=0.2, seed=0, num_workers=0)
    assert len(dls.train_ds.items) + len(dls.valid_ds.items) == len(files) - 3
    # resize_images in place replaces each file (a new inode), so the linked source keeps its bytes.
    resize_images(dest / "9", max_size=14, dest=dest / "9")
    assert snapshot(mnist_small) == before and not os.path.samefile(moved, relabelled)


@pytest.mark.skipif(
    not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(Path.cwd()).st_dev,
    reason="needs a second file system (/dev/shm) for hard links to fail",
)
def test_a_cleaned_copy_on_another_device_copies_and_says_so(mnist_small, work, capsys, tmp_path):
    table, files, _ = _digits_table(mnist_small, work)
    dest = Path(f"/dev/shm/nbtrain-test-{os.getpid()}-{tmp_path.name}")
    try:
        cleaned_copy(table, dest)
        assert "copied (hard links are not possible there)" in capsys.readouterr().out
        copied = get_image_files(dest)
        assert len(copied) == len(files) - 3
        assert all(os.stat(p).st_nlink == 1 and os.stat(p).st_mode & stat.S_IWUSR for p in copied)
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def test_a_cleaned_copy_refuses_a_non_empty_dest_or_one_inside_the_source(mnist_copy, work):
    table, _, _ = _digits_table(mnist_copy, work)
    full = work / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(LabelTableError, match="not empty"):
        cleaned_copy(table, full)
    with pytest.raises(LabelTableError, match="inside the dataset"):
        cleaned_copy(table, mnist_copy / "clean")
    assert (full / "keep.txt").read_text() == "mine" and not (mnist_copy / "clean").exists()
    assert [p.name for p in full.parent.iterdir() if p.name.startswith(".full")] == []


def test_a_multi_label_copy_keeps_the_layout_and_writes_its_table(tmp_path, work):
    from nbtrain.samples import make_multilabel_mnist

    root = make_multilabel_mnist(tmp_path / "pairs", n=20, seed=0).path
    df = pd.read_csv(root / "labels.csv", dtype=str, keep_default_na=False)
    files = [root / f for f in df["fname"]]
    labels = [s.split() for s in df["labels"]]
    table = write_label_table(make_label_table(files, labels, root, multi_label=True, deleted=files[:2]), work)
    dest = cleaned_copy(table, work / "pairs-clean")
    assert len(get_image_files(dest)) == len(files) - 2 and (dest / "labels.csv").is_file()
    dls = ImageDataLoaders.from_csv(dest, "labels.csv", label_delim=" ", num_workers=0, item_tfms=Resize(16))
    assert dls.multi_label and len(dls.train_ds.items) + len(dls.valid_ds.items) == len(files) - 2


def test_files_of_one_class_that_share_a_name_keep_their_folders_in_the_copy(tmp_path, work):
    root = tmp_path / "shared-names"
    for split in ("train", "valid"):
        (root / split / "cat").mkdir(parents=True)
        Image.new("RGB", (8, 8), (10, 20, 30) if split == "train" else (200, 20, 30)).save(
            root / split / "cat" / "a.png"
        )
    files = get_image_files(root)
    dest = cleaned_copy(write_label_table(make_label_table(files, ["cat", "cat"], root), work), work / "copy")
    assert sorted(p.name for p in (dest / "cat").iterdir()) == ["train_cat_a.png", "valid_cat_a.png"]
    assert os.path.samefile(dest / "cat" / "valid_cat_a.png", root / "valid" / "cat" / "a.png")


def test_run_from_inside_the_dataset_the_table_goes_beside_it(mnist_copy, monkeypatch):
    monkeypatch.chdir(mnist_copy / "train")
    dls = ImageDataLoaders.from_folder(mnist_copy, num_workers=0)
    items, labels = loader_items(dls)
    table = write_label_table(make_label_table(items, labels, mnist_copy))
    assert table == mnist_copy.parent / "mnist_labels.csv"
    ImageDataLoaders.from_folder(mnist_copy, num_workers=0, label_table=table)  # no stray file in the dataset
