"""A review's decisions kept on disk: the log appended as each decision is made (undo included), taken up
again by a new review or cleaner, and the choices file that replays a review elsewhere. Real PNG files."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from test_review import make_pets, score_table, write_png

from nbtrain.decisions import DecisionLog, read_choices
from nbtrain.review import DELETE, ReviewState


def open_state(root: Path, log: DecisionLog | None) -> ReviewState:
    s = ReviewState(score_table(root), ["cat", "dog"], max_n=3, root=root, log=log)
    s.set_view(s.scores[s.scores["split"] == "Train"])
    return s


def records(log: DecisionLog) -> list[dict]:
    return [json.loads(line) for line in log.path.read_text().splitlines()]


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_pets(tmp_path / "pets")


@pytest.fixture
def log(folder) -> DecisionLog:
    return DecisionLog.beside(folder)


def test_each_decision_and_each_undo_is_one_record_on_disk_as_it_is_made(folder, log):
    s = open_state(folder, log)
    assert not log.path.exists(), "a review that decided nothing writes nothing"
    c0, c1 = folder / "train/cat/c0.png", folder / "train/cat/c1.png"
    s.set_choice(c0, "dog")
    assert log.path == folder / ".nbtrain" / "review.jsonl"
    assert [r["op"] for r in records(log)] == ["decide"]
    item = records(log)[0]["items"][0]
    assert (item["path"], item["labels"], item["choice"]) == ("train/cat/c0.png", ["cat"], "dog")
    assert (item["size"], item["mtime_ns"]) == (c0.stat().st_size, c0.stat().st_mtime_ns)
    s.toggle_delete(c1)
    s.delete_all_shown()  # one bulk decision: one record of three items
    s.undo()
    s.undo()  # nothing left after this one but the first decision
    assert [r["op"] for r in records(log)] == ["decide", "decide", "decide", "undo", "undo"]
    assert len(records(log)[2]["items"]) == 3
    assert log.read().decisions[0].items[0]["choice"] == "dog" and len(log.read().decisions) == 1


def test_a_new_review_takes_up_the_pending_choices_and_says_how_many_and_when(folder, log):
    s = open_state(folder, log)
    c0, d1 = folder / "train/cat/c0.png", folder / "train/dog/d1.png"
    s.set_choice(c0, "dog")
    s.toggle_delete(d1)
    s.delete_all_shown()
    s.undo()
    again = open_state(folder, DecisionLog.beside(folder))
    assert again.choices == {c0: "dog", d1: DELETE}
    assert again.choices == s.choices and again.reviewed == s.reviewed
    assert again.restored.startswith("Restored 2 pending choices made ")
    assert str(log.path) in again.restored and "discard_choices()" in again.restored
    assert again.decided_at == pytest.approx(s.decided_at)
    again.undo()  # the undo history comes back too: the last decision first
    assert again.choices == {c0: "dog"}


def test_a_decision_about_a_file_changed_or_gone_since_is_dropped_with_a_note(folder, log):
    s = open_state(folder, log)
    c0, c1, d1 = folder / "train/cat/c0.png", folder / "train/cat/c1.png", folder / "train/dog/d1.png"
    s.set_choice(c0, "dog")
    s.toggle_delete(c1)
    s.toggle_delete(d1)
    table = score_table(folder)  # the loaders of the next run were built before d1 went
    write_png(c1, 99)  # other pixels: another image under the same name
    d1.unlink()
    again = ReviewState(table, ["cat", "dog"], root=folder, log=DecisionLog.beside(folder))
    assert again.choices == {c0: "dog"}
    assert "Restored 1 pending choice made" in again.restored
    assert "Dropped 2" in again.restored
    assert "train/cat/c1.png (changed since)" in again.restored and "train/dog/d1.png (gone)" in again.restored
    third = ReviewState(table, ["cat", "dog"], root=folder, log=DecisionLog.beside(folder))
    assert third.choices == {c0: "dog"} and "Dropped" not in third.restored, "the log was rewritten without them"


def test_a_decision_about_a_file_no_longer_among_the_images_is_dropped(folder, log):
    s = open_state(folder, log)
    d1 = folder / "train/dog/d1.png"
    s.toggle_delete(d1)
    d1.unlink()
    again = open_state(folder, DecisionLog.beside(folder))
    assert again.choices == {} and "train/dog/d1.png (not among the images under review)" in again.restored


def test_a_file_relabelled_outside_the_review_drops_its_decision(folder, log):
    s = open_state(folder, log)
    c0 = folder / "train/cat/c0.png"
    s.toggle_delete(c0)
    table = score_table(folder)
    table.at[0, "labels"] = ("dog",)  # the dataset now labels it otherwise (a table edited by hand)
    again = ReviewState(table, ["cat", "dog"], root=folder, log=DecisionLog.beside(folder))
    assert again.choices == {} and "labelled dog now, not cat" in again.restored


def test_discard_forgets_every_pending_choice_here_and_in_the_log(folder, log):
    s = open_state(folder, log)
    s.set_choice(folder / "train/cat/c0.png", "dog")
    s.toggle_delete(folder / "train/dog/d1.png")
    assert s.discard_choices() == 2
    assert s.choices == {} and s.history == [] and s.reviewed == set()
    again = open_state(folder, DecisionLog.beside(folder))
    assert again.choices == {} and again.restored == ""


def test_a_torn_last_line_is_ignored_and_the_next_record_starts_a_line_of_its_own(folder, log):
    s = open_state(folder, log)
    c0, c1 = folder / "train/cat/c0.png", folder / "train/cat/c1.png"
    s.set_choice(c0, "dog")
    s.toggle_delete(c1)
    whole = log.path.read_bytes()
    last = whole.rstrip(b"\n").rsplit(b"\n", 1)[1]
    log.path.write_bytes(whole[: len(whole) - len(last) - 1] + last[:20])  # the second record, cut off mid-write
    again = open_state(folder, DecisionLog.beside(folder))
    assert again.choices == {c0: "dog"}
    assert log.read().torn == 1
    again.toggle_delete(c1)
    assert [r["op"] for r in records(log)] == ["decide", "decide"]
    assert open_state(folder, DecisionLog.beside(folder)).choices == {c0: "dog", c1: DELETE}


def test_a_damaged_line_inside_the_log_is_skipped_and_named(folder, log):
    s = open_state(folder, log)
    s.set_choice(folder / "train/cat/c0.png", "dog")
    with open(log.path, "ab") as f:
        f.write(b"{not json\n")
    s.toggle_delete(folder / "train/cat/c1.png")
    again = open_state(folder, DecisionLog.beside(folder))
    assert len(again.choices) == 2 and "1 damaged line(s)" in again.restored


def test_a_read_only_dataset_keeps_its_log_in_the_output_folder(folder, tmp_path):
    out = tmp_path / "working"
    modes = {d: d.stat().st_mode for d in [folder, *[p for p in folder.rglob("*") if p.is_dir()]]}
    for d in modes:
        os.chmod(d, stat.S_IRUSR | stat.S_IXUSR)
    try:
        log = DecisionLog.beside(folder, output=out)
        s = open_state(folder, log)
        s.toggle_delete(folder / "train/cat/c0.png")
        assert log.path.parent == out / ".nbtrain" and log.path.name.startswith("review-pets-")
        assert not (folder / ".nbtrain").exists()
        again = open_state(folder, DecisionLog.beside(folder, output=out))
        assert again.choices == {folder / "train/cat/c0.png": DELETE}
        other = tmp_path / "other" / "pets"
        other.mkdir(parents=True)
        os.chmod(other, stat.S_IRUSR | stat.S_IXUSR)
        assert DecisionLog.beside(other, output=out).path != log.path, "two datasets never share a log"
    finally:
        for d, m in modes.items():
            os.chmod(d, m)


def test_a_log_that_cannot_be_written_warns_once_and_the_review_goes_on(folder, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    s = open_state(folder, DecisionLog(blocker / "review.jsonl", folder))
    with pytest.warns(UserWarning, match="cannot be saved"):
        s.toggle_delete(folder / "train/cat/c0.png")
    s.toggle_delete(folder / "train/cat/c1.png")
    assert len(s.choices) == 2 and "kept in memory only" in s.log.error


def test_an_apply_closes_the_log_out_so_a_rerun_does_not_replay_it(folder, log):
    s = open_state(folder, log)
    c0, c1 = folder / "train/cat/c0.png", folder / "train/cat/c1.png"
    s.set_choice(c0, "dog")
    s.toggle_delete(c1)
    s.apply_to_folder(folder, trash=True)
    assert not c1.exists() and (folder / "train/dog/c0.png").exists()
    assert log.read().decisions == [], "nothing pending for the next run"
    s.undo_apply()  # the choices are pending again, and so in the log
    assert open_state(folder, DecisionLog.beside(folder)).choices == {c0: "dog", c1: DELETE}


def test_saved_choices_load_into_a_new_review_of_a_copy_of_the_dataset(folder, tmp_path):
    s = open_state(folder, DecisionLog.beside(folder))
    c0, d1 = folder / "train/cat/c0.png", folder / "train/dog/d1.png"
    s.set_choice(c0, "dog")
    s.toggle_delete(d1)
    saved = s.save_choices(tmp_path / "choices.csv")
    text = saved.read_text().splitlines()
    assert text[0] == "path,label,choice,time"
    assert text[1].startswith("train/cat/c0.png,cat,dog,") and text[2].startswith("train/dog/d1.png,dog,<Delete>,")
    copy = tmp_path / "colleague" / "pets"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(".nbtrain"))
    other = open_state(copy, None)
    assert other.load_choices(saved) == 2
    assert other.choices == {copy / "train/cat/c0.png": "dog", copy / "train/dog/d1.png": DELETE}
    assert other.decided_at[copy / "train/cat/c0.png"] == pytest.approx(s.decided_at[c0], abs=1)
    other.undo()  # a loaded file is one decision
    assert other.choices == {}


def test_a_loaded_choices_file_is_in_the_log_too(folder, tmp_path):
    s = open_state(folder, None)
    s.toggle_delete(folder / "train/cat/c0.png")
    saved = s.save_choices(tmp_path / "choices.csv")
    logged = open_state(folder, DecisionLog.beside(folder))
    logged.load_choices(saved)
    assert open_state(folder, DecisionLog.beside(folder)).choices == {folder / "train/cat/c0.png": DELETE}


def test_multi_label_choices_round_trip_as_label_sets(folder, tmp_path):
    table = score_table(folder).assign(pred_idx=-1, pred_set=[frozenset({0, 1})] * 7)
    table["labels"] = [("cat", "dog") if i == 0 else row for i, row in enumerate(table["labels"])]
    c0, c1 = folder / "train/cat/c0.png", folder / "train/cat/c1.png"
    s = ReviewState(table, ["cat", "dog"], multi_label=True, root=folder)
    s.set_choice(c0, ["dog"])
    s.toggle_delete(c1)
    saved = s.save_choices(tmp_path / "c.csv")
    assert "train/cat/c0.png,cat;dog,dog," in saved.read_text()
    other = ReviewState(table, ["cat", "dog"], multi_label=True, root=folder)
    other.load_choices(saved)
    assert other.choices == {c0: frozenset({"dog"}), c1: DELETE}


@pytest.mark.parametrize(
    "rows, message",
    [
        ("path,choice\ntrain/cat/c0.png,dog\n", "has no column label"),
        ("path,label,choice,time\ntrain/cat/c0.png,cat,horse,\n", "'horse' is not <Keep>, <Delete> or one of"),
        ("path,label,choice,time\ntrain/cat/zz.png,cat,dog,\n", "not among the images under review"),
        ("path,label,choice,time\ntrain/cat/c0.png,dog,<Delete>,\n", "labelled 'cat' here, 'dog' in the file"),
        ("path,label,choice,time\ntrain/cat/c0.png,cat,dog,\ntrain/cat/c0.png,cat,<Keep>,\n", "named twice"),
    ],
    ids=["missing-column", "unknown-class", "not-in-dataset", "label-changed", "twice"],
)
def test_a_choices_file_that_does_not_fit_is_refused_whole_with_what_is_wrong(folder, tmp_path, rows, message):
    bad = tmp_path / "bad.csv"
    bad.write_text(rows)
    s = open_state(folder, DecisionLog.beside(folder))
    with pytest.raises(ValueError, match=message) as e:
        s.load_choices(bad)
    assert "Nothing loaded" in str(e.value)
    assert s.choices == {} and s.history == [] and not s.log.path.exists()


def test_a_choices_file_names_every_bad_row_and_how_to_fix_them(folder, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label,choice,time\ntrain/dog/d1.png,dog,<Delete>,\nnope.png,cat,dog,\nx.png,cat,dog,\n")
    with pytest.raises(ValueError) as e:
        open_state(folder, None).load_choices(bad)
    text = str(e.value)
    assert "2 row(s) do not fit" in text and "line 3: nope.png" in text and "line 4: x.png" in text
    assert "Fix or remove those rows" in text and "['cat', 'dog']" in text
    assert [r["path"] for r in read_choices(bad)] == ["train/dog/d1.png", "nope.png", "x.png"]


def test_a_missing_choices_file_says_how_to_make_one(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="save_choices"):
        open_state(folder, None).load_choices(tmp_path / "none.csv")


@pytest.mark.slow
def test_a_writer_killed_at_random_moments_never_loses_an_acknowledged_decision(tmp_path):
    from testkit.review_child import kill_trials

    results = kill_trials(tmp_path, kills=10, seed=3)
    assert sum(r.acknowledged for r in results) > 50, "the kills came while decisions were being made"
    assert [r for r in results if not r.kept or not r.restored_ok] == []
    assert any(r.torn_tail for r in results)


def test_a_relabel_the_dataset_already_has_is_not_taken_up_nor_noted(folder, log):
    s = open_state(folder, log)
    c0, c1 = folder / "train/cat/c0.png", folder / "train/cat/c1.png"
    s.set_choice(c0, "dog")
    s.toggle_delete(c1)
    table = score_table(folder)
    table.at[0, "labels"] = ("dog",)  # the next run reads the relabel from a label table
    again = ReviewState(table, ["cat", "dog"], root=folder, log=DecisionLog.beside(folder))
    assert again.choices == {c1: DELETE} and "Dropped" not in again.restored


def test_a_log_that_is_mostly_history_is_rewritten_as_its_pending_decisions_on_restore(folder, log):
    s = open_state(folder, log)
    c0, c1 = folder / "train/cat/c0.png", folder / "train/cat/c1.png"
    s.set_choice(c0, "dog")
    for _ in range(520):  # a long review, mostly taken back
        s.toggle_delete(c1)
        s.undo()
    s.toggle_delete(c1)
    assert len(records(log)) == 1042
    again = open_state(folder, DecisionLog.beside(folder))
    assert again.choices == {c0: "dog", c1: DELETE}
    assert [r["op"] for r in records(log)] == ["decide", "decide"], "two pending decisions, two undo steps"
    again.undo()
    assert open_state(folder, DecisionLog.beside(folder)).choices == {c0: "dog"}


def test_a_review_that_a_newer_one_took_over_stops_writing_to_the_log(folder, log):
    old = open_state(folder, log)
    c0, c1 = folder / "train/cat/c0.png", folder / "train/cat/c1.png"
    old.toggle_delete(c0)
    new = open_state(folder, DecisionLog.beside(folder))
    with pytest.warns(UserWarning, match="A newer cleaner over this dataset"):
        old.toggle_delete(c1)  # kept in the old one's memory, not in the log the new one writes
    new.set_choice(c1, "dog")
    assert old.choices == {c0: DELETE, c1: DELETE}
    assert open_state(folder, DecisionLog.beside(folder)).choices == {c0: DELETE, c1: "dog"}


def test_the_log_names_files_relative_to_the_folder_that_holds_every_image(folder, tmp_path):
    from nbtrain.decisions import dataset_root

    paths = list(score_table(folder)["path"])
    assert dataset_root(paths, folder) == folder
    assert dataset_root(paths, tmp_path / "elsewhere") == folder, "a root that does not hold them is not used"
    assert dataset_root(paths) == folder and open_state(folder, None).root == folder
