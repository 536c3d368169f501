"""The demo's closing report counts the planted wrong labels where the cleaner's own ranking puts them."""

from __future__ import annotations

import re

from nbtrain import ImageClassifierCleaner, ImageDataLoaders, Resize, vision_learner
from nbtrain.__main__ import _flipped_report
from nbtrain.samples import make_mnist_sample


def test_the_demo_counts_wrong_labels_in_the_order_the_cleaner_shows_them(tmp_path, capsys):
    sample = make_mnist_sample(tmp_path / "mnist", n=300, noise=0.1, seed=0)
    dls = ImageDataLoaders.from_folder(sample.path, item_tfms=Resize(32), bs=32, seed=0, num_workers=0)
    learn = vision_learner(dls, "mobilenet_v2")
    learn.fine_tune(1)
    _flipped_report(learn, sample)
    found, k = map(int, re.search(r"ranked worst: (\d+) of (\d+)", capsys.readouterr().out).groups())

    cleaner = ImageClassifierCleaner(learn, frontend="plain", log=False)
    train = cleaner.scores[cleaner.scores["split"] == "Train"].sort_values("loss", ascending=False, kind="stable")
    flipped = {str(sample.path / f) for f in sample.flipped}
    assert k == len(flipped) > 0
    assert found == sum(str(p) in flipped for p in train["path"].head(k))
