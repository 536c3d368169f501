# ruff: noqa: F403, F405, E701, E702, E703, E231, B018, F841
"""The 2019 course's (fastai v1) lessons 1, 2 and 3, as written, on nbtrain: fastai's course-v3,
nbs/dl1/lesson1-pets.ipynb (pets and the MNIST sample), lesson2-download.ipynb (from the folder of
downloaded files on) and lesson3-planet.ipynb (its test set included).

Each test is one notebook's cells in order. Only what cannot run here is swapped, and a `# swap:`
comment names each swap: the downloads become offline stand-ins written as real image files in the
same layouts (`testkit/fastbook_data.py`, real MNIST digits named like the pets, the bears and
planet's files); image sizes, batch sizes and epochs are made small so the file runs in a few
minutes on two CPU cores; and the ResNets, whose ImageNet weights are not on this machine, are
replaced by the pretrained `mobilenet_v2` that ships offline. `from nbtrain import *` is the
course's `from fastai.vision import *` (it also gives np, pd, partial, Path, torch and plt).
"""

from __future__ import annotations

import os

import pytest

from nbtrain import *  # noqa: F403  (the course's `from fastai.vision import *`)
from testkit.fastbook_data import (
    make_course_bears,
    make_course_mnist_sample,
    make_course_pets,
    make_course_planet,
    make_course_planet_test,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """The notebooks write `data/bears`, `models/` and `export.pkl` relative to the working folder;
    `defaults.device = ...` sets NBTRAIN_DEVICE, put back afterwards, as are the figures closed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NBTRAIN_DEVICE", raising=False)
    yield tmp_path
    plt.close("all")


@pytest.mark.slow
def test_lesson1_pets(in_tmp):
    bs = 64
    bs = 16  # swap: a batch for the tiny stand-in
    help(untar_data)
    path = make_course_pets(in_tmp)
    path  # swap: untar_data(URLs.PETS)
    path.ls()
    path_anno = path / "annotations"
    path_img = path / "images"
    fnames = get_image_files(path_img)
    fnames[:5]
    np.random.seed(2)
    pat = r"/([^/]+)_\d+.jpg$"
    data = ImageDataBunch.from_name_re(
        path_img,
        fnames,
        pat,
        ds_tfms=get_transforms(),
        size=32,
        bs=bs,  # swap: size=224
    ).normalize(imagenet_stats)
    data.show_batch(rows=3, figsize=(7, 6))
    print(data.classes)
    len(data.classes), data.c
    assert data.classes == ["Abyssinian", "Bengal", "beagle", "pug"] and data.c == 4 and path_anno.name
    learn = cnn_learner(data, models.mobilenet_v2, metrics=error_rate)  # swap: models.resnet34
    learn.model
    learn.fit_one_cycle(1)  # swap: 4 epochs
    learn.save("stage-1")
    interp = ClassificationInterpretation.from_learner(learn)

    losses, idxs = interp.top_losses()

    assert len(data.valid_ds) == len(losses) == len(idxs)
    interp.plot_top_losses(9, figsize=(15, 11))
    doc(interp.plot_top_losses)
    interp.plot_confusion_matrix(figsize=(12, 12), dpi=60)
    interp.most_confused(min_val=2)
    learn.unfreeze()
    learn.fit_one_cycle(1)
    learn.load("stage-1")
    learn.lr_find()
    learn.recorder.plot()
    learn.unfreeze()
    learn.fit_one_cycle(1, max_lr=slice(1e-6, 1e-4))  # swap: 2 epochs
    assert 5e-5 < max(learn.recorder.lrs[-len(learn.dls.train) :]) <= 1e-4 * 1.0001  # the head's peak
    data = ImageDataBunch.from_name_re(path_img, fnames, pat, ds_tfms=get_transforms(), size=40, bs=bs // 2).normalize(
        imagenet_stats
    )  # swap: size=299
    learn = cnn_learner(data, models.mobilenet_v2, metrics=error_rate)  # swap: models.resnet50
    learn.lr_find()
    learn.recorder.plot()
    learn.fit_one_cycle(1)  # swap: 8 epochs
    learn.save("stage-1-50")
    learn.unfreeze()
    learn.fit_one_cycle(1, max_lr=slice(1e-6, 1e-4))  # swap: 3 epochs
    learn.load("stage-1-50")
    interp = ClassificationInterpretation.from_learner(learn)
    interp.most_confused(min_val=2)
    assert data.train_ds[0][0].shape == (3, 40, 40)


@pytest.mark.slow
def test_lesson1_mnist_sample(in_tmp):
    path = make_course_mnist_sample(in_tmp)
    path  # swap: untar_data(URLs.MNIST_SAMPLE)
    tfms = get_transforms(do_flip=False)
    data = ImageDataBunch.from_folder(path, ds_tfms=tfms, size=26)
    data.show_batch(rows=3, figsize=(5, 5))
    learn = cnn_learner(data, models.mobilenet_v2, metrics=accuracy)  # swap: models.resnet18
    learn.fit(1)  # swap: 2 epochs
    assert data.classes == ["3", "7"] and len(data.valid_ds) == 20
    df = pd.read_csv(path / "labels.csv")
    df.head()
    data = ImageDataBunch.from_csv(path, ds_tfms=tfms, size=28)
    data.show_batch(rows=3, figsize=(5, 5))
    data.classes
    assert data.classes == ["0", "1"]
    data = ImageDataBunch.from_df(path, df, ds_tfms=tfms, size=24)
    data.classes
    assert data.classes == ["0", "1"]
    fn_paths = [path / name for name in df["name"]]
    fn_paths[:2]
    pat = r"/(\d)/\d+\.png$"
    data = ImageDataBunch.from_name_re(path, fn_paths, pat=pat, ds_tfms=tfms, size=24)
    data.classes
    assert data.classes == ["3", "7"]
    data = ImageDataBunch.from_name_func(
        path, fn_paths, ds_tfms=tfms, size=24, label_func=lambda x: "3" if "/3/" in str(x) else "7"
    )
    data.classes
    assert data.classes == ["3", "7"]
    labels = [("3" if "/3/" in str(x) else "7") for x in fn_paths]
    labels[:5]
    data = ImageDataBunch.from_lists(path, fn_paths, labels=labels, ds_tfms=tfms, size=24)
    data.classes
    assert data.classes == ["3", "7"] and len(data.train_ds) + len(data.valid_ds) == len(fn_paths)


def _files(path):
    return sorted(p.relative_to(path) for p in get_image_files(path))


@pytest.mark.slow
def test_lesson2_download_clean_and_train(in_tmp, capsys):
    make_course_bears(in_tmp)  # swap: the image downloads into data/bears (one of them broken, one too large)
    path = Path("data/bears")
    classes = ["teddys", "grizzly", "black"]
    for c in classes:
        print(c)
        verify_images(path / c, delete=True, max_size=500)
    assert "99999998.jpg: cannot be opened, deleted" in capsys.readouterr().out
    assert not (path / "black" / "99999998.jpg").exists()
    assert max(PILImage.create(path / "grizzly" / "99999999.jpg").size) == 500

    np.random.seed(42)
    data = ImageDataBunch.from_folder(
        path, train=".", valid_pct=0.2, ds_tfms=get_transforms(), size=32, num_workers=4
    ).normalize(imagenet_stats)  # swap: size=224
    data.classes
    data.show_batch(rows=3, figsize=(7, 8))
    data.classes, data.c, len(data.train_ds), len(data.valid_ds)
    assert data.classes == ["black", "grizzly", "teddys"] and (len(data.train_ds), len(data.valid_ds)) == (49, 12)
    learn = cnn_learner(data, models.mobilenet_v2, metrics=error_rate)  # swap: models.resnet34
    learn.fit_one_cycle(1)  # swap: 4 epochs
    learn.save("stage-1")
    learn.unfreeze()
    learn.lr_find()
    learn.recorder.plot()
    learn.fit_one_cycle(1, max_lr=slice(3e-5, 3e-4))  # swap: 2 epochs
    learn.save("stage-2")
    learn.load("stage-2")
    interp = ClassificationInterpretation.from_learner(learn)
    interp.plot_confusion_matrix()

    # (the course's `from fastai.widgets import *`: nbtrain's star import has them)
    db = (
        ImageList.from_folder(path)
        .split_none()
        .label_from_folder()
        .transform(get_transforms(), size=32)  # swap: size=224
        .databunch()
    )
    learn_cln = cnn_learner(db, models.mobilenet_v2, metrics=error_rate)  # swap: models.resnet34

    learn_cln.load("stage-2")
    ds, idxs = DatasetFormatter().from_toplosses(learn_cln)
    cleaner = ImageCleaner(ds, idxs, path)
    # swap: a person's clicks in the widget: delete the worst image, call the second a grizzly, apply
    before = _files(path)
    worst, second = cleaner.fns[0], next(p for p in cleaner.fns[1:] if p.parent.name != "grizzly")
    cleaner.set_choice(worst, "<Delete>")
    cleaner.set_choice(second, "grizzly")
    cleaner.apply()
    cleaned = pd.read_csv(path / "cleaned.csv")
    assert _files(path) == before  # as v1's: the files are left alone
    assert len(cleaned) == len(before) - 1 and str(worst.relative_to(path)) not in set(cleaned["name"])
    assert cleaned.set_index("name").loc[str(second.relative_to(path)), "label"] == "grizzly"

    # (the course's cell for a second pass, on what the first one wrote)
    db = (
        ImageList.from_csv(path, "cleaned.csv", folder=".")
        .split_none()
        .label_from_df()
        .transform(get_transforms(), size=32)  # swap: size=224
        .databunch()
    )
    learn_cln = cnn_learner(db, models.mobilenet_v2, metrics=error_rate)  # swap: models.resnet34
    learn_cln.load("stage-2")
    ds, idxs = DatasetFormatter().from_similars(learn_cln)
    cleaner = ImageCleaner(ds, idxs, path, duplicates=True)
    assert cleaner.dd_view.value == "duplicates" and len(idxs) % 2 == 0 and len(cleaner.fns) > 0
    assert pd.read_csv(path / "cleaned.csv").equals(cleaned)

    np.random.seed(42)
    data = ImageDataBunch.from_csv(
        path, folder=".", valid_pct=0.2, csv_labels="cleaned.csv", ds_tfms=get_transforms(), size=32, num_workers=4
    ).normalize(imagenet_stats)  # swap: size=224
    assert len(data.train_ds) + len(data.valid_ds) == len(cleaned) and worst not in data.train_ds.items
    learn = cnn_learner(data, models.mobilenet_v2, metrics=error_rate)  # swap: models.resnet34
    learn.fit_one_cycle(1)  # swap: (the notebook trains again on the cleaned data)
    learn.export()
    defaults.device = torch.device("cpu")
    img = open_image(sorted((path / "black").iterdir())[0])  # swap: path/'black'/'00000021.jpg'
    img
    learn = load_learner(path)
    pred_class, pred_idx, outputs = learn.predict(img)
    pred_class.obj
    assert pred_class.obj == pred_class and isinstance(pred_class, str)
    assert pred_class in data.classes and outputs.shape == (3,) and defaults.device == torch.device("cpu")

    learn = cnn_learner(data, models.mobilenet_v2, metrics=error_rate)  # swap: models.resnet34
    learn.fit_one_cycle(1, max_lr=0.5)
    learn = cnn_learner(data, models.mobilenet_v2, metrics=error_rate)  # swap: models.resnet34
    learn.fit_one_cycle(1, max_lr=1e-5)  # swap: 5 epochs
    learn.recorder.plot_losses()
    learn = cnn_learner(data, models.mobilenet_v2, metrics=error_rate, pretrained=False)  # swap: models.resnet34
    learn.fit_one_cycle(1)
    np.random.seed(42)
    data = ImageDataBunch.from_folder(
        path,
        train=".",
        valid_pct=0.9,
        bs=32,
        ds_tfms=get_transforms(do_flip=False, max_rotate=0, max_zoom=1, max_lighting=0, max_warp=0),
        size=32,
        num_workers=4,
    ).normalize(imagenet_stats)  # swap: size=224
    learn = cnn_learner(data, models.mobilenet_v2, metrics=error_rate, ps=0, wd=0)  # swap: models.resnet50
    learn.unfreeze()
    learn.fit_one_cycle(1, slice(1e-6, 1e-4))  # swap: 40 epochs
    assert data.train_ds.items and learn.wd == 0
    assert [m.p for m in learn.model.head.modules() if isinstance(m, torch.nn.Dropout)] == [0, 0]


@pytest.mark.slow
def test_lesson3_planet(in_tmp):
    path = make_course_planet(in_tmp)  # swap: Config.data_path()/'planet' and the Kaggle download
    path.mkdir(parents=True, exist_ok=True)
    path
    df = pd.read_csv(path / "train_v2.csv")
    df.head()
    tfms = get_transforms(flip_vert=True, max_lighting=0.1, max_zoom=1.05, max_warp=0.0)
    np.random.seed(42)
    src = (
        ImageList.from_csv(path, "train_v2.csv", folder="train-jpg", suffix=".jpg")
        .split_by_rand_pct(0.2)
        .label_from_df(label_delim=" ")
    )
    data = (
        src.transform(tfms, size=32)  # swap: size=128
        .databunch(bs=16)
        .normalize(imagenet_stats)
    )  # swap: bs=16 for the tiny stand-in
    data.show_batch(rows=3, figsize=(12, 9))
    assert data.multi_label and data.classes == [str(d) for d in range(10)] and len(data.valid_ds) == 24
    arch = models.mobilenet_v2  # swap: models.resnet50
    acc_02 = partial(accuracy_thresh, thresh=0.2)
    f_score = partial(fbeta, thresh=0.2)
    learn = cnn_learner(data, arch, metrics=[acc_02, f_score])
    learn.lr_find()
    learn.recorder.plot()
    lr = 0.01
    learn.fit_one_cycle(1, slice(lr))  # swap: 5 epochs
    learn.save("stage-1-rn50")
    learn.unfreeze()
    learn.lr_find()
    learn.recorder.plot()
    learn.fit_one_cycle(1, slice(1e-5, lr / 5))  # swap: 5 epochs
    learn.save("stage-2-rn50")
    data = (
        src.transform(tfms, size=48)  # swap: size=256
        .databunch(bs=16)
        .normalize(imagenet_stats)
    )

    learn.data = data
    data.train_ds[0][0].shape
    assert data.train_ds[0][0].shape == (3, 48, 48) and learn.dls is data
    learn.freeze()
    learn.lr_find()
    learn.recorder.plot()
    lr = 1e-2 / 2
    learn.fit_one_cycle(1, slice(lr))  # swap: 5 epochs
    learn.save("stage-1-256-rn50")
    learn.unfreeze()
    learn.fit_one_cycle(1, slice(1e-5, lr / 5))  # swap: 5 epochs
    learn.recorder.plot_losses()
    learn.save("stage-2-256-rn50")
    learn.export()
    assert (path / "export.pkl").exists() and learn.recorder.metric_names[-2:] == ["accuracy_thresh", "fbeta"]
    classes = learn.data.classes

    make_course_planet_test(path)  # swap: the Kaggle download of test-jpg.tar.7z and test-jpg-additional.tar.7z
    test = ImageList.from_folder(path / "test-jpg").add(ImageList.from_folder(path / "test-jpg-additional"))
    len(test)
    learn = load_learner(path, test=test)
    preds, _ = learn.get_preds(ds_type=DatasetType.Test)
    thresh = 0.2
    labelled_preds = [" ".join([learn.data.classes[i] for i, p in enumerate(pred) if p > thresh]) for pred in preds]
    labelled_preds[:5]
    fnames = [f.name[:-4] for f in learn.data.test_ds.items]
    df = pd.DataFrame({"image_name": fnames, "tags": labelled_preds}, columns=["image_name", "tags"])
    df.to_csv(path / "submission.csv", index=False)
    submission = pd.read_csv(path / "submission.csv", keep_default_na=False)
    assert len(test) == 24 and preds.shape == (24, 10) and learn.data.classes == classes
    assert list(submission["image_name"]) == [p.stem for p in test.items] and fnames[0] == "test_0"
    assert fnames[-1].startswith("file_") and list(submission["tags"]) == labelled_preds


# -- what each v1 name maps to, and the v1 arguments nbtrain refuses --------------------------------


def test_get_transforms_is_aug_transforms_with_v1s_arguments_and_an_empty_validation_list():
    train, valid = get_transforms(flip_vert=True, max_lighting=0.1, max_zoom=1.05, max_warp=0.0)
    warp, lighting = train
    assert valid == [] and (warp.do_flip, warp.flip_vert, warp.max_zoom, warp.max_warp) == (True, True, 1.05, 0.0)
    assert lighting.max_lighting == 0.1
    no_flip, _ = get_transforms(do_flip=False, flip_vert=True)  # as v1's: flip_vert only with do_flip
    assert not no_flip[0].do_flip and not no_flip[0].flip_vert
    assert imagenet_stats == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def test_a_bunch_is_nbtrain_loaders_with_v1s_size_normalize_and_classes(mnist_small):
    data = ImageDataBunch.from_folder(mnist_small, ds_tfms=get_transforms(do_flip=False), size=24, bs=16, num_workers=0)
    assert isinstance(data, DataLoaders) and data.classes == data.vocab and data.c == 10
    assert [type(t).__name__ for t in data.train.batch_tfms] == ["AffineWarp", "Lighting"]
    assert data.item_tfms[0].size == (24, 24) and data.train.bs == 16
    padded = ImageDataBunch.from_folder(
        mnist_small, ds_tfms=get_transforms(), size=24, resize_method="pad", padding_mode="zeros"
    )
    assert padded.item_tfms[0].pad_mode == "zeros" and padded.train.batch_tfms[0].pad_mode == "zeros"
    assert data.normalize() is data  # no stats: one batch's own
    mean = data.train.normalize.mean
    assert len(mean) == 3 and 0 < mean[0] < 1 and data.train.normalize.mean != imagenet_stats[0]
    assert data.show_batch(rows=2) is None  # as v1's: shown, not returned
    fig = data.show_batch(rows=2, figsize=(4, 4), return_fig=True)
    assert len([ax for ax in fig.axes if ax.images]) == 4


def test_numpys_seed_makes_v1s_random_split_repeatable(mnist_small):
    def valid_items():
        np.random.seed(42)
        return ImageDataBunch.from_folder(mnist_small, train=".", valid_pct=0.2, size=24).valid_ds.items

    assert valid_items() == valid_items()
    np.random.seed(42)
    src = ImageList.from_folder(mnist_small).split_by_rand_pct(0.2)
    np.random.seed(43)
    assert src.valid_idx != ImageList.from_folder(mnist_small).split_by_rand_pct(0.2).valid_idx


def test_the_image_list_chain_splits_and_labels_as_v1s(mnist_small):
    il = ImageList.from_folder(mnist_small)
    by_folder = il.split_by_folder().label_from_folder()
    assert len(by_folder.valid_idx) == len(get_image_files(mnist_small / "valid"))
    by_func = il.split_by_valid_func(lambda p: p.parent.parent.name == "valid")
    assert by_func.valid_idx == by_folder.valid_idx
    assert il.split_by_idx([0, 2]).valid_idx == [0, 2] and il.split_none().valid_idx == []
    labelled = il.split_by_idx([0]).label_from_re(r"/(\d)/[^/]+$")
    assert labelled.labels == [p.parent.name for p in il.items]
    assert il.split_none().label_from_func(lambda p: p.parent.name).labels == labelled.labels
    data = by_folder.transform(get_transforms(), size=24).databunch(bs=8)
    assert isinstance(data, ImageDataBunch) and len(data.valid_ds) == len(by_folder.valid_idx)
    with pytest.raises(DataError, match="Split before labelling"):
        il.label_from_folder()
    with pytest.raises(DataError, match="Label the items before databunch"):
        il.split_none().databunch()


def test_verify_images_keeps_the_books_form_and_takes_the_courses(tmp_path):
    folder = tmp_path / "bears"
    folder.mkdir()
    PILImage.create(np.zeros((40, 30, 3), dtype=np.uint8)).save(folder / "ok.png")
    (folder / "broken.jpg").write_text("not an image")
    failed = verify_images(get_image_files(folder))  # the book's: a list in, the failed ones out, nothing changed
    assert failed == [folder / "broken.jpg"] and (folder / "broken.jpg").exists()
    with pytest.raises(DataError, match=r"verify_images\(delete=...\) is fastai v1's form, which takes a folder"):
        verify_images(get_image_files(folder), delete=True)
    assert verify_images(folder, delete=True, max_size=20) == [folder / "broken.jpg"]  # the course's
    assert not (folder / "broken.jpg").exists() and PILImage.create(folder / "ok.png").size == (15, 20)


def test_v1_arguments_nbtrain_cannot_honour_are_refused_with_what_to_do(mnist_small):
    with pytest.raises(DataError, match=r"test='test'.*learn.get_preds\(dl=data.test_dl"):
        ImageDataBunch.from_folder(mnist_small, test="test", size=24)
    with pytest.raises(DataError, match="validation transforms"):
        ImageDataBunch.from_folder(mnist_small, ds_tfms=(get_transforms()[0], [Resize(24)]), size=24)
    data = ImageDataBunch.from_folder(mnist_small, size=24)
    with pytest.raises(ValueError, match=r"cnn_learner\(custom_head=...\).*Learner\(dls, model\)"):
        cnn_learner(data, models.mobilenet_v2, custom_head=torch.nn.Linear(2, 2))
    with pytest.raises(DataError, match="normalises the inputs only"):
        data.normalize(imagenet_stats, do_y=True)
    with pytest.raises(DataError, match="opens every image as RGB"):
        open_image(data.train_ds.items[0], convert_mode="L")
    with pytest.raises(AttributeError, match="defaults.cpus cannot be honoured"):
        defaults.cpus = 2
    with pytest.raises(DataError, match="DatasetFormatter"):
        ImageCleaner(data.train_ds, [0], mnist_small)


def test_learner_takes_v1s_max_lr_data_and_plots(small_learner, monkeypatch):
    learn = small_learner
    with pytest.raises(ValueError, match="give one of them"):
        learn.fit_one_cycle(1, 1e-3, max_lr=1e-3)
    assert learn.data is learn.dls
    assert learn.recorder.plot_losses() is None  # as v1's: shown, not returned
    fig = learn.recorder.plot_losses(return_fig=True)
    assert fig.axes[0].get_ylabel() == "loss"
    learn.lr_find(num_it=10, show_plot=False)
    fig = learn.recorder.plot(skip_start=2, skip_end=1, suggestion=True, return_fig=True)
    assert fig.axes[0].get_legend() is not None
    assert len(fig.axes[0].lines[0].get_xdata()) == len(learn.recorder.lr_find_lrs) - 3
    monkeypatch.setattr(learn.recorder, "lr_find_lrs", [])
    with pytest.raises(ValueError, match=r"run learn.lr_find\(\) first"):
        learn.recorder.plot()


def test_defaults_device_is_where_new_loaders_go(mnist_small, monkeypatch):
    monkeypatch.delenv("NBTRAIN_DEVICE", raising=False)
    defaults.device = torch.device("cpu")
    assert os.environ["NBTRAIN_DEVICE"] == "cpu" and defaults.device == torch.device("cpu")
    assert ImageDataBunch.from_folder(mnist_small, size=24).device == torch.device("cpu")
    defaults.device = None
    assert "NBTRAIN_DEVICE" not in os.environ


def test_open_image_gives_what_predict_takes(mnist_small):
    img = open_image(get_image_files(mnist_small)[0], after_open=lambda im: im.resize((20, 20)))
    assert isinstance(img, PILImage) and img.size == (20, 20) and img.mode == "RGB"


def test_get_preds_takes_v1s_dataset_type_and_load_learners_test_set(small_learner, mnist_small, tmp_path):
    small_learner.export(tmp_path / "export.pkl")
    folders = [mnist_small / "valid" / "3", mnist_small / "valid" / "7"]
    test = ImageList.from_folder(folders[0]).add(ImageList.from_folder(folders[1]))
    assert test.items == get_image_files(folders[0]) + get_image_files(folders[1])
    learn = load_learner(tmp_path, test=test)
    assert learn.data.test_ds.items == test.items and learn.data.classes == small_learner.dls.vocab
    preds, _ = learn.get_preds(ds_type=DatasetType.Test)
    by_file = torch.stack([learn.predict(f)[2] for f in test.items[:3]])
    assert preds.shape == (len(test), 10) and torch.allclose(preds[:3], by_file, atol=1e-5)
    assert torch.equal(learn.get_preds(DatasetType.Test)[0], preds)  # v1's positional ds_type
    for ds_type, ds_idx in ((DatasetType.Train, 0), (DatasetType.Valid, 1), (DatasetType.Fix, 0)):
        got, want = small_learner.get_preds(ds_type=ds_type), small_learner.get_preds(ds_idx=ds_idx)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with pytest.raises(ValueError, match="no test set"):
        small_learner.get_preds(ds_type=DatasetType.Test)
    with pytest.raises(ValueError, match=r"learn.predict\(img\)"):
        learn.get_preds(ds_type=DatasetType.Single)
    with pytest.raises(DataError, match="add_test"):
        load_learner(tmp_path).data.test_ds
    with pytest.raises(DataError, match="before any split or label"):
        test.split_none().add(test)


def test_doc_prints_the_signature_and_the_documentation(capsys, small_learner):
    doc(small_learner.fit_one_cycle)
    out = capsys.readouterr().out
    assert out.startswith("Learner.fit_one_cycle(") and "max_lr" in out
    assert small_learner.fit_one_cycle.__doc__.strip().splitlines()[0] in out
    doc(untar_data)
    assert capsys.readouterr().out.startswith("untar_data(url_or_name")
