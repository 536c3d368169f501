"""The image-property checks judged against the image's own class, on crops of real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from nbtrain.image_properties import THRESHOLDS, fine_to_coarse, measure_images, property_issues
from nbtrain.samples import foolbox_photos


def _grey(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L"), dtype=np.float32) / 255


def _crops(root: Path, n_classes: int = 3, per_class: int = 12, upscaled: int | None = None) -> list[Path]:
    """`per_class` 96 px crops of each of the first `n_classes` of foolbox's photos, one class folder
    each; the last class enlarged from `upscaled` px when given (a class smooth as a whole)."""
    rng = np.random.default_rng(0)
    paths = []
    for c, src in enumerate(foolbox_photos()[:n_classes]):
        with Image.open(src) as im:
            big = im.convert("RGB").resize((192, 192))
        for j in range(per_class):
            x, y = (int(v) for v in rng.integers(0, 96, size=2))
            crop = big.crop((x, y, x + 96, y + 96))
            if upscaled and c == n_classes - 1:
                crop = crop.resize((upscaled, upscaled), Image.Resampling.BOX).resize(
                    (96, 96), Image.Resampling.BILINEAR
                )
            dest = root / f"class{c}" / f"{j:02d}.png"
            dest.parent.mkdir(parents=True, exist_ok=True)
            crop.save(dest)
            paths.append(dest)
    return paths


def _change(path: Path, fn) -> None:
    with Image.open(path) as im:
        out = fn(im.convert("RGB"))
    out.save(path)


def _flagged(paths: list[Path], issue: str, **thresholds) -> tuple[set[Path], dict]:
    stats = measure_images(paths, n_workers=1)
    table = property_issues(stats, thresholds or None, labels=[p.parent.name for p in paths])
    rows = table[table["flagged"] & (table["issue"] == issue)]
    return set(rows["path"]), dict(
        zip(table.loc[table["issue"] == issue, "path"], table.loc[table["issue"] == issue, "reason"])
    )


def test_blur_takes_the_finest_detail_against_the_images_own_coarse_detail_and_darkness_does_not():
    with Image.open(foolbox_photos()[0]) as im:
        crop = im.convert("RGB").resize((192, 192)).crop((40, 40, 136, 136))
    sharp = fine_to_coarse(_grey(crop))
    blurred = fine_to_coarse(_grey(crop.filter(ImageFilter.GaussianBlur(2.5))))
    assert blurred < THRESHOLDS["blurry_floor"] < THRESHOLDS["blurry"] < sharp
    assert fine_to_coarse(_grey(crop) * 0.2) == pytest.approx(sharp, rel=0.02)
    assert np.isnan(fine_to_coarse(np.zeros((8, 8), np.float32)))  # too small to tell, never flagged


def test_a_blurred_photo_is_flagged_blurry_and_says_how_unusual_it_is_for_its_class(tmp_path):
    paths = _crops(tmp_path)
    target = paths[15]
    _change(target, lambda im: im.filter(ImageFilter.GaussianBlur(2.5)))
    found, reasons = _flagged(paths, "blurry")
    assert found == {target}
    assert "blurrier than" in reasons[target] and "of its class" in reasons[target]
    assert "blurry_z" in reasons[target]


def test_a_class_smooth_as_a_whole_keeps_its_images_and_is_noted_once(tmp_path):
    paths = _crops(tmp_path, upscaled=16)
    found, _ = _flagged(paths, "blurry")
    assert found == set()
    stats = measure_images(paths, n_workers=1)
    traits = property_issues(stats, labels=[p.parent.name for p in paths]).attrs["class_traits"]
    assert [(c, issue) for c, issue, _ in traits if issue == "blurry"] == [("class2", "blurry")]


def test_a_darkened_faint_photo_is_dark_and_a_flat_noisy_file_is_almost_uniform(tmp_path):
    paths = _crops(tmp_path)
    faint, flat = paths[3], paths[27]

    def darken(im: Image.Image) -> Image.Image:
        a = np.asarray(im, dtype=np.float32)
        return Image.fromarray((a * (2.0 / a.std())).clip(0, 255).astype(np.uint8))  # grey spread under 0.012

    _change(faint, darken)
    noise = np.random.default_rng(0).normal(0, 1.5, (96, 96, 3))
    _change(flat, lambda im: Image.fromarray((np.array([120.0, 110.0, 100.0]) + noise).astype(np.uint8)))
    dark, _ = _flagged(paths, "dark")
    low, reasons = _flagged(paths, "low_information")
    assert faint in dark and faint not in low
    assert low == {flat} and "sharpness" in reasons[flat] and "low_information_noise" in reasons[flat]
