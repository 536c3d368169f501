"""Which rows each view of the cleaner shows, and in which order: the view functions on plain tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from nbtrain.views import (
    ALL_ISSUES,
    ANY,
    category_options,
    check_issue_table,
    class_view,
    duplicate_view,
    flag_top,
    issue_view,
    view_options,
    without_duplicates_of,
    without_issues_of,
    worst_first,
)

ROOT = Path("/data/pets")


def scores() -> pd.DataFrame:
    """Six images: three train cats, two train dogs, one valid cat; a2 is predicted as a dog."""
    names = ["train/cat/a0", "train/cat/a1", "train/cat/a2", "train/dog/b0", "train/dog/b1", "valid/cat/c0"]
    return pd.DataFrame(
        {
            "path": [ROOT / f"{n}.png" for n in names],
            "split": ["Train"] * 5 + ["Valid"],
            "labels": [("cat",)] * 3 + [("dog",)] * 2 + [("cat",)],
            "pred_idx": [0, 0, 1, 1, 1, 0],
            "pred_set": [
                frozenset({0}),
                frozenset({0, 1}),
                frozenset({1}),
                frozenset({1}),
                frozenset(),
                frozenset({0}),
            ],
            "loss": [0.5, 2.0, 3.0, 0.1, 1.0, 0.7],
            "self_confidence": [0.6, 0.2, 0.1, 0.9, 0.4, 0.5],
            "margin": [0.7, 0.3, 0.05, 0.95, 0.45, 0.6],
            "readable": [True] * 6,
        }
    )


def names(view: pd.DataFrame) -> list[str]:
    return [Path(p).stem for p in view["path"]]


def issues() -> pd.DataFrame:
    rows = [
        ("train/cat/a0", "blurry", 0.4, True, "blur 0.4"),
        ("train/dog/b1", "blurry", 0.9, True, "blur 0.9"),
        ("train/cat/a1", "blurry", 0.95, False, "blur 0.95"),
        ("train/cat/a1", "dark", 0.8, True, "dark 0.8"),
        ("gone/x", "blurry", 0.99, True, "deleted since"),
    ]
    return pd.DataFrame(
        [(str(ROOT / f"{p}.png"), i, s, f, r) for p, i, s, f, r in rows],
        columns=["path", "issue", "score", "flagged", "reason"],
    )


def duplicates() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path_a": [ROOT / "train/cat/a0.png", ROOT / "train/dog/b0.png"],
            "path_b": [ROOT / "valid/cat/c0.png", ROOT / "train/dog/gone.png"],
            "similarity": [0.991, 0.98],
            "cross_split": [True, False],
            "split_a": ["Train", "Train"],
        }
    )


def test_a_class_view_is_one_class_of_one_split_highest_loss_first():
    assert names(class_view(scores(), "Train", "cat")) == ["a2", "a1", "a0"]
    assert names(class_view(scores(), "Valid")) == ["c0"]
    assert names(class_view(scores(), "Train", ANY)) == ["a2", "a1", "b1", "a0", "b0"]


def test_confidence_and_margin_rank_low_scores_first():
    assert names(class_view(scores(), "Train", ANY, sort_by="self_confidence")) == ["a2", "a1", "b1", "a0", "b0"]
    assert names(class_view(scores(), "Train", "dog", sort_by="margin")) == ["b1", "b0"]
    with pytest.raises(ValueError, match="sort_by must be one of"):
        class_view(scores(), "Train", sort_by="random")


def test_the_predicted_filter_keeps_one_prediction_or_label_set_member():
    assert names(class_view(scores(), "Train", "cat", predicted=1)) == ["a2"]
    assert names(class_view(scores(), "Train", ANY, predicted=0, multi_label=True)) == ["a1", "a0"]


def test_an_issue_view_is_its_flagged_images_worst_first_with_their_reason():
    view = issue_view(scores(), issues(), "blurry")
    # a1 scores highest but is not flagged; the deleted file is left out.
    assert names(view) == ["b1", "a0"] and list(view["reason"]) == ["blur 0.9", "blur 0.4"]
    assert names(issue_view(scores(), issues(), "dark")) == ["a1"]
    empty = issue_view(scores(), issues(), "odd")
    assert empty.empty and "reason" in empty.columns


def test_a_duplicate_view_shows_both_images_of_each_pair_in_order():
    view = duplicate_view(scores(), duplicates())
    assert names(view) == ["a0", "c0", "b0"]  # the second pair's other file is gone
    assert list(view["pair"]) == ["pair 1, similarity 0.991 (train and valid: leakage)"] * 2 + [
        "pair 2, similarity 0.980 (train)"
    ]
    assert "pair" in duplicate_view(scores(), duplicates().iloc[:0]).columns


def test_flag_top_adds_the_highest_scores_of_one_issue_and_leaves_the_table_as_it_was():
    table = issues()
    flagged = flag_top(table, "blurry", 2)
    assert names(issue_view(scores(), flagged, "blurry")) == ["a1", "b1", "a0"]
    assert not table["flagged"][2]
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="top="):
            flag_top(table, "blurry", bad)
    with pytest.raises(ValueError, match="no rows of issue 'odd'"):
        flag_top(table, "odd", 3)


def test_the_menus_count_images_per_class_and_flagged_images_per_issue():
    assert category_options(scores(), ["cat", "dog", "bird"]) == [
        ("cat (4)", "cat"),
        ("dog (2)", "dog"),
        ("bird (0)", "bird"),
        ("all classes (6)", ANY),
    ]
    assert view_options(None, None) == [("images by class", "classes")]
    assert view_options(duplicates(), issues()) == [
        ("images by class", "classes"),
        ("near-duplicates (2 pairs)", "duplicates"),
        ("blurry (3)", "issue:blurry"),
        ("dark (1)", "issue:dark"),
        ("worst first, all issues (4)", f"issue:{ALL_ISSUES}"),
    ]


def test_rows_of_deleted_or_moved_files_are_dropped():
    done = {ROOT / "valid/cat/c0.png", ROOT / "train/cat/a1.png"}
    assert len(without_duplicates_of(duplicates(), done)) == 1
    assert sorted(without_issues_of(issues(), done)["reason"]) == ["blur 0.4", "blur 0.9", "deleted since"]


def test_an_issue_table_without_the_needed_columns_is_refused():
    with pytest.raises(ValueError, match="lacks the columns \\['reason'\\]"):
        check_issue_table(issues().drop(columns="reason"))
    with pytest.raises(TypeError, match="DataFrame that audit\\(\\) returns"):
        check_issue_table([("a.png", "blurry")])


def test_worst_first_ranks_images_by_how_many_issues_flag_them_and_joins_their_reasons():
    t = pd.DataFrame(
        {
            "path": [ROOT / "a.png", ROOT / "a.png", ROOT / "b.png", ROOT / "c.png", ROOT / "c.png"],
            "issue": ["outlier", "grayscale", "outlier", "outlier", "grayscale"],
            "score": [30.0, 1.0, 40.0, 5.0, 0.2],
            "flagged": [True, True, True, False, False],
            "reason": ["unlike its class", "colour 0.001", "far from all", "typical", "in colour"],
        }
    )
    view = worst_first(t)
    assert list(view["path"]) == [ROOT / "a.png", ROOT / "b.png"]  # two issues before one; c flags none
    assert "outlier: unlike its class" in view.iloc[0]["reason"] and "grayscale: colour" in view.iloc[0]["reason"]
    shown = issue_view(pd.DataFrame({"path": [ROOT / "b.png", ROOT / "a.png"], "loss": [1.0, 2.0]}), t, ALL_ISSUES)
    assert list(shown["path"]) == [ROOT / "a.png", ROOT / "b.png"] and "grayscale" in shown.iloc[0]["reason"]
