"""nbtrain.fileops on real image files: deletes, relabels, collisions, refusals, faults, tables, copies."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from nbtrain import fileops
from nbtrain.fileops import Action, apply_actions
from testkit.fileops_child import digest, files_in, make_dataset, make_image


@pytest.fixture
def data(tmp_path) -> Path:
    """tmp/data/train/{a,b,c}/{0..4}.png: the same names in every class."""
    return make_dataset(tmp_path / "data", per_class=5)


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def latest_journal(root: Path) -> Path:
    return max((root / ".nbtrain").glob("journal-*.jsonl"))


# -- deleting and relabelling ---------------------------------------------------------------------


def test_delete_unlinks_the_file_and_leaves_nothing_staged(data):
    doomed = data / "train/a/1.png"
    before = digest(data)
    report = apply_actions([Action("delete", doomed)], data)
    assert not doomed.exists()
    assert report.deleted == [doomed] and report.summary().startswith("1 deleted, 0 relabelled")
    assert digest(data) == {k: v for k, v in before.items() if k != "train/a/1.png"}
    assert files_in(data / ".nbtrain" / "staging") == []
    ops = [json.loads(line) for line in report.journal.read_text().splitlines()]
    assert ops[0]["kind"] == "header" and ops[0]["root"] == str(data) and ops[0]["pid"] == os.getpid()
    assert [(o["op"], o["state"]) for o in ops[2:4]] == [("stage", "begin"), ("stage", "done")]


def test_delete_to_trash_keeps_the_bytes_under_the_same_relative_path(data):
    doomed = data / "train/b/2.png"
    original = sha(doomed)
    report = apply_actions([Action("delete", doomed)], data, trash=True)
    assert not doomed.exists()
    kept = report.trash / "train/b/2.png"
    assert sha(kept) == original and "kept in" in str(report)
    fileops.undo(report.journal)
    assert sha(doomed) == original and files_in(data / ".nbtrain" / "trash") == []


def test_relabel_moves_the_file_into_the_class_folder_creating_it(data):
    src, other = data / "train/a/3.png", data / "train/b/4.png"
    src_sha, other_sha = sha(src), sha(other)
    report = apply_actions([Action("relabel", src, "new"), Action("relabel", other, "c")], data)
    assert not src.exists() and sha(data / "train/new/3.png") == src_sha
    assert report.moved == [(src, data / "train/new/3.png"), (other, data / "train/c/4_1.png")]
    assert sha(data / "train/c/4_1.png") == other_sha
    assert report.summary() == "0 deleted, 2 relabelled"


def test_relabel_onto_a_taken_name_keeps_both_files_byte_for_byte(data):
    before = digest(data)
    (data / "train/b/1_1.png").write_bytes((data / "train/c/0.png").read_bytes())  # 1_1 is taken too
    taken = sha(data / "train/b/1_1.png")
    report = apply_actions(
        [Action("relabel", data / "train/a/1.png", "b"), Action("relabel", data / "train/c/1.png", "b")], data
    )
    assert [dst.name for _, dst in report.moved] == ["1_2.png", "1_3.png"]
    assert sha(data / "train/b/1.png") == before["train/b/1.png"]
    assert sha(data / "train/b/1_1.png") == taken
    assert sha(data / "train/b/1_2.png") == before["train/a/1.png"]
    assert sha(data / "train/b/1_3.png") == before["train/c/1.png"]


def test_choosing_the_own_class_is_skipped_and_changes_nothing(data):
    before = digest(data)
    report = apply_actions([Action("relabel", data / "train/a/0.png", "a")], data)
    assert report.skipped == [data / "train/a/0.png"] and report.journal is None
    assert "1 skipped (already in class)" in report.summary()
    assert digest(data) == before and not (data / ".nbtrain").exists()


def test_a_missing_file_is_reported_and_the_rest_applied(data):
    gone = data / "train/a/9.png"
    report = apply_actions(
        [
            Action("delete", gone),
            Action("delete", data / "train/a/0.png"),
            Action("relabel", data / "train/a/1.png", "b"),
        ],
        data,
    )
    assert report.missing == [gone] and "1 missing" in report.summary()
    assert not (data / "train/a/0.png").exists() and (data / "train/b/1_1.png").exists()


def test_two_different_choices_for_one_file_are_refused(data):
    with pytest.raises(ValueError, match="Two different choices"):
        apply_actions([Action("delete", data / "train/a/0.png"), Action("relabel", data / "train/a/0.png", "b")], data)
    assert (data / "train/a/0.png").exists()


# -- refusals: read-only data, bad labels, leaving the root, a held lock --------------------------------


@pytest.fixture
def read_only(data):
    """The dataset with every folder chmod 555; permissions restored afterwards."""
    folders = [data, *(p for p in data.rglob("*") if p.is_dir())]
    modes = {d: d.stat().st_mode for d in folders}
    for d in folders:
        os.chmod(d, 0o555)
    yield data
    for d, mode in modes.items():
        os.chmod(d, mode)


def test_a_read_only_dataset_is_refused_before_anything_changes(read_only):
    before = digest(read_only)
    with pytest.raises(fileops.ReadOnlyDatasetError, match=r"(?s)read-only.*copy_dataset\('") as e:
        apply_actions(
            [Action("delete", read_only / "train/a/0.png"), Action("relabel", read_only / "train/a/1.png", "b")],
            read_only,
        )
    assert isinstance(e.value, PermissionError) and "Nothing was changed" in str(e.value)
    assert digest(read_only) == before and not (read_only / ".nbtrain").exists()
    assert fileops.is_read_only(read_only / "train/a")


def test_one_read_only_class_folder_is_enough_to_refuse(data):
    os.chmod(data / "train/b", 0o555)
    try:
        before = digest(data)
        with pytest.raises(fileops.ReadOnlyDatasetError, match="train/b is read-only"):
            apply_actions(
                [Action("delete", data / "train/a/0.png"), Action("relabel", data / "train/a/1.png", "b")], data
            )
        assert digest(data) == before
    finally:
        os.chmod(data / "train/b", 0o755)


def test_kaggle_input_counts_as_read_only(tmp_path):
    assert fileops.is_read_only("/kaggle/input/some-dataset/train")
    assert not fileops.is_read_only(tmp_path)


@pytest.mark.parametrize("label", ["../x", "a/b", "..", ".", "", "a\\b", "a\0b", "/etc"])
def test_a_label_that_is_not_a_plain_folder_name_is_refused(data, label):
    before = digest(data)
    with pytest.raises(ValueError, match="plain folder name") as e:
        apply_actions(
            [Action("delete", data / "train/a/0.png"), Action("relabel", data / "train/a/1.png", label)], data
        )
    assert repr(label) in str(e.value)
    assert digest(data) == before and not (data / ".nbtrain").exists()
    assert digest(data.parent) == {f"data/{k}": v for k, v in before.items()}  # nothing appeared beside the root


def test_a_class_folder_linking_outside_the_root_is_refused(data, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (data / "train/evil").symlink_to(outside, target_is_directory=True)
    before = digest(data)
    with pytest.raises(ValueError, match="outside the dataset's root"):
        apply_actions([Action("relabel", data / "train/a/0.png", "evil")], data)
    assert list(outside.iterdir()) == [] and digest(data) == before


def test_a_file_outside_the_root_or_directly_in_it_is_refused(data, tmp_path):
    stray = tmp_path / "stray.png"
    make_image(stray, seed=1)
    with pytest.raises(ValueError, match="outside the dataset's root"):
        apply_actions([Action("delete", stray)], data)
    with pytest.raises(ValueError, match="outside the dataset's root"):
        apply_actions([Action("relabel", data / "train/a/0.png", "x")], data / "train/a")  # would land in train/x
    assert stray.exists() and (data / "train/a/0.png").exists()


def test_dry_run_reports_the_destination_names_and_touches_nothing(data):
    before = digest(data)
    report = apply_actions(
        [
            Action("delete", data / "train/a/0.png"),
            Action("relabel", data / "train/a/1.png", "b"),
            Action("relabel", data / "train/a/2.png", "a"),
        ],
        data,
        dry_run=True,
    )
    assert report.deleted == [data / "train/a/0.png"]
    assert report.moved == [(data / "train/a/1.png", data / "train/b/1_1.png")]
    assert report.summary() == (
        "Dry run, nothing changed: would have 1 deleted, 1 relabelled, 1 skipped (already in class)"
    )
    assert digest(data) == before and not (data / ".nbtrain").exists() and report.journal is None


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(30)
"""


def test_a_dataset_locked_by_another_process_is_refused(data):
    (data / ".nbtrain").mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(data / ".nbtrain/lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = digest(data)
        with pytest.raises(fileops.DatasetLockedError, match="Another process .* Wait for it to finish"):
            apply_actions([Action("delete", data / "train/a/0.png")], data)
        assert digest(data) == before
    finally:
        holder.kill()
        holder.wait()
    apply_actions([Action("delete", data / "train/a/0.png")], data)  # the dead holder's lock is gone
    assert not (data / "train/a/0.png").exists()


# -- cut off halfway: resume or undo --------------------------------------------------------------------


def many_actions(root: Path) -> list[Action]:
    """Deletes and relabels, some onto taken names, some into a new class folder."""
    return [
        Action("delete", root / "train/a/0.png"),
        Action("relabel", root / "train/a/1.png", "b"),
        Action("delete", root / "train/b/2.png"),
        Action("relabel", root / "train/b/3.png", "new"),
        Action("relabel", root / "train/c/4.png", "a"),
        Action("delete", root / "train/c/0.png"),
        Action("relabel", root / "train/c/1.png", "new"),
    ]


def test_a_fault_halfway_then_resume_gives_the_complete_result(data, tmp_path):
    twin = make_dataset(tmp_path / "twin", per_class=5)
    expected = apply_actions(many_actions(twin), twin)
    with pytest.raises(fileops.InjectedFault):
        apply_actions(many_actions(data), data, _fail_after=3)
    report = fileops.resume(latest_journal(data))
    assert digest(data) == digest(twin)
    assert report.summary() == expected.summary() == "3 deleted, 4 relabelled"
    assert files_in(data / ".nbtrain" / "staging") == []
    again = fileops.resume(latest_journal(data))  # idempotent
    assert digest(data) == digest(twin) and again.summary() == report.summary()


@pytest.mark.parametrize("fail_after", [0, 3, 6, 8])  # 8: during the commit's unlinks
def test_a_fault_halfway_then_undo_restores_every_byte(data, fail_after):
    before = digest(data)
    with pytest.raises(fileops.InjectedFault):
        apply_actions(many_actions(data), data, _fail_after=fail_after)
    report = fileops.undo(latest_journal(data))
    unrecoverable = {p.relative_to(data).as_posix() for p in report.unrecoverable}
    assert unrecoverable == ({"train/a/0.png"} if fail_after == 8 else set())  # the commit had unlinked it
    assert digest(data) == {k: v for k, v in before.items() if k not in unrecoverable}
    assert not (data / "train/new").exists()  # the class folder the apply made is gone again
    assert files_in(data / ".nbtrain" / "staging") == []
    assert fileops.undo(latest_journal(data)).moved == []  # idempotent: nothing left to put back


def test_undo_after_a_completed_apply_names_the_unlinked_files_as_unrecoverable(data):
    before = digest(data)
    report = apply_actions(many_actions(data), data)
    back = fileops.undo(report.journal)
    deleted = ["train/a/0.png", "train/b/2.png", "train/c/0.png"]
    assert sorted(p.relative_to(data).as_posix() for p in back.unrecoverable) == deleted
    assert "4 put back, 3 unrecoverable" in back.summary() and "trash=True" in back.summary()
    assert digest(data) == {k: v for k, v in before.items() if k not in deleted}


def test_undo_with_trash_restores_everything_and_resume_is_then_refused(data):
    before = digest(data)
    report = apply_actions(many_actions(data), data, trash=True)
    back = fileops.undo(report.journal)
    assert back.unrecoverable == [] and len(back.moved) == 7
    assert digest(data) == before
    with pytest.raises(ValueError, match="was undone"):
        fileops.resume(report.journal)


def test_a_journal_given_as_a_folder_elsewhere_is_used(data, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    report = apply_actions([Action("relabel", data / "train/a/1.png", "c")], data, journal=logs)
    assert report.journal.parent == logs and report.journal.name.startswith("journal-")
    fileops.undo(report.journal)
    assert (data / "train/a/1.png").exists() and not (data / "train/c/1_1.png").exists()


# -- table datasets ------------------------------------------------------------------------------------


def test_table_actions_rewrite_the_csv_atomically_and_keep_a_backup(tmp_path):
    csv = tmp_path / "labels.csv"
    original = "fname,labels\n1.png,cat\n2.png,dog\n3.png,cat\n"
    csv.write_text(original)
    df = pd.read_csv(csv)
    out = fileops.apply_table_actions(
        df,
        [
            Action("delete", Path("1.png")),
            Action("relabel", Path("2.png"), "cat"),
            Action("relabel", Path("3.png"), "cat"),
        ],
        fn_col="fname",
        label_col="labels",
        csv_path=csv,
    )
    assert out.to_dict("list") == {"fname": ["2.png", "3.png"], "labels": ["cat", "cat"]}
    assert pd.read_csv(csv).equals(out)
    backups = list(tmp_path.glob("labels.csv.bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["labels.csv", backups[0].name])  # no temp file left
    assert len(df) == 3  # the caller's table is untouched


def test_table_actions_that_change_nothing_leave_the_csv_and_write_no_backup(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("fname,labels\n1.png,cat\n")
    stamp = csv.stat().st_mtime_ns
    out = fileops.apply_table_actions(
        pd.read_csv(csv), [Action("relabel", Path("1.png"), "cat")], fn_col="fname", label_col="labels", csv_path=csv
    )
    assert out.to_dict("list") == {"fname": ["1.png"], "labels": ["cat"]}
    assert [p.name for p in tmp_path.iterdir()] == ["labels.csv"] and csv.stat().st_mtime_ns == stamp


def test_table_actions_join_several_labels_and_skip_the_own_labels(tmp_path):
    df = pd.DataFrame({"fn": ["x/1.jpg", "x/2.jpg"], "tags": ["a b", "b"]})
    out = fileops.apply_table_actions(
        df,
        [Action("relabel", tmp_path / "x/1.jpg", ["b", "a"]), Action("relabel", Path("x/2.jpg"), {"c", "a"})],
        fn_col="fn",
        label_col="tags",
        label_delim=" ",
        path=tmp_path,
    )
    assert out["tags"].tolist() == ["a b", "a c"]
    with pytest.raises(ValueError, match="several labels"):
        fileops.apply_table_actions(df, [Action("relabel", Path("x/1.jpg"), ["a", "b"])], fn_col="fn", label_col="tags")


def test_a_file_not_in_the_table_is_skipped_with_a_warning(tmp_path):
    df = pd.DataFrame({"fn": ["1.jpg"], "y": ["a"]})
    with pytest.warns(UserWarning, match="not in the table"):
        out = fileops.apply_table_actions(df, [Action("delete", Path("9.jpg"))], fn_col="fn", label_col="y")
    assert out.equals(df)


# -- copying read-only data ----------------------------------------------------------------------------


def test_copy_dataset_makes_a_writable_copy_and_never_overwrites(data, tmp_path):
    (data / ".nbtrain").mkdir()
    (data / ".nbtrain" / "journal-x.jsonl").write_text("{}\n")
    folders = [data, *(p for p in data.rglob("*") if p.is_dir())]
    for d in folders:
        os.chmod(d, 0o555)
    try:
        copy = fileops.copy_dataset(data, tmp_path / "work" / "copy")
    finally:
        for d in folders:
            os.chmod(d, 0o755)
    assert digest(copy) == digest(data) and not (copy / ".nbtrain").exists()
    assert not fileops.is_read_only(copy / "train/a")
    assert sorted(p.name for p in copy.parent.iterdir()) == ["copy"]  # no partial folder left
    apply_actions([Action("relabel", copy / "train/a/0.png", "b")], copy)  # the copy can be cleaned
    with pytest.raises(FileExistsError, match="not empty"):
        fileops.copy_dataset(data, copy)
    (tmp_path / "empty").mkdir()
    assert digest(fileops.copy_dataset(data, tmp_path / "empty")) == digest(data)


def test_copy_dataset_without_a_destination_outside_kaggle_says_what_to_pass(data):
    if Path("/kaggle/working").is_dir():
        pytest.skip("on Kaggle the default destination exists")
    with pytest.raises(ValueError, match=r"copy_dataset\(.*'path/to/writable/data'\)"):
        fileops.copy_dataset(data)


# -- races and torn journals -----------------------------------------------------------------------------


def test_a_name_taken_by_another_program_mid_apply_is_not_overwritten(data):
    src, racer = data / "train/a/0.png", data / "train/b/0_1.png"  # b/0.png exists, so 0_1 is the planned name
    src_sha = sha(src)

    def take_the_name(step: str) -> None:
        if step == "journaled" and not racer.exists():
            make_image(racer, seed=99)

    report = apply_actions([Action("relabel", src, "b")], data, _hook=take_the_name)
    assert report.moved == [(src, data / "train/b/0_2.png")]
    assert sha(data / "train/b/0_2.png") == src_sha and sha(racer) != src_sha
    fileops.undo(report.journal)
    assert sha(src) == src_sha and racer.exists() and not (data / "train/b/0_2.png").exists()


def test_a_journal_torn_mid_line_by_a_kill_still_resumes(data, tmp_path):
    twin = make_dataset(tmp_path / "twin", per_class=5)
    apply_actions(many_actions(twin), twin)
    with pytest.raises(fileops.InjectedFault):
        apply_actions(many_actions(data), data, _fail_after=4)
    journal = latest_journal(data)
    with open(journal, "a") as f:
        f.write('{"t": 1, "i": 4, "op": "mo')  # a write cut off by SIGKILL
    fileops.resume(journal)
    assert digest(data) == digest(twin)
    assert all(json.loads(line) for line in journal.read_text().splitlines()[-3:])


def test_a_journal_cut_off_before_its_plan_resumes_to_nothing_and_says_so(data):
    before = digest(data)
    journal = data / ".nbtrain" / "journal-cut.jsonl"
    journal.parent.mkdir()
    journal.write_text('{"kind": "header", "version": 1, "id": "x", "root": "' + str(data) + '"}\n{"kind": "pl')
    report = fileops.resume(journal)
    assert "had not touched any file" in str(report) and digest(data) == before
    assert "had not touched any file" in str(fileops.undo(journal))
