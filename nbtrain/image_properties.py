"""What can be wrong with an image file by itself, found without a model: dark, overexposed, blurry,
almost uniform, an odd size or shape, grey among colour pictures, unreadable; and which files are the
same picture (same bytes, same pixels, or a near copy by perceptual hash).

`measure_images` reads each file once, on a few threads, a chunk of files at a time, and keeps a few
numbers per image (never the pixels), so memory stays flat whatever the dataset's size. The scoring
functions below it take arrays and know nothing of files, so they can be checked on arrays alone.
`property_issues` turns the measurements into the audit's rows, each flagged row naming the threshold
that flagged it. `THRESHOLDS` holds the defaults and `THRESHOLD_NOTES` why each value.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from .neighbours import group_robust_z, robust_z, share_less_extreme

# Images are measured at most this many pixels on their longer side: enough to see blur and exposure,
# and small enough that a photo costs about what a digit does once JPEG's draft mode has decoded it.
MEASURE_SIDE = 128

# Defaults, chosen on real images with planted problems (bench/audit.py: MNIST digits, ImageNet photos
# and the photo panel's tiles on other seeds than the bench's, each darkened, brightened, blurred,
# flattened, resized and stretched). Override any of them with `thresholds={"dark": 0.2}`.
THRESHOLDS: dict[str, float] = {
    "dark": 0.25,
    "overexposed": 0.70,
    "blurry": 0.37,
    "blurry_floor": 0.27,
    "blurry_z": 3.5,
    "blurry_finest_floor": 0.17,
    "low_information": 0.012,
    "low_information_noise": 2.0,
    "odd_size": 2.0,
    "odd_aspect": 1.6,
    "grayscale": 0.015,
    "near_duplicate_bits": 18,
    "class_z": 4.5,
    "class_trait": 0.5,
    "class_rare": 0.03,
    "class_share": 0.97,
    "class_spread_floor": 0.3,
    "dark_floor": 0.04,
    "low_information_floor": 0.006,
}
THRESHOLD_NOTES: dict[str, str] = {
    "dark": "brightest 1% of pixels below this (0..1): between real digits and photos and the same images at a "
    "fifth of their brightness",
    "overexposed": "darkest 5% of pixels above this (0..1): above any real photo, below the same washed out "
    "towards white",
    "blurry": "fine over coarse detail (the Laplacian's spread at full and half size over its spread at a "
    "quarter) below this, and blurry_z out for its class: blur takes the fine detail and leaves the coarse, "
    "while a smooth class (sky, skin) keeps its own ratio; a class whose median is below it is blurry as a whole",
    "blurry_floor": "fine over coarse detail below this is blurry in any class that is not blurry as a whole: "
    "below sharp digits and photo tiles, above nearly all of the same images blurred",
    "blurry_finest_floor": "the finest scale alone over the coarse one below this is blurry in any class that is "
    "not blurry as a whole: a narrow blur of a small image (a digit) leaves its half size almost whole",
    "blurry_z": "robust standard deviations (in log terms) past its class's median for blurry, besides "
    "class_share: the ratio of fine to coarse detail varies less within a class than exposure does",
    "low_information": "spread of the grey levels (0..1) below this: above a uniform image with noise, below real "
    "images even when darkened",
    "low_information_noise": "sharpness (the Laplacian's spread over the grey levels') at least this, besides the "
    "low_information threshold: what little spread a flat file has is pixel noise, while a darkened, washed out "
    "or faint picture keeps its structure and scores lower",
    "odd_size": "side (square root of the area) this many times larger or smaller than the dataset's median",
    "odd_aspect": "width/height this many times wider or taller than the dataset's median shape",
    "grayscale": "colour (99th percentile of max-min over the channels, 0..1) below this, counted only when most of "
    "the dataset is in colour: above a grey JPEG's noise, below faded colour photos",
    "class_z": "robust standard deviations (in log terms) past its class's median that an image must also be "
    "to be flagged dark, overexposed, blurry or almost uniform: set from the false flags on clean photo "
    "tiles, so a class that is dark or smooth as a whole keeps its images",
    "class_spread_floor": "least robust standard deviation (in log terms) of a class's values, so a class of "
    "alike images (most of them saturated white) does not make every small difference extreme",
    "class_rare": "share of a class (at least one image) past a fixed level up to which being past it is "
    "extreme for the class by itself; above it an image must also be class_z out",
    "class_share": "share of its class an image must be more extreme than, besides class_z out: a tail of "
    "several alike images (the dark patches of a class of faces) is the class's look",
    "class_trait": "share of a class past a fixed level at which that is the class's look, noted once in the "
    "balance summary instead of flagged per image",
    "dark_floor": "brightest 1% of pixels below this is dark in any class: a black file",
    "low_information_floor": "grey-level spread below this is almost uniform in any class: a blank file",
    "near_duplicate_bits": "perceptual hashes (255 bits) differing in at most this many bits: re-encoded and "
    "resized copies fall under it, the closest distinct digits above it",
}

PROPERTY_ISSUES = (
    "unreadable",
    "dark",
    "overexposed",
    "blurry",
    "low_information",
    "odd_size",
    "odd_aspect",
    "grayscale",
)

# The measurements kept per image, in the order of `measure_images`' table.
STAT_COLUMNS = [
    "width",
    "height",
    "is_grey",
    "bright_hi",
    "bright_lo",
    "sharpness",
    "fine_detail",
    "fine_to_coarse",
    "contrast",
    "colour",
    "phash",
    "bytes_key",
    "pixel_key",
    "error",
]


# ---------------------------------------------------------------------------------------------
# Scores of arrays (no files)


def brightness(grey: np.ndarray) -> tuple[float, float]:
    """(brightest 1%, darkest 5%) of a grey image in 0..1: low first value = dark, high second = overexposed."""
    lo, hi = np.percentile(grey, [5, 99])
    return float(hi), float(lo)


def contrast(grey: np.ndarray) -> float:
    """The standard deviation of the grey levels (0..1): near 0 for an almost uniform image."""
    return float(grey.std())


def sharpness(grey: np.ndarray) -> float:
    """The spread of the 4-neighbour Laplacian over the image's own spread: scale-free in brightness and
    contrast, so a darkened or faint copy scores as its original does, and a blurred one much lower."""
    if grey.shape[0] < 3 or grey.shape[1] < 3:
        return 0.0
    return float(_lap(grey).std() / (grey.std() + 1e-3))


def fine_detail(grey: np.ndarray) -> float:
    """The Laplacian's spread at full size over its spread at half size: blur removes the finest detail
    first, so this falls for a blurred image whatever its content (a smooth sky keeps its ratio)."""
    h, w = grey.shape[0] // 2 * 2, grey.shape[1] // 2 * 2
    if h < 6 or w < 6:
        return math.nan
    return float(_lap(grey).std() / (_lap(_half(grey)).std() + 1e-4))


def fine_to_coarse(grey: np.ndarray) -> float:
    """The Laplacian's spread at full and at half size (their geometric mean) over its spread at a quarter
    of the size: blur takes the fine scales and leaves the coarse one, whatever the content, so this falls
    for a blurred image even in a class that is smooth as a whole (whose images keep their own ratio).
    The half size counts as much as the full one, where JPEG noise and resampling can hide a blur."""
    if min(grey.shape) < 12:
        return math.nan
    half = _half(grey)
    fine = math.sqrt(float(_lap(grey).std()) * float(_lap(half).std()))
    return fine / (float(_lap(_half(half)).std()) + 1e-4)


def _half(grey: np.ndarray) -> np.ndarray:
    h, w = grey.shape[0] // 2 * 2, grey.shape[1] // 2 * 2
    return grey[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def _lap(grey: np.ndarray) -> np.ndarray:
    return (grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1]) - 4 * grey[1:-1, 1:-1]


def colourfulness(rgb: np.ndarray) -> float:
    """The 99th percentile over pixels of max-min over the channels (0..1): near 0 for a grey picture."""
    if rgb.ndim != 3:
        return 0.0
    chroma = rgb.max(axis=2) - rgb.min(axis=2)
    return float(np.percentile(chroma, 99))


_DCT_N = 32
_k = np.arange(_DCT_N)
_DCT = np.cos(np.pi * (2 * _k[None, :] + 1) * _k[:, None] / (2 * _DCT_N)).astype(np.float32)


HASH_BITS = 255


def perceptual_hash(grey32: np.ndarray) -> bytes:
    """pHash of a 32x32 grey image: the signs of its 16x16 lowest frequencies (the mean left out) against
    their median, 255 bits packed in 32 bytes. Re-encoding, resizing and small changes of brightness keep
    most bits; 64 bits (8x8) are too few to tell one handwritten digit from another."""
    d = _DCT @ grey32.astype(np.float32) @ _DCT.T
    low = d[:16, :16].flatten()[1:]
    return np.packbits(low > np.median(low)).tobytes()


def off_median(x: np.ndarray, median: float, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x / median, how many times x is off its median either way, whether that is odd): at least
    `threshold` times off, and more than 3 robust standard deviations out in log terms, so that a
    dataset of many sizes (or shapes) flags only its far ends."""
    ratio = x / median
    factor = np.maximum(ratio, 1 / ratio)
    z = np.abs(robust_z(np.log(x), floor=math.log(1.25)))
    return ratio, factor, (factor >= threshold) & (z > 3)


# ---------------------------------------------------------------------------------------------
# Reading files


def _grey_levels(img: Image.Image) -> bool:
    return img.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def _unmeasured(bytes_key: bytes, error: str) -> tuple:
    """The row of `STAT_COLUMNS` of a file that gave no pixels: NaN measurements and the reason."""
    nan = math.nan
    return (0, 0, False, nan, nan, nan, nan, nan, nan, nan, b"", bytes_key, b"", error)


def measure_file(path: Path) -> tuple:
    """The measurements of one file (a row of `STAT_COLUMNS`), reading it once. Never raises: a file
    that cannot be read or decoded gives NaNs and the reason in `error`."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return _unmeasured(b"", f"cannot be read ({type(e).__name__}: {e})")
    bytes_key = hashlib.blake2b(data, digest_size=16).digest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width < 1 or height < 1:
                    raise ValueError("the image has no pixels")
                is_grey = _grey_levels(img)
                if img.format == "JPEG":
                    img.draft("L" if is_grey else "RGB", (MEASURE_SIDE, MEASURE_SIDE))
                img.load()
                img = ImageOps.exif_transpose(img) or img
                if img.mode == "P":
                    img = img.convert("RGBA")
                    is_grey = False
                if img.mode in ("RGBA", "LA", "PA"):  # on white, as load_image shows it
                    bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
                    img = Image.alpha_composite(bg, img.convert("RGBA"))
                img = img.convert("L" if is_grey else "RGB")
                pixel_key = hashlib.blake2b(
                    f"{width}x{height}{img.mode}".encode() + img.tobytes(), digest_size=16
                ).digest()
                if max(img.size) > MEASURE_SIDE:
                    img.thumbnail((MEASURE_SIDE, MEASURE_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    except Exception as e:  # PIL raises many types for a file that is not an image
        return _unmeasured(bytes_key, f"cannot be decoded ({type(e).__name__}: {e})")
    grey_img = img if img.mode == "L" else img.convert("L")
    grey = np.asarray(grey_img, dtype=np.float32) / 255.0
    hi, lo = brightness(grey)
    colour = 0.0 if img.mode == "L" else colourfulness(np.asarray(img, dtype=np.float32) / 255.0)
    small = np.asarray(grey_img.resize((_DCT_N, _DCT_N), Image.Resampling.BILINEAR), dtype=np.float32)
    return (
        width,
        height,
        is_grey or colour < 1e-6,
        hi,
        lo,
        sharpness(grey),
        fine_detail(grey),
        fine_to_coarse(grey),
        contrast(grey),
        colour,
        perceptual_hash(small),
        bytes_key,
        pixel_key,
        "",
    )


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def measure_images(paths: Sequence[Path | str], n_workers: int | None = None, chunk: int = 256) -> pd.DataFrame:
    """`STAT_COLUMNS` for every file of `paths`, in order, each file read once on `n_workers` threads
    (PIL decodes with the GIL released). Files go in chunks, so the pool holds a chunk's results, not
    a future per file."""
    paths = [Path(p) for p in paths]
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    rows: list[tuple] = []
    with ThreadPoolExecutor(n_workers or default_workers()) as pool:
        for part in pool.map(lambda c: [measure_file(p) for p in c], chunks):
            rows += part
    table = pd.DataFrame(rows, columns=STAT_COLUMNS)
    table.insert(0, "path", paths)
    return table


# ---------------------------------------------------------------------------------------------
# Rows of the audit


def thresholds_with(
    overrides: dict[str, float] | None,
    defaults: dict[str, float] | None = None,
    notes: str = "nbtrain.image_properties.THRESHOLD_NOTES",
) -> dict[str, float]:
    """`defaults` (the image-property thresholds) with `overrides` applied; an unknown name is an
    error that lists the known ones and says where `notes` explain them."""
    out = dict(THRESHOLDS if defaults is None else defaults)
    for name, value in (overrides or {}).items():
        if name not in out:
            raise ValueError(f"No threshold is called {name!r}; the thresholds are {sorted(out)} (see {notes}).")
        out[name] = float(value)
    return out


def _rows(
    stats: pd.DataFrame, issue: str, score: np.ndarray, flagged: np.ndarray, reasons: list[str], threshold: float
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": stats["path"].to_numpy(),
            "issue": issue,
            "score": score.astype(float),
            "flagged": flagged.astype(bool),
            "reason": reasons,
            "threshold": float(threshold),
        }
    )


def property_issues(
    stats: pd.DataFrame, thresholds: dict[str, float] | None = None, labels: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per image and property (`path, issue, score, flagged, reason, threshold`) from
    `measure_images`' table; higher scores are worse. Size and shape are judged against the dataset's
    medians. Exposure, sharpness, information and colour are judged twice: past a fixed level, and
    extreme for the image's own class (`labels`, one per row; classes under CLASS_MIN images and
    unlabelled images by the fixed level alone), so the look of a dark, smooth or grey class is not a
    fault of its images. The floors catch a black or blank file in any class.
    `table.attrs["class_traits"]` lists the classes most of whose images are past a fixed level:
    (class, issue, share)."""
    t = thresholds_with(thresholds)
    ok = (stats["error"] == "").to_numpy()
    frames = []
    err = stats["error"].to_numpy()
    frames.append(
        _rows(
            stats,
            "unreadable",
            (~ok).astype(float),
            ~ok,
            [f"file {e}" if e else "reads and decodes" for e in err],
            math.nan,
        )
    )
    traits: list[tuple[str, str, float]] = []
    if ok.any():
        s = stats[ok]
        names = np.array(["" if labels is None else str(x) for x in (labels if labels is not None else ok)])[ok]
        judge = _ClassJudge(names, t)
        found = _exposure_checks(s, t, judge) + _blur_checks(s, t, judge) + _shape_checks(s, t)
        found += _colour_checks(s, t, judge)
        frames += [_rows(s, *check) for check in found]
        traits = judge.traits
    table = pd.concat(frames, ignore_index=True)
    table.attrs["class_traits"] = traits
    return table


Check = tuple  # (issue, score, flagged, reasons, threshold) for every readable image

# Classes of fewer images are judged by the fixed levels alone: their own spread says too little.
CLASS_MIN = 5


class _ClassJudge:
    """Whether each image is extreme for its class as well as past a fixed level, and how unusual."""

    def __init__(self, names: np.ndarray, t: dict[str, float]):
        vocab = sorted(set(names) - {""})
        index = {c: i for i, c in enumerate(vocab)}
        self.vocab, self.t = vocab, t
        self.groups = np.array([index.get(n, -1) for n in names], dtype=np.int64)
        sizes = np.bincount(self.groups[self.groups >= 0], minlength=len(vocab))
        self.own = np.array([g >= 0 and sizes[g] >= CLASS_MIN for g in self.groups], dtype=bool)
        self.traits: list[tuple[str, str, float]] = []

    def note_trait(self, issue: str, past: np.ndarray) -> None:
        """Note once each class (of at least CLASS_MIN images) most of whose images are `past` a level."""
        for g, c in enumerate(self.vocab):
            m = self.groups == g
            if m.sum() >= CLASS_MIN and past[m].mean() >= self.t["class_trait"]:
                self.traits.append((c, issue, float(past[m].mean())))

    def class_median(self, x: np.ndarray) -> np.ndarray:
        """For each image, the median of `x` over its class (over the dataset for a small class)."""
        out = np.full(len(x), float(np.median(x)) if len(x) else math.nan)
        for g in range(len(self.vocab)):
            m = (self.groups == g) & self.own
            if m.any():
                out[m] = float(np.median(x[m]))
        return out

    def extremity(self, bad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(robust deviations past its class's median, share of its class less extreme) of `bad`, each
        image against its class (the dataset, for a small class or an unlabelled image)."""
        z = group_robust_z(bad, self.groups, CLASS_MIN, floor=self.t["class_spread_floor"])
        return z, share_less_extreme(bad, self.groups, CLASS_MIN)

    def judge(self, issue: str, bad: np.ndarray, past: np.ndarray, floor: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """(flagged, how unusual) for `bad` (higher is worse, in log terms) of images `past` the fixed
        level: flagged when also more than class_z robust deviations out for the class, or past `floor`.
        A class most of whose images are past the level is noted once as a class trait."""
        z, share = self.extremity(bad)
        # Where few of a class (or one image) are past the level, being past it is extreme for that class.
        rare = np.full(len(bad), past.sum() <= max(1.0, self.t["class_rare"] * len(past)))
        for g in range(len(self.vocab)):
            m = self.groups == g
            if m.sum() >= CLASS_MIN:
                rare[m] = past[m].sum() <= max(1.0, self.t["class_rare"] * m.sum())
        self.note_trait(issue, past)
        # A class too small to show its look is judged by the fixed level alone, as is unlabelled data.
        # Extreme means alone in its tail too: a class with several such images has that look.
        alone = share >= self.t["class_share"]
        flagged = (past & (((z > self.t["class_z"]) & alone) | rare | ~self.own)) | floor
        where = np.where(self.own, "its class", "the dataset")
        past_share = np.array(
            [past[self.groups == g].mean() if o else past.mean() for g, o in zip(self.groups, self.own)]
        )
        return flagged, [
            f"{100 * p:.1f}% of {w} ({v:.1f} robust SD, class_z {self.t['class_z']:g}; {100 * q:.0f}% of {w} past "
            f"the {issue} threshold, class_rare {100 * self.t['class_rare']:g}%)"
            + (f"; past the {issue}_floor" if f else "")
            for p, w, v, q, f in zip(share, where, z, past_share, floor)
        ]


def _exposure_checks(s: pd.DataFrame, t: dict[str, float], judge: _ClassJudge) -> list[Check]:
    """Almost uniform, dark and overexposed. An almost uniform image is reported as that alone: its
    brightness says nothing more."""
    found: list[Check] = []
    con = s["contrast"].to_numpy()
    noise = s["sharpness"].to_numpy()
    past_low = (con < t["low_information"]) & (noise >= t["low_information_noise"])
    low, how = judge.judge("low_information", -np.log(con + 1e-4), past_low, con < t["low_information_floor"])
    found.append(
        (
            "low_information",
            1 - con,
            low,
            [
                f"grey-level spread {v:.3f} {'<' if v < t['low_information'] else '>='} "
                f"{t['low_information']:.3f} (low_information threshold), sharpness {r:.2f} "
                f"{'>=' if r >= t['low_information_noise'] else '<'} {t['low_information_noise']:.2f} "
                f"(low_information_noise); flatter than {h}"
                for v, r, h in zip(con, noise, how)
            ],
            t["low_information"],
        )
    )
    hi, lo = s["bright_hi"].to_numpy(), s["bright_lo"].to_numpy()
    dark, how = judge.judge("dark", -np.log(hi + 1e-3), hi < t["dark"], hi < t["dark_floor"])
    dark &= ~low
    found.append(
        (
            "dark",
            1 - hi,
            dark,
            [
                f"brightest pixels {v:.2f} {'<' if v < t['dark'] else '>='} {t['dark']:.2f} (dark threshold); "
                f"darker than {h}" + ("; almost uniform, reported as low_information" if u else "")
                for v, u, h in zip(hi, low, how)
            ],
            t["dark"],
        )
    )
    over, how = judge.judge("overexposed", -np.log(1 - lo + 1e-3), lo > t["overexposed"], np.zeros(len(lo), bool))
    over &= ~low
    found.append(
        (
            "overexposed",
            lo,
            over,
            [
                f"darkest pixels {v:.2f} {'>' if v > t['overexposed'] else '<='} {t['overexposed']:.2f} "
                f"(overexposed threshold); lighter than {h}"
                + ("; almost uniform, reported as low_information" if u else "")
                for v, u, h in zip(lo, low, how)
            ],
            t["overexposed"],
        )
    )
    return found


def relative_sharpness(stats: pd.DataFrame) -> np.ndarray:
    """Sharpness times fine detail, each over the dataset's median among the images that are not almost
    uniform (those would drag the medians anywhere): about 1 for a typical image, low for a blurred one."""
    con = stats["contrast"].to_numpy()
    ref = con >= THRESHOLDS["low_information"]
    ref = ref if ref.any() else np.ones(len(con), bool)
    sharp = stats["sharpness"].to_numpy()
    fine = stats["fine_detail"].to_numpy()
    fine_med = float(np.nanmedian(fine[ref])) if np.isfinite(fine[ref]).any() else 1.0
    return sharp / max(float(np.median(sharp[ref])), 1e-9) * np.nan_to_num(fine / max(fine_med, 1e-9), nan=1.0)


def _blur_checks(s: pd.DataFrame, t: dict[str, float], judge: _ClassJudge) -> list[Check]:
    """Blurry: fine detail lost against the image's own coarse detail, far out for its class (the dataset,
    for a small class or unlabelled images), or below the floor in a class that is not blurry as a whole."""
    ratio = s["fine_to_coarse"].to_numpy()
    bad = -np.log(np.nan_to_num(ratio, nan=1.0) + 1e-4)
    past = ratio < t["blurry"]  # NaN (an image too small to tell) is never past
    z, share = judge.extremity(bad)
    sharp_class = judge.class_median(np.nan_to_num(ratio, nan=1.0)) >= t["blurry"]
    # The finest scale alone over the coarse one (fine over coarse times the square root of fine_detail):
    # a narrow blur of a small image (1.5 px at 28 px) leaves the half size almost whole.
    finest = ratio * np.sqrt(np.nan_to_num(s["fine_detail"].to_numpy(), nan=1.0))
    floor = ((ratio < t["blurry_floor"]) | (finest < t["blurry_finest_floor"])) & sharp_class
    judge.note_trait("blurry", past)
    low = s["contrast"].to_numpy() < t["low_information"]
    blurry = ((past & (z > t["blurry_z"]) & (share >= t["class_share"])) | floor) & ~low
    where = np.where(judge.own, "its class", "the dataset")
    return [
        (
            "blurry",
            1 - np.nan_to_num(ratio, nan=1.0),
            blurry,
            [
                f"fine over coarse detail {v:.2f} {'<' if p else '>='} {t['blurry']:.2f} (blurry threshold); "
                f"blurrier than {100 * q:.1f}% of {w} ({y:.1f} robust SD, blurry_z {t['blurry_z']:g})"
                + (
                    f"; below the blurry_floor {t['blurry_floor']:.2f} (or its finest scale below the "
                    f"blurry_finest_floor {t['blurry_finest_floor']:.2f}) in a class not blurry as a whole"
                    if f
                    else ""
                )
                for v, p, q, w, y, f in zip(ratio, past, share, where, z, floor)
            ],
            t["blurry"],
        )
    ]


def _shape_checks(s: pd.DataFrame, t: dict[str, float]) -> list[Check]:
    """Size and aspect against the dataset's medians."""
    found: list[Check] = []
    add = lambda *check: found.append(check)  # noqa: E731
    w, h = s["width"].to_numpy().astype(float), s["height"].to_numpy().astype(float)
    side = np.sqrt(w * h)
    med_side = float(np.median(side))
    ratio, factor, odd = off_median(side, med_side, t["odd_size"])
    add(
        "odd_size",
        np.log(factor),
        odd,
        [
            f"side {v:.0f} px is {f:.1f}x {'larger' if r > 1 else 'smaller'} than the median {med_side:.0f} px "
            f"({'>=' if o else '<'} {t['odd_size']:.1f}x odd_size threshold)"
            for v, f, r, o in zip(side, factor, ratio, odd)
        ],
        t["odd_size"],
    )

    aspect = w / h
    med_aspect = float(np.exp(np.median(np.log(aspect))))
    _, a_factor, odd_a = off_median(aspect, med_aspect, t["odd_aspect"])
    add(
        "odd_aspect",
        np.log(a_factor),
        odd_a,
        [
            f"width/height {a:.2f} is {f:.1f}x the median {med_aspect:.2f} "
            f"({'>=' if o else '<'} {t['odd_aspect']:.1f}x odd_aspect threshold)"
            for a, f, o in zip(aspect, a_factor, odd_a)
        ],
        t["odd_aspect"],
    )
    return found


def grey_images(stats: pd.DataFrame, threshold: float = THRESHOLDS["grayscale"]) -> np.ndarray:
    """Whether each measured image is grey: stored with grey levels only, or colour below `threshold`
    (a grey picture saved in RGB). A file that gave no pixels is not grey."""
    return stats["is_grey"].to_numpy().astype(bool) | (stats["colour"].to_numpy() < threshold)


def _colour_checks(s: pd.DataFrame, t: dict[str, float], judge: _ClassJudge) -> list[Check]:
    """Grey among colour: flagged when most of its class (the dataset, for a small class) is in colour;
    a class that is grey as a whole is noted once as a class trait."""
    colour = s["colour"].to_numpy()
    grey = grey_images(s, t["grayscale"])
    mostly_colour_set = (~grey).mean() > 0.5
    mostly_colour = np.full(len(grey), mostly_colour_set)
    for g, c in enumerate(judge.vocab):
        m = judge.groups == g
        if m.sum() >= 3:  # a class's colour is plain from a few images, unlike its spread
            mostly_colour[m] = (~grey[m]).mean() > 1 - t["class_trait"]
            if mostly_colour_set and grey[m].mean() >= t["class_trait"]:
                judge.traits.append((c, "grayscale", float(grey[m].mean())))
    flag_grey = grey & mostly_colour
    where = np.where(np.bincount(judge.groups + 1)[judge.groups + 1] >= 3, "its class", "the dataset")
    return [
        (
            "grayscale",
            1 - np.minimum(colour / max(t["grayscale"], 1e-9), 1.0),
            flag_grey,
            [
                f"colour {c:.3f} {'<' if g else '>='} {t['grayscale']:.3f} (grayscale threshold); "
                + (f"most of {w} is in colour" if m else f"most of {w} is grey, so none is flagged")
                for c, g, m, w in zip(colour, grey, mostly_colour, where)
            ],
            t["grayscale"],
        )
    ]


# ---------------------------------------------------------------------------------------------
# Same pictures


def exact_groups(stats: pd.DataFrame) -> list[tuple[list[int], str]]:
    """Groups (row numbers, "bytes" or "pixels") of files with the same bytes, or else the same decoded
    pixels; each group at least two files, each file in one group at most."""
    groups: list[tuple[list[int], str]] = []
    seen: set[int] = set()
    for col, kind in (("bytes_key", "bytes"), ("pixel_key", "pixels")):
        keys = stats[col].to_numpy()
        by: dict[bytes, list[int]] = {}
        for i, k in enumerate(keys):
            if k:
                by.setdefault(k, []).append(i)
        for members in by.values():
            members = [i for i in members if i not in seen]
            if len(members) > 1:
                groups.append((members, kind))
                seen.update(members)
    return groups


def hash_neighbours(hashes: Sequence[bytes], valid: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """For each perceptual hash, the fewest differing bits to another valid one and that one's index
    (HASH_BITS and -1 when there is none). All pairs, as one matrix product of +-1 vectors a chunk of
    rows at a time, so memory stays at chunk x n."""
    n = len(hashes)
    best = np.full(n, HASH_BITS, dtype=np.int64)
    arg = np.full(n, -1, dtype=np.int64)
    idx = np.flatnonzero(np.asarray(valid) & np.array([len(h) > 0 for h in hashes], dtype=bool))
    if len(idx) < 2:
        return best, arg
    bits = np.unpackbits(np.frombuffer(b"".join(hashes[i] for i in idx), dtype=np.uint8).reshape(len(idx), -1), axis=1)[
        :, :HASH_BITS
    ]
    signs = bits.astype(np.float32) * 2 - 1
    for i0 in range(0, len(idx), chunk):
        dot = signs[i0 : i0 + chunk] @ signs.T
        dot[np.arange(len(dot)), np.arange(i0, i0 + len(dot))] = -np.inf  # not itself
        j = dot.argmax(axis=1)
        rows = idx[i0 : i0 + chunk]
        best[rows] = np.rint((HASH_BITS - dot[np.arange(len(dot)), j]) / 2).astype(np.int64)
        arg[rows] = idx[j]
    return best, arg
