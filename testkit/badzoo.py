"""A zoo of real bad inputs, and the entry points they are fed to, for tests/test_bad_inputs.py and bench/faults.py.

Every case is written by `plant(case, workdir)` into a fresh small dataset (`workdir/data`: train and
valid folders with classes "a" and "b" of real 24x24 PNGs) beside a folder outside it (`workdir/outside`)
that symlinks may point at. Nothing is downloaded and nothing is patched: the files are real (the
decompression bomb is a genuine 14000x14000 1-bit PNG, 24 KB on disk, made with zlib).

`run(case, entry, workdir, learn)` feeds the planted thing to one entry point and says what happened,
in words (`Result.outcome`), and whether any file was lost on the way: every file under `workdir`
(links by their target, files by sha256) is compared before and after with what should be there.
`EXPECTED` holds the decided outcome of every (case, entry point); "n/a" where the thing cannot enter.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("a", "b")
ODD_CLASS = "-odd 100% #1 café 猫"  # a leading dash, %, #, spaces and unicode: all legal in a folder name
THUMB = 64  # thumbnail box, pixels
PLACEHOLDER_GREY = 230  # the background of ThumbnailCache's "cannot open" tile

# -- writing images -------------------------------------------------------------------------------------


def _noise(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    w, h = size
    arr = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    return Image.fromarray(arr).convert(mode)


def write_good(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _noise((24, 24), seed).save(path)
    return path


def make_dataset(root: Path) -> Path:
    """train/{a,b}/{0,1}.png and valid/{a,b}/0.png: six real images."""
    seed = 0
    for split, n in (("train", 2), ("valid", 1)):
        for cls in CLASSES:
            for i in range(n):
                seed += 1
                write_good(root / split / cls / f"{i}.png", seed)
    return root


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


_BOMB: bytes | None = None


def bomb_png(side: int = 14000) -> bytes:
    """A valid, all-black 1-bit PNG of side x side pixels (196 M at 14000: over twice PIL's limit, so
    PIL refuses it with DecompressionBombError rather than only warning), 24 KB on disk."""
    global _BOMB
    if _BOMB is None or side != 14000:
        row = b"\0" * (1 + (side + 7) // 8)  # filter byte, then 1 bit per pixel
        comp = zlib.compressobj(9)
        idat = b"".join(comp.compress(row * min(1000, side - k)) for k in range(0, side, 1000)) + comp.flush()
        data = (
            b"\x89PNG\r\n\x1a\n"
            + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b"")
        )
        if side != 14000:
            return data
        _BOMB = data
    return _BOMB


def exif_rotated_jpeg(path: Path) -> Path:
    """A 40x20 JPEG stored sideways (left half red, right half blue) with EXIF Orientation=6: upright,
    it is 20 wide and 40 tall, red on top."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.fromarray(arr).save(path, quality=95, exif=exif.tobytes())
    return path


def upright_reference(path: Path) -> Image.Image:
    """The EXIF-rotated photo turned upright by hand (its raw pixels rotated), without any EXIF left,
    to compare nbtrain's own handling with."""
    with Image.open(path) as raw:
        turned = raw.convert("RGB").transpose(Image.Transpose.ROTATE_270)
    return Image.fromarray(np.asarray(turned))


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def _truncated(path: Path, fmt: str) -> Path:
    buf = io.BytesIO()
    _noise((64, 64), 7).save(buf, format=fmt)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])  # header intact, half the pixels missing
    return path


def _palette_with_transparency(path: Path) -> Path:
    img = _noise((24, 24), 8).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    img.save(path, transparency=0)
    return path


def _rgba(path: Path) -> Path:
    img = _noise((24, 24), 9).convert("RGBA")
    alpha = np.zeros((24, 24), np.uint8)
    alpha[:, 12:] = 255  # half transparent: must come out composited on white
    img.putalpha(Image.fromarray(alpha))
    return _save(img, path)


def _sixteen_bit(path: Path) -> Path:
    arr = np.linspace(0, 65535, 24 * 24).reshape(24, 24).astype(np.uint16)
    return _save(Image.fromarray(arr), path)


def _animated_gif(path: Path) -> Path:
    frames = [_noise((24, 24), 20 + k).convert("P") for k in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


HTML_404 = (
    "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n<body><h1>Not Found</h1>\n"
    "<p>The requested URL was not found on this server.</p></body></html>\n"
)

# -- the cases ------------------------------------------------------------------------------------------


@dataclass
class Planted:
    """What a case put in the dataset, and how the file operations address it."""

    path: Path  # the bad thing itself
    delete_src: Path | None = None  # what apply deletes (default: path)
    relabel_src: Path | None = None  # what apply relabels (default: path)
    label: str = "b"  # the class apply relabels to
    image: Path | None = None  # what predict and the thumbnails open (default: path)
    reference: Path | None = None  # for the EXIF case: the file to compare with


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    make: Callable[[Path, Path], Planted]  # (dataset root, outside folder) -> what was planted


def _in_a(root: Path, name: str) -> Path:
    return root / "train" / "a" / name


def _file_case(name: str, what: str, fname: str, write: Callable[[Path], object]) -> Case:
    def make(root: Path, outside: Path) -> Planted:
        p = _in_a(root, fname)
        write(p)
        return Planted(p)

    return Case(name, what, make)


def _symlink_loop_file(root: Path, outside: Path) -> Planted:
    p = _in_a(root, "loop.jpg")
    p.symlink_to("loop.jpg")  # points at itself: ELOOP
    return Planted(p)


def _dangling_symlink(root: Path, outside: Path) -> Planted:
    p = _in_a(root, "gone.jpg")
    p.symlink_to(outside / "deleted-long-ago.jpg")
    return Planted(p)


def _symlink_loop_dir(root: Path, outside: Path) -> Planted:
    p = _in_a(root, "loop")
    p.symlink_to("..", target_is_directory=True)  # train/a/loop -> train: a walk that follows it never ends
    return Planted(p)


def _symlink_outside(root: Path, outside: Path) -> Planted:
    target = write_good(outside / "secret.png", 100)
    p = _in_a(root, "outside.png")
    p.symlink_to(target)  # absolute, as `ln -s /abs/path` makes
    return Planted(p)


def _symlink_inside(root: Path, outside: Path) -> Planted:
    p = _in_a(root, "dup.png")
    p.symlink_to(Path("..") / "b" / "0.png")  # relative, to another image of the dataset
    return Planted(p)


def _odd_class(root: Path, outside: Path) -> Planted:
    for split, n in (("train", 2), ("valid", 1)):
        for i in range(n):
            write_good(root / split / ODD_CLASS / f"{i}.png", 50 + i + 10 * (split == "valid"))
    odd = root / "train" / ODD_CLASS
    # relabel a file *into* the odd class; delete one from it
    return Planted(
        odd, delete_src=odd / "0.png", relabel_src=root / "train" / "a" / "0.png", label=ODD_CLASS, image=odd / "0.png"
    )


def _class_link_outside(root: Path, outside: Path) -> Planted:
    target = outside / "more_c"
    for i in range(2):
        write_good(target / f"{i}.png", 60 + i)
    link = root / "train" / "c"
    link.symlink_to(target, target_is_directory=True)
    # relabelling into "c" would move a file out of the dataset; deleting from it would delete outside
    return Planted(link, delete_src=link / "0.png", relabel_src=root / "train" / "a" / "0.png", label="c")


def _label_case(label: str) -> Callable[[Path, Path], Planted]:
    def make(root: Path, outside: Path) -> Planted:
        return Planted(root / "train" / "a" / "0.png", label=label)

    return make


def _exif(root: Path, outside: Path) -> Planted:
    return Planted(exif_rotated_jpeg(_in_a(root, "rotated.jpg")))


CASES: list[Case] = [
    _file_case("truncated JPEG", "a download cut off halfway", "truncated.jpg", lambda p: _truncated(p, "JPEG")),
    _file_case("truncated PNG", "a download cut off halfway", "truncated.png", lambda p: _truncated(p, "PNG")),
    _file_case("zero bytes", "an empty .jpg", "empty.jpg", lambda p: p.write_bytes(b"")),
    _file_case("text as .jpg", "a text file named .jpg", "notes.jpg", lambda p: p.write_text("just some notes\n")),
    _file_case("HTML as .jpg", "a 404 page saved as .jpg", "404.jpg", lambda p: p.write_text(HTML_404)),
    _file_case("CMYK JPEG", "print-ready photo", "cmyk.jpg", lambda p: _save(_noise((24, 24), 3, "CMYK"), p)),
    _file_case("16-bit PNG", "I;16 greyscale", "deep16.png", _sixteen_bit),
    _file_case("palette+transparency", "P mode with a transparent index", "palette.png", _palette_with_transparency),
    _file_case("RGBA PNG", "half transparent", "rgba.png", _rgba),
    _file_case("greyscale PNG", "mode L", "grey.png", lambda p: _save(_noise((24, 24), 4, "L"), p)),
    _file_case("animated GIF", "3 frames", "anim.gif", _animated_gif),
    _file_case("1x1 pixel", "a tracking pixel", "pixel.png", lambda p: _save(_noise((1, 1), 5), p)),
    _file_case("decompression bomb", "14000x14000 1-bit PNG, 24 KB", "bomb.png", lambda p: p.write_bytes(bomb_png())),
    Case("EXIF-rotated JPEG", "Orientation=6, stored sideways", _exif),
    _file_case("unicode name", "café_猫_Ωμέγα.png", "café_猫_Ωμέγα.png", lambda p: write_good(p, 11)),
    _file_case("spaces in name", "'my photo (1) copy.png'", "my photo (1) copy.png", lambda p: write_good(p, 12)),
    Case("symlink loop (file)", "loop.jpg -> loop.jpg", _symlink_loop_file),
    Case("dangling symlink", "gone.jpg -> a file that is gone", _dangling_symlink),
    Case("symlink loop (folder)", "train/a/loop -> ..", _symlink_loop_dir),
    Case("symlink to outside", "outside.png -> /abs/outside/secret.png", _symlink_outside),
    Case("symlink inside", "dup.png -> ../b/0.png", _symlink_inside),
    Case("odd class name", repr(ODD_CLASS), _odd_class),
    Case("class folder -> outside", "train/c -> /abs/outside/more_c", _class_link_outside),
    Case("label '../x'", "relabel a/0.png to '../x'", _label_case("../x")),
    Case("label '..'", "relabel a/0.png to '..'", _label_case("..")),
    Case("label absolute", "relabel a/0.png to '/tmp/x'", _label_case("/tmp/x")),
    Case("label 'a/../../x'", "relabel a/0.png to 'a/../../x'", _label_case("a/../../x")),
]
CASE_BY_NAME = {c.name: c for c in CASES}

ENTRIES = ["loaders", "loaders skip", "verify_images", "predict", "thumbnail", "apply delete", "apply relabel"]

# -- the decided outcomes -------------------------------------------------------------------------------

OK_IMAGE = {
    "loaders": "accepted",
    "loaders skip": "accepted",
    "verify_images": "not listed",
    "predict": "ok",
    "thumbnail": "thumbnail",
    "apply delete": "deleted",
    "apply relabel": "moved",
}
NOT_AN_IMAGE = {
    "loaders": "refused, named",
    "loaders skip": "left out, named once",
    "verify_images": "listed",
    "predict": "error naming the file",
    "thumbnail": "placeholder",
    "apply delete": "deleted",
    "apply relabel": "moved",
}
BROKEN_PIXELS = {
    **NOT_AN_IMAGE,
    "loaders": "skipped at decode, named once",
    "loaders skip": "skipped at decode, named once",
}
LINK_OK = {**OK_IMAGE, "apply delete": "link deleted, target kept", "apply relabel": "link moved, target kept"}
BAD_LINK = {**NOT_AN_IMAGE, "apply delete": "link deleted", "apply relabel": "link moved"}
NA = {e: "n/a" for e in ENTRIES}
REFUSED_LABEL = {**NA, "apply relabel": "refused, nothing changed"}

EXPECTED: dict[str, dict[str, str]] = {
    "truncated JPEG": BROKEN_PIXELS,
    "truncated PNG": BROKEN_PIXELS,
    "zero bytes": NOT_AN_IMAGE,
    "text as .jpg": NOT_AN_IMAGE,
    "HTML as .jpg": NOT_AN_IMAGE,
    "CMYK JPEG": OK_IMAGE,
    "16-bit PNG": OK_IMAGE,
    "palette+transparency": OK_IMAGE,
    "RGBA PNG": OK_IMAGE,
    "greyscale PNG": OK_IMAGE,
    "animated GIF": OK_IMAGE,
    "1x1 pixel": OK_IMAGE,
    "decompression bomb": NOT_AN_IMAGE,
    "EXIF-rotated JPEG": {**OK_IMAGE, "predict": "ok, upright", "thumbnail": "thumbnail, upright"},
    "unicode name": OK_IMAGE,
    "spaces in name": OK_IMAGE,
    "symlink loop (file)": BAD_LINK,
    "dangling symlink": BAD_LINK,
    "symlink loop (folder)": {
        **NA,
        "loaders": "link not followed, named once",
        "loaders skip": "link not followed, named once",
        "verify_images": "not listed",
        "apply delete": "not done: a folder, nothing changed",
        "apply relabel": "not done: a folder, nothing changed",
    },
    "symlink to outside": LINK_OK,
    "symlink inside": LINK_OK,
    "odd class name": {
        **OK_IMAGE,
        "loaders": "accepted, class kept verbatim",
        "loaders skip": "accepted, class kept verbatim",
    },
    "class folder -> outside": {
        **NA,
        "loaders": "link not followed, named once",
        "loaders skip": "link not followed, named once",
        "verify_images": "not listed",
        "apply delete": "refused, nothing changed",
        "apply relabel": "refused, nothing changed",
    },
    "label '../x'": REFUSED_LABEL,
    "label '..'": REFUSED_LABEL,
    "label absolute": REFUSED_LABEL,
    "label 'a/../../x'": REFUSED_LABEL,
}

# -- running one (case, entry point) --------------------------------------------------------------------


@dataclass
class Result:
    case: str
    entry: str
    outcome: str
    files_before: int = 0
    files_after: int = 0
    lost: list[str] = field(default_factory=list)  # should be there (same bytes / same link target) and are not
    extra: list[str] = field(default_factory=list)  # are there and should not be
    detail: str = ""  # the message seen, for the report

    @property
    def expected(self) -> str:
        return EXPECTED[self.case][self.entry]


def snapshot(top: Path) -> dict[str, str]:
    """Relative path -> "file <sha256>" or "link <target>", for everything under `top` but .nbtrain;
    symlinks are recorded, never followed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):  # followlinks=False: a looping link is just a name
        dirnames[:] = [d for d in dirnames if d != ".nbtrain"]
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, top)
            if os.path.islink(p):
                out[rel] = f"link {os.readlink(p)}"
            else:
                out[rel] = f"file {_digest(p)}"
    # links to folders sit in dirnames, and os.walk does not descend into them
    return out


def _digest(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def plant(case: Case, workdir: Path) -> tuple[Path, Planted]:
    root = make_dataset(workdir / "data")
    outside = workdir / "outside"
    outside.mkdir(parents=True, exist_ok=True)
    write_good(outside / "unrelated.png", 99)
    return root, case.make(root, outside)


def _names(planted: Path, text: str) -> bool:
    return str(planted) in text


def _is_placeholder(jpeg: bytes) -> bool:
    img = Image.open(io.BytesIO(jpeg)).convert("RGB")
    if img.size != (THUMB, THUMB):
        return False
    corners = [img.getpixel((THUMB - 2, THUMB - 2)), img.getpixel((1, THUMB - 2)), img.getpixel((THUMB - 2, 1))]
    return all(abs(c - PLACEHOLDER_GREY) <= 6 for px in corners for c in px)


def _loaders(root: Path, planted: Planted, bad_files: str) -> tuple[str, str]:
    from nbtrain import DataError, ImageDataLoaders, Resize

    target = planted.path
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dls = ImageDataLoaders.from_folder(
                root, item_tfms=Resize(16), bs=4, num_workers=0, seed=0, bad_files=bad_files, device="cpu"
            )
        except DataError as e:
            return ("refused, named" if _names(target, str(e)) else "refused, NOT named"), str(e)
        n_build = len(caught)
        passes = []
        for _ in range(2):
            n = 0
            for dl in dls.loaders:
                n += sum(len(y) for _, y in dl.new(shuffle=False, drop_last=False))
            passes.append(n)
    msgs = [str(w.message) for w in caught]
    at_build = [m for m in msgs[:n_build] if _names(target, m)]
    at_decode = [m for m in msgs[n_build:] if _names(target, m)]
    items = list(dls.train_ds.items) + list(dls.valid_ds.items)
    inside = [p for p in items if p == target or target in p.parents]
    detail = "; ".join(at_build + at_decode)[:300]
    good = len(items) - len(inside)
    if passes[0] != passes[1] or passes[0] < good:
        return f"good images lost from batches ({passes} of {good})", detail
    if not inside:
        if target.is_dir() or (target.is_symlink() and Path(os.path.realpath(target)).is_dir()):
            kind = "link not followed"
        else:
            kind = "left out"
        return kind + (", named once" if len(at_build) == 1 else f", named {len(at_build)} times"), detail
    if passes[0] < len(items):  # the planted file was skipped while decoding
        return (
            "skipped at decode, named once"
            if len(at_decode) == 1
            else f"skipped at decode, named {len(at_decode)} times"
        ), detail
    if at_build or at_decode:
        return "accepted, but warned", detail
    if planted.label == ODD_CLASS:
        return ("accepted, class kept verbatim" if ODD_CLASS in dls.vocab else f"class name changed: {dls.vocab}"), ""
    return "accepted", ""


def _verify(root: Path, planted: Planted) -> tuple[str, str]:
    from nbtrain import get_image_files, verify_images

    bad = verify_images(get_image_files(root))
    wrong = [p for p in bad if p != planted.path]
    if wrong:
        return f"lists good files: {wrong}", ""
    return ("listed" if bad else "not listed"), ""


def _predict(learn, planted: Planted) -> tuple[str, str]:
    path = planted.image or planted.path
    try:
        label, _, probs = learn.predict(path)
    except Exception as e:
        msg = f"{type(e).__name__}: {e}"
        return ("error naming the file" if _names(path, str(e)) else "unclear error"), msg
    if label not in learn.dls.vocab or not bool(np.isfinite(probs.numpy()).all()):
        return f"bad prediction {label!r} {probs}", ""
    if path.name == "rotated.jpg":
        up = learn.predict(upright_reference(path))[2]
        with Image.open(path) as raw:
            sideways = learn.predict(Image.fromarray(np.asarray(raw.convert("RGB"))))[2]
        if np.allclose(probs, up, atol=1e-5) and not np.allclose(probs, sideways, atol=1e-5):
            return "ok, upright", ""
        return "ok, NOT upright", ""
    return "ok", ""


def _thumbnail(planted: Planted) -> tuple[str, str]:
    from nbtrain.cleaner import ThumbnailCache

    path = planted.image or planted.path
    data = ThumbnailCache(THUMB, THUMB)(path)
    if _is_placeholder(data):
        return "placeholder", ""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if path.name == "rotated.jpg":
        w, h = img.size
        r, g, b = img.getpixel((w // 2, h // 4))
        return ("thumbnail, upright" if h > w and r > 200 and b < 60 else f"thumbnail, NOT upright {img.size}"), ""
    return "thumbnail", ""


def _apply(root: Path, workdir: Path, planted: Planted, kind: str) -> tuple[str, str, dict[str, str]]:
    """Returns the outcome, the message, and what should be under workdir afterwards."""
    from nbtrain import fileops

    before = snapshot(workdir)
    src = (planted.delete_src or planted.path) if kind == "delete" else (planted.relabel_src or planted.path)
    label = None if kind == "delete" else planted.label
    rel = os.path.relpath(src, workdir)
    # A link to a real file: that file must survive whatever happens to the link.
    target = os.path.realpath(src) if os.path.islink(src) and os.path.isfile(src) else None
    target_hash = _digest(target) if target else None
    try:
        report = fileops.apply_actions([fileops.Action(kind, src, label)], root)
    except ValueError as e:
        return "refused, nothing changed", str(e), before
    expected = dict(before)
    if report.errors:
        what = "a folder" if "folder" in " ".join(report.errors) else "; ".join(report.errors)
        return f"not done: {what}, nothing changed", " ".join(report.errors), expected
    is_link = before.get(rel, "").startswith("link")
    what = "link " if is_link else ""
    target_kept = ""
    if target is not None:
        now = _digest(target) if os.path.isfile(target) else None
        target_kept = ", target kept" if now == target_hash else ", TARGET LOST"
    entry = expected.pop(rel, None)
    if kind == "delete":
        return f"{what}deleted{target_kept}", str(report), expected
    dst = report.moved[0][1] if report.moved else None
    if dst is not None and entry is not None:
        expected[os.path.relpath(dst, workdir)] = entry
    if dst is None or Path(dst).parent.name != label:
        return f"not moved ({report.summary()})", str(report), before
    return f"{what}moved{target_kept}", str(report), expected


def run(case: Case | str, entry: str, workdir: Path, learn=None) -> Result:
    """Plant `case` in a fresh dataset under `workdir`, feed it to `entry`, and check every file."""
    case = CASE_BY_NAME[case] if isinstance(case, str) else case
    if EXPECTED[case.name][entry] == "n/a":
        return Result(case.name, entry, "n/a")
    root, planted = plant(case, workdir)
    before = snapshot(workdir)
    expected = before
    if entry in ("loaders", "loaders skip"):
        outcome, detail = _loaders(root, planted, "error" if entry == "loaders" else "skip")
    elif entry == "verify_images":
        outcome, detail = _verify(root, planted)
    elif entry == "predict":
        outcome, detail = _predict(learn, planted)
    elif entry == "thumbnail":
        outcome, detail = _thumbnail(planted)
    elif entry in ("apply delete", "apply relabel"):
        outcome, detail, expected = _apply(root, workdir, planted, entry.split()[1])
    else:
        raise ValueError(f"unknown entry point {entry!r}")
    after = snapshot(workdir)
    lost = sorted(k for k, v in expected.items() if after.get(k) != v)
    extra = sorted(k for k in after if k not in expected)
    return Result(case.name, entry, outcome, len(before), len(after), lost, extra, detail)


def tiny_learner(workdir: Path):
    """An untrained tiny CNN Learner at 16 px on a clean copy of the small dataset: enough to predict."""
    import torch
    from torch import nn

    from nbtrain import ImageDataLoaders, Learner, Resize

    torch.manual_seed(0)
    root = make_dataset(workdir / "clean")
    dls = ImageDataLoaders.from_folder(root, item_tfms=Resize(16), bs=4, num_workers=0, seed=0, device="cpu")
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, dls.c)
    )
    return Learner(dls, model)


# -- a save killed with SIGKILL -------------------------------------------------------------------------


@dataclass
class SaveTrial:
    """One `learn.save` killed at a random moment; the checkpoint found afterwards."""

    delay: float  # seconds after the child started saving
    found: str  # "old" (the checkpoint from before, same bytes), "new" (a complete later version) or what was wrong
    temp_files: int  # hidden `.ckpt.pth.*.tmp` files there now (the next save removes a killed one's)
    mid_save: bool  # this kill left a new temp file: it cut a save off between creating and renaming it
    other_files: list[str]  # anything else in the folder (a partial checkpoint would show here)
    child: str  # how the child ended: "killed" expected


def kill_during_save(workdir: Path, trials: int = 10, seed: int = 0, arch: str = "resnet18") -> list[SaveTrial]:
    """Fork a child that saves `learn.save("ckpt")` over and over, each time with a new marker in one
    small tensor, SIGKILL it at a random moment, and look at models/ckpt.pth: it must be the old file
    byte for byte, or a complete new version (it loads, and every other tensor equals the parent's).
    The child is forked from the process that built the learner, so a trial costs no import."""
    import random
    import signal
    import time

    import torch

    from nbtrain import ImageDataLoaders, Resize, vision_learner
    from nbtrain.persistence import safe_load

    rng = random.Random(seed)
    dls = ImageDataLoaders.from_folder(
        make_dataset(workdir / "data"), item_tfms=Resize(32), bs=4, num_workers=0, device="cpu"
    )
    learn = vision_learner(dls, arch, pretrained=False, path=workdir)
    path = learn.save("ckpt")
    reference = {k: v.clone() for k, v in learn.model.state_dict().items()}
    marker = [k for k, v in reference.items() if v.dtype.is_floating_point][-1]  # the head's last bias
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        learn.save("ckpt_timing")
        timings.append(time.perf_counter() - start)
    t_save = sorted(timings)[1]
    (path.parent / "ckpt_timing.pth").unlink()

    out = []
    for _ in range(trials):
        old_hash = _digest(path)  # what is on disk before this trial: the first save, or a complete later one
        temps_before = {n for n in os.listdir(path.parent) if n.endswith(".tmp")}
        ready_r, ready_w = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() of a process with threads
            pid = os.fork()
        if pid == 0:  # the child: no torch compute, only filling a tensor's memory and saving
            code = 1
            try:
                os.close(ready_r)
                values = learn.model.state_dict()[marker].numpy()  # shares the parameter's memory
                os.write(ready_w, b"1")
                k = 1
                while True:
                    values[...] = k
                    learn.save("ckpt")
                    k += 1
            finally:
                os._exit(code)
        os.close(ready_w)
        os.read(ready_r, 1)
        os.close(ready_r)
        delay = rng.uniform(0, 2 * t_save)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        child = "killed" if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL else f"exited {status}"
        names = os.listdir(path.parent)
        temps = [n for n in names if n.startswith(".ckpt.pth.") and n.endswith(".tmp")]
        others = sorted(n for n in names if n not in temps and n != "ckpt.pth")
        if not path.exists():
            found = "checkpoint missing"
        elif _digest(path) == old_hash:
            found = "old"
        else:
            try:
                state = safe_load(path)
                weights = state["model"]
                same = all(torch.equal(weights[k], v) for k, v in reference.items() if k != marker)
                k = float(weights[marker].flatten()[0])
                found = (
                    "new"
                    if same and k >= 1 and bool((weights[marker] == k).all())
                    else "changed, neither old nor a complete new version"
                )
            except Exception as e:  # a torn file
                found = f"unreadable ({type(e).__name__}: {e})"
        out.append(SaveTrial(delay, found, len(temps), bool(set(temps) - temps_before), others, child))
    return out
