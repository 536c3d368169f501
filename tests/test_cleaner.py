"""ImageClassifierCleaner driven as a person drives it (setting its menus, clicking its buttons), on real files."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from nbtrain import ImageDataLoaders, Learner, Resize, fileops
from nbtrain.cleaner import ANY, DELETE, KEEP, ImageClassifierCleaner


def tiny_cnn(c: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, c)
    )


@pytest.fixture
def learn(mnist_copy):
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_folder(mnist_copy, item_tfms=Resize(16), bs=16, seed=0)
    learn = Learner(dls, tiny_cnn(dls.c))
    learn.fit(1, 3e-3)
    return learn


def digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every image file under root."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.png"))
        if ".nbtrain" not in p.parts
    }


def test_view_lists_the_category_worst_loss_first(learn):
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=5)
    cleaner.dd_cats.value = "3"
    cleaner.dd_ds.value = "Train"
    assert len(cleaner.fns) == 5
    assert all(p.parent.name == "3" and p.parts[-3] == "train" for p in cleaner.fns)
    _, _, losses = learn.get_preds(ds_idx=0, with_loss=True)
    by_path = dict(zip(learn.dls.train_ds.items, losses.tolist()))
    shown = [by_path[p] for p in cleaner.fns]
    assert shown == sorted(shown, reverse=True)
    worst_of_class = max(v for p, v in by_path.items() if p.parent.name == "3")
    assert shown[0] == pytest.approx(worst_of_class)
    cleaner.dd_ds.value = "Valid"
    assert all(p.parts[-3] == "valid" for p in cleaner.fns)


def test_fastai_book_loops_work_as_written(learn, mnist_copy):
    path = mnist_copy / "train"
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=6)
    cleaner.dd_cats.value = "1"
    first, second, third = cleaner.fns[:3]
    cleaner.cells[0].menu.value = DELETE
    cleaner.cells[1].menu.value = "7"
    cleaner.cells[2].menu.value = "1"  # its own class: a no-op
    assert cleaner.delete() == [0]
    assert cleaner.change() == [(1, "7")]
    import shutil as sh

    for idx in cleaner.delete():
        cleaner.fns[idx].unlink()
    for idx, cat in cleaner.change():
        sh.move(str(cleaner.fns[idx]), path / cat)
    assert not first.exists() and (path / "7" / second.name).exists() and third.exists()


def test_choices_stay_when_switching_category_split_and_page(learn):
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=4)
    cleaner.dd_cats.value = "2"
    marked = cleaner.fns[1]
    cleaner.cells[1].menu.value = DELETE
    cleaner.dd_cats.value = "5"
    cleaner.cells[0].menu.value = "6"
    relabelled = cleaner.fns[0]
    cleaner.dd_ds.value = "Valid"
    cleaner.dd_ds.value = "Train"
    cleaner.dd_cats.value = "2"
    assert cleaner.fns[1] == marked and cleaner.cells[1].menu.value == DELETE and cleaner.delete() == [1]
    cleaner.next_button.click()
    assert cleaner.page == 1 and marked not in cleaner.fns
    cleaner.prev_button.click()
    assert cleaner.delete() == [1]
    assert cleaner.summary.value.count("1 to delete, 1 to relabel") == 1
    assert set(cleaner.pending()["path"]) == {marked, relabelled}


def test_pages_go_past_max_n_and_cover_the_whole_category(learn):
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=3)
    cleaner.dd_cats.value = "0"
    n = sum(1 for p in learn.dls.train_ds.items if p.parent.name == "0")
    seen = []
    for _ in range(cleaner.n_pages):
        seen += cleaner.fns
        cleaner.next_button.click()
    assert len(seen) == n == len(set(seen))
    assert cleaner.next_button.disabled
    assert sum(c.box.layout.display != "none" for c in cleaner.cells) == len(cleaner.fns)


def test_predicted_class_filter_shows_only_that_prediction(learn):
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=50)
    probs, _ = learn.get_preds(ds_idx=0)
    pred = dict(zip(learn.dls.train_ds.items, probs.argmax(1).tolist()))
    cleaner.dd_cats.value = "4"
    target = pred[cleaner.fns[0]]
    cleaner.dd_pred.value = str(target)
    assert cleaner.fns and all(pred[p] == target for p in cleaner.fns)


def test_sort_by_confidence_and_margin_rank_low_scores_first(learn):
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=10)
    for key in ("self_confidence", "margin"):
        cleaner.dd_sort.value = key
        view = cleaner.view[key].tolist()
        assert view == sorted(view)


def test_scores_come_from_images_without_augmentation_and_once(learn):
    from nbtrain import aug_transforms

    learn.dls.train.batch_tfms = aug_transforms()
    learn.dls.train.augment = True
    a = ImageClassifierCleaner(learn).scores
    b = ImageClassifierCleaner(learn).scores
    assert a["loss"].tolist() == b["loss"].tolist()


def test_apply_deletes_and_relabels_and_the_learner_follows(learn, mnist_copy):
    before = digest(mnist_copy)
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=5)
    cleaner.dd_cats.value = "8"
    doomed, moving = cleaner.fns[0], cleaner.fns[1]
    cleaner.cells[0].menu.value = DELETE
    cleaner.cells[1].menu.value = "9"
    preview = cleaner.apply(dry_run=True)
    assert digest(mnist_copy) == before and preview.summary()
    report = cleaner.apply()
    assert not doomed.exists()
    dest = moving.parent.parent / "9" / moving.name
    assert dest.exists()
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == before[str(moving.relative_to(mnist_copy))]
    assert report.journal and Path(report.journal).exists()
    items = learn.dls.train_ds.items
    assert doomed not in items and moving not in items and dest in items
    assert learn.dls.train_ds.labels[items.index(dest)] == "9"
    assert cleaner.choices == {} and doomed not in cleaner.scores["path"].tolist()
    learn.fit(1)  # the loaders only point at files that exist


def test_relabel_onto_a_taken_name_keeps_both_files(learn, mnist_copy):
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=3)
    cleaner.dd_cats.value = "6"
    src = cleaner.fns[0]
    clash = src.parent.parent / "0" / src.name
    shutil.copy(learn.dls.train_ds.items[0], clash)
    clash_bytes, src_bytes = clash.read_bytes(), src.read_bytes()
    cleaner.cells[0].menu.value = "0"
    report = cleaner.apply()
    ((moved_src, moved_dst),) = report.moved
    assert Path(moved_dst) != clash and Path(moved_dst).parent == clash.parent
    assert clash.read_bytes() == clash_bytes and Path(moved_dst).read_bytes() == src_bytes


def test_choosing_the_own_class_is_not_a_change(learn, mnist_copy):
    before = digest(mnist_copy)
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=3)
    cleaner.dd_cats.value = "7"
    cleaner.cells[0].menu.value = "7"
    assert cleaner.change() == [] and cleaner.choices == {}
    assert "0 to delete, 0 to relabel" in cleaner.summary.value
    cleaner.apply()
    assert digest(mnist_copy) == before


def test_a_missing_file_is_reported_not_fatal(learn):
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=3)
    cleaner.dd_cats.value = "5"
    gone, other = cleaner.fns[0], cleaner.fns[1]
    cleaner.cells[0].menu.value = DELETE
    cleaner.cells[1].menu.value = DELETE
    gone.unlink()
    report = cleaner.apply()
    assert [Path(p) for p in report.missing] == [gone]
    assert not other.exists()


def test_read_only_dataset_is_refused_and_nothing_changes(learn, mnist_copy):
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=3)
    cleaner.dd_cats.value = "2"
    cleaner.cells[0].menu.value = DELETE
    before = digest(mnist_copy)
    modes = {}
    for d in [mnist_copy, *[p for p in mnist_copy.rglob("*") if p.is_dir()]]:
        modes[d] = d.stat().st_mode
        os.chmod(d, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    try:
        with pytest.raises(fileops.ReadOnlyDatasetError, match="copy_dataset"):
            cleaner.apply()
    finally:
        for d, m in modes.items():
            os.chmod(d, m)
    assert digest(mnist_copy) == before
    assert "Nothing applied" in cleaner.status.value


def _mark_many(cleaner) -> None:
    for cat, choice in (("0", DELETE), ("1", "2"), ("3", DELETE), ("4", "5"), ("6", DELETE), ("7", "8")):
        cleaner.dd_cats.value = cat
        cleaner.cells[0].menu.value = choice
        cleaner.cells[1].menu.value = choice


def test_apply_cut_off_halfway_can_be_resumed(learn, mnist_copy):
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=3)
    _mark_many(cleaner)
    expected = {p: c for p, c in cleaner.choices.items()}
    before = digest(mnist_copy)
    with pytest.raises(fileops.InjectedFault):
        fileops.apply_actions(cleaner.actions(), mnist_copy, _fail_after=5)
    journal = max((mnist_copy / ".nbtrain").glob("journal-*.jsonl"))
    fileops.resume(journal)
    for p, c in expected.items():
        if c == DELETE:
            assert not p.exists()
        else:
            dst = p.parent.parent / c / p.name
            assert not p.exists() and dst.exists()
            assert hashlib.sha256(dst.read_bytes()).hexdigest() == before[str(p.relative_to(mnist_copy))]


def test_apply_cut_off_halfway_can_be_undone_byte_for_byte(learn, mnist_copy):
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=3)
    _mark_many(cleaner)
    before = digest(mnist_copy)
    with pytest.raises(fileops.InjectedFault):
        fileops.apply_actions(cleaner.actions(), mnist_copy, _fail_after=7)
    assert digest(mnist_copy) != before
    journal = max((mnist_copy / ".nbtrain").glob("journal-*.jsonl"))
    fileops.undo(journal)
    assert digest(mnist_copy) == before


def test_thumbnails_are_made_only_for_the_page_shown_and_the_next(learn):
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=4)
    assert len(cleaner.thumbs._items) <= 8
    assert set(cleaner.thumbs._items) == set(cleaner.view["path"].iloc[:8])
    cleaner.next_button.click()
    assert len(cleaner.thumbs._items) <= 12
    assert all(c.image.value[:2] == b"\xff\xd8" for c in cleaner.cells if c.path is not None)  # JPEG


def test_duplicates_view_pairs_planted_copies_and_deletes_one(mnist_copy):
    from nbtrain.models import VisionModel, create_head

    originals = sorted((mnist_copy / "train" / "3").glob("*.png"))[:2]
    copies = []
    for i, src in enumerate(originals):
        dst = mnist_copy / "valid" / "3" / f"copy_{i}.png"
        shutil.copy(src, dst)
        copies.append(dst)
    dls = ImageDataLoaders.from_folder(mnist_copy, item_tfms=Resize(16), bs=16, seed=0)
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
    learn = Learner(dls, VisionModel(body, create_head(32, dls.c)))
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=4)
    pairs = cleaner.show_duplicates(threshold=0.9999)
    assert cleaner.dd_view.value == "duplicates"
    planted = {frozenset(p) for p in zip(originals, copies)}
    found = {frozenset((a, b)) for a, b in zip(pairs["path_a"], pairs["path_b"])}
    assert planted <= found and pairs.loc[pairs.cross_split].shape[0] >= 2
    pair_view = cleaner.fns
    assert len(pair_view) == 4 and {frozenset(pair_view[:2]), frozenset(pair_view[2:])} <= found
    victim = next(i for i, p in enumerate(pair_view) if p in copies)
    cleaner.cells[victim].menu.value = DELETE
    cleaner.apply()
    assert not pair_view[victim].exists() and all(p.exists() for p in originals)


def test_a_choice_set_from_code_shows_in_the_menu_on_the_page(learn):
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=4)
    first, second = cleaner.fns[0], cleaner.fns[1]
    cleaner.set_choice(first, DELETE)
    other = next(c for c in cleaner.vocab if c not in cleaner.state.own_labels(second))
    cleaner.set_choice(second, other)
    assert cleaner.cells[0].menu.value == DELETE and cleaner.cells[1].menu.value == other
    assert cleaner.delete() == [0] and cleaner.change() == [(1, other)]
    cleaner.set_choice(first, KEEP)
    assert cleaner.cells[0].menu.value == KEEP and cleaner.delete() == []


# -- one action per decision, undo, bulk, the Apply button, issue views, front ends ------------------


def test_a_click_on_delete_marks_the_image_and_a_second_click_keeps_it(learn):
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=4)
    cell, path = cleaner.cells[0], cleaner.fns[0]
    cell.delete_button.click()
    assert cleaner.choices == {path: DELETE} and cell.menu.value == DELETE
    assert "DELETE" in cell.badge.value and "#d32f2f" in cell.box.layout.border
    assert cell.delete_button.description == "Keep"
    cell.delete_button.click()
    assert cleaner.choices == {} and cell.menu.value == KEEP and cell.delete_button.description == "Delete"


def test_one_click_accepts_the_models_prediction_as_the_new_label(learn):
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=30)
    cleaner.dd_cats.value = "(any)"
    rows = cleaner.view.set_index("path", drop=False).loc[cleaner.fns]
    pairs = enumerate(zip(rows["labels"], rows["pred_idx"]))
    i = next(i for i, (labs, pred) in pairs if cleaner.vocab[pred] not in labs)
    pred = cleaner.vocab[rows["pred_idx"].iloc[i]]
    assert cleaner.cells[i].accept_button.description == f"✓ {pred}"
    cleaner.cells[i].accept_button.click()
    assert cleaner.choices == {cleaner.fns[i]: pred} and cleaner.change() == [(i, pred)]
    assert f"→ {pred}" in cleaner.cells[i].badge.value


def test_bulk_decisions_on_a_page_are_undone_in_one_step(learn):
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=5)
    first = cleaner.fns[0]
    cleaner.set_choice(first, "9" if "9" not in cleaner.state.own_labels(first) else "8")
    before = dict(cleaner.choices)
    cleaner.delete_all_button.click()
    assert cleaner.delete() == list(range(5))
    cleaner.undo_button.click()
    assert cleaner.choices == before
    cleaner.accept_all_button.click()
    preds = cleaner.view.set_index("path", drop=False).loc[cleaner.fns]
    expected = {
        p: cleaner.vocab[i]
        for p, i, labs in zip(preds["path"], preds["pred_idx"], preds["labels"])
        if cleaner.vocab[i] not in labs
    }
    assert cleaner.choices == expected
    cleaner.undo()
    assert cleaner.choices == before


def test_undo_takes_back_the_last_decision_and_its_reviewed_count(learn):
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=4)
    a, b = cleaner.fns[:2]
    cleaner.toggle_delete(a)
    cleaner.toggle_delete(b)
    assert cleaner.reviewed == {a, b} and "reviewed 2 of" in cleaner.summary.value
    assert cleaner.undo() == [b]
    assert cleaner.choices == {a: DELETE} and cleaner.reviewed == {a}
    cleaner.undo()
    assert cleaner.choices == {} and cleaner.undo_button.disabled
    assert cleaner.undo() == [] and "Nothing to undo" in cleaner.status.value
    cleaner.next_button.click()  # paging past a page counts its images as reviewed: left as they are
    assert len(cleaner.reviewed) == 4


def _buttons(box) -> dict:
    found = {}
    for w in box.children:
        for child in w.children if hasattr(w, "children") else [w]:
            if hasattr(child, "on_click"):
                found[child.description] = child
    return found


def test_apply_button_shows_the_plan_asks_then_applies_and_undo_apply_restores_every_byte(learn, mnist_copy):
    before = digest(mnist_copy)
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=4)
    cleaner.dd_cats.value = "2"
    doomed, moving = cleaner.fns[:2]
    cleaner.toggle_delete(doomed)
    cleaner.set_choice(moving, "5")
    cleaner.apply_button.click()
    plan = cleaner.apply_box.children[0].value
    rel = lambda p: str(p.relative_to(mnist_copy))  # noqa: E731
    assert f"delete {rel(doomed)}" in plan
    assert f"move {rel(moving)} → {rel(moving.parent.parent / '5' / moving.name)}" in plan
    assert digest(mnist_copy) == before, "showing the plan changes nothing"
    buttons = _buttons(cleaner.apply_box)
    buttons["Cancel"].click()
    assert cleaner.apply_box.children == () and digest(mnist_copy) == before
    cleaner.apply_button.click()
    _buttons(cleaner.apply_box)["Yes, apply 2 changes"].click()
    assert not doomed.exists() and (moving.parent.parent / "5" / moving.name).exists()
    assert cleaner.choices == {} and "Applied: 1 deleted, 1 relabelled" in cleaner.apply_box.children[0].value
    _buttons(cleaner.apply_box)["Undo this apply"].click()
    assert digest(mnist_copy) == before
    assert cleaner.choices == {doomed: DELETE, moving: "5"}
    assert doomed in learn.dls.train_ds.items and moving in learn.dls.train_ds.items
    learn.fit(1)  # the loaders point at files that exist again


def test_decisions_in_the_keys_grid_equal_the_same_decisions_from_code(learn):
    keys = ImageClassifierCleaner(learn, frontend="keys", max_n=6)
    code = ImageClassifierCleaner(learn, frontend="plain", max_n=6, scores=keys.scores, log=False)
    g = keys.grid_widget
    assert len(g.cards) == len(g.images) == len(g.marks) == 6
    assert all(img[:2] == b"\xff\xd8" for img in g.images)  # JPEG bytes, sent with the page
    assert g._esm == (Path(fileops.__file__).parent / "cleaner.js").read_text()  # the package's file, no CDN
    token = g.page_token
    other = next(c for c in keys.vocab if c not in keys.state.own_labels(keys.fns[2]))
    for msg in (
        {"action": "toggle_delete", "index": 0},
        {"action": "accept", "index": 1},
        {"action": "relabel", "index": 2, "label": other},
        {"action": "delete_all"},
        {"action": "undo"},
        {"action": "next"},
        {"action": "toggle_delete", "index": 3},
        {"action": "prev"},
    ):
        keys.front.handle(msg)
    code.toggle_delete(code.fns[0])
    code.accept_prediction(code.fns[1])
    code.set_choice(code.fns[2], other)
    code.delete_all_shown()
    code.undo()
    code.next_page()
    code.toggle_delete(code.fns[3])
    code.show_page(0)
    assert keys.choices == code.choices and len(keys.choices) >= 3
    assert g.page_token == token + 2 and g.marks[0] == {"kind": "delete"}
    assert g.marks[2] == {"kind": "relabel", "label": other}


def _issue_table(learn) -> pd.DataFrame:
    items = learn.dls.train_ds.items
    rows = [
        (items[0], "blurry", 0.5, True),
        (items[1], "blurry", 0.9, True),
        (items[2], "blurry", 0.7, True),
        (items[3], "blurry", 0.1, False),
        (items[4], "dark", 0.95, True),
    ]
    return pd.DataFrame(
        {
            "path": [Path(p).resolve() for p, *_ in rows],
            "split": "train",
            "issue": [r[1] for r in rows],
            "score": [r[2] for r in rows],
            "flagged": [r[3] for r in rows],
            "reason": [f"{r[1]} score {r[2]}" for r in rows],
            "threshold": 0.3,
        }
    )


def test_issue_views_show_each_flagged_type_worst_first_with_its_reason(learn):
    table = _issue_table(learn)
    items = learn.dls.train_ds.items
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=4, issues=table)
    assert [label for label, _ in cleaner.dd_view.options][:3] == ["images by class", "blurry (3)", "dark (1)"]
    cleaner.dd_view.value = "issue:blurry"
    assert cleaner.fns == [items[1], items[2], items[0]]
    assert "blurry score 0.9" in cleaner.cells[0].caption.value
    cleaner.cells[0].delete_button.click()
    assert cleaner.delete() == [0]
    cleaner.apply()
    assert not items[1].exists()
    assert [label for label, _ in cleaner.dd_view.options][:3] == ["images by class", "blurry (2)", "dark (1)"]

    later = ImageClassifierCleaner(learn, frontend="plain", max_n=4)
    later.show_issues(table.iloc[2:], issue="dark")
    assert later.dd_view.value == "issue:dark" and later.fns == [items[4]]
    with pytest.raises(ValueError, match="lacks the columns"):
        later.show_issues(table.drop(columns=["reason"]))


def test_the_front_end_is_chosen_by_name_and_auto_takes_plain_on_kaggle(learn, monkeypatch):
    from nbtrain.cleaner import choose_frontend

    assert choose_frontend("auto", multi_label=False) == "keys"
    assert choose_frontend("auto", multi_label=True) == "plain"
    with pytest.raises(ValueError, match="frontend must be one of"):
        choose_frontend("fancy", multi_label=False)
    with pytest.raises(ValueError, match="single-label"):
        choose_frontend("keys", multi_label=True)
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    cleaner = ImageClassifierCleaner(learn, max_n=3)
    assert cleaner.frontend == "plain" and cleaner.cells and cleaner.grid_widget is None


# -- labels that are not text: the book's is_cat (True/False), numbers --------------------------------


def _name_labelled(root: Path, n: int = 8) -> list[Path]:
    """Real PNGs named like the pets (cats capitalised), all in one folder: the label is in the name."""
    from PIL import Image

    root.mkdir(parents=True)
    files = []
    for k in range(n):
        name = f"{'Bengal' if k % 2 else 'beagle'}_{k}.png"
        Image.new("RGB", (20, 20), (40 * k % 255, 200 if k % 2 else 30, 90)).save(root / name)
        files.append(root / name)
    return files


@pytest.fixture
def cat_learn(tmp_path):
    def is_cat(x):
        return x[0].isupper()

    files = _name_labelled(tmp_path / "images")
    dls = ImageDataLoaders.from_name_func(
        tmp_path / "images", files, label_func=is_cat, valid_pct=0.25, seed=0, item_tfms=Resize(16), bs=4, num_workers=0
    )
    torch.manual_seed(0)
    return Learner(dls, tiny_cnn(dls.c))


def test_bool_labels_show_as_class_names_and_relabel_to_the_datasets_own_value(cat_learn):
    assert cat_learn.dls.vocab == [False, True]
    cleaner = ImageClassifierCleaner(cat_learn, frontend="plain", max_n=8)
    assert cleaner.vocab == ["False", "True"] and set(cleaner.scores["labels"]) <= {("False",), ("True",)}
    cleaner.dd_cats.value = ANY  # both classes of the training set on one page
    dog = next(p for p in cleaner.fns if not p.name[0].isupper())
    cat = next(p for p in cleaner.fns if p.name[0].isupper())
    cleaner.set_choice(dog, True)  # the value, as is_cat gives it
    cleaner.set_choice(cat, "False")  # or its name, as the menu shows it
    assert cleaner.choices == {dog: "True", cat: "False"}
    changes = dict(cleaner.change())
    assert changes == {cleaner.fns.index(dog): True, cleaner.fns.index(cat): False}
    assert all(type(v) is bool for v in changes.values())
    cleaner.set_choice(dog, False)  # its own label: keep
    assert dog not in cleaner.choices


def test_relabel_of_name_labelled_files_is_refused_before_any_file_changes(cat_learn, tmp_path):
    cleaner = ImageClassifierCleaner(cat_learn, frontend="plain", max_n=8)
    cleaner.dd_cats.value = ANY
    before = digest(tmp_path)
    doomed, dog = cleaner.fns[0], next(p for p in cleaner.fns[1:] if not p.name[0].isupper())
    cleaner.set_choice(doomed, DELETE)
    cleaner.set_choice(dog, True)
    with pytest.raises(
        ValueError,
        match="labels do not come from folder names.*Nothing applied|Nothing applied.*do not come from folder names",
    ):
        cleaner.apply()
    assert digest(tmp_path) == before and "Nothing applied" in cleaner.status.value
    assert "cannot be done by moving files" in cleaner.plan_text()
    cleaner.set_choice(dog, KEEP)  # the deletion alone is a file operation, and goes through
    cleaner.apply()
    assert not doomed.exists() and dog.exists() and len(digest(tmp_path)) == len(before) - 1
    assert doomed not in set(cleaner.learn.dls.train_ds.items) | set(cleaner.learn.dls.valid_ds.items)


def test_int_labels_in_class_folders_relabel_by_moving(tmp_path):
    from PIL import Image

    for label in (3, 7):
        (tmp_path / "d" / str(label)).mkdir(parents=True)
        for k in range(4):
            Image.new("RGB", (20, 20), (label * 30, 10 * k, 0)).save(tmp_path / "d" / str(label) / f"{label}_{k}.png")
    files = sorted((tmp_path / "d").rglob("*.png"))
    dls = ImageDataLoaders.from_lists(
        tmp_path / "d",
        files,
        [int(f.parent.name) for f in files],
        valid_pct=0.25,
        seed=0,
        item_tfms=Resize(16),
        bs=4,
        num_workers=0,
    )
    assert dls.vocab == [3, 7]
    cleaner = ImageClassifierCleaner(Learner(dls, tiny_cnn(dls.c)), frontend="plain", max_n=8)
    cleaner.dd_cats.value = ANY
    three = next(p for p in cleaner.fns if p.parent.name == "3")
    cleaner.set_choice(three, 7)
    assert dict(cleaner.change()) == {cleaner.fns.index(three): 7}
    cleaner.apply()
    moved = tmp_path / "d" / "7" / three.name
    assert moved.exists() and not three.exists()
    ds = cleaner.learn.dls.train_ds if moved in cleaner.learn.dls.train_ds.items else cleaner.learn.dls.valid_ds
    assert ds.labels[ds.items.index(moved)] == 7  # the dataset's own label value, not the text "7"


def test_a_class_named_with_html_characters_shows_as_text(mnist_copy):
    """Class names are folder names: "R&B <live>" is shown as written, not read as HTML."""
    odd = "R&B <live>"
    (mnist_copy / "train" / "7").rename(mnist_copy / "train" / odd)
    (mnist_copy / "valid" / "7").rename(mnist_copy / "valid" / odd)
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_folder(mnist_copy, item_tfms=Resize(16), bs=16, seed=0)
    learn = Learner(dls, tiny_cnn(dls.c))
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=3)
    cleaner.dd_cats.value = odd
    caption = cleaner.cells[0].caption.value
    assert "label <b>R&amp;B &lt;live&gt;</b>" in caption and "<live>" not in caption


def test_top_shows_the_highest_scores_of_an_issue_that_flags_none_and_leaves_the_table(learn):
    """Outliers are a ranking: strays can rank first and still score under the threshold."""
    items = learn.dls.train_ds.items[:6]
    table = pd.DataFrame(
        {
            "path": [Path(p).resolve() for p in items],
            "split": "train",
            "issue": "outlier",
            "score": [3.0, 9.0, 1.0, 7.0, 8.0, 2.0],
            "flagged": False,
            "reason": [f"score {i}" for i in range(6)],
            "threshold": 23.0,
        }
    )
    cleaner = ImageClassifierCleaner(learn, frontend="plain", max_n=4)
    with pytest.raises(ValueError, match="No flagged images of issue 'outlier'"):
        cleaner.show_issues(table, issue="outlier")
    cleaner.show_issues(table, issue="outlier", top=3)
    assert cleaner.dd_view.value == "issue:outlier" and "outlier (3)" in [lab for lab, _ in cleaner.dd_view.options]
    assert cleaner.fns == [items[1], items[4], items[3]]
    assert not table["flagged"].any()
    for bad in (dict(top=0, issue="outlier"), dict(top=3), dict(top=3, issue="blurry")):
        with pytest.raises(ValueError, match="top=|no rows of issue"):
            cleaner.show_issues(table, **bad)
