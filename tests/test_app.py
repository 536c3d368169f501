"""The predict widget from code: uploads, folders, unreadable files, top-k bars."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from nbtrain import ImageClassifierApp, ImageDataLoaders, Learner, Resize
from testkit.tiny_models import small_cnn


@pytest.fixture(scope="module")
def learn(mnist_small):
    dls = ImageDataLoaders.from_folder(mnist_small, item_tfms=Resize(16), bs=16, seed=0)
    return Learner(dls, small_cnn(dls.c))


def _upload(*paths):
    return tuple(
        {
            "name": p.name,
            "type": "image/png",
            "size": p.stat().st_size,
            "last_modified": datetime.now(timezone.utc),
            "content": memoryview(p.read_bytes()),
        }
        for p in paths
    )


def test_an_upload_of_several_files_shows_each_with_the_prediction_of_predict(learn):
    files = learn.dls.valid_ds.items[:3]
    app = ImageClassifierApp(learn, top_k=3)
    app.upload.value = _upload(*files)
    assert [r.name for r in app.results] == [f.name for f in files]
    assert len(app.grid.children) == 3
    for r, f, card in zip(app.results, files, app.grid.children):
        label, _, probs = learn.predict(f)
        assert r.label == label
        top = r.top(app.vocab, 3)
        assert len(top) == 3 and top[0][0] == label and top[0][1] >= top[1][1] >= top[2][1]
        assert f"Prediction: <b>{label}</b>" in card.children[-1].value


def test_a_folder_gives_a_grid_of_at_most_max_n_images(learn, mnist_small):
    app = ImageClassifierApp(learn, max_n=5)
    out = app.show_folder(mnist_small / "valid")
    assert len(out) == 5 and len(app.grid.children) == 5
    assert "first 5 of" in app.status.value


def test_a_missing_folder_says_so_and_shows_nothing(learn, tmp_path):
    app = ImageClassifierApp(learn)
    assert app.show_folder(tmp_path / "nope") == []
    assert "No folder at" in app.status.value and not app.grid.children


def test_an_unreadable_upload_is_reported_on_its_card_and_the_others_still_show(learn, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    good = learn.dls.valid_ds.items[0]
    app = ImageClassifierApp(learn)
    app.upload.value = _upload(bad, good)
    assert app.results[0].error is not None and app.results[1].label == learn.predict(good)[0]
    assert "cannot read this image" in app.grid.children[0].children[-1].value
    assert "1 could not be read" in app.status.value


def test_top_k_must_be_positive(learn):
    with pytest.raises(ValueError, match="top_k"):
        ImageClassifierApp(learn, top_k=0)
