"""The cleaner's decisions kept on disk, driven as a person drives the widget: a new cleaner over the same
dataset takes them up, the audit's views write to the same log, a choices file replays a review, and a
headless notebook run applies it with the same result, byte for byte, as the person's Apply."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from test_cleaner import _buttons, _issue_table, tiny_cnn

from nbtrain import ImageDataLoaders, Learner, Resize
from nbtrain.cleaner import DELETE, ImageClassifierCleaner
from testkit.fileops_child import digest as tree

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_learner(root: Path) -> Learner:
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_folder(root, item_tfms=Resize(16), bs=16, seed=0)
    return Learner(dls, tiny_cnn(dls.c))


@pytest.fixture
def learn(mnist_copy):
    return make_learner(mnist_copy)


def mark_some(cleaner: ImageClassifierCleaner) -> None:
    """Deletions, relabels and a page of accepted predictions, through the widget's menus and buttons."""
    for cat, choice in (("0", DELETE), ("1", "2"), ("3", DELETE), ("7", "8")):
        cleaner.dd_cats.value = cat
        cleaner.cells[0].menu.value = choice
        cleaner.cells[1].menu.value = choice
    cleaner.dd_cats.value = "4"
    cleaner.accept_all_button.click()
    cleaner.cells[2].menu.value = DELETE
    cleaner.undo_button.click()  # the last one taken back


def test_a_new_cleaner_over_the_same_dataset_shows_the_pending_choices_again(learn, capsys):
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=4)
    mark_some(cleaner)
    pending = dict(cleaner.choices)
    assert len(pending) >= 8
    again = ImageClassifierCleaner(learn, frontend="plain", max_n=4)
    assert again.choices == pending
    assert f"Restored {len(pending)} pending choices made" in again.status.value
    assert f"Restored {len(pending)} pending choices" in capsys.readouterr().out
    n_del = sum(c == DELETE for c in pending.values())
    assert f"{n_del} to delete, {len(pending) - n_del} to relabel" in again.summary.value
    again.dd_cats.value = "0"
    assert [c.menu.value for c in again.cells[:2]] == [DELETE, DELETE], "the cards show them too"


def test_decisions_made_in_an_audit_view_go_to_the_same_log(learn):
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=4, issues=_issue_table(learn))
    cleaner.show_issues(cleaner.issues, "blurry")
    flagged = cleaner.fns[0]
    cleaner.toggle_delete(flagged)
    cleaner.dd_view.value = "classes"
    cleaner.dd_cats.value = "5"
    cleaner.cells[0].menu.value = "6"
    again = ImageClassifierCleaner(learn, frontend="plain", max_n=4)
    assert again.choices == cleaner.choices and again.choices[flagged] == DELETE


def test_discard_choices_starts_afresh_for_this_cleaner_and_the_next(learn):
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=4)
    mark_some(cleaner)
    n = len(cleaner.choices)
    assert cleaner.discard_choices() == n
    assert cleaner.choices == {} and "0 to delete, 0 to relabel" in cleaner.summary.value
    assert ImageClassifierCleaner(learn, frontend="plain").choices == {}


def test_log_false_keeps_the_choices_in_memory_only(learn, mnist_copy):
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=4, log=False)
    mark_some(cleaner)
    assert not (mnist_copy / ".nbtrain" / "review.jsonl").exists()
    assert ImageClassifierCleaner(learn, frontend="plain").choices == {}


def test_an_applied_review_is_not_taken_up_again(learn):
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=4)
    mark_some(cleaner)
    cleaner.apply()
    again = ImageClassifierCleaner(learn, frontend="plain", max_n=4)
    assert again.choices == {} and "Restored" not in again.status.value


def test_choices_saved_by_one_cleaner_load_into_another_on_a_copy(learn, mnist_copy, tmp_path):
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=4)
    mark_some(cleaner)
    saved = cleaner.save_choices(tmp_path / "review.csv")
    copy = tmp_path / "copy" / "mnist"
    shutil.copytree(mnist_copy, copy, ignore=shutil.ignore_patterns(".nbtrain"))
    other = ImageClassifierCleaner(make_learner(copy), frontend="plain", max_n=4, choices=saved)
    assert f"Took up {len(cleaner.choices)} choices from {saved}" in other.status.value
    assert {p.relative_to(copy): c for p, c in other.choices.items()} == {
        p.relative_to(mnist_copy): c for p, c in cleaner.choices.items()
    }
    fresh = ImageClassifierCleaner(make_learner(copy), frontend="plain", max_n=4, log=False)
    assert fresh.load_choices(saved) == len(cleaner.choices)


def test_a_choices_file_that_does_not_fit_stops_the_cleaner_and_changes_nothing(learn, mnist_copy, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label,choice,time\ntrain/0/nope.png,0,<Delete>,\n")
    before = tree(mnist_copy)
    with pytest.raises(ValueError, match="(?s)Nothing loaded.*line 2: train/0/nope.png: not among the images"):
        ImageClassifierCleaner(learn, frontend="plain", choices=bad)
    assert tree(mnist_copy) == before and not (mnist_copy / ".nbtrain" / "review.jsonl").exists()


HEADLESS = """\
import torch
from torch import nn
from nbtrain import ImageDataLoaders, Learner, Resize, ImageClassifierCleaner

torch.manual_seed(0)
dls = ImageDataLoaders.from_folder({path!r}, item_tfms=Resize(16), bs=16, seed=0)
learn = Learner(dls, nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                                   nn.Flatten(), nn.Linear(128, dls.c)))
cleaner = ImageClassifierCleaner(learn, choices={choices!r})
print("pending", len(cleaner.choices))
print(cleaner.apply().summary())
"""


@pytest.mark.slow
def test_a_headless_run_replays_saved_choices_with_the_same_result_byte_for_byte(mnist_small, tmp_path, monkeypatch):
    import nbclient
    import nbformat

    by_hand, headless = tmp_path / "by-hand" / "mnist", tmp_path / "headless" / "mnist"
    shutil.copytree(mnist_small, by_hand)
    shutil.copytree(mnist_small, headless)
    assert tree(by_hand) == tree(headless)
    cleaner = ImageClassifierCleaner(make_learner(by_hand), frontend="plain", max_n=4)
    mark_some(cleaner)
    n = len(cleaner.choices)
    saved = cleaner.save_choices(tmp_path / "review.csv")
    cleaner.apply_button.click()
    _buttons(cleaner.apply_box)[f"Yes, apply {n} changes"].click()
    assert cleaner.choices == {} and tree(by_hand) != tree(headless)

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(HEADLESS.format(path=str(headless), choices=str(saved)))]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("NBTRAIN_NUM_WORKERS", "0")
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    out = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    assert f"pending {n}" in out, out
    assert tree(headless) == tree(by_hand)
