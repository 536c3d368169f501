"""PILImage.create on every kind of input a notebook has at hand, and predict on the same."""

from __future__ import annotations

import io
from datetime import datetime, timezone

import numpy as np
import pytest
import torch
from PIL import Image

from nbtrain import DataError, ImageDataLoaders, Learner, PILImage, Resize
from testkit.tiny_models import small_cnn


@pytest.fixture(scope="module")
def digit(mnist_small):
    """A real digit file, and its pixels as RGB."""
    path = sorted((mnist_small / "valid").rglob("*.png"))[0]
    return path, np.asarray(Image.open(path).convert("RGB"))


def _upload_value(path):
    """What an ipywidgets 8 FileUpload's `value` holds after a file is chosen."""
    data = path.read_bytes()
    return (
        {
            "name": path.name,
            "type": "image/png",
            "size": len(data),
            "last_modified": datetime.now(timezone.utc),
            "content": memoryview(data),
        },
    )


@pytest.mark.parametrize(
    "kind",
    [
        "path",
        "str",
        "bytes",
        "bytearray",
        "memoryview",
        "file",
        "array_hwc",
        "array_hw_float",
        "tensor_chw_uint8",
        "tensor_chw_float",
        "pil",
        "upload_v8",
        "upload_item",
        "upload_v7",
    ],
)
def test_create_gives_the_same_rgb_pixels_for_every_kind_of_input(digit, kind):
    path, rgb = digit
    data = path.read_bytes()
    inputs = {
        "path": lambda: path,
        "str": lambda: str(path),
        "bytes": lambda: data,
        "bytearray": lambda: bytearray(data),
        "memoryview": lambda: memoryview(data),
        "file": lambda: open(path, "rb"),
        "array_hwc": lambda: rgb.copy(),
        "array_hw_float": lambda: rgb[..., 0] / 255.0,
        "tensor_chw_uint8": lambda: torch.from_numpy(rgb.copy()).permute(2, 0, 1),
        "tensor_chw_float": lambda: torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255,
        "pil": lambda: Image.open(path),
        "upload_v8": lambda: _upload_value(path),
        "upload_item": lambda: _upload_value(path)[0],
        "upload_v7": lambda: {path.name: {"metadata": {"name": path.name}, "content": data}},
    }
    img = PILImage.create(inputs[kind]())
    assert isinstance(img, PILImage) and isinstance(img, Image.Image)
    assert img.mode == "RGB" and img.size == (rgb.shape[1], rgb.shape[0])
    assert np.abs(np.asarray(img).astype(int) - rgb.astype(int)).max() <= 1  # float round trips may round


def test_create_takes_the_last_of_several_uploaded_files(digit, mnist_small):
    path, _ = digit
    other = sorted((mnist_small / "valid").rglob("*.png"))[-1]
    value = _upload_value(path) + _upload_value(other)
    assert np.array_equal(np.asarray(PILImage.create(value)), np.asarray(Image.open(other).convert("RGB")))


def test_create_turns_a_palette_image_with_transparency_into_rgb_on_white(tmp_path):
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    out = PILImage.create(buf.getvalue())
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    "bad, message",
    [
        (b"", "empty"),
        (b"not an image at all", "not an image PIL can read"),
        ((), "No file uploaded yet"),
        (12, "Cannot make an image from int"),
        (np.zeros((2, 3, 4, 5)), "not an image"),
        ("a\x00b", "NUL byte"),
    ],
)
def test_create_says_what_is_wrong_with_bad_input(bad, message):
    with pytest.raises(DataError, match=message):
        PILImage.create(bad)


def test_create_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such.png"):
        PILImage.create(tmp_path / "no_such.png")


def test_create_names_a_file_that_is_not_an_image(tmp_path):
    fake = tmp_path / "fake.jpg"
    fake.write_text("hello")
    with pytest.raises(DataError, match="fake.jpg"):
        PILImage.create(fake)


def test_predict_takes_uploaded_bytes_and_gives_what_the_path_gives(mnist_small, digit):
    path, _ = digit
    dls = ImageDataLoaders.from_folder(mnist_small, item_tfms=Resize(16), bs=16, seed=0)
    learn = Learner(dls, small_cnn(dls.c))
    label, idx, probs = learn.predict(path)
    for item in (path.read_bytes(), _upload_value(path), PILImage.create(path)):
        l2, i2, p2 = learn.predict(item)
        assert (l2, int(i2)) == (label, int(idx))
        assert torch.allclose(p2, probs)
