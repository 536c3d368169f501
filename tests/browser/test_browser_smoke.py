"""End-to-end smoke test of the browser harness: real JupyterLab + Chromium + ipywidgets 8."""

from __future__ import annotations

import sys
import time

import pytest

from .conftest import open_notebook, run_all_cells, run_cell, save_screenshot, wait_for_kernel_idle

pytestmark = pytest.mark.browser

CELL_WIDGETS = """
import os, sys
from pathlib import Path
import ipywidgets as widgets
from IPython.display import display

Path("kernel_python.txt").write_text(sys.executable)
for name in ("a.txt", "b.txt"):
    Path(name).write_text(name)

dropdowns = {name: widgets.Dropdown(options=["<Keep>", "<Delete>"], description=name) for name in ("a.txt", "b.txt")}
status = widgets.Label("nothing deleted yet")
button = widgets.Button(description="Apply deletions")

def apply(_):
    gone = [n for n, dd in dropdowns.items() if dd.value == "<Delete>"]
    for n in gone:
        Path(n).unlink(missing_ok=True)
    status.value = "deleted: " + ", ".join(gone)

button.on_click(apply)
display(widgets.VBox([*dropdowns.values(), button, status]))
"""

CELL_SECOND = """
from pathlib import Path
Path("second_cell_ran.txt").write_text(str(sorted(p.name for p in Path(".").glob("*.txt"))))
print("second cell ran")
"""


def _wait_for(pred, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_dropdown_and_button_delete_a_file(jupyter_server, page):
    root = jupyter_server.root
    jupyter_server.write_notebook("smoke.ipynb", [CELL_WIDGETS, CELL_SECOND])

    open_notebook(page, jupyter_server, "smoke.ipynb")
    run_all_cells(page)

    # The kernel is the venv's interpreter.
    assert (root / "kernel_python.txt").read_text() == sys.executable
    assert (root / "a.txt").exists() and (root / "b.txt").exists()

    # Select <Delete> for a.txt like a person would, then click the button by its text.
    selects = page.locator(".widget-dropdown select")
    selects.first.wait_for(state="visible", timeout=30_000)
    assert selects.count() == 2
    page.select_option(".widget-dropdown select >> nth=0", "<Delete>")
    page.get_by_role("button", name="Apply deletions").click()

    _wait_for(lambda: not (root / "a.txt").exists(), what="a.txt to be deleted")
    assert (root / "b.txt").exists(), "b.txt was <Keep> and must survive"
    page.get_by_text("deleted: a.txt").wait_for(timeout=10_000)
    wait_for_kernel_idle(page, 30)
    shot = save_screenshot(page, "browser_smoke", full_page=False)
    assert shot is not None and shot.stat().st_size > 10_000

    # run_cell: Shift+Enter in the second cell's editor runs it again (after the deletion).
    (root / "second_cell_ran.txt").unlink(missing_ok=True)
    run_cell(page, 1)
    assert (root / "second_cell_ran.txt").read_text() == "['b.txt', 'kernel_python.txt']"
