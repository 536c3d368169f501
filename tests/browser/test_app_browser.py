"""ImageClassifierApp in a real JupyterLab and Chromium: upload real image files through the page's
upload button and its file chooser, as a person would, and see each file with the class the model predicts.

A kernel trains a small CNN on real MNIST digit files for a few seconds, shows the app, and writes
what `learn.predict` says for two files; the page must show those two files with those classes.
"""

from __future__ import annotations

import json
import time

import pytest

from .conftest import ACTIVE_PANEL, open_notebook, run_cell, save_screenshot

pytestmark = pytest.mark.browser

DATASET = "digits"

CELL_TRAIN = f"""
import json
from pathlib import Path

import torch
from torch import nn
from nbtrain import ImageClassifierApp, ImageDataLoaders, Learner, Resize
from nbtrain.samples import make_mnist_sample

torch.manual_seed(0)
path = make_mnist_sample({DATASET!r}, n=300, noise=0.0, seed=0).path  # the test wrote it already
dls = ImageDataLoaders.from_folder(path, item_tfms=Resize(28), bs=16, seed=0)
model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                      nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, dls.c))
learn = Learner(dls, model)
learn.fit_one_cycle(3, 1e-2)
files = [str(p) for p in dls.valid_ds.items[:2]]
Path("expected.json").write_text(json.dumps([[f, learn.predict(f)[0]] for f in files]));
"""

CELL_APP = """
app = ImageClassifierApp(learn, top_k=3)
app
"""


def test_uploading_image_files_through_the_page_shows_their_predicted_classes(jupyter_server, page):
    from nbtrain.samples import make_mnist_sample

    root = jupyter_server.root
    make_mnist_sample(root / DATASET, n=300, noise=0.0, seed=0)
    jupyter_server.write_notebook("predict.ipynb", [CELL_TRAIN, CELL_APP])
    open_notebook(page, jupyter_server, "predict.ipynb")
    run_cell(page, 0, timeout=420)  # seconds on 2 idle cores, minutes when they are shared
    run_cell(page, 1)
    expected = json.loads((root / "expected.json").read_text())

    # Click the upload button and choose the files in the file chooser it opens, as a person would.
    button = page.locator(f"{ACTIVE_PANEL} .jp-OutputArea-output .widget-upload")
    button.wait_for(state="visible", timeout=30_000)
    with page.expect_file_chooser() as chooser:
        button.click()
    chooser.value.set_files([f for f, _ in expected])

    cards = page.locator(f"{ACTIVE_PANEL} .nbtrain-prediction")
    deadline = time.monotonic() + 60
    while cards.count() < len(expected) and time.monotonic() < deadline:
        time.sleep(0.2)
    texts = cards.all_inner_texts()
    save_screenshot(page, "predict_app", full_page=False)
    assert texts == [f"Prediction: {label}" for _, label in expected], texts
    names = page.locator(f"{ACTIVE_PANEL} .widget-gridbox").inner_text()
    for f, _ in expected:
        assert f.rsplit("/", 1)[-1] in names
    # The thumbnails arrived as images.
    assert page.locator(f"{ACTIVE_PANEL} .jp-OutputArea-output img").count() >= len(expected)
