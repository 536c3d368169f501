"""ImageClassifierCleaner driven as a person drives it (setting its menus, clicking its buttons), on real files."""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from torch import nn

from nbtrain import ImageDataLoaders, Learner, Resize, fileops
from nbtrain.cleaner import DELETE, KEEP, ImageClassifierCleaner


def tiny_cnn(c: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, c))


@pytest.fixture
def learn(mnist_copy):
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_folder(mnist_copy, item_tfms=Resize(16), bs=16, seed=0)
    learn = Learner(dls, tiny_cnn(dls.c))
    learn.fit(1, 3e-3)
    return learn


def digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every image file under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png")) if ".nbtrain" not in p.parts}


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
        view = cleaner._view[key].tolist()
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
    assert dest.exists() and hashlib.sha256(dest.read_bytes()).hexdigest() == before[str(moving.relative_to(mnist_copy))]
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
    (moved_src, moved_dst), = report.moved
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
    assert set(cleaner.thumbs._items) == set(cleaner._view["path"].iloc[:8])
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
    other = next(c for c in cleaner.vocab if c not in cleaner._own_labels(second))
    cleaner.set_choice(second, other)
    assert cleaner.cells[0].menu.value == DELETE and cleaner.cells[1].menu.value == other
    assert cleaner.delete() == [0] and cleaner.change() == [(1, other)]
    cleaner.set_choice(first, KEEP)
    assert cleaner.cells[0].menu.value == KEEP and cleaner.delete() == []
