"""resize_images and resize_image: in place safely, folders kept, images upright, unreadable files named."""

from __future__ import annotations

import pytest
from PIL import Image

from nbtrain import resize_image, resize_images
from testkit import image_server


@pytest.fixture
def photos(tmp_path):
    """A folder of real images in the formats downloads bring: JPEG, CMYK, 16-bit, palette, EXIF-rotated, WebP, GIF."""
    root = tmp_path / "photos"
    root.mkdir()
    for name, data in image_server.format_zoo().items():
        (root / name).write_bytes(data)
    big = root / "big.jpg"
    image_server.gradient(400, 200).save(big, "JPEG")
    return root


def _sizes(folder):
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            with Image.open(p) as img:
                out[p.relative_to(folder).as_posix()] = (img.size, img.mode)
    return out


def test_resizing_a_folder_in_place_shrinks_each_file_and_leaves_no_temporary_file(photos):
    failed = resize_images(photos, max_size=50, dest=photos)
    assert failed == []
    sizes = _sizes(photos)
    assert sizes["big.jpg"] == ((50, 25), "RGB")
    assert all(max(size) <= 50 for size, _ in sizes.values()), sizes
    assert {name for name, (_, mode) in sizes.items() if mode != "RGB"} == {"animated.gif"}  # GIF stores a palette
    assert sorted(p.name for p in photos.iterdir()) == sorted(sizes)  # no .tmp left


def test_the_same_folder_spelled_another_way_is_still_resized_in_place(photos, monkeypatch):
    monkeypatch.chdir(photos.parent)
    assert resize_images("photos", max_size=300, dest=photos.resolve()) == []
    assert _sizes(photos)["big.jpg"] == ((300, 150), "RGB")


def test_recurse_keeps_the_folder_structure(photos, tmp_path):
    (photos / "grizzly").mkdir()
    image_server.gradient(120, 60).save(photos / "grizzly" / "a.jpg", "JPEG")
    out = tmp_path / "small"
    resize_images(photos, max_size=30, recurse=True, dest=out)
    assert _sizes(out)["grizzly/a.jpg"] == ((30, 15), "RGB")
    assert "big.jpg" in _sizes(out)


def test_the_exif_orientation_is_applied(photos, tmp_path):
    assert _sizes(photos)["exif-rotated.jpg"][0] == (90, 40)  # stored sideways
    resize_image("exif-rotated.jpg", tmp_path / "out", src=photos)
    assert _sizes(tmp_path / "out")["exif-rotated.jpg"][0] == (40, 90)


def test_unreadable_files_are_returned_and_named_in_a_warning_not_skipped_silently(photos, tmp_path):
    (photos / "page.jpg").write_bytes(b"<html>not found</html>")
    with pytest.warns(UserWarning, match="could not read 1 of"):
        failed = resize_images(photos, max_size=50, dest=tmp_path / "out")
    assert failed == [photos / "page.jpg"]
    assert (photos / "page.jpg").exists()  # left as it was


def test_an_image_that_needs_no_change_is_copied_byte_for_byte(photos, tmp_path):
    resize_image("big.jpg", tmp_path / "out", src=photos, max_size=1000)
    assert (tmp_path / "out" / "big.jpg").read_bytes() == (photos / "big.jpg").read_bytes()


def test_resume_keeps_files_already_there_and_ext_changes_the_format(photos, tmp_path):
    out = tmp_path / "out"
    assert resize_image("big.jpg", out, src=photos, max_size=40, ext=".png") == out / "big.png"
    with Image.open(out / "big.png") as img:
        assert img.format == "PNG"
    assert resize_image("big.png", out, src=out, max_size=10, resume=True) is None


def test_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No folder"):
        resize_images(tmp_path / "nope", max_size=10)
