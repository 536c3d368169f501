"""Opening images: `load_image` for files the loaders read, and `PILImage.create` (fastai's name)
for one image from whatever a notebook has at hand.

A path, the bytes of a file (an upload, a download, a database blob), an open file, a numpy array,
a torch tensor, a PIL image, or the value of an ipywidgets `FileUpload`: the result is an 8-bit RGB
PIL image, upright as its EXIF says, which `Learner.predict` and `show` take like any other.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

_KINDS = (
    "a path, the bytes of an image file, an open file, a numpy array, a torch tensor, a PIL image, "
    "or an ipywidgets FileUpload's value"
)


class DataError(ValueError):
    """A dataset or an image that cannot be used as it is; the message says what to change."""


def load_image(fn: Path | str | Image.Image, draft: tuple[int, int] | None = None) -> Image.Image:
    """Open any image PIL can read as 8-bit RGB, upright as its EXIF says.

    Greyscale, palette, RGBA (composited on white), CMYK and 16-bit images are converted;
    an animated GIF gives its first frame. `draft` lets JPEG decode at a reduced size, much faster
    for photos far larger than the model's input.
    """
    if isinstance(fn, Image.Image):
        return _to_rgb(fn)
    with Image.open(fn) as img:
        if draft is not None and img.format == "JPEG":
            img.draft("RGB", draft)
        img.load()
        out = _to_rgb(img)
        # Closing the file frees the decoded pixels too, so keep a copy when nothing was converted.
        return out.copy() if out is img else out


def _to_rgb(img: Image.Image) -> Image.Image:
    """`img` upright and in 8-bit RGB."""
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 / max(arr.max(), 1.0) if arr.max() > 255 else 1.0
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8))
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        img = Image.fromarray(((arr - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB") if img.mode != "RGB" else img


class PILImage(Image.Image):
    """An RGB PIL image with fastai's `create` constructor; everything else is PIL's."""

    @classmethod
    def create(cls, x: Any) -> PILImage:
        """An RGB image from `x`: a path, the bytes of an image file, an open file, a numpy array,
        a torch tensor, a PIL image, or an ipywidgets FileUpload's value.

        For an upload widget, pass `upload.value` (ipywidgets 8, a tuple of files) or one of its
        items; with several files the last one is taken, as fastai's `btn_upload.data[-1]` does.
        """
        img = _to_pil(x)
        out = cls.__new__(cls)
        out.__dict__.update(img.__dict__)  # the same pixels, typed as PILImage; PIL keeps its state in __dict__
        return out

    def to_thumb(self, h: int, w: int | None = None) -> Image.Image:
        """A copy that fits in `h` x `w` (a square when `w` is None), keeping the aspect ratio."""
        thumb = self.copy()
        thumb.thumbnail((w or h, h))
        return thumb

    def __repr__(self) -> str:
        return f"PILImage mode={self.mode} size={self.width}x{self.height}"


def upload_content(value: Any) -> bytes:
    """The bytes of the last file of an ipywidgets FileUpload's value (8.x: a tuple of dicts with
    'content'; 7.x: a dict of file name to {'metadata', 'content'}), or of one such dict."""
    if isinstance(value, Mapping):
        if "content" in value:
            return bytes(value["content"])
        files = [v for v in value.values() if isinstance(v, Mapping) and "content" in v]
        if files:
            return bytes(files[-1]["content"])
        raise DataError(
            f"This dict has no 'content': expected an ipywidgets FileUpload's value or one of its files, "
            f"got keys {sorted(map(str, value))}."
        )
    if isinstance(value, (tuple, list)):
        if not value:
            raise DataError(
                "No file uploaded yet: the FileUpload's value is empty. Choose an image with the "
                "upload button, then run this cell again."
            )
        return upload_content(value[-1])
    raise DataError(f"Expected an ipywidgets FileUpload's value, got {type(value).__name__}.")


def _is_upload(x: Any) -> bool:
    if isinstance(x, Mapping):
        return True
    return isinstance(x, (tuple, list)) and (not x or all(isinstance(v, Mapping) for v in x))


def _from_bytes(data: bytes, what: str) -> Image.Image:
    if not data:
        raise DataError(f"{what} is empty: there is no image in it.")
    try:
        return load_image(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DataError(
            f"{what} ({len(data)} bytes, starting {data[:8]!r}): not an image PIL can read. "
            "Pass the bytes of a JPEG, PNG, GIF, BMP, TIFF or WebP file."
        ) from None


def _array_to_pil(a: np.ndarray) -> Image.Image:
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # channels first (a tensor's layout) to channels last
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise DataError(
            f"An array of shape {a.shape} is not an image: expected (H, W), (H, W, 3), (H, W, 4), "
            "or channels first (3, H, W)."
        )
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        if np.nanmax(a, initial=0) <= 1.0 and np.nanmin(a, initial=0) >= 0.0:
            a = a * 255  # floats in [0, 1], as torchvision and matplotlib use
        a = np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    return load_image(Image.fromarray(np.ascontiguousarray(a)))


def _to_pil(x: Any) -> Image.Image:
    if isinstance(x, Image.Image):
        return load_image(x)
    if isinstance(x, (str, Path)):
        if isinstance(x, str) and "\x00" in x:
            raise DataError(
                "This string holds a NUL byte, so it is not a file name: it looks like an image's "
                "bytes decoded as text. Pass the bytes themselves (e.g. upload.value[-1]['content'])."
            )
        path = Path(x)
        if not path.exists():
            raise FileNotFoundError(f"No file at {path}: check the path (relative paths start from {Path.cwd()}).")
        if path.is_dir():
            raise DataError(f"{path} is a folder, not an image file. For every image in it, use get_image_files(path).")
        try:
            return load_image(path)
        except Exception as e:  # PIL's messages for a truncated file or a decompression bomb omit its name
            raise DataError(
                f"{path} cannot be opened as an image ({type(e).__name__}: {e}). "
                "verify_images() finds every such file in a folder."
            ) from e
    if isinstance(x, (bytes, bytearray, memoryview)):
        return _from_bytes(bytes(x), "These bytes")
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
            t = t.float()
        return _array_to_pil(t.numpy())
    if isinstance(x, np.ndarray):
        return _array_to_pil(x)
    if _is_upload(x):
        return _from_bytes(upload_content(x), "The uploaded file")
    if hasattr(x, "read"):
        data = x.read()
        if isinstance(data, str):
            raise DataError("This file was opened in text mode: open it with open(path, 'rb').")
        return _from_bytes(data, "The file's contents")
    raise DataError(f"Cannot make an image from {type(x).__name__}: pass {_KINDS}.")
