"""The audit's issue views in the cleaner, in a real JupyterLab and Chromium: open the blurry view and
delete the blurry image, open the outlier view and move the outlier to another class, apply, check the disk.

A kernel audits real MNIST digit files with one digit blurred and a picture of colour blocks planted
among them, with a pretrained mobilenet_v2 (its ImageNet features find the outlier; no training), and
shows the cleaner with the audit table. Everything is done through the page; the files on disk must
show exactly those two changes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from .conftest import (
    ACTIVE_PANEL,
    cell_output_text,
    open_notebook,
    run_cell,
    save_screenshot,
    wait_for_kernel_idle,
    wait_until,
)

pytestmark = pytest.mark.browser

DATASET = "digits"
SAMPLE = dict(n=120, noise=0.0, seed=6)

CELL_AUDIT = f"""
import json
import os
from pathlib import Path

import torch
from nbtrain import ImageClassifierCleaner, ImageDataLoaders, Resize, audit, vision_learner
from nbtrain.samples import make_mnist_sample

torch.manual_seed(0)
path = make_mnist_sample({DATASET!r}, **{SAMPLE!r}).path  # the test wrote it and planted its problems
dls = ImageDataLoaders.from_folder(path, item_tfms=Resize(32), bs=32, seed=0)
learn = vision_learner(dls, "mobilenet_v2")
issues = audit(learn, label_method="loss", with_bar=False)
issues[issues.flagged].issue.value_counts()
"""

CELL_CLEANER = """
cleaner = ImageClassifierCleaner(learn, max_n=8, frontend="plain", issues=issues)
cleaner
"""

# Which file each image card of the current view shows, in display order.
CELL_PAGE = """
Path("page.json").write_text(json.dumps({"view": cleaner.dd_view.value,
                                         "fns": [os.path.abspath(p) for p in cleaner.fns]}));
"""

CELL_APPLY = """
Path("pending.json").write_text(json.dumps({os.path.abspath(p): c for p, c in cleaner.choices.items()}))
print(cleaner.apply())
"""

CARDS = f"{ACTIVE_PANEL} .widget-gridbox > .widget-vbox"
CARD_SELECTS = f"{ACTIVE_PANEL} .widget-gridbox .widget-dropdown select"


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] != ".nbtrain"
    }


def _plant(data: Path) -> tuple[Path, Path]:
    blurry = sorted((data / "train" / "3").glob("*.png"))[2]
    with Image.open(blurry) as im:
        out = im.convert("L").filter(ImageFilter.GaussianBlur(1.5))
    out.save(blurry)
    blocks = np.random.default_rng(0).integers(0, 256, (14, 14, 3)).astype(np.uint8)
    outlier = data / "train" / "4" / "blocks.png"
    Image.fromarray(blocks).resize((28, 28), Image.Resampling.NEAREST).save(outlier)
    return blurry, outlier


def _choose_view(page, label_start: str) -> None:
    view = page.locator(f"{ACTIVE_PANEL} .widget-dropdown").filter(has_text="View").locator("select").first
    label = next(t for t in view.locator("option").all_inner_texts() if t.replace("\xa0", " ").startswith(label_start))
    view.select_option(label=label)
    wait_for_kernel_idle(page, 30)


def test_delete_a_blurry_image_and_relabel_an_outlier_from_the_issue_views(jupyter_server, page):
    from nbtrain.samples import make_mnist_sample

    root = jupyter_server.root
    data = make_mnist_sample(root / DATASET, **SAMPLE).path
    blurry, outlier = _plant(data)
    before = _hashes(data)

    jupyter_server.write_notebook("audit.ipynb", [CELL_AUDIT, CELL_CLEANER, CELL_PAGE, CELL_APPLY])
    open_notebook(page, jupyter_server, "audit.ipynb")
    run_cell(page, 0, timeout=420)
    counts = wait_until(lambda: cell_output_text(page, 0), what="the audit's counts")
    assert "blurry" in counts and "outlier" in counts, counts
    run_cell(page, 1)

    # The View menu offers each issue type with its count.
    view = page.locator(f"{ACTIVE_PANEL} .widget-dropdown").filter(has_text="View").locator("select").first
    view.wait_for(state="visible", timeout=30_000)
    labels = [t.replace("\xa0", " ") for t in view.locator("option").all_inner_texts()]  # ipywidgets' nbsp
    assert "blurry (1)" in labels, labels
    assert any(t.startswith("outlier (") for t in labels), labels

    # The blurry view: its one card is the blurred digit; one click on Delete.
    _choose_view(page, "blurry (")
    run_cell(page, 2)
    shown = json.loads((root / "page.json").read_text())
    assert shown["view"] == "issue:blurry" and [Path(p) for p in shown["fns"]] == [blurry.absolute()], shown
    page.locator(CARDS).nth(0).get_by_role("button", name="Delete").click()
    page.get_by_text("1 to delete, 0 to relabel").wait_for(timeout=15_000)

    # The outlier view, worst first: the planted picture, moved to class 7 with its menu.
    _choose_view(page, "outlier (")
    run_cell(page, 2)
    shown = json.loads((root / "page.json").read_text())
    fns = [Path(p) for p in shown["fns"]]
    assert shown["view"] == "issue:outlier" and fns[0] == outlier.absolute(), shown
    page.select_option(f"{CARD_SELECTS} >> nth=0", "7")
    page.get_by_text("1 to delete, 1 to relabel").wait_for(timeout=15_000)
    wait_for_kernel_idle(page, 30)
    save_screenshot(page, "audit_views_marked", full_page=False)
    assert _hashes(data) == before, "choosing must not touch any file before apply()"

    run_cell(page, 3)
    pending = json.loads((root / "pending.json").read_text())
    assert pending == {str(blurry.absolute()): "<Delete>", str(outlier.absolute()): "7"}, pending
    out = wait_until(lambda: cell_output_text(page, 3), what="the apply cell's output")
    assert "1 deleted, 1 relabelled" in out, out

    after = _hashes(data)
    rel_blurry = blurry.relative_to(data).as_posix()
    rel_old = outlier.relative_to(data).as_posix()
    rel_new = f"train/7/{outlier.name}"
    assert not blurry.exists() and not outlier.exists()
    assert after[rel_new] == before[rel_old], "the relabelled file keeps its bytes"
    expected = {k: v for k, v in before.items() if k not in (rel_blurry, rel_old)}
    expected[rel_new] = before[rel_old]
    assert after == expected, "every other file must be untouched"
