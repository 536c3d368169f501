"""The cleaner's keyboard-and-click grid (frontend="keys") in a real JupyterLab and Chromium.

A kernel trains a small model on real MNIST digit files and shows the cleaner. Through the page, as a
person would: a click on a picture marks it for deletion and a second click keeps it; a key accepts the
model's prediction; a digit key relabels; Shift+D deletes the whole page, U undoes; N and P change page.
The same decisions made from code on a second cleaner give the same choices. Then the Apply button shows
its plan, asks for confirmation, applies, and its "Undo this apply" puts every file back, byte for byte.

It also takes the screenshot of the cleaner for the README: `artifacts/cleaner.png` on every run, copied to
`docs/cleaner.png` when that file is missing or `NBTRAIN_UPDATE_DOCS=1`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from .conftest import ACTIVE_PANEL, REPO_ROOT, open_notebook, run_cell, save_screenshot, wait_for_kernel_idle
from .test_cleaner_browser import CELL_TRAIN, DATASET, SAMPLE, _hashes, _screenshot_cleaner

pytestmark = pytest.mark.browser

MAX_N = 8

DOCS_SHOT = REPO_ROOT / "docs" / "cleaner.png"

CELL_CLEANER = f"""
cleaner = ImageClassifierCleaner(learn, max_n={MAX_N}, frontend="keys")
cleaner.dd_cats.value = "(any)"  # every class, worst first
cleaner
"""

# What each card shows, so the test knows what it decides on.
CELL_PAGE = """
rows = cleaner.view.set_index("path", drop=False).loc[cleaner.fns]
Path("page.json").write_text(json.dumps({
    "fns": [str(p) for p in cleaner.fns], "labels": [r[0] for r in rows["labels"]],
    "preds": [cleaner.vocab[i] for i in rows["pred_idx"]], "page": cleaner.page}))
"""

# The same decisions, made from code on a second cleaner over the same scores, must give the same choices.
CELL_TWIN = f"""
twin = ImageClassifierCleaner(learn, scores=cleaner.scores, max_n={MAX_N}, frontend="plain", log=False)
twin.dd_cats.value = "(any)"
for call, index, label in json.loads(Path("decisions.json").read_text()):
    path = twin.fns[index] if index is not None else None
    {{"toggle_delete": lambda: twin.toggle_delete(path), "accept": lambda: twin.accept_prediction(path),
     "relabel": lambda: twin.set_choice(path, label), "delete_all": twin.delete_all_shown,
     "undo": twin.undo, "next": twin.next_page, "prev": lambda: twin.show_page(twin.page - 1)}}[call]()
Path("choices.json").write_text(json.dumps({{"browser": {{str(p): str(c) for p, c in cleaner.choices.items()}},
                                            "code": {{str(p): str(c) for p, c in twin.choices.items()}}}}))
"""

GRID = f"{ACTIVE_PANEL} .nbtrain-review"
CARDS = f"{GRID} .nbtrain-card"


def _card_has(page, i: int, cls: str, present: bool = True, timeout: float = 15_000) -> None:
    page.wait_for_function(
        "([sel, i, cls, present]) => { const c = document.querySelectorAll(sel)[i];"
        " return !!c && c.classList.contains(cls) === present; }",
        arg=[CARDS, i, cls, present],
        timeout=timeout,
        polling=50,
    )


def _page_token(page) -> int:
    return int(page.locator(GRID).get_attribute("data-page-token") or 0)


def _wait_page(page, token: int) -> None:
    page.wait_for_function(
        "([sel, t]) => Number(document.querySelector(sel)?.dataset.pageToken) >= t",
        arg=[GRID, token],
        timeout=15_000,
        polling=50,
    )


def test_keys_and_clicks_decide_undo_and_apply_then_undo_apply_restores_every_file(jupyter_server, page):
    from nbtrain.samples import make_mnist_sample

    root = jupyter_server.root
    sample = make_mnist_sample(root / DATASET, **SAMPLE)
    data = sample.path
    before = _hashes(data)

    jupyter_server.write_notebook("keys.ipynb", [CELL_TRAIN, CELL_CLEANER, CELL_PAGE, CELL_TWIN])
    open_notebook(page, jupyter_server, "keys.ipynb")
    open_tab = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
    if open_tab.count():
        open_tab.first.click()
    run_cell(page, 0, timeout=420)
    run_cell(page, 1)
    run_cell(page, 2)
    shown = json.loads((root / "page.json").read_text())
    cards = page.locator(CARDS)
    cards.first.wait_for(state="visible", timeout=30_000)
    assert cards.count() == MAX_N
    assert page.locator(f"{GRID} .nbtrain-help").inner_text().count("undo") >= 1
    decisions = []  # what the person did, for the twin cleaner driven from code

    # A click on a picture marks it for deletion (red frame); a second click keeps it; a third deletes again.
    thumb0 = cards.nth(0).locator(".nbtrain-thumb")
    for present in (True, False, True):
        thumb0.click()
        decisions.append(("toggle_delete", 0, None))
        _card_has(page, 0, "is-delete", present)
    assert cards.nth(0).locator(".nbtrain-badge").inner_text() == "DELETE"

    # The keys act on the picture under the pointer: "a" accepts the prediction, a digit relabels.
    i_acc = next(i for i in range(1, MAX_N) if shown["preds"][i] != shown["labels"][i])
    cards.nth(i_acc).hover()
    page.keyboard.press("a")
    decisions.append(("accept", i_acc, None))
    _card_has(page, i_acc, "is-relabel")
    assert cards.nth(i_acc).locator(".nbtrain-badge").inner_text() == f"→ {shown['preds'][i_acc]}"
    i_rel = next(i for i in range(1, MAX_N) if i != i_acc)
    digit = next(d for d in "0123456789" if d not in (shown["labels"][i_rel], shown["preds"][i_rel]))
    cards.nth(i_rel).hover()
    page.keyboard.press(digit)
    decisions.append(("relabel", i_rel, digit))
    _card_has(page, i_rel, "is-relabel")
    # Arrow keys move the blue frame; "d" deletes the picture it is on.
    page.keyboard.press("ArrowRight")
    page.keyboard.press("d")
    i_arrow = i_rel + 1
    decisions.append(("toggle_delete", i_arrow, None))
    _card_has(page, i_arrow, "is-delete")
    # The notebook's own shortcuts stay out of it: no cell was deleted, added or changed to markdown.
    assert page.locator(f"{ACTIVE_PANEL} .jp-Notebook .jp-Cell").count() == 4

    # Bulk: Shift+D marks the whole page; one U brings back every mark it replaced.
    page.keyboard.press("Shift+D")
    decisions.append(("delete_all", None, None))
    for i in range(MAX_N):
        _card_has(page, i, "is-delete")
    page.keyboard.press("u")
    decisions.append(("undo", None, None))
    _card_has(page, i_acc, "is-relabel")
    _card_has(page, i_rel, "is-relabel")
    _card_has(page, 1 if 1 not in (i_acc, i_rel, i_arrow) else 7, "is-delete", present=False)
    page.get_by_text("2 to delete, 2 to relabel").wait_for(timeout=15_000)
    page.mouse.move(5, 5)
    save_screenshot(page, "cleaner_keys_marked", full_page=False)
    shot = _screenshot_cleaner(page)
    if not DOCS_SHOT.exists() or os.environ.get("NBTRAIN_UPDATE_DOCS", "") not in ("", "0"):
        shutil.copyfile(shot, DOCS_SHOT)

    # Next and previous page: new pictures, and the marks are still there on the way back.
    token = _page_token(page)
    page.locator(f"{GRID} .nbtrain-help").click()  # focus the grid again, without deciding anything
    page.keyboard.press("n")
    decisions.append(("next", None, None))
    _wait_page(page, token + 1)
    assert page.locator(f"{CARDS} img").first.get_attribute("alt") != Path(shown["fns"][0]).name
    page.keyboard.press("p")
    decisions.append(("prev", None, None))
    _wait_page(page, token + 2)
    _card_has(page, 0, "is-delete")
    _card_has(page, i_acc, "is-relabel")
    assert _hashes(data) == before, "deciding must not touch any file before Apply"

    (root / "decisions.json").write_text(json.dumps(decisions))
    run_cell(page, 3)
    choices = json.loads((root / "choices.json").read_text())
    assert choices["browser"] == choices["code"] and len(choices["browser"]) == 4, choices

    # Apply: the plan names every file, nothing happens until the confirmation.
    page.get_by_role("button", name="Apply…").click()
    plan = page.locator(f"{ACTIVE_PANEL} .widget-html", has_text="Apply will delete").first
    plan.wait_for(timeout=15_000)
    text = plan.inner_text()
    assert "delete 2 files" in text and len(re.findall(r"^move ", text, re.M)) == 2, text
    assert Path(shown["fns"][0]).name in text and Path(shown["fns"][i_acc]).name in text
    assert _hashes(data) == before, "showing the plan must not touch any file"
    page.get_by_role("button", name=re.compile(r"Yes, apply 4 changes")).click()
    page.get_by_text(re.compile(r"Applied: 2 deleted, 2 relabelled")).first.wait_for(timeout=30_000)
    after = _hashes(data)
    rel = lambda p: Path(p).relative_to(data).as_posix()  # noqa: E731
    assert rel(shown["fns"][0]) not in after and rel(shown["fns"][i_arrow]) not in after
    moved = Path(shown["fns"][i_acc])
    dest = (moved.parent.parent / shown["preds"][i_acc] / moved.name).relative_to(data).as_posix()
    assert after.get(dest) == before[rel(moved)], "the relabelled file keeps its bytes"

    # Undo this apply: every file back where it was, with the same bytes, and the choices pending again.
    page.get_by_role("button", name="Undo this apply").click()
    page.get_by_text(re.compile(r"Undone: 4 put back")).first.wait_for(timeout=30_000)
    assert _hashes(data) == before, "undoing the apply must restore every file byte for byte"
    page.get_by_text("2 to delete, 2 to relabel").wait_for(timeout=15_000)
    wait_for_kernel_idle(page, 30)
