"""`resize_images` and `resize_image`: shrink a folder of downloaded images, as fastai's do, but safely.

Every file is written under a temporary name and renamed into place, so resizing a folder into
itself (`resize_images(path, max_size=400, dest=path)`, as the course does) replaces each file only
once its new version is complete. The EXIF orientation is applied, so a photo taken sideways stays
upright once its EXIF is gone. Files that cannot be read are returned and named in one warning,
never skipped in silence.
"""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageOps

from .data import get_image_files
from .paths import PathList

__all__ = ["resize_image", "resize_images"]

_ORIENTATION = 0x0112


def _target_size(size: tuple[int, int], max_size: int | None) -> tuple[int, int] | None:
    """The size that brings the larger side down to `max_size`, keeping the aspect ratio; None if it fits."""
    w, h = size
    if max_size is None or max(w, h) <= max_size:
        return None
    ratio = max_size / max(w, h)
    return max(1, round(w * ratio)), max(1, round(h * ratio))


def _to_channels(img: Image.Image, n_channels: int) -> Image.Image:
    if n_channels == 3 and img.mode != "RGB":
        if img.mode.startswith(("I", "F")):  # 16- and 32-bit greyscale: scale to 8 bits first
            img = img.convert("I").point(lambda v: v / 256).convert("L")
        return img.convert("RGB")
    if n_channels == 1 and img.mode != "L":
        return img.convert("L")
    return img


def _replace_with(dest_fname: Path, write) -> None:
    """Call `write(tmp)` on a temporary file next to `dest_fname`, then rename it into place."""
    tmp = dest_fname.with_name(f".{dest_fname.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, dest_fname)
    finally:
        tmp.unlink(missing_ok=True)


def resize_image(
    file: Path | str,
    dest: Path | str,
    src: Path | str = ".",
    max_size: int | None = None,
    n_channels: int = 3,
    ext: str | None = None,
    img_format: str | None = None,
    resample: int = Image.BILINEAR,
    resume: bool = False,
    **kwargs,
) -> Path | None:
    """Resize `src/file` so its larger side is at most `max_size`, into `dest/file` (fastai's signature).

    The image is converted to `n_channels` (3: RGB, 1: greyscale) and turned upright from its EXIF
    orientation; an image that needs none of this is copied as it is. `ext` changes the suffix,
    `img_format` the PIL format, `**kwargs` go to PIL's `save` (e.g. `quality=90`). With `resume`,
    an existing `dest/file` is kept. Returns the file written (None when kept); raises OSError when
    `src/file` is not a readable image. `dest` may be `src`: the file is replaced only when complete.
    """
    dest_fname = Path(dest) / file
    file = Path(src) / file
    if ext is not None:
        dest_fname = dest_fname.with_suffix(ext)
    if resume and dest_fname.exists():
        return None
    dest_fname.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(file) as img:
        img.load()  # a truncated file fails here, before anything is written
        upright = ImageOps.exif_transpose(img) if img.getexif().get(_ORIENTATION, 1) != 1 else img
        new_size = _target_size(upright.size, max_size)
        converted = _to_channels(upright, n_channels)
        same = dest_fname.exists() and os.path.samefile(file, dest_fname)
        if new_size is None and converted is img and ext is None and img_format is None and not kwargs:
            if not same:
                _replace_with(dest_fname, lambda tmp: shutil.copy2(file, tmp))
            return dest_fname
        out = converted.resize(new_size, resample=resample) if new_size else converted
        fmt = img_format or Image.registered_extensions().get(dest_fname.suffix.lower()) or img.format
        _replace_with(dest_fname, lambda tmp: out.save(tmp, fmt, **kwargs))
    return dest_fname


def _resize_or_reason(rel: Path, **kwargs) -> str | None:
    try:
        resize_image(rel, **kwargs)
        return None
    except Exception as e:  # PIL raises many types for files that are not images
        return f"{type(e).__name__}: {e}"


def resize_images(
    path: Path | str,
    max_workers: int | None = None,
    max_size: int | None = None,
    recurse: bool = False,
    dest: Path | str = Path("."),
    n_channels: int = 3,
    ext: str | None = None,
    img_format: str | None = None,
    resample: int = Image.BILINEAR,
    resume: bool | None = None,
    **kwargs,
) -> PathList:
    """Resize every image in `path` (and its subfolders with `recurse`, keeping their structure) into
    `dest` with `resize_image`; `dest=path` resizes in place, safely.

    Returns the files that could not be read (a list with fastai's `.map`, so
    `resize_images(...).map(Path.unlink)` removes them); a warning names them too.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"No folder at {path}: resize_images takes the folder that holds the images.")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    files = [f.relative_to(path) for f in get_image_files(path, recurse=recurse)]
    options = dict(
        dest=dest,
        src=path,
        max_size=max_size,
        n_channels=n_channels,
        ext=ext,
        img_format=img_format,
        resample=resample,
        resume=bool(resume),
        **kwargs,
    )
    workers = max_workers if max_workers is not None else min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        reasons = list(pool.map(lambda rel: _resize_or_reason(rel, **options), files))
    failed = PathList(path / f for f, r in zip(files, reasons) if r is not None)
    if failed:
        shown = "; ".join(f"{path / f} ({r})" for f, r in zip(files, reasons) if r is not None)
        warnings.warn(
            f"resize_images could not read {len(failed)} of {len(files)} files, left as they were: "
            f"{shown[:1000]}. Remove them with `.map(Path.unlink)` on the returned list.",
            stacklevel=2,
        )
    return failed
