"""DataBlock, its labellers and splitters against fastai's documented behaviour, on real image files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import nbtrain
from nbtrain import (
    CategoryBlock,
    CategoryMap,
    ColReader,
    ColSplitter,
    DataBlock,
    DataError,
    EndSplitter,
    FuncSplitter,
    GrandparentSplitter,
    ImageBlock,
    ImageDataLoaders,
    IndexSplitter,
    MaskSplitter,
    MultiCategoryBlock,
    RandomSplitter,
    RegexLabeller,
    Resize,
    TrainTestSplitter,
    aug_transforms,
    get_image_files,
    parent_label,
    using_attr,
)

ITEMS = [Path(f"/data/train/cat/{i}.jpg") for i in range(10)]


# -- labellers ------------------------------------------------------------------------------------


def test_parent_label_is_the_folder_name():
    assert parent_label(Path("/data/train/cat/1.jpg")) == "cat"
    assert parent_label("/data/valid/dog/2.jpg") == "dog"


def test_regex_labeller_searches_the_whole_path_unless_match():
    f = Path("/data/images/great_pyrenees_12.jpg")
    assert RegexLabeller(r"/([^/]+)_\d+.jpg$")(f) == "great_pyrenees"
    # re.match anchors at the start of the path, as fastai's match=True.
    with pytest.raises(DataError, match="could not match the start of"):
        RegexLabeller(r"([^/]+)_\d+.jpg$", match=True)(f)
    assert RegexLabeller(r"^/data/(\w+)/", match=True)(f) == "images"


def test_regex_labeller_on_the_name_with_using_attr():
    label = using_attr(RegexLabeller(r"(.+)_\d+.jpg$"), "name")
    assert label(Path("/data/images/Abyssinian_3.jpg")) == "Abyssinian"


def test_regex_labeller_says_what_did_not_match():
    with pytest.raises(DataError, match=r"could not find .*using_attr"):
        RegexLabeller(r"(\d+)x")("/a/b.jpg")
    with pytest.raises(DataError, match="has no group"):
        RegexLabeller(r"\d+")


def test_col_reader_prefix_suffix_and_label_delim():
    row = pd.Series({"fname": "000005", "labels": "chair dog", "n": 3})
    assert ColReader("fname")(row) == "000005"
    assert ColReader("fname", pref="train/", suff=".jpg")(row) == "train/000005.jpg"
    # A Path prefix gets the separator, as fastai's.
    assert ColReader("fname", pref=Path("/data/train"))(row) == f"/data/train{os.sep}000005"
    assert ColReader("labels", label_delim=" ")(row) == ["chair", "dog"]
    assert ColReader(0)(row) == "000005"
    assert ColReader(["fname", "n"])(row) == ["000005", 3]
    assert ColReader("labels", label_delim=" ")(pd.Series({"labels": float("nan")})) == []


def test_col_reader_names_the_missing_column():
    with pytest.raises(DataError, match=r"'label' is not a column of the table; its columns are \['fname', 'labels'\]"):
        ColReader("label")(pd.Series({"fname": "a", "labels": "b"}))


# -- splitters --------------------------------------------------------------------------------------


def test_random_splitter_same_seed_same_split_other_seed_other_split():
    a, b = RandomSplitter(seed=42)(ITEMS * 10), RandomSplitter(seed=42)(ITEMS * 10)
    assert a == b
    assert RandomSplitter(seed=1)(ITEMS * 10) != a
    train, valid = a
    assert len(valid) == 20 and len(train) == 80 and sorted(train + valid) == list(range(100))


def test_random_splitter_is_fastais_algorithm_and_leaves_the_global_seed_alone():
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    train, valid = RandomSplitter(valid_pct=0.3, seed=42)(ITEMS)
    assert torch.rand(1) == before  # the global generator did not move
    torch.manual_seed(42)
    perm = torch.randperm(10).tolist()
    assert (train, valid) == (perm[3:], perm[:3])  # fastai: cut = int(valid_pct * n)


def test_grandparent_splitter_uses_the_grandparent_folder_name(mnist_small):
    files = get_image_files(mnist_small)
    train, valid = GrandparentSplitter()(files)
    assert {files[i].parent.parent.name for i in train} == {"train"}
    assert {files[i].parent.parent.name for i in valid} == {"valid"}
    assert len(train) + len(valid) == len(files)
    # Other names, and items under neither are left out.
    t2, v2 = GrandparentSplitter(train_name="valid", valid_name="test")(files)
    assert sorted(t2) == sorted(valid) and v2 == []


def test_index_splitter_mask_splitter_and_end_splitter():
    assert IndexSplitter([1, 3])(ITEMS) == ([0, 2, 4, 5, 6, 7, 8, 9], [1, 3])
    with pytest.raises(DataError, match="out of range"):
        IndexSplitter([12])(ITEMS)
    assert MaskSplitter([i % 5 == 0 for i in range(10)])(ITEMS) == ([1, 2, 3, 4, 6, 7, 8, 9], [0, 5])
    assert EndSplitter(0.2)(ITEMS) == (list(range(8)), [8, 9])
    assert EndSplitter(0.2, valid_last=False)(ITEMS) == (list(range(2, 10)), [0, 1])


def test_func_splitter_puts_true_items_in_valid():
    train, valid = FuncSplitter(lambda o: int(o.stem) >= 7)(ITEMS)
    assert valid == [7, 8, 9] and train == list(range(7))


def test_col_splitter_reads_a_bool_column_or_matches_on():
    df = pd.DataFrame({"fname": list("abcd"), "is_valid": [False, True, False, True], "set": ["tr", "va", "te", "va"]})
    assert ColSplitter()(df) == ([0, 2], [1, 3])
    assert ColSplitter("set", on="va")(df) == ([0, 2], [1, 3])
    assert ColSplitter("set", on=["va", "te"])(df) == ([0], [1, 2, 3])
    # A CSV's "True"/"False" text counts as bool.
    assert ColSplitter()(df.assign(is_valid=df["is_valid"].astype(str))) == ([0, 2], [1, 3])
    with pytest.raises(DataError, match="not true/false.*on="):
        ColSplitter("set")(df)
    with pytest.raises(DataError, match="reads a column of a DataFrame"):
        ColSplitter()(ITEMS)


def test_train_test_splitter_stratify_keeps_each_class_share():
    labels = ["a"] * 80 + ["b"] * 20
    train, valid = TrainTestSplitter(test_size=0.2, random_state=42, stratify=labels)(list(range(100)))
    assert len(valid) == 20 and sorted(train + valid) == list(range(100))
    assert sum(labels[i] == "b" for i in valid) == 4
    assert TrainTestSplitter(test_size=0.2, random_state=42)(list(range(100))) == TrainTestSplitter(
        test_size=0.2, random_state=42
    )(list(range(100)))


# -- DataBlock on real files ------------------------------------------------------------------------


def _folder_block(**kwargs) -> DataBlock:
    args = dict(
        blocks=(ImageBlock, CategoryBlock),
        get_items=get_image_files,
        splitter=GrandparentSplitter(),
        get_y=parent_label,
        item_tfms=Resize(28),
    )
    args.update(kwargs)
    return DataBlock(**args)


def test_datablock_builds_the_same_loaders_as_from_folder(mnist_small):
    dls = _folder_block().dataloaders(mnist_small, bs=32, num_workers=0)
    ref = ImageDataLoaders.from_folder(mnist_small, item_tfms=Resize(28), bs=32, num_workers=0)
    assert type(dls) is type(ref) and dls.vocab == ref.vocab
    assert sorted(dls.train_ds.items) == sorted(ref.train_ds.items)
    assert sorted(dls.valid_ds.items) == sorted(ref.valid_ds.items)
    assert (
        dls.root == Path(mnist_small) and dls.path == Path(".") and dls.table is None
    )  # fastai saves in the working folder
    x, y = dls.one_batch()
    assert x.shape == (32, 3, 28, 28) and y.dtype == torch.long


def test_datasets_give_image_and_encoded_label(mnist_small):
    dsets = _folder_block().datasets(mnist_small)
    x, y = dsets.train[0]
    assert isinstance(x, nbtrain.PILImage) and x.size == (28, 28)
    assert dsets.vocab[int(y)] == parent_label(dsets.train.items[0])


def test_new_replaces_only_the_transforms_given():
    block = _folder_block(batch_tfms=aug_transforms())
    resized = block.new(item_tfms=Resize(64))
    assert resized.item_tfms[0].size == (64, 64) and resized.batch_tfms == block.batch_tfms
    assert block.item_tfms[0].size == (28, 28)  # the original is unchanged
    assert resized.new(batch_tfms=[]).batch_tfms == []


def test_dataframe_source_with_col_reader_remembers_its_table(mnist_small):
    df = pd.read_csv(mnist_small / "labels.csv")
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock),
        get_x=ColReader("fname", pref=mnist_small),
        get_y=ColReader("label"),
        splitter=ColSplitter(),
        item_tfms=Resize(28),
    )
    dls = block.dataloaders(df, bs=16, num_workers=0)
    assert dls.table is not None and dls.table.df is df
    assert (dls.table.fn_col, dls.table.label_col, dls.table.folder) == ("fname", "label", Path(mnist_small))
    assert dls.valid_ds.items == [mnist_small / f for f in df.loc[df["is_valid"], "fname"]]


def test_bool_labels_keep_their_type_in_the_vocab(mnist_small):
    files = get_image_files(mnist_small)

    def is_odd(x):
        return int(Path(x).parent.name) % 2 == 1

    dls = ImageDataLoaders.from_path_func(mnist_small, files, is_odd, valid_pct=0.2, seed=42, item_tfms=Resize(28))
    assert dls.vocab == [False, True]
    assert dls.label_of(torch.tensor(1)) == "True"
    ds = dls.train_ds
    assert all(bool(t) == is_odd(f) for f, t in zip(ds.items, ds.targets.tolist()))


def test_int_labels_sort_by_value():
    from nbtrain.data import make_vocab

    assert make_vocab([10, 2, 1, 2]) == [1, 2, 10]
    assert make_vocab(["10", "2"]) == ["10", "2"]


def test_category_map_indexes_with_a_tensor():
    vocab = CategoryMap(["cat", "dog", "person"])
    assert vocab[torch.tensor([0, 2])] == ["cat", "person"]
    assert vocab[1] == "dog" and vocab[1:] == ["dog", "person"]


# -- errors that name the step ----------------------------------------------------------------------


def test_get_y_returning_nothing_names_get_y(mnist_small):
    with pytest.raises(DataError, match=r"get_y \(no_label\) gave None for item 0 .*no label"):

        def no_label(o):
            return None

        _folder_block(get_y=no_label).datasets(mnist_small)


def test_splitter_leaving_valid_empty_is_named(mnist_small):
    with pytest.raises(
        DataError,
        match=r"splitter \(GrandparentSplitter\(train_name='train', valid_name='test'\)\) "
        r"left the validation set empty",
    ):
        _folder_block(splitter=GrandparentSplitter(valid_name="test")).dataloaders(mnist_small)


def test_label_not_in_the_vocab_is_named(mnist_small):
    with pytest.raises(DataError, match=r"CategoryBlock\(vocab=\['0', '1'\]\): label '2' .* is not in the vocabulary"):
        _folder_block(blocks=(ImageBlock, CategoryBlock(vocab=["0", "1"]))).datasets(mnist_small)


def test_a_label_only_in_valid_is_named_as_fastai_does(mnist_small):
    only_valid = lambda f: "seven" if (f.parent.name == "7" and f.parent.parent.name == "valid") else f.parent.name  # noqa: E731
    with pytest.raises(DataError, match=r"label 'seven' of validation item .* training set's labels"):
        _folder_block(get_y=only_valid).datasets(mnist_small)


def test_list_labels_with_category_block_point_to_multicategory(mnist_small):
    with pytest.raises(DataError, match=r"gave a list of labels .* CategoryBlock takes one label.*MultiCategoryBlock"):
        _folder_block(get_y=lambda f: [f.parent.name]).datasets(mnist_small)


def test_text_labels_with_multicategory_block_say_to_split_them():
    df = pd.DataFrame({"fname": ["a.png", "b.png"], "labels": ["3 7", "1"], "is_valid": [False, True]})
    with pytest.raises(DataError, match=r"gave the text '3 7'.*label_delim=' '"):
        DataBlock(
            blocks=(ImageBlock, MultiCategoryBlock),
            get_x=ColReader("fname"),
            get_y=ColReader("labels"),
            splitter=ColSplitter(),
        ).datasets(df)


def test_a_folder_source_without_get_items_says_to_add_it(mnist_small):
    with pytest.raises(DataError, match="get_items=get_image_files"):
        DataBlock(blocks=(ImageBlock, CategoryBlock), get_y=parent_label).dataloaders(mnist_small)


def test_get_x_that_is_not_a_path_is_named():
    df = pd.DataFrame({"fname": ["a.png", "b.png"], "label": ["x", "y"], "is_valid": [False, True]})
    with pytest.raises(DataError, match=r"get_x gave .* ImageBlock needs the path of an image file"):
        DataBlock(blocks=(ImageBlock, CategoryBlock), get_y=ColReader("label"), splitter=ColSplitter()).datasets(df)


def test_summary_names_the_collate_step_when_sizes_differ(mnist_copy, capsys):
    from PIL import Image

    f = get_image_files(mnist_copy / "train")[0]
    Image.open(f).resize((40, 30)).save(f)
    block = _folder_block(item_tfms=None, splitter=FuncSplitter(lambda o: o.parent.parent.name == "valid"))
    with pytest.raises(DataError, match="step 'collating items in a batch' failed.*Resize"):
        block.summary(mnist_copy, bs=300)
    out = capsys.readouterr().out
    assert "Found 300 items" in out and "Building one batch" in out
    _folder_block().summary(mnist_copy)
    assert "Collating items in a batch: (4, 3, 28, 28)" in capsys.readouterr().out


def test_blocks_and_arguments_that_cannot_be_honoured_say_so():
    with pytest.raises(DataError, match="dl_type cannot be honoured"):
        DataBlock(dl_type=object)
    with pytest.raises(DataError, match="two blocks"):
        DataBlock(blocks=(ImageBlock,))
    with pytest.raises(DataError, match="is not a block"):
        DataBlock(blocks=(ImageBlock, "category"))
    with pytest.raises(DataError, match="dataloaders needs blocks="):
        DataBlock().dataloaders([Path("a.png")] * 5)
    with pytest.raises(DataError, match=r"dataloaders\(after_item=...\) cannot be honoured"):
        _folder_block().dataloaders(".", after_item=lambda x: x)


# -- fastai's other names ---------------------------------------------------------------------------


def test_star_import_gives_fastais_names():
    ns: dict = {}
    exec("from nbtrain import *", ns)
    for name in (
        "models",
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "mobilenet_v2",
        "fbeta",
        "find_label_issues",
        "find_duplicates",
        "DataBlock",
        "ImageBlock",
        "CategoryBlock",
        "MultiCategoryBlock",
        "parent_label",
        "RegexLabeller",
        "ColReader",
        "using_attr",
        "RandomSplitter",
        "GrandparentSplitter",
        "IndexSplitter",
        "ColSplitter",
        "FuncSplitter",
        "TrainTestSplitter",
        "get_image_files",
        "ResizeMethod",
        "PILImage",
    ):
        assert name in ns, name
    assert ns["models"].resnet34.__name__ == "resnet34" and ns["models"].alexnet.__name__ == "alexnet"


def test_aug_transforms_mult_scales_rotation_lighting_and_warp():
    affine, lighting = aug_transforms(mult=2)
    assert (affine.max_rotate, affine.max_warp, lighting.max_lighting) == (20.0, 0.4, 0.4)


def test_aug_transforms_size_resizes_train_and_valid(mnist_small):
    tfms = aug_transforms(size=24, min_scale=0.75)
    x = torch.rand(4, 3, 46, 40)
    assert tfms[0](x).shape == (4, 3, 24, 24) and tfms[0].valid(x).shape == (4, 3, 24, 24)
    dls = _folder_block(batch_tfms=tfms).dataloaders(mnist_small, bs=8, num_workers=0)
    assert dls.train.one_batch()[0].shape[-2:] == (24, 24)
    assert dls.valid.one_batch()[0].shape[-2:] == (24, 24)  # as fastai, the validation set is resized too


def test_aug_transforms_batch_gives_the_whole_batch_one_draw():
    torch.manual_seed(0)
    (affine,) = aug_transforms(batch=True, max_lighting=0, p_affine=1.0)
    m = affine.matrices(8, torch.device("cpu"))
    assert torch.allclose(m, m[:1].expand_as(m))
    (affine,) = aug_transforms(max_lighting=0, p_affine=1.0)
    m = affine.matrices(8, torch.device("cpu"))
    assert not torch.allclose(m, m[:1].expand_as(m))


def test_aug_transforms_arguments_it_cannot_use_raise():
    with pytest.raises(ValueError, match="pass size= too"):
        aug_transforms(min_scale=0.5)
    with pytest.raises(ValueError, match="mode must be one of"):
        aug_transforms(mode="lanczos")
    with pytest.raises(TypeError, match="not callable"):
        aug_transforms(xtra_tfms=[3])
    extra = lambda x: x.flip(-1)  # noqa: E731
    assert aug_transforms(xtra_tfms=[extra])[-1] is extra


def test_random_resized_crop_takes_fastais_arguments_or_says_why_not():
    from PIL import Image

    img = Image.new("RGB", (64, 48))
    assert nbtrain.RandomResizedCrop(32, min_scale=0.5, max_scale=0.9)(img, train=True).size == (32, 32)
    with pytest.raises(ValueError, match="val_xtra= cannot be honoured"):
        nbtrain.RandomResizedCrop(32, val_xtra=0.2)


def test_fbeta_is_the_multilabel_f2_at_0_2():
    preds = torch.tensor([[2.0, -2.0, -2.0], [2.0, 2.0, -2.0]])
    targs = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    # Per image: F2 of (1 tp, 0 fp, 0 fn) = 1; of (1 tp, 1 fp, 1 fn) = 0.5.
    assert nbtrain.fbeta(preds, targs) == pytest.approx(0.75)


def test_show_batch_on_one_loader_and_on_both(mnist_small):
    dls = _folder_block(batch_tfms=aug_transforms()).dataloaders(mnist_small, bs=16, num_workers=0)
    fig = dls.valid.show_batch(max_n=4, nrows=1)
    assert len(fig.axes) == 4 and fig.axes[0].get_title() in dls.vocab
    fig = dls.train.show_batch(max_n=8, nrows=2, unique=True)
    titles = {ax.get_title() for ax in fig.axes}
    assert len(fig.axes) == 8 and len(titles) == 1  # one image, eight draws of the augmentation
    assert len(dls.show_batch(max_n=6).axes) >= 6


def test_datablock_rejects_a_splitter_that_returns_one_list(mnist_small):
    with pytest.raises(DataError, match="returns two lists"):
        _folder_block(splitter=lambda items: list(range(len(items)))).datasets(mnist_small)


def test_copy_of_dataset_keeps_working_after_files_move(mnist_copy):
    # The DataBlock reads the folder afresh each time: moved files get their new label.
    block = _folder_block()
    f = get_image_files(mnist_copy / "train" / "3")[0]
    shutil.move(str(f), mnist_copy / "train" / "5" / f.name)
    dls = block.dataloaders(mnist_copy, num_workers=0)
    i = dls.train_ds.items.index(mnist_copy / "train" / "5" / f.name)
    assert dls.train_ds.labels[i] == "5"
    assert np.isin(["3", "5"], dls.vocab).all()


def test_random_splitter_and_from_name_func_make_the_same_split(mnist_small):
    files = get_image_files(mnist_small)
    dls = ImageDataLoaders.from_path_func(
        mnist_small, files, parent_label, valid_pct=0.2, seed=42, item_tfms=Resize(28)
    )
    _, valid = RandomSplitter(valid_pct=0.2, seed=42)(files)
    assert sorted(dls.valid_ds.items) == sorted(files[i] for i in valid)


# -- the cleaner on DataBlock loaders ----------------------------------------------------------------


def _untrained_learner(dls):
    from testkit.tiny_models import small_cnn

    return nbtrain.Learner(dls, small_cnn(dls.c))


def test_cleaner_apply_moves_files_of_a_folder_datablock(mnist_copy):
    dls = _folder_block().dataloaders(mnist_copy, bs=32, num_workers=0)
    learn = _untrained_learner(dls)
    cleaner = nbtrain.ImageClassifierCleaner(learn, max_n=4)
    doomed, moving = cleaner.fns[0], cleaner.fns[1]
    new_cat = next(c for c in dls.vocab if c != moving.parent.name)
    cleaner.set_choice(doomed, "<Delete>")
    cleaner.set_choice(moving, new_cat)
    cleaner.apply()
    dest = moving.parent.parent / new_cat / moving.name
    assert not doomed.exists() and not moving.exists() and dest.exists()
    items = learn.dls.train_ds.items + learn.dls.valid_ds.items
    assert dest in items and doomed not in items


def test_cleaner_apply_rewrites_the_table_of_a_dataframe_datablock(mnist_copy):
    df = pd.read_csv(mnist_copy / "labels.csv", dtype={"label": str})
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock),
        get_x=lambda r: mnist_copy / r["fname"],
        get_y=lambda r: r["label"],
        splitter=ColSplitter(),
        item_tfms=Resize(28),
    )
    dls = block.dataloaders(df, bs=32, num_workers=0)
    assert (dls.table.fn_col, dls.table.label_col) == ("fname", "label")  # found by comparing the values
    learn = _untrained_learner(dls)
    cleaner = nbtrain.ImageClassifierCleaner(learn, max_n=4)
    relabelled = cleaner.fns[0]
    new_cat = next(c for c in dls.vocab if c != relabelled.parent.name)
    cleaner.set_choice(relabelled, new_cat)
    new_df = cleaner.apply()
    rel = str(relabelled.relative_to(mnist_copy))
    assert new_df.loc[new_df["fname"] == rel, "label"].tolist() == [new_cat]
    assert relabelled.exists()  # the file stays where it is; only the table changes
