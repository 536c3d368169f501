"""Which images a view of the cleaner shows, and in which order: pure functions of the score, issue and
duplicate tables (tables in, a table out), so each view is checked without a model or a widget.

A view is rows of the score table (path, split, labels, prediction, scores), best to review first; the
issue view adds each image's `reason`, the duplicate view each image's `pair`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from .scores import SORTS

ANY = "(any)"
# The issue name of the "worst first, all issues" view.
ALL_ISSUES = "(all)"
ISSUE_COLUMNS = ("path", "issue", "score", "flagged", "reason")


def check_issue_table(table: pd.DataFrame) -> pd.DataFrame:
    """The audit table with the columns the issue views need, or a clear error."""
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"issues must be the DataFrame that audit() returns, not {type(table).__name__}.")
    missing = [c for c in ISSUE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"The issue table lacks the columns {missing}; it needs {list(ISSUE_COLUMNS)} "
            "(one row per image and issue type, as audit() returns)."
        )
    return table


def class_view(
    scores: pd.DataFrame,
    split: str,
    category: str = ANY,
    predicted: int | None = None,
    sort_by: str = "loss",
    multi_label: bool = False,
) -> pd.DataFrame:
    """The images of one split, of class `category` (ANY: every class), that the model predicts as class
    index `predicted` (None: any prediction), most suspicious first by `sort_by`."""
    if sort_by not in SORTS:
        raise ValueError(f"sort_by must be one of {list(SORTS)}, not {sort_by!r}.")
    df = scores[scores["split"] == split]
    if category != ANY:
        df = df[df["labels"].map(lambda labs: category in labs)]
    if predicted is not None:
        df = df[df["pred_set"].map(lambda s: predicted in s)] if multi_label else df[df["pred_idx"] == predicted]
    return df.sort_values(sort_by, ascending=SORTS[sort_by], kind="stable")


def worst_first(issues: pd.DataFrame) -> pd.DataFrame:
    """One row per image flagged for anything (`path, issue, score, flagged, reason`), the most suspicious
    first: by how many issue types flag it, then by how extreme it is within each (the share of that
    type's images it scores above, summed). The reason joins every flagged type's reason, so a stray that
    is also grey reads as both."""
    t = issues.copy()
    t["rank"] = t.groupby("issue")["score"].rank(pct=True)
    t = t[t["flagged"].astype(bool)]
    if t.empty:
        return t[list(ISSUE_COLUMNS)].iloc[:0]
    t = t.sort_values("rank", ascending=False, kind="stable")
    t["line"] = t["issue"] + ": " + t["reason"].astype(str)
    g = t.groupby(t["path"].map(lambda p: Path(os.path.abspath(p))), sort=False)
    out = pd.DataFrame(
        {
            "issue": g["issue"].agg(lambda x: ", ".join(x)),
            "n": g.size(),
            "score": g["rank"].sum(),
            "reason": g["line"].agg(" | ".join),
        }
    )
    out = out.sort_values(["n", "score"], ascending=False, kind="stable").rename_axis("path").reset_index()
    out["flagged"] = True
    return out[list(ISSUE_COLUMNS)]


def issue_view(scores: pd.DataFrame, issues: pd.DataFrame, issue: str) -> pd.DataFrame:
    """The flagged images of one issue type, worst (highest score) first, each with its `reason`; images
    the score table does not hold (deleted since the audit) are left out. `ALL_ISSUES` gives every
    flagged image, the most suspicious first (`worst_first`)."""
    if issue == ALL_ISSUES:
        t = worst_first(issues)
    else:
        t = issues[(issues["issue"] == issue) & issues["flagged"].astype(bool)]
        t = t.sort_values("score", ascending=False, kind="stable")
    index = {Path(os.path.abspath(p)): i for i, p in enumerate(scores["path"])}
    rows = []
    for path, reason in zip(t["path"], t["reason"]):
        i = index.get(Path(os.path.abspath(path)))
        if i is not None:
            row = scores.iloc[i].copy()
            row["reason"] = str(reason)
            rows.append(row)
    return pd.DataFrame(rows).reset_index(drop=True) if rows else scores.iloc[:0].assign(reason="")


def duplicate_view(scores: pd.DataFrame, duplicates: pd.DataFrame) -> pd.DataFrame:
    """Both images of each near-duplicate pair, side by side in the pairs' order, each with its `pair`:
    which pair, how similar, and where (a pair across train and valid is leakage)."""
    by_path = scores.set_index("path", drop=False)
    rows = []
    for n, pair in enumerate(duplicates.itertuples(index=False), 1):
        where = "train and valid: leakage" if pair.cross_split else pair.split_a.lower()
        for p in (pair.path_a, pair.path_b):
            if p in by_path.index:
                row = by_path.loc[p].copy()
                row["pair"] = f"pair {n}, similarity {pair.similarity:.3f} ({where})"
                rows.append(row)
    return pd.DataFrame(rows).reset_index(drop=True) if rows else scores.iloc[:0].assign(pair="")


def flag_top(issues: pd.DataFrame, issue: str, top: int) -> pd.DataFrame:
    """A copy of `issues` with the `top` highest-scoring images of `issue` flagged as well: outliers are
    a ranking, and a group of strays can rank first while each scores under the threshold."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top= is how many of one issue type's highest scores to show, a positive int, not {top!r}.")
    rows = issues["issue"] == issue
    if not rows.any():
        raise ValueError(f"The table has no rows of issue {issue!r}; its types are {sorted(issues['issue'].unique())}.")
    table = issues.copy()
    table.loc[table[rows].nlargest(top, "score").index, "flagged"] = True
    return table


def category_options(scores: pd.DataFrame, classes: Sequence[str]) -> list[tuple[str, str]]:
    """The category menu: each class with its image count, then every class."""
    counts: dict[str, int] = {}
    for labels in scores["labels"]:
        for lab in labels:
            counts[lab] = counts.get(lab, 0) + 1
    return [(f"{c} ({counts.get(c, 0)})", c) for c in classes] + [(f"all classes ({len(scores)})", ANY)]


def view_options(duplicates: pd.DataFrame | None, issues: pd.DataFrame | None) -> list[tuple[str, str]]:
    """The view menu: images by class, the near-duplicate pairs, each issue type with flagged images
    (the type with the most first), and every flagged image worst first."""
    opts = [("images by class", "classes")]
    if duplicates is not None:
        opts.append((f"near-duplicates ({len(duplicates)} pairs)", "duplicates"))
    if issues is not None:
        flagged = issues[issues["flagged"].astype(bool)]
        counts = flagged.groupby("issue").size().sort_values(ascending=False, kind="stable")
        opts += [(f"{issue} ({n})", f"issue:{issue}") for issue, n in counts.items()]
        if len(counts):
            opts.append((f"worst first, all issues ({flagged['path'].nunique()})", f"issue:{ALL_ISSUES}"))
    return opts


def without_duplicates_of(duplicates: pd.DataFrame, paths: Iterable[Path]) -> pd.DataFrame:
    """The pairs neither of whose files is among `paths` (deleted or moved)."""
    done = set(paths)
    return duplicates[~(duplicates["path_a"].isin(done) | duplicates["path_b"].isin(done))]


def without_issues_of(issues: pd.DataFrame, paths: Iterable[Path]) -> pd.DataFrame:
    """The issue rows whose file is not among `paths` (deleted or moved)."""
    done = set(paths)
    return issues[~issues["path"].map(lambda p: Path(p) in done)]
