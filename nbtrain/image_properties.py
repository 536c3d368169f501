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

from .neighbours import robust_z

# Images are measured at most this many pixels on their longer side: enough to see blur and exposure,
# and small enough that a photo costs about what a digit does once JPEG's draft mode has decoded it.
MEASURE_SIDE = 128

# Defaults, chosen on real images with planted problems (bench/audit.py: MNIST digits and ImageNet
# photos, each darkened, brightened, blurred, flattened, resized and stretched). Override any of them
# with `thresholds={"dark": 0.2}`.
THRESHOLDS: dict[str, float] = {
    "dark": 0.30,
    "overexposed": 0.70,
    "blurry": 0.20,
    "low_information": 0.012,
    "odd_size": 2.0,
    "odd_aspect": 1.6,
    "grayscale": 0.015,
    "near_duplicate_bits": 18,
}
THRESHOLD_NOTES: dict[str, str] = {
    "dark": "brightest 1% of pixels below this (0..1): between real digits and photos and the same images at a "
    "fifth of their brightness",
    "overexposed": "darkest 5% of pixels above this (0..1): above any real photo, below the same washed out "
    "towards white",
    "blurry": "sharpness against the dataset's median below this (the Laplacian's spread over the image's own "
    "contrast, times fine over coarse detail): between planted blurs and sharp images at any size",
    "low_information": "spread of the grey levels (0..1) below this: above a uniform image with noise, below real "
    "images even when darkened",
    "odd_size": "side (square root of the area) this many times larger or smaller than the dataset's median",
    "odd_aspect": "width/height this many times wider or taller than the dataset's median shape",
    "grayscale": "colour (99th percentile of max-min over the channels, 0..1) below this, counted only when most of "
    "the dataset is in colour: above a grey JPEG's noise, below faded colour photos",
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
    half = grey[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    return float(_lap(grey).std() / (_lap(half).std() + 1e-4))


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


def measure_file(path: Path) -> tuple:
    """The measurements of one file (a row of `STAT_COLUMNS`), reading it once. Never raises: a file
    that cannot be read or decoded gives NaNs and the reason in `error`."""
    nan = math.nan
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return (0, 0, False, nan, nan, nan, nan, nan, nan, b"", b"", b"", f"cannot be read ({type(e).__name__}: {e})")
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
        return (
            0,
            0,
            False,
            nan,
            nan,
            nan,
            nan,
            nan,
            nan,
            b"",
            bytes_key,
            b"",
            f"cannot be decoded ({type(e).__name__}: {e})",
        )
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


def property_issues(stats: pd.DataFrame, thresholds: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per image and property (`path, issue, score, flagged, reason, threshold`) from
    `measure_images`' table; higher scores are worse. Size, shape and sharpness are judged against the
    dataset's own median, the rest against fixed levels."""
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
    if not ok.any():
        return pd.concat(frames, ignore_index=True)
    s = stats[ok]
    low, found = _exposure_checks(s, t)
    found += _blur_checks(s, t, low) + _shape_checks(s, t) + _colour_checks(s, t)
    frames += [_rows(s, *check) for check in found]
    return pd.concat(frames, ignore_index=True)


Check = tuple  # (issue, score, flagged, reasons, threshold) for every readable image


def _exposure_checks(s: pd.DataFrame, t: dict[str, float]) -> tuple[np.ndarray, list[Check]]:
    """Almost uniform, dark and overexposed; and which images are almost uniform."""
    found: list[Check] = []
    add = lambda *check: found.append(check)  # noqa: E731
    con = s["contrast"].to_numpy()
    low = con < t["low_information"]
    add(
        "low_information",
        1 - con,
        low,
        [
            f"grey-level spread {v:.3f} {'<' if v < t['low_information'] else '>='} {t['low_information']:.3f} "
            "(low_information threshold)"
            for v in con
        ],
        t["low_information"],
    )

    # An almost uniform image is reported as that alone: its brightness and sharpness say nothing more.
    hi, lo = s["bright_hi"].to_numpy(), s["bright_lo"].to_numpy()
    dark = (hi < t["dark"]) & ~low
    add(
        "dark",
        1 - hi,
        dark,
        [
            f"brightest pixels {v:.2f} {'<' if v < t['dark'] else '>='} {t['dark']:.2f} (dark threshold)"
            + ("; almost uniform, reported as low_information" if u and v < t["dark"] else "")
            for v, u in zip(hi, low)
        ],
        t["dark"],
    )
    over = (lo > t["overexposed"]) & ~low
    add(
        "overexposed",
        lo,
        over,
        [
            f"darkest pixels {v:.2f} {'>' if v > t['overexposed'] else '<='} {t['overexposed']:.2f} "
            "(overexposed threshold)"
            + ("; almost uniform, reported as low_information" if u and v > t["overexposed"] else "")
            for v, u in zip(lo, low)
        ],
        t["overexposed"],
    )
    return low, found


def _blur_checks(s: pd.DataFrame, t: dict[str, float], low: np.ndarray) -> list[Check]:
    found: list[Check] = []
    add = lambda *check: found.append(check)  # noqa: E731
    # Against the medians of the images with something to be sharp about: uniform ones would drag them anywhere.
    ref = ~low if (~low).any() else np.ones(len(low), bool)
    sharp = s["sharpness"].to_numpy()
    fine = s["fine_detail"].to_numpy()
    fine_med = float(np.nanmedian(fine[ref])) if np.isfinite(fine[ref]).any() else 1.0
    rel = sharp / max(float(np.median(sharp[ref])), 1e-9) * np.nan_to_num(fine / max(fine_med, 1e-9), nan=1.0)
    blurry = (rel < t["blurry"]) & ~low
    add(
        "blurry",
        1 - rel,
        blurry,
        [
            f"sharpness {v:.2f} of the dataset's median {'<' if f else '>='} {t['blurry']:.2f} (blurry threshold)"
            for v, f in zip(rel, blurry)
        ],
        t["blurry"],
    )
    return found


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


def _colour_checks(s: pd.DataFrame, t: dict[str, float]) -> list[Check]:
    found: list[Check] = []
    add = lambda *check: found.append(check)  # noqa: E731
    colour = s["colour"].to_numpy()
    grey = s["is_grey"].to_numpy() | (colour < t["grayscale"])
    mostly_colour = (~grey).mean() > 0.5
    flag_grey = grey & mostly_colour
    why = "most of the dataset is in colour" if mostly_colour else "most of the dataset is grey, so none is flagged"
    add(
        "grayscale",
        1 - np.minimum(colour / max(t["grayscale"], 1e-9), 1.0),
        flag_grey,
        [
            f"colour {c:.3f} {'<' if g else '>='} {t['grayscale']:.3f} (grayscale threshold); {why}"
            for c, g in zip(colour, grey)
        ],
        t["grayscale"],
    )
    return found


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
