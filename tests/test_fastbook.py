"""The vision cells of the fastai book (fastbook) chapters 1, 2, 5 and 6, as written, on nbtrain.

Each test is one chapter's cells in order. Only what cannot run here is swapped, and a `# swap:`
comment names each swap: the downloads (`untar_data`, the image search, the book's
`images/grizzly.jpg`) become offline stand-ins written as real image files in the same layouts
(`testkit/fastbook_data.py`: real MNIST digits named like the pets, the bears and PASCAL's files);
image sizes, epochs and `lr_find`'s iterations are made small so the file runs in a few minutes on
two CPU cores; and the book's ImageNet-pretrained ResNets, whose weights are not on this machine,
are built with `pretrained=False` (the ResNet of the book, from scratch), or replaced by the
pretrained `mobilenet_v2` that ships offline.

Cells that drive fastai's internals, or train what nbtrain does not (regression), are run up to
the line nbtrain refuses, and the test holds that the error says what is unsupported and what to do.

`from fastai.vision.all import *` also gives torch, numpy, pandas, matplotlib, `re`, `partial` and
`shutil`; `from nbtrain import *` gives nbtrain's names only (its `Path` among them, with fastai's
`ls()`), so those are imported here.
"""

from __future__ import annotations

import re
import shutil
from functools import partial
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from torch import tensor

from nbtrain import *  # noqa: F403  (the book's `from fastai.vision.all import *`)
from testkit.fastbook_data import make_bears, make_book_images, make_pascal, make_pets

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """The book's notebooks write `export.pkl` and read `images/...` relative to the working folder."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_chapter1_is_cat_from_name_func(in_tmp):
    path = make_pets(in_tmp) / "images"  # swap: untar_data(URLs.PETS)/'images'

    def is_cat(x):
        return x[0].isupper()

    dls = ImageDataLoaders.from_name_func(
        path, get_image_files(path), valid_pct=0.2, seed=42, label_func=is_cat, item_tfms=Resize(32)
    )  # swap: Resize(224)

    learn = vision_learner(dls, resnet34, metrics=error_rate, pretrained=False)  # swap: pretrained=False
    learn.fine_tune(1)

    assert dls.vocab == [False, True]
    # swap: image_cat() and the upload widget give one of the cat images
    img = PILImage.create(path / "Abyssinian_1.png")
    img.to_thumb(192)
    uploader = SimpleNamespace(data=[str(path / "Bengal_2.png")])
    img = PILImage.create(uploader.data[0])
    is_cat, _, probs = learn.predict(img)
    print(f"Is this a cat?: {is_cat}.")
    print(f"Probability it's a cat: {probs[1].item():.6f}")

    assert is_cat in (False, True) and probs.shape == (2,)
    assert abs(float(probs.sum()) - 1) < 1e-5


def test_chapter2_bears_datablock_and_cleaner(in_tmp):
    bear_types = "grizzly", "black", "teddy"
    path = make_bears(in_tmp)  # swap: the image-search download loop into Path('bears')

    fns = get_image_files(path)
    failed = verify_images(fns)
    failed.map(Path.unlink)
    assert len(fns) == 90 and len(failed) == 0

    bears = DataBlock(
        blocks=(ImageBlock, CategoryBlock),
        get_items=get_image_files,
        splitter=RandomSplitter(valid_pct=0.2, seed=42),
        get_y=parent_label,
        item_tfms=Resize(32),
    )  # swap: Resize(128)
    dls = bears.dataloaders(path)
    dls.valid.show_batch(max_n=4, nrows=1)

    bears = bears.new(item_tfms=Resize(32, ResizeMethod.Squish))
    dls = bears.dataloaders(path)
    dls.valid.show_batch(max_n=4, nrows=1)

    bears = bears.new(item_tfms=Resize(32, ResizeMethod.Pad, pad_mode="zeros"))
    dls = bears.dataloaders(path)
    dls.valid.show_batch(max_n=4, nrows=1)

    bears = bears.new(item_tfms=RandomResizedCrop(32, min_scale=0.3))
    dls = bears.dataloaders(path)
    dls.train.show_batch(max_n=4, nrows=1, unique=True)

    bears = bears.new(item_tfms=Resize(32), batch_tfms=aug_transforms(mult=2))
    dls = bears.dataloaders(path)
    dls.train.show_batch(max_n=8, nrows=2, unique=True)

    bears = bears.new(
        item_tfms=RandomResizedCrop(32, min_scale=0.5),  # swap: RandomResizedCrop(224, ...)
        batch_tfms=aug_transforms(),
    )
    dls = bears.dataloaders(path)

    learn = vision_learner(dls, mobilenet_v2, metrics=error_rate)  # swap: resnet18 -> pretrained mobilenet_v2
    learn.fine_tune(1)  # swap: fine_tune(4)

    interp = ClassificationInterpretation.from_learner(learn)
    interp.plot_confusion_matrix()
    interp.plot_top_losses(5, nrows=1)
    assert sorted(dls.vocab) == sorted(bear_types)
    assert plt.gcf().axes[0].get_subplotspec().get_geometry()[:2] == (1, 5)  # one row of five

    cleaner = ImageClassifierCleaner(learn)
    cleaner
    # swap: a person's clicks in the widget: delete the first image shown, move the second to another class
    doomed, moved = cleaner.fns[0], cleaner.fns[1]
    new_cat = next(c for c in dls.vocab if c != moved.parent.name)
    cleaner.set_choice(doomed, "<Delete>")
    cleaner.set_choice(moved, new_cat)

    for idx in cleaner.delete():
        cleaner.fns[idx].unlink()
    for idx, cat in cleaner.change():
        shutil.move(str(cleaner.fns[idx]), path / cat)

    assert not doomed.exists() and not moved.exists() and (path / new_cat / moved.name).exists()
    assert len(get_image_files(path)) == 89

    make_book_images(in_tmp, path)  # swap: the book's images/grizzly.jpg
    learn.export()
    path = Path()
    path.ls(file_exts=".pkl")
    learn_inf = load_learner(path / "export.pkl")
    learn_inf.predict("images/grizzly.jpg")
    learn_inf.dls.vocab
    assert path.ls(file_exts=".pkl") == [Path("export.pkl")]
    assert learn_inf.predict("images/grizzly.jpg")[0] in learn_inf.dls.vocab and learn_inf.dls.vocab == learn.dls.vocab


@pytest.mark.slow
def test_chapter2_search_download_resize_verify_cells(in_tmp):
    from testkit import image_server  # a local HTTP server (127.0.0.1) serving the offline bears as real image files

    bears = make_bears(in_tmp / "_web")
    web = {f"{d.name}/{f.name}": f.read_bytes() for d in bears.iterdir() for f in sorted(d.iterdir())}
    web["grizzly/error-page.jpg"] = b"<!DOCTYPE html><html><body>Forbidden</body></html>"
    server, base = image_server.serve(image_server.Site(images=web))

    def search_images_ddg(term, max_images=200):  # swap: the web search becomes the local server's URL list
        return search_images(
            term,
            max_images,
            provider=lambda t, n: [f"{base}/img/{name}" for name in web if name.startswith(t.split()[0] + "/")],
        )

    try:
        bear_types = "grizzly", "black", "teddy"
        path = Path("bears")
        if not path.exists():
            path.mkdir()
            for o in bear_types:
                dest = path / o
                dest.mkdir(exist_ok=True)
                results = search_images_ddg(f"{o} bear")
                download_images(dest, urls=results)
                resize_images(path / o, max_size=400, dest=path / o)  # the 2022 course's cell
    finally:
        server.shutdown()
    fns = get_image_files(path)
    failed = verify_images(fns)
    failed.map(Path.unlink)
    assert len(fns) == 90 and len(failed) == 0  # the error page was never saved
    assert sorted(p.name for p in path.iterdir()) == sorted(bear_types)


def test_chapter5_pets_datablock(in_tmp):
    path = make_pets(in_tmp)  # swap: untar_data(URLs.PETS)
    Path.BASE_PATH = path
    path.ls()
    (path / "images").ls()
    fname = (path / "images").ls()[0]
    re.findall(r"(.+)_\d+.png$", fname.name)  # swap: .jpg -> .png in every pattern
    assert re.findall(r"(.+)_\d+.png$", fname.name)

    pets = DataBlock(
        blocks=(ImageBlock, CategoryBlock),
        get_items=get_image_files,
        splitter=RandomSplitter(seed=42),
        get_y=using_attr(RegexLabeller(r"(.+)_\d+.png$"), "name"),
        item_tfms=Resize(46),  # swap: Resize(460)
        batch_tfms=aug_transforms(size=32, min_scale=0.75),
    )  # swap: size=224
    dls = pets.dataloaders(path / "images")

    make_book_images(in_tmp, make_bears(in_tmp / "bear_photos"))  # swap: the book's images/grizzly.jpg
    dblock1 = DataBlock(blocks=(ImageBlock(), CategoryBlock()), get_y=parent_label, item_tfms=Resize(460))
    # The presizing demo's loader holds one image, so one class: nbtrain's loaders are a classifier's.
    with pytest.raises(DataError, match="Only one class .*a classifier needs at least two"):
        dls1 = dblock1.dataloaders([(Path.cwd() / "images" / "grizzly.jpg")] * 100, bs=8)
    # The rest of that cell drives fastai's transform internals, which nbtrain does not copy:
    #   dls1.train.get_idxs = lambda: Inf.ones; x,y = dls1.valid.one_batch(); _,axs = subplots(1, 2)
    #   x1 = TensorImage(x.clone()).affine_coord(sz=224).rotate(draw=30, p=1.).zoom(draw=1.2, p=1.).warp(...)
    #   tfms = setup_aug_tfms([Rotate(...), Zoom(...), Warp(...)]); x = Pipeline(tfms)(x)
    # Its entry points say so and what to do instead (here on a batch of the pets' loaders).
    x, y = dls.valid.one_batch()
    for line in (lambda: TensorImage(x.clone()), lambda: setup_aug_tfms([]), lambda: Pipeline([])):
        with pytest.raises(
            NotImplementedError,
            match=r"is a fastai internal that nbtrain does not have: .*"
            r"show_batch\(unique=True\).*aug_transforms",
        ):
            line()

    dls.show_batch(nrows=1, ncols=3)

    pets1 = DataBlock(
        blocks=(ImageBlock, CategoryBlock),
        get_items=get_image_files,
        splitter=RandomSplitter(seed=42),
        get_y=using_attr(RegexLabeller(r"(.+)_\d+.png$"), "name"),
    )
    # The book shows this cell failing: the images have different sizes and no Resize.
    with pytest.raises(DataError, match="collating items in a batch"):
        pets1.summary(path / "images")

    learn = vision_learner(dls, mobilenet_v2, metrics=error_rate)  # swap: resnet34 -> pretrained mobilenet_v2
    learn.fine_tune(1)  # swap: fine_tune(2)

    x, y = dls.one_batch()
    y
    preds, _ = learn.get_preds(dl=[(x, y)])
    preds[0]
    len(preds[0]), preds[0].sum()
    assert x.shape[1:] == (3, 32, 32) and y.dtype == torch.long and preds.shape == (len(x), 4)
    assert len(preds[0]) == 4 and abs(float(preds[0].sum()) - 1) < 1e-4

    interp = ClassificationInterpretation.from_learner(learn)
    interp.plot_confusion_matrix(figsize=(12, 12), dpi=60)
    interp.most_confused(min_val=5)

    learn = vision_learner(dls, mobilenet_v2, metrics=error_rate)  # swap: resnet34 -> mobilenet_v2
    learn.fine_tune(1, base_lr=0.1)

    learn = vision_learner(dls, mobilenet_v2, metrics=error_rate)  # swap: resnet34 -> mobilenet_v2
    lr_min, lr_steep = learn.lr_find(suggest_funcs=(minimum, steep), num_it=20)  # swap: num_it for speed
    print(f"Minimum/10: {lr_min:.2e}, steepest point: {lr_steep:.2e}")
    suggested = learn.lr_find(suggest_funcs=(valley, slide), num_it=20, show_plot=False)  # swap: num_it
    assert suggested._fields == ("valley", "slide") and 0 < lr_min and 0 < lr_steep and 0 < suggested.slide

    learn = vision_learner(dls, mobilenet_v2, metrics=error_rate)  # swap: resnet34 -> mobilenet_v2
    learn.fine_tune(1, base_lr=3e-3)  # swap: fine_tune(2, ...)

    learn = vision_learner(dls, mobilenet_v2, metrics=error_rate)  # swap: resnet34 -> mobilenet_v2
    learn.fit_one_cycle(1, 3e-3)  # swap: 3 epochs
    learn.unfreeze()
    lr = learn.lr_find(num_it=20)  # swap: num_it for speed
    learn.fit_one_cycle(1, lr_max=1e-5)  # swap: 6 epochs
    assert lr._fields == ("valley",) and lr.valley > 0

    learn = vision_learner(dls, mobilenet_v2, metrics=error_rate)  # swap: resnet34 -> mobilenet_v2
    learn.fit_one_cycle(1, 3e-3)  # swap: 3 epochs
    learn.unfreeze()
    learn.fit_one_cycle(1, lr_max=slice(1e-6, 1e-4))  # swap: 12 epochs
    learn.recorder.plot_loss()

    # (the book's `from fastai.callback.fp16 import *`: nbtrain's Learner has to_fp16 itself)
    learn = vision_learner(dls, resnet50, metrics=error_rate, pretrained=False).to_fp16()  # swap: pretrained=False
    learn.fine_tune(1, freeze_epochs=1)  # swap: fine_tune(6, freeze_epochs=3)
    # float16 needs a CUDA GPU: elsewhere to_fp16 warns and the learner trains in float32.
    assert learn._amp_dtype() is (torch.float16 if learn.device.type == "cuda" else None)
    assert len(learn.recorder.values) == 2


@pytest.mark.slow
def test_chapter6_pascal_multilabel_from_a_dataframe(in_tmp):
    path = make_pascal(in_tmp)  # swap: untar_data(URLs.PASCAL_2007)
    df = pd.read_csv(path / "train.csv")
    df.head()
    df.iloc[:, 0]
    df.iloc[0, :]
    df["fname"]

    dblock = DataBlock()
    dsets = dblock.datasets(df)
    len(dsets.train), len(dsets.valid)
    x, y = dsets.train[0]
    x, y
    x["fname"]
    assert (len(dsets.train), len(dsets.valid)) == (160, 40)

    dblock = DataBlock(get_x=lambda r: r["fname"], get_y=lambda r: r["labels"])
    dsets = dblock.datasets(df)
    dsets.train[0]

    def get_x(r):
        return r["fname"]

    def get_y(r):
        return r["labels"]

    dblock = DataBlock(get_x=get_x, get_y=get_y)
    dsets = dblock.datasets(df)
    dsets.train[0]

    def get_x(r):
        return path / "train" / r["fname"]

    def get_y(r):
        return r["labels"].split(" ")

    dblock = DataBlock(get_x=get_x, get_y=get_y)
    dsets = dblock.datasets(df)
    dsets.train[0]

    dblock = DataBlock(blocks=(ImageBlock, MultiCategoryBlock), get_x=get_x, get_y=get_y)
    dsets = dblock.datasets(df)
    dsets.train[0]

    idxs = torch.where(dsets.train[0][1] == 1.0)[0]
    dsets.train.vocab[idxs]
    assert set(dsets.train.vocab[idxs]) == set(get_y(df.iloc[dsets.train.idx[0]]))

    def splitter(df):
        train = df.index[~df["is_valid"]].tolist()
        valid = df.index[df["is_valid"]].tolist()
        return train, valid

    dblock = DataBlock(blocks=(ImageBlock, MultiCategoryBlock), splitter=splitter, get_x=get_x, get_y=get_y)

    dsets = dblock.datasets(df)
    dsets.train[0]

    dblock = DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock),
        splitter=splitter,
        get_x=get_x,
        get_y=get_y,
        item_tfms=RandomResizedCrop(32, min_scale=0.35),
    )  # swap: 128
    dls = dblock.dataloaders(df)
    dls.show_batch(nrows=1, ncols=3)
    assert dls.multi_label and dls.table is not None and dls.table.label_delim == " "

    # swap: resnet50 -> pretrained mobilenet_v2
    learn = vision_learner(dls, mobilenet_v2, metrics=partial(accuracy_multi, thresh=0.2))
    learn.fine_tune(1, base_lr=3e-3, freeze_epochs=1)  # swap: fine_tune(3, ..., freeze_epochs=4)

    learn.metrics = partial(accuracy_multi, thresh=0.1)
    learn.validate()
    learn.metrics = partial(accuracy_multi, thresh=0.99)
    learn.validate()

    preds, targs = learn.get_preds()
    accuracy_multi(preds, targs, thresh=0.9, sigmoid=False)
    xs = torch.linspace(0.05, 0.95, 29)
    accs = [accuracy_multi(preds, targs, thresh=i, sigmoid=False) for i in xs]
    plt.plot(xs, accs)
    assert len(accs) == 29 and all(0 <= a <= 1 for a in accs)

    # The cleaner's apply() rewrites this table (not the files) for multi-label data from a DataFrame.
    cleaner = ImageClassifierCleaner(learn)
    victim = cleaner.fns[0]
    cleaner.set_choice(victim, "<Delete>")
    new_df = cleaner.apply()
    assert len(new_df) == len(df) - 1 and victim.name not in set(new_df["fname"]) and victim.exists()


def test_chapter1_segmentation_is_refused_with_advice(in_tmp):
    path = in_tmp  # swap: untar_data(URLs.CAMVID_TINY), whose images/, labels/ and codes.txt are not offline
    with pytest.raises(
        DataError,
        match=r"MaskBlock \(a class per pixel \(segmentation\).*\) is not supported: "
        r"nbtrain trains image classifiers\. Use fastai for segmentation",
    ):
        dls = SegmentationDataLoaders.from_label_func(
            path,
            bs=8,
            fnames=get_image_files(path),
            label_func=lambda o: path / "labels" / f"{o.stem}_P{o.suffix}",
            codes=np.array(["Animal", "Archway"]),  # swap: np.loadtxt(path/'codes.txt', dtype=str)
        )
    with pytest.raises(DataError, match="segmentation"):
        learn = unet_learner(None, resnet34)
    with pytest.raises(DataError, match="MaskBlock .* is not supported"):
        DataBlock(blocks=(ImageBlock, MaskBlock))


def test_chapter6_regression_is_refused_with_advice(in_tmp):
    # swap: the BIWI download and the cells that read its files (img2pose, cal, get_ctr's data)
    def img2pose(x):
        return Path(f"{str(x)[:-7]}pose.txt")

    def get_ctr(f):
        ctr = np.genfromtxt(img2pose(f), skip_header=3)
        c1 = ctr[0] * cal[0][0] / ctr[2] + cal[0][2]
        c2 = ctr[1] * cal[1][1] / ctr[2] + cal[1][2]
        return tensor([c1, c2])

    with pytest.raises(
        DataError,
        match=r"PointBlock \(points in the image.*\) is not supported: nbtrain trains "
        r"image classifiers\. Use fastai for point regression, or .*CategoryBlock",
    ):
        biwi = DataBlock(
            blocks=(ImageBlock, PointBlock),
            get_items=get_image_files,
            get_y=get_ctr,
            splitter=FuncSplitter(lambda o: o.parent.name == "13"),
            batch_tfms=aug_transforms(size=(240, 320)),
        )
    with pytest.raises(DataError, match=r"RegressionBlock \(a number per image\) is not supported.*CategoryBlock"):
        DataBlock(blocks=(ImageBlock, RegressionBlock))
    with pytest.raises(DataError, match="PointBlock .* is not supported"):
        PointBlock()


def test_course_v1_names_and_calls(mnist_small):
    """The older course notes' lines: `create_cnn(data, models.resnet34, metrics=error_rate)`,
    `interp.plot_confusion_matrix(figsize=(12,12), dpi=60)`, `fbeta`."""
    data = ImageDataLoaders.from_folder(mnist_small, item_tfms=Resize(28), bs=64)
    learn = create_cnn(
        data, models.resnet34, metrics=[error_rate, accuracy], pretrained=False
    )  # swap: pretrained=False
    # swap: no training here; the notes' fit_one_cycle is the learner's own, tested elsewhere
    interp = ClassificationInterpretation.from_learner(learn)
    fig = interp.plot_confusion_matrix(figsize=(12, 12), dpi=60)
    assert fig.get_dpi() == 60 and tuple(fig.get_size_inches()) == (12, 12)
    f_score = partial(fbeta, thresh=0.2)
    assert callable(f_score) and find_label_issues and find_duplicates
