"""The review state on its own: choices, undo, bulk decisions, pages and applying them to real files, with
a score table written by hand. No model and no widget: this module imports neither torch nor ipywidgets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from PIL import Image

from nbtrain.review import DELETE, KEEP, ReviewState

PACKAGE = Path(__file__).resolve().parent.parent / "nbtrain"


def write_png(path: Path, shade: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, shade, shade)).save(path)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_pets(tmp_path / "pets")


def make_pets(root: Path) -> Path:
    """train/cat, train/dog and valid/cat with a few real PNGs."""
    for i in range(3):
        write_png(root / "train" / "cat" / f"c{i}.png", 10 * i)
        write_png(root / "train" / "dog" / f"d{i}.png", 100 + 10 * i)
    write_png(root / "valid" / "cat" / "v0.png", 200)
    return root


def score_table(root: Path, vocab=("cat", "dog")) -> pd.DataFrame:
    """A score table as `scores.score_table` makes it: c0 and d0 are predicted as the other class, d2 is
    unreadable; losses fall in the order of the files."""
    rows = []
    for i, path in enumerate(sorted(root.rglob("*.png"))):
        label = path.parent.name
        pred = vocab.index(label)
        if path.stem in ("c0", "d0"):
            pred = 1 - pred
        readable = path.stem != "d2"
        rows.append(
            {
                "path": path,
                "split": "Train" if path.parts[-3] == "train" else "Valid",
                "labels": (label,),
                "pred_idx": pred if readable else -1,
                "prob": 0.9,
                "loss": 10.0 - i,
                "self_confidence": 0.1 * i,
                "margin": 0.1 * i,
                "readable": readable,
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture
def state(folder) -> ReviewState:
    s = ReviewState(score_table(folder), ["cat", "dog"], max_n=3)
    s.set_view(s.scores[s.scores["split"] == "Train"])
    return s


def test_the_review_module_imports_no_widget_and_no_model_code():
    # The package's __init__ imports everything, so the module is loaded on its own, as a namespace's member.
    code = (
        f"import sys, types; pkg = types.ModuleType('nbtrain'); pkg.__path__ = [{str(PACKAGE)!r}]; "
        "sys.modules['nbtrain'] = pkg; import nbtrain.review; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ipywidgets', 'IPython', 'anywidget'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_relabel_to_the_own_class_is_a_keep(state, folder):
    cat = folder / "train" / "cat" / "c1.png"
    assert state.set_choice(cat, "cat") == [cat]
    assert state.choices == {} and state.mark(cat) == {"kind": "kept"}
    state.set_choice(cat, "dog")
    assert state.choices == {cat: "dog"} and state.mark(cat) == {"kind": "relabel", "label": "dog"}


def test_an_unknown_choice_is_refused_and_changes_nothing(state, folder):
    cat = folder / "train" / "cat" / "c1.png"
    with pytest.raises(ValueError, match="not <Keep>, <Delete> or one of the classes"):
        state.set_choice(cat, "horse")
    with pytest.raises(ValueError, match="multi-label"):
        state.set_choice(cat, ["cat", "dog"])
    assert state.choices == {} and state.history == []


def test_toggle_delete_marks_then_keeps(state, folder):
    cat = folder / "train" / "cat" / "c1.png"
    state.toggle_delete(cat)
    assert state.choices == {cat: DELETE} and state.mark(cat) == {"kind": "delete"}
    state.toggle_delete(cat)
    assert state.choices == {} and len(state.history) == 2


def test_delete_all_shown_is_one_decision_that_one_undo_takes_back(state):
    page = state.fns
    assert len(page) == 3
    assert state.delete_all_shown() == page
    assert state.choices == dict.fromkeys(page, DELETE) and state.reviewed == set(page)
    assert state.undo() == page
    assert state.choices == {} and state.reviewed == set() and state.undo() == []


def test_undo_restores_the_choice_a_decision_replaced(state, folder):
    dog = folder / "train" / "dog" / "d1.png"
    state.set_choice(dog, "cat")
    state.set_choice(dog, DELETE)
    state.undo()
    assert state.choices == {dog: "cat"} and state.reviewed == {dog}


def test_accept_all_shown_relabels_readable_images_to_their_prediction(folder):
    s = ReviewState(score_table(folder), ["cat", "dog"], max_n=10)
    s.set_view(s.scores[s.scores["split"] == "Train"])
    s.accept_all_shown()
    # c0 and d0 are predicted as the other class; the rest agree (keep); d2 is unreadable (left alone).
    root = folder / "train"
    assert s.choices == {root / "cat" / "c0.png": "dog", root / "dog" / "d0.png": "cat"}
    assert root / "dog" / "d2.png" not in s.reviewed and len(s.history) == 1


def test_accepting_the_prediction_of_an_unreadable_file_is_refused(state, folder):
    with pytest.raises(ValueError, match="unreadable"):
        state.accept_prediction(folder / "train" / "dog" / "d2.png")
    with pytest.raises(ValueError, match="not among the images"):
        state.accept_prediction(folder / "elsewhere.png")


def test_pages_cover_the_view_and_paging_on_counts_as_reviewed(state):
    assert state.n_pages == 2 and state.go_to(5) == 1 and state.go_to(-1) == 0
    first = state.fns
    state.next_page()
    assert state.page == 1 and state.reviewed == set(first) and len(state.fns) == 3
    assert set(first).isdisjoint(state.fns)
    state.next_page()  # the last page: nothing more counts as reviewed
    assert state.page == 1 and state.reviewed == set(first)
    assert state.counts() == {"delete": 0, "relabel": 0, "reviewed_in_view": 3, "in_view": 6, "reviewed": 3}


def test_delete_and_change_describe_the_page_with_the_datasets_own_labels(folder):
    # The fastai book's is_cat labels: True and False, shown and chosen as "True" and "False".
    table = score_table(folder).assign(labels=lambda d: d["labels"].map(lambda t: (str(t[0] == "cat"),)))
    s = ReviewState(table, [False, True], max_n=4)
    s.set_view(s.scores)
    s.set_choice(s.fns[0], DELETE)
    s.set_choice(s.fns[1], False)
    assert s.values()[:2] == [DELETE, "False"] and s.delete() == [0] and s.change() == [(1, False)]
    pending = s.pending()
    assert list(pending["path"]) == s.fns[:2] and list(pending["choice"]) == [DELETE, "False"]
    assert [(a.kind, a.label) for a in s.actions()] == [("delete", None), ("relabel", "False")]


def test_multi_label_choices_are_label_sets(folder):
    table = score_table(folder).assign(pred_idx=-1, pred_set=[frozenset({0, 1})] * 7)
    s = ReviewState(table, ["cat", "dog"], multi_label=True)
    path = table["path"][0]
    s.set_choice(path, ["cat"])  # its own labels
    assert s.choices == {}
    s.accept_prediction(path)
    assert s.choices == {path: frozenset({"cat", "dog"})} and s.change() == []  # not on the page shown
    with pytest.raises(ValueError, match="unknown: \\['horse'\\]"):
        s.set_choice(path, ["horse"])


def test_apply_to_folder_moves_and_deletes_the_files_and_the_scores_follow(state, folder):
    doomed, moving = folder / "train" / "cat" / "c1.png", folder / "train" / "dog" / "d0.png"
    state.set_choice(doomed, DELETE)
    state.set_choice(moving, "cat")
    preview = state.apply_to_folder(folder, dry_run=True)
    assert doomed.exists() and moving.exists() and preview.operation == "dry run"
    report = state.apply_to_folder(folder)
    dest = folder / "train" / "cat" / "d0.png"
    assert not doomed.exists() and dest.exists() and not moving.exists()
    assert report.summary().startswith("1 deleted, 1 relabelled") and report.journal.exists()
    assert state.choices == {} and state.history == []
    assert doomed not in set(state.scores["path"]) and state.own_labels(dest) == ("cat",)
    assert state.changes.moved == {moving: dest} and state.changes.gone == {doomed}
    assert state.changes.labels == {moving: "cat"}


def test_undo_apply_puts_the_files_back_and_the_choices_are_pending_again(state, folder):
    doomed, moving = folder / "train" / "cat" / "c1.png", folder / "train" / "dog" / "d0.png"
    state.set_choice(doomed, DELETE)
    state.set_choice(moving, "cat")
    before = {p: p.read_bytes() for p in folder.rglob("*.png")}
    state.apply_to_folder(folder, trash=True)
    report = state.undo_apply()
    assert report.summary().startswith("2 put back")
    assert {p: p.read_bytes() for p in folder.rglob("*.png")} == before
    assert state.choices == {doomed: DELETE, moving: "cat"} and moving in set(state.scores["path"])
    with pytest.raises(ValueError, match="Nothing to undo"):
        state.undo_apply()


def test_a_relabel_the_folders_cannot_express_is_refused_before_any_file_changes(folder):
    table = score_table(folder)
    table.loc[0, "labels"] = ("dog",)  # labelled by something other than its folder
    s = ReviewState(table, ["cat", "dog"])
    s.set_choice(table["path"][0], "cat")
    s.set_choice(table["path"][1], DELETE)
    with pytest.raises(ValueError, match="do not come from folder names"):
        s.apply_to_folder(folder)
    assert table["path"][1].exists() and s.last_report is None and len(s.choices) == 2


def test_apply_to_table_rewrites_the_rows_and_keeps_the_files(folder):
    files = sorted((folder / "train").rglob("*.png"))
    df = pd.DataFrame({"fname": [str(p.relative_to(folder)) for p in files], "label": [p.parent.name for p in files]})
    csv = folder / "labels.csv"
    df.to_csv(csv, index=False)
    table = SimpleNamespace(
        df=df, fn_col="fname", label_col="label", label_delim=None, folder=folder, suff="", csv_path=csv
    )
    s = ReviewState(score_table(folder), ["cat", "dog"])
    s.set_choice(files[0], DELETE)
    s.set_choice(files[1], "dog")
    assert s.table_plan_lines() == [f"remove row {files[0].name}", f"relabel {files[1].name} → dog"]
    assert s.apply_to_table(table, dry_run=True).equals(df)
    new = s.apply_to_table(table)
    assert list(new["fname"]) == list(df["fname"][1:]) and new["label"].iloc[0] == "dog"
    assert pd.read_csv(csv)["label"].tolist() == new["label"].tolist()
    assert all(p.exists() for p in files) and s.choices == {}
    assert s.changes.gone == {files[0]} and s.changes.labels == {files[1]: "dog"}


def test_keep_is_stored_as_no_choice(state, folder):
    cat = folder / "train" / "cat" / "c2.png"
    state.set_choice(cat, DELETE)
    state.set_choice(cat, KEEP)
    assert state.choices == {} and state.values() == [KEEP] * len(state.fns)
