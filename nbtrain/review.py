"""The state of a review: a choice per file, the undo history, which images were reviewed, the page of
the current view, and carrying the choices out on the files. No widget and no model: its input is plain
data (the score table, the classes, whether the data is multi-label), so it is tested on its own and
every front end drives the same decisions.

The score table has one row per image: `path`, `split`, `labels` (a tuple of class names), `pred_idx`
(the predicted class index; -1 for none), `readable`, and for multi-label data `pred_set` (the
predicted class indices). `scores.score_table` makes it from a learner; a test writes it by hand.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import decisions, fileops

KEEP, DELETE = "<Keep>", "<Delete>"


def as_names(choice: object) -> object:
    """A class given as a label value (True, 3) as its name ("True", "3"), as the cleaner shows it;
    a collection of them (multi-label) name by name; text as it is."""
    if isinstance(choice, (set, frozenset, list, tuple)):
        return [c if isinstance(c, str) else str(c) for c in choice]
    return choice if isinstance(choice, str) else str(choice)


def as_action(path: Path, choice: str | frozenset) -> fileops.Action:
    """One choice as a file operation: delete, or relabel to a class (a sorted list for a label set)."""
    if choice == DELETE:
        return fileops.Action("delete", path, None)
    return fileops.Action("relabel", path, choice if isinstance(choice, str) else sorted(choice))


@dataclass
class Changes:
    """What an apply (or an undo that could not put every file back) changed on disk, for whoever
    holds the list of files (the learner's loaders): files moved, files gone, and new labels as the
    dataset's own values."""

    moved: dict[Path, Path] = field(default_factory=dict)
    gone: set[Path] = field(default_factory=set)
    labels: dict[Path, object] = field(default_factory=dict)

    @property
    def done(self) -> set[Path]:
        """The files no longer where they were."""
        return self.gone | set(self.moved)


def plan_lines(report: fileops.ApplyReport, root: Path) -> list[str]:
    """A dry run's report as one line per file: what Apply would do to it."""
    rel = lambda p: os.path.relpath(p, root)  # noqa: E731
    lines = [f"delete {rel(p)}" for p in report.deleted]
    lines += [f"move {rel(a)} → {rel(b)}" for a, b in report.moved]
    lines += [f"skip (already there) {rel(p)}" for p in report.skipped]
    lines += [f"missing {rel(p)}" for p in report.missing]
    return lines + [f"cannot: {e}" for e in report.errors]


class ReviewState:
    """Choices per file (kept across views and pages), decisions that undo as a whole, the reviewed
    count, and the page of the view shown, which `fns`, `values()`, `delete()` and `change()` describe
    as fastai's cleaner does.

    Args:
        scores: the score table (see the module's docstring).
        vocab: the classes as the dataset holds them (True/False for the fastai book's is_cat); they
            are shown and chosen by name, and `change()` gives back the dataset's own value.
        multi_label: whether each image has a set of labels.
        max_n: images per page.
        root: the dataset's folder; the log and the choices file name files relative to it.
        log: a `decisions.DecisionLog`: each decision is appended to it as it is made, and the decisions
            it holds still pending are taken up now (`restored` says how many, from when).
    """

    def __init__(
        self,
        scores: pd.DataFrame,
        vocab: Sequence[Any],
        multi_label: bool = False,
        max_n: int = 30,
        root: Path | str | None = None,
        log: decisions.DecisionLog | None = None,
    ):
        if max_n < 1:
            raise ValueError(f"max_n is the number of images per page, at least 1, not {max_n!r}.")
        self.vocab = [str(v) for v in vocab]
        self._values = dict(zip(self.vocab, vocab))
        self.multi_label, self.max_n = multi_label, max_n
        self.scores = scores
        # path -> "<Delete>", a new class, or for multi-label data the new set of labels.
        self.choices: dict[Path, str | frozenset] = {}
        # Images a person has decided on or paged past: the "reviewed" count.
        self.reviewed: set[Path] = set()
        # One entry per decision (a bulk one counts once): the choices it replaced, and the images it
        # was the first decision on (so an undo takes them out of the reviewed count again).
        self.history: list[tuple[dict[Path, str | frozenset], set[Path]]] = []
        self.view: pd.DataFrame = scores.iloc[:0]
        self.view_paths: set[Path] = set()
        self.page = 0
        self.last_report: fileops.ApplyReport | None = None
        self.changes = Changes()  # what the last apply changed on disk
        self._before_apply: tuple | None = None
        if root is None:  # by default the folder that holds every image
            root = log.root if log is not None else decisions.dataset_root(scores["path"])
        self.root = Path(root)
        self.log = log
        self.decided_at: dict[Path, float] = {}  # when each path's choice was made
        self._times_before: list[dict[Path, float | None]] = []  # beside `history`: the times a step replaced
        self.restored = self.restore() if log is not None else ""

    # -- the score table --------------------------------------------------------------------------

    @property
    def scores(self) -> pd.DataFrame:
        """One row per image: path, split, labels, the model's prediction and the ranking's scores."""
        return self._scores

    @scores.setter
    def scores(self, table: pd.DataFrame) -> None:
        self._scores = table
        # Menus and badges look rows up by path once per card: a dict, not a scan of the table.
        self._row_at = {p: i for i, p in enumerate(table["path"])}

    def row(self, path: Path):
        """`path`'s row of the score table as a named tuple, or None when it is not among the images."""
        i = self._row_at.get(path)
        return None if i is None else next(self.scores.iloc[i : i + 1].itertuples(index=False))

    def own_labels(self, path: Path) -> tuple[str, ...]:
        """The labels `path` has now, by name."""
        row = self.row(path)
        return tuple(row.labels) if row is not None else ()

    def predicted(self, row) -> str | None:
        """The class the model predicts for a score row (None for multi-label data or unreadable files)."""
        if self.multi_label or not getattr(row, "readable", True) or row.pred_idx < 0:
            return None
        return self.vocab[int(row.pred_idx)]

    # -- the view and its pages -------------------------------------------------------------------

    def set_view(self, rows: pd.DataFrame) -> None:
        """Show `rows` (a view of the score table, in order), from its first page."""
        self.view = rows
        self.view_paths = set(rows["path"])
        self.page = 0

    @property
    def n_pages(self) -> int:
        return max(1, -(-len(self.view) // self.max_n))

    def page_rows(self, page: int | None = None) -> pd.DataFrame:
        """The rows of page `page` (by default the one shown)."""
        page = self.page if page is None else page
        return self.view.iloc[page * self.max_n : (page + 1) * self.max_n]

    @property
    def fns(self) -> list[Path]:
        """The paths of the page shown, in display order."""
        return list(self.page_rows()["path"])

    def go_to(self, page: int) -> int:
        """Show page `page`, clamped to the pages there are; returns the page shown."""
        self.page = min(max(0, page), self.n_pages - 1)
        return self.page

    def next_page(self) -> int:
        """Go to the next page; the images of this one count as reviewed (left as they are means keep)."""
        if self.page < self.n_pages - 1:
            self.reviewed.update(self.fns)
        return self.go_to(self.page + 1)

    # -- decisions ----------------------------------------------------------------------------------

    def normalise(self, path: Path, choice: str | Sequence[str]) -> str | frozenset:
        """`choice` checked, with a relabel to the image's own class (or label set) turned into `<Keep>`."""
        own = self.own_labels(path)
        choice = as_names(choice)
        if not isinstance(choice, str):
            labels = frozenset(choice)
            unknown = sorted(labels - set(self.vocab))
            if not self.multi_label or unknown:
                raise ValueError(
                    f"A set of labels is for multi-label data, with labels from {self.vocab}"
                    + (f"; unknown: {unknown}" if unknown else "")
                    + "."
                )
            return KEEP if labels == frozenset(own) else labels
        if choice not in (KEEP, DELETE) and choice not in self.vocab:
            raise ValueError(f"{choice!r} is not <Keep>, <Delete> or one of the classes {self.vocab}.")
        if choice in own and not self.multi_label:
            return KEEP
        return choice

    def decide(
        self, new: dict[Path, str | frozenset], times: dict[Path, float] | None = None, log: bool = True
    ) -> list[Path]:
        """Record several checked choices as one decision (one undo step), in the log first; returns the
        paths it touched. `times`: when each was made, if not now."""
        if not new:
            return []
        now, times = time.time(), times or {}
        when = {p: times.get(p, now) for p in new}
        if log and self.log is not None:
            self.log.decide([self._item(p, c, when[p]) for p, c in new.items()], now)
        step = {p: self.choices.get(p, KEEP) for p in new}
        self.history.append((step, set(new) - self.reviewed))
        self._times_before.append({p: self.decided_at.get(p) for p in new})
        self.decided_at.update(when)
        self._record(new)
        self.reviewed.update(new)
        return list(new)

    def _record(self, choices: dict[Path, str | frozenset]) -> None:
        """Set each path's choice; `<Keep>` is kept as no entry at all."""
        for p, c in choices.items():
            if c == KEEP:
                self.choices.pop(p, None)
            else:
                self.choices[p] = c

    def set_choice(self, path: Path | str, choice: str | Sequence[str]) -> list[Path]:
        """Record `choice` for `path`: `<Keep>`, `<Delete>`, a class name, or for multi-label data the
        collection of labels it should have. Its own class (or label set) means keep."""
        path = Path(path)
        return self.decide({path: self.normalise(path, choice)})

    def toggle_delete(self, path: Path | str) -> list[Path]:
        """Mark `path` for deletion, or keep it again when it already is."""
        path = Path(path)
        return self.decide({path: KEEP if self.choices.get(path) == DELETE else DELETE})

    def accept_prediction(self, path: Path | str) -> list[Path]:
        """Relabel `path` as the model predicts (for multi-label data: the predicted label set)."""
        path = Path(path)
        row = self.row(path)
        if row is None:
            raise ValueError(f"{path} is not among the images under review.")
        if self.multi_label:
            return self.decide({path: self.normalise(path, [self.vocab[i] for i in row.pred_set])})
        pred = self.predicted(row)
        if pred is None:
            raise ValueError(f"{path} is unreadable, so it has no prediction to accept; delete it instead.")
        return self.decide({path: self.normalise(path, pred)})

    def delete_all_shown(self) -> list[Path]:
        """Mark every image of the page shown for deletion (one decision: one undo brings them all back)."""
        return self.decide({p: DELETE for p in self.fns})

    def accept_all_shown(self) -> list[Path]:
        """Relabel every readable image of the page shown as the model predicts (one decision)."""
        rows = self.page_rows()
        return self.decide(
            {
                row.path: self.normalise(row.path, self.predicted(row))
                for row in rows.itertuples(index=False)
                if self.predicted(row) is not None
            }
        )

    def undo(self) -> list[Path]:
        """Take back the last decision (a bulk one as a whole); returns the paths it touched."""
        if not self.history:
            return []
        step, first_seen = self.history.pop()
        if self.log is not None:
            self.log.undo()
        self.reviewed -= first_seen
        self._record(step)
        for p, t in self._times_before.pop().items():
            if t is None:
                self.decided_at.pop(p, None)
            else:
                self.decided_at[p] = t
        return list(step)

    # -- the decisions kept on disk: the log, and the choices file ----------------------------------

    def _item(self, path: Path, choice: str | frozenset, when: float) -> dict:
        return decisions.make_item(self.root, path, self._labels_of(path) or (), choice, when)

    def _log_reset(self, why: str) -> None:
        if self.log is not None:
            now = time.time()
            self.log.reset(why, [self._item(p, c, self.decided_at.get(p, now)) for p, c in self.choices.items()])

    def _labels_of(self, path: Path) -> tuple[str, ...] | None:
        i = self._row_at.get(path)  # one cell, not a row: a restore asks once per logged file
        return None if i is None else tuple(self.scores["labels"].iat[i])

    def restore(self) -> str:
        """Take up the decisions the log holds still pending, one undo step each; a decision about a
        file that changed or went since is dropped (and the log rewritten without it). Returns a note."""
        contents = self.log.take_up()
        kept, dropped = decisions.still_pending(contents, self.root, self._labels_of, self.vocab)
        for new, times in kept:
            self.decide(new, times, log=False)
        if dropped:
            self.history.clear()
            self._times_before.clear()
            self._log_reset("dropped decisions about files changed or gone")
        when = [self.decided_at[p] for p in self.choices]
        return decisions.restore_note(len(self.choices), when, self.log.path, dropped, contents)

    def discard_choices(self) -> int:
        """Forget every pending choice, restored or new, here and in the log: a fresh start. Returns how
        many there were."""
        n = len(self.choices)
        self.choices.clear()
        self.history.clear()
        self._times_before.clear()
        self.reviewed.clear()
        self._log_reset("discarded")
        return n

    def save_choices(self, path: Path | str) -> Path:
        """Write the pending choices as a CSV (path relative to the dataset, label, choice, time) that
        `load_choices` takes up in another run or on another machine."""
        return decisions.write_choices(path, self.root, self.choices, self.own_labels, self.decided_at)

    def load_choices(self, path: Path | str) -> int:
        """Take up a choices file as one decision (one undo step), after checking every row against
        this dataset: nothing is taken when a row names a file not under review, a label the file no
        longer has, or an unknown class. Returns how many rows it holds."""
        rows = decisions.read_choices(path)
        new, times = decisions.checked_choices(rows, path, self.root, self._labels_of, self.vocab, self.multi_label)
        self.decide({p: self.normalise(p, c) for p, c in new.items()}, times)
        return len(new)

    def mark(self, path: Path) -> dict:
        """How a card shows `path`: {"kind": "delete" | "relabel" | "kept" | "keep"}, with the new label."""
        choice = self.choices.get(path, KEEP)
        if choice == DELETE:
            return {"kind": "delete"}
        if choice != KEEP:
            return {"kind": "relabel", "label": choice if isinstance(choice, str) else ", ".join(sorted(choice))}
        return {"kind": "kept" if path in self.reviewed else "keep"}

    def counts(self) -> dict[str, int]:
        """To delete, to relabel, reviewed in this view, images in this view, reviewed in all."""
        n_del = sum(v == DELETE for v in self.choices.values())
        return {
            "delete": n_del,
            "relabel": len(self.choices) - n_del,
            "reviewed_in_view": len(self.reviewed & self.view_paths),
            "in_view": len(self.view),
            "reviewed": len(self.reviewed),
        }

    # -- fastai's view of the page, and what is pending --------------------------------------------

    def values(self) -> list[str | frozenset]:
        """The choice of each image of the page shown."""
        return [self.choices.get(p, KEEP) for p in self.fns]

    def delete(self) -> list[int]:
        """Indices into `fns` of the images marked `<Delete>` on the page shown."""
        return [i for i, v in enumerate(self.values()) if v == DELETE]

    def change(self) -> list[tuple[int, object]]:
        """(index into `fns`, new class) for the images on the page shown given another class, as the
        dataset's own label (True for the book's is_cat; for multi-label data the labels as a sorted tuple)."""
        return [
            (i, self._values[v] if isinstance(v, str) else tuple(sorted(v)))
            for i, v in enumerate(self.values())
            if v not in (KEEP, DELETE)
        ]

    def pending(self) -> pd.DataFrame:
        """Every choice not yet applied, in all views: path, split, current label(s) and the choice."""
        rows = []
        for p, c in self.choices.items():
            row = self.row(p)
            rows.append((p, row.split, tuple(row.labels), c) if row is not None else (p, "", (), c))
        return pd.DataFrame(rows, columns=["path", "split", "labels", "choice"])

    def actions(self) -> list[fileops.Action]:
        """The pending choices as file operations."""
        return [as_action(p, c) for p, c in self.choices.items()]

    def label_value(self, label: str | Iterable[str]) -> object:
        """A class name as the dataset's own label value; a label set as it is."""
        return self._values.get(label, label) if isinstance(label, str) else label

    # -- carrying the choices out ---------------------------------------------------------------------

    def check_folder_labels(self) -> None:
        """Refuse, before touching any file, relabels that a move into a class folder cannot express:
        the image's label does not come from its folder (a label_func or a pattern on the file name)."""
        stuck = [p for p, c in self.choices.items() if c != DELETE and self.own_labels(p) != (p.parent.name,)]
        if not stuck:
            return
        p = stuck[0]
        raise ValueError(
            f"Nothing applied: {len(stuck)} relabel(s) cannot be done by moving files, because this dataset's labels "
            f"do not come from folder names ({p.name} is labelled {', '.join(self.own_labels(p))!r} in the folder "
            f"{p.parent.name!r}: a label_func or a pattern on the file name). Rename those files, or fix the "
            "labelling, then build the loaders again; or keep them (set_choice(path, '<Keep>')) and apply the "
            "deletions; or write every choice as a label table, touching no file (the cleaner's "
            "write_label_table()), for the next run's loaders (label_table=)."
        )

    def table_plan_lines(self) -> list[str]:
        """What applying to a label table would do, one line per row: removed, or relabelled to what."""
        return [
            f"remove row {Path(p).name}"
            if c == DELETE
            else f"relabel {Path(p).name} → {c if isinstance(c, str) else ', '.join(sorted(c))}"
            for p, c in self.choices.items()
        ]

    def apply_to_folder(self, root: Path, trash: bool = False, dry_run: bool = False) -> fileops.ApplyReport:
        """Carry every pending choice out on the files under `root` (class folders) through
        `fileops.apply_actions`, which journals each step; afterwards the score table names the files
        where they are now and only the choices that failed stay pending. Returns its report."""
        self.check_folder_labels()
        report = fileops.apply_actions(self.actions(), root, trash=trash, dry_run=dry_run)
        if not dry_run:
            self.last_report = report
            self._before_apply = (self.scores, dict(self.choices))
            moved = {Path(src): Path(dst) for src, dst in report.moved}
            gone = {Path(p) for p in report.deleted} | {Path(p) for p in report.missing}
            self.applied(moved, gone)
        return report

    def table_actions(self, folder: Path, suffix: str = "") -> dict[str, fileops.Action]:
        """The pending choices as actions on a label table's rows, by the file name the table holds
        (relative to `folder`, without `suffix`)."""
        by_name = {}
        for p, c in self.choices.items():
            rel = str(Path(p).relative_to(folder))
            name = rel[: -len(suffix)] if suffix and rel.endswith(suffix) else rel
            by_name[name] = as_action(Path(name), c)
        return by_name

    def applied(
        self, moved: dict[Path, Path], gone: set[Path], relabelled: dict[Path, str | Sequence[str]] | None = None
    ) -> Changes:
        """Forget what was carried out: `moved` files (relabelled into another folder), `gone` ones,
        `relabelled` ones (in a table). The score table follows; a choice whose file operation failed
        stays pending. Returns (and keeps as `changes`) what changed, labels as the dataset's own values."""
        relabelled = dict(relabelled or {})
        for src, dst in moved.items():
            relabelled[src] = dst.parent.name
        scores = self.scores[~self.scores["path"].isin(gone)].copy()
        for src, label in relabelled.items():
            mask = scores["path"] == src
            scores.loc[mask, "path"] = moved.get(src, src)
            labels = (label,) if isinstance(label, str) else tuple(sorted(label))
            scores.loc[mask, "labels"] = pd.Series([labels] * int(mask.sum()), index=scores.index[mask], dtype=object)
        self.scores = scores.reset_index(drop=True)
        done = gone | set(moved) | set(relabelled)
        self.choices = {p: c for p, c in self.choices.items() if p not in done and p.exists()}
        self.history.clear()  # the files the steps named have moved
        self._times_before.clear()
        self.changes = Changes(moved, gone, {p: self.label_value(lab) for p, lab in relabelled.items()})
        self._log_reset("applied")  # a rerun does not replay what is done; what failed stays pending
        return self.changes

    def undo_apply(self) -> fileops.ApplyReport:
        """Put back every file the last `apply_to_folder` touched, through its journal, and make its
        choices pending again (with the score table of before)."""
        if self.last_report is None or self.last_report.journal is None:
            raise ValueError(
                "Nothing to undo: no apply() from this cleaner has changed files since it was made "
                "(or the last one was undone already)."
            )
        report = fileops.undo(self.last_report.journal)
        self.scores, self.choices = self._before_apply
        self.last_report, self._before_apply = None, None
        self.history.clear()
        self._times_before.clear()
        self.changes = Changes()
        self._log_reset("apply undone")
        lost = {Path(p) for p in report.unrecoverable}
        if lost:
            self.applied({}, lost)
        return report

    def apply_to_table(self, table, dry_run: bool = False) -> pd.DataFrame:
        """Carry every pending choice out on a label table (`data.TableSource`: its rows, file column,
        label column and CSV) rather than on the files: a deletion removes the row, a relabel rewrites
        it; the CSV is written atomically with a backup. Returns the new table (for a dry run, the
        table as it is)."""
        by_name = self.table_actions(table.folder, table.suff)
        if dry_run:
            return table.df.copy()
        df = fileops.apply_table_actions(
            table.df,
            list(by_name.values()),
            fn_col=table.fn_col,
            label_col=table.label_col,
            label_delim=table.label_delim,
            csv_path=table.csv_path,
        )
        where = {name: table.folder / f"{name}{table.suff}" for name in by_name}
        self.applied(
            {},
            {where[n] for n, a in by_name.items() if a.kind == "delete"},
            {where[n]: a.label for n, a in by_name.items() if a.kind == "relabel"},
        )
        return df
