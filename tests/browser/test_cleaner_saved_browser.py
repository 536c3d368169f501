"""A review survives a crashed kernel, in a real JupyterLab and Chromium.

A kernel shows the cleaner (`frontend="plain"`) over real MNIST digit files. Through the page, decisions
are made as a person makes them (Delete buttons, a class menu, an Undo, the next page). Then the kernel
process is killed with SIGKILL, as a crash would; JupyterLab restarts it, the cells run again, and the new
cleaner shows every pending decision again: in its summary, on the cards, and in a note saying how many
were restored and from where. No image file changes on the way.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from .conftest import (
    ACTIVE_PANEL,
    open_notebook,
    run_all_cells,
    run_cell,
    save_screenshot,
    wait_for_kernel_idle,
    wait_until,
)
from .test_cleaner_browser import GRID_CARDS, GRID_SELECTS, _hashes

pytestmark = pytest.mark.browser

DATASET = "digits"
SAMPLE = dict(n=200, noise=0.1, seed=0)
MAX_N = 8

# An untrained model is enough: the ranking does not matter here, only the decisions.
CELL_SETUP = f"""
import json, os
from pathlib import Path

import torch
from torch import nn
from nbtrain import ImageClassifierCleaner, ImageDataLoaders, Learner, Resize
from nbtrain.samples import make_mnist_sample

torch.manual_seed(0)
path = make_mnist_sample({DATASET!r}, **{SAMPLE!r}).path  # the test wrote it already: reused as it is
dls = ImageDataLoaders.from_folder(path, item_tfms=Resize(16), bs=32, seed=0)
learn = Learner(dls, nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                                   nn.Flatten(), nn.Linear(128, dls.c)))
"""

CELL_CLEANER = f"""
cleaner = ImageClassifierCleaner(learn, max_n={MAX_N}, frontend="plain")
cleaner
"""

CELL_STATE = """
Path("state.json").write_text(json.dumps({"pid": os.getpid(), "fns": [str(p) for p in cleaner.fns],
                                          "choices": {str(p): str(c) for p, c in cleaner.choices.items()}}))
"""


def _state(root: Path) -> dict:
    return json.loads((root / "state.json").read_text())


def test_decisions_made_in_the_page_survive_a_killed_kernel(jupyter_server, page):
    from nbtrain.samples import make_mnist_sample

    root = jupyter_server.root
    data = make_mnist_sample(root / DATASET, **SAMPLE).path
    before = _hashes(data)
    jupyter_server.write_notebook("crash.ipynb", [CELL_SETUP, CELL_CLEANER, CELL_STATE])
    open_notebook(page, jupyter_server, "crash.ipynb")
    run_cell(page, 0, timeout=300)
    run_cell(page, 1)
    run_cell(page, 2)
    first = _state(root)
    cards, summary = page.locator(GRID_CARDS), page.locator(f"{ACTIVE_PANEL} .widget-html", has_text="to delete")
    cards.first.wait_for(state="visible", timeout=30_000)
    category = Path(first["fns"][0]).parent.name
    new_class = "7" if category != "7" else "1"

    # N decisions through the page, one undone on the way: 3 deletions and 1 relabel stay pending.
    cards.nth(0).get_by_role("button", name="Delete").click()
    page.get_by_text("1 to delete, 0 to relabel").wait_for(timeout=15_000)
    cards.nth(1).get_by_role("button", name="Delete").click()
    page.get_by_text("2 to delete, 0 to relabel").wait_for(timeout=15_000)
    page.select_option(f"{GRID_SELECTS} >> nth=2", new_class)
    page.get_by_text("2 to delete, 1 to relabel").wait_for(timeout=15_000)
    page.select_option(f"{GRID_SELECTS} >> nth=3", new_class)
    page.get_by_text("2 to delete, 2 to relabel").wait_for(timeout=15_000)
    page.get_by_role("button", name="Undo").click()
    page.get_by_text("2 to delete, 1 to relabel").wait_for(timeout=15_000)
    page.get_by_role("button", name="Next ▶").click()
    page.get_by_text("page 2 of").wait_for(timeout=15_000)
    cards.nth(0).get_by_role("button", name="Delete").click()
    page.get_by_text("3 to delete, 1 to relabel").wait_for(timeout=15_000)
    wait_for_kernel_idle(page, 30)
    run_cell(page, 2)
    decided = _state(root)
    assert len(decided["choices"]) == 4, decided
    assert decided["choices"][first["fns"][2]] == new_class and first["fns"][3] not in decided["choices"]
    save_screenshot(page, "saved_before_crash", full_page=False)

    os.kill(decided["pid"], signal.SIGKILL)  # the kernel crashes; JupyterLab restarts it
    wait_until(
        lambda: page.get_by_text("Kernel Restarting").count() or page.locator(".jp-Dialog").count(),
        timeout=60,
        what="JupyterLab noticing the dead kernel",
    )
    dialog_ok = page.locator(".jp-Dialog .jp-mod-accept")
    if dialog_ok.count():
        dialog_ok.first.click()
    wait_for_kernel_idle(page, 120)
    run_all_cells(page, timeout=300)  # the cells again, as after any crash (the new kernel counts from [1])
    page.get_by_text("Restored 4 pending choices made").first.wait_for(timeout=30_000)
    assert "3 to delete, 1 to relabel" in summary.first.inner_text()
    after = _state(root)
    assert after["pid"] != decided["pid"], "a new kernel"
    assert after["choices"] == decided["choices"]
    shown = page.locator(GRID_SELECTS).evaluate_all("els => els.map(e => e.options[e.selectedIndex].text)")
    assert shown[:3] == ["<Delete>", "<Delete>", new_class], "the first page's cards show their choices again"
    assert _hashes(data) == before, "no image changed: the decisions are pending, not applied"
    save_screenshot(page, "saved_after_crash", full_page=False)
