"""ImageClassifierCleaner's plain ipywidgets front end (what Kaggle gets) in a real JupyterLab and Chromium:
mark images like a person, apply, check the disk.

A kernel trains a small model on real MNIST digit files and shows the cleaner with `frontend="plain"`.
Through the page, one image is marked <Delete> with one click on its Delete button and another given a
new class with its menu; "Accept all predictions shown" and then Undo leave those two choices as they
were. Then the apply cell runs, and the files on disk must show exactly those two changes: the deleted
file gone, the relabelled one in its new class folder with the same bytes, every other file untouched.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from .conftest import (
    ACTIVE_PANEL,
    REPO_ROOT,
    cell_output_text,
    open_notebook,
    run_cell,
    save_screenshot,
    wait_for_kernel_idle,
    wait_until,
)

pytestmark = pytest.mark.browser

DATASET = "digits"  # under the server's root, beside the notebook
SAMPLE = dict(n=500, noise=0.1, seed=0)  # 400 training and 100 validation images, 10% of training labels wrong
MAX_N = 8  # two rows of four thumbnails at the default thumbnail size

# A small CNN trained from scratch: a few seconds, and right about most digits.
CELL_TRAIN = f"""
import json
from pathlib import Path

import torch
from torch import nn
from nbtrain import ImageClassifierCleaner, ImageDataLoaders, Learner, Resize
from nbtrain.samples import make_mnist_sample

torch.manual_seed(0)
path = make_mnist_sample({DATASET!r}, **{SAMPLE!r}).path  # the test wrote it already: reused as it is
dls = ImageDataLoaders.from_folder(path, item_tfms=Resize(28), bs=32, seed=0)
model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                      nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 7 * 7, dls.c))
learn = Learner(dls, model)
learn.fit(6, 3e-3)
"""

CELL_CLEANER = f"""
cleaner = ImageClassifierCleaner(learn, max_n={MAX_N}, frontend="plain")
cleaner
"""

# Which file each image cell shows, in display order, so the test knows what it marks.
CELL_PAGE = """
Path("page.json").write_text(json.dumps({"category": cleaner.dd_cats.value, "split": cleaner.dd_ds.value,
                                         "fns": [str(p) for p in cleaner.fns]}));
"""

CELL_APPLY = """
Path("pending.json").write_text(json.dumps({str(p): c for p, c in cleaner.choices.items()}))
report = cleaner.apply()
print(report)
"""

GRID_SELECTS = f"{ACTIVE_PANEL} .widget-gridbox .widget-dropdown select"  # the menus under the images
GRID_CARDS = f"{ACTIVE_PANEL} .widget-gridbox > .widget-vbox"  # one box per image
WIDGET = f"{ACTIVE_PANEL} .jp-OutputArea-output .widget-vbox"  # the cleaner's outer box


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` by relative path, leaving out the cleaner's own `.nbtrain` folder."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and rel.parts[0] != ".nbtrain":
            out[rel.as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _screenshot_cleaner(page, name: str = "cleaner.png") -> Path:
    """The cleaner's cell (its code, the controls and the two rows of thumbnails) at the top of the viewport."""
    cell = page.locator(f"{ACTIVE_PANEL} .jp-Notebook .jp-Cell").nth(1)
    cell.evaluate("el => el.scrollIntoView({block: 'start'})")
    page.mouse.move(5, 5)  # no hover highlight on a thumbnail
    page.wait_for_timeout(500)  # let the scroll and the images settle
    box = cell.bounding_box()
    shot = REPO_ROOT / "artifacts" / name
    shot.parent.mkdir(parents=True, exist_ok=True)
    viewport = page.viewport_size
    left, top = max(0, box["x"] - 8), max(0, box["y"] - 8)
    width = min(box["width"] + 16, viewport["width"] - left)
    height = min(box["height"] + 16, viewport["height"] - top)
    page.screenshot(path=str(shot), clip={"x": left, "y": top, "width": width, "height": height})
    return shot


def test_mark_in_the_browser_then_apply_changes_exactly_those_files(jupyter_server, page):
    from nbtrain.samples import make_mnist_sample

    root = jupyter_server.root
    sample = make_mnist_sample(root / DATASET, **SAMPLE)
    data = sample.path
    before = _hashes(data)
    assert sum(k.endswith(".png") for k in before) == SAMPLE["n"]

    jupyter_server.write_notebook("clean.ipynb", [CELL_TRAIN, CELL_CLEANER, CELL_PAGE, CELL_APPLY])
    open_notebook(page, jupyter_server, "clean.ipynb")
    # The left sidebar (file browser) off, so the notebook gets the width, as most people work.
    # A click on the open panel's tab closes it, as a person would.
    open_tab = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
    if open_tab.count():
        open_tab.first.click()

    run_cell(page, 0, timeout=420)  # train: seconds on 2 idle cores, minutes when they are shared
    run_cell(page, 1)  # show the cleaner
    run_cell(page, 2)  # record which file each image cell shows
    shown = json.loads((root / "page.json").read_text())
    fns = [Path(p) for p in shown["fns"]]
    assert len(fns) == MAX_N and all(p.parent.name == shown["category"] for p in fns), shown

    selects = page.locator(GRID_SELECTS)
    selects.first.wait_for(state="visible", timeout=30_000)
    assert selects.count() == MAX_N
    # Every image menu starts at <Keep> and offers <Delete> and the ten classes.
    options = selects.first.locator("option").all_inner_texts()
    assert options == ["<Keep>", "<Delete>", *[str(d) for d in range(10)]], options
    assert page.get_by_text("0 to delete, 0 to relabel").is_visible()

    # Do what a person would: move a wrongly filed digit to its true class, and delete another image.
    # The sample knows which files it put in a wrong folder; without one on this page, any two will do.
    truth = sample.labels.set_index("fname")
    rel = [p.relative_to(data).as_posix() for p in fns]
    wrong = [i for i, r in enumerate(rel) if truth.loc[r, "flipped"]]
    i_relabel = wrong[0] if wrong else 1
    new_class = str(truth.loc[rel[i_relabel], "true_label"]) if wrong else ("7" if shown["category"] != "7" else "1")
    i_delete = next(i for i in [*wrong[1:], *range(len(fns))] if i != i_relabel)
    to_delete, to_relabel = fns[i_delete], fns[i_relabel]
    assert new_class != to_relabel.parent.name
    # One click on the card's Delete button; its label turns to Keep (a second click would keep it).
    page.locator(GRID_CARDS).nth(i_delete).get_by_role("button", name="Delete").click()
    page.get_by_text("1 to delete, 0 to relabel").wait_for(timeout=15_000)
    page.locator(GRID_CARDS).nth(i_delete).get_by_role("button", name="Keep").wait_for(timeout=15_000)
    page.select_option(f"{GRID_SELECTS} >> nth={i_relabel}", new_class)
    page.get_by_text("1 to delete, 1 to relabel").wait_for(timeout=15_000)
    # A bulk decision for the page, then one Undo: back to the two choices.
    page.get_by_role("button", name="Accept all predictions shown").click()
    wait_for_kernel_idle(page, 30)
    page.get_by_role("button", name="Undo").click()
    page.get_by_text("1 to delete, 1 to relabel").wait_for(timeout=15_000)
    wait_for_kernel_idle(page, 30)
    save_screenshot(page, "cleaner_marked", full_page=False)
    shot = _screenshot_cleaner(page, "cleaner_plain.png")
    assert shot.stat().st_size > 20_000, "the screenshot looks empty"
    assert _hashes(data) == before, "choosing in the menus must not touch any file before apply()"

    run_cell(page, 3)  # apply
    pending = json.loads((root / "pending.json").read_text())
    assert pending == {str(to_delete): "<Delete>", str(to_relabel): new_class}, pending
    out = wait_until(lambda: cell_output_text(page, 3), what="the apply cell's output")
    assert "1 deleted, 1 relabelled" in out, out

    after = _hashes(data)
    rel_deleted = to_delete.relative_to(data).as_posix()
    rel_old = to_relabel.relative_to(data).as_posix()
    rel_new = (to_relabel.parent.parent / new_class / to_relabel.name).relative_to(data).as_posix()
    assert not to_delete.exists() and rel_deleted not in after
    assert not to_relabel.exists() and rel_old not in after
    assert (data / rel_new).is_file() and after[rel_new] == before[rel_old], "the relabelled file must keep its bytes"
    expected = {k: v for k, v in before.items() if k not in (rel_deleted, rel_old)}
    expected[rel_new] = before[rel_old]
    assert after == expected, "every other file must be untouched"
    assert list((data / ".nbtrain").glob("journal-*.jsonl")), "apply() journals its steps"
    # The cleaner now shows the choices as done: nothing pending.
    page.get_by_text("0 to delete, 0 to relabel").wait_for(timeout=15_000)
    save_screenshot(page, "cleaner_applied", full_page=False)
