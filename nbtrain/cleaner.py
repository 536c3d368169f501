"""ImageClassifierCleaner: review a dataset's images worst first, mark each one, apply the choices safely.

The widget is thin: the choices, undo and the page shown live in `review.ReviewState`, which rows a
view shows is `views`, and the two front ends (keys: click and keyboard; plain: ipywidgets alone, for
Kaggle) are `frontends`; this module puts menus and buttons around them and shows what happened. The
scores are computed once, from images without augmentation; a page shows `max_n` images and makes
only their thumbnails (and the next page's), so a dataset of any size opens quickly.

Choices are kept per file, across categories, splits and pages. `delete()`, `change()` and `fns`
describe the current view, as fastai's do, so the fastai book's loops work unchanged; `apply()`
applies every choice in every view through `nbtrain.fileops`, which journals each step, never
overwrites, never leaves the dataset's root, and can resume or undo a cut-off run.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from pathlib import Path

import ipywidgets as W
import pandas as pd
from IPython.display import display

from . import fileops, label_table, views
from .data import TableSource
from .decisions import DecisionLog, dataset_root
from .frontends import FRONTENDS, ThumbnailCache, choose_frontend, make_frontend
from .image_downloads import image_sources
from .learner import Learner
from .review import DELETE, KEEP, ReviewState, plan_lines
from .scores import SORTS, SPLITS
from .views import ANY, ISSUE_COLUMNS, check_issue_table

# Names callers import from here: the choices, the menu's "any", the front ends and the issue table's columns.
__all__ = [
    "ANY",
    "DELETE",
    "FRONTENDS",
    "ISSUE_COLUMNS",
    "KEEP",
    "ImageClassifierCleaner",
    "ThumbnailCache",
    "check_issue_table",
    "choose_frontend",
]


class ReviewNames:
    """The review state (`self.state`, a `review.ReviewState`) under the names of fastai's cleaner:
    the widget class adds the menus and the page around them."""

    state: ReviewState

    @property
    def scores(self) -> pd.DataFrame:
        """One row per image: path, split, labels, the model's prediction and the ranking's scores."""
        return self.state.scores

    @scores.setter
    def scores(self, table: pd.DataFrame) -> None:
        self.state.scores = table

    @property
    def choices(self) -> dict[Path, str | frozenset]:
        """path -> `"<Delete>"`, a new class, or for multi-label data the new set of labels."""
        return self.state.choices

    @property
    def reviewed(self) -> set[Path]:
        """The images decided on or paged past."""
        return self.state.reviewed

    @property
    def history(self) -> list[tuple[dict[Path, str | frozenset], set[Path]]]:
        """One entry per decision: the choices it replaced, and the images it first reviewed."""
        return self.state.history

    @property
    def view(self) -> pd.DataFrame:
        """The rows of the current view, in the order shown."""
        return self.state.view

    @property
    def page(self) -> int:
        return self.state.page

    @property
    def n_pages(self) -> int:
        return self.state.n_pages

    @property
    def fns(self) -> list[Path]:
        """The paths of the current page, in display order."""
        return self.state.fns

    @property
    def last_report(self) -> fileops.ApplyReport | None:
        """The report of the last apply() that changed files (None once undone)."""
        return self.state.last_report

    def values(self) -> list[str | frozenset]:
        """The choice shown under each image of the current page."""
        return self.state.values()

    def delete(self) -> list[int]:
        """Indices into `fns` of the images marked `<Delete>` on the current page."""
        return self.state.delete()

    def change(self) -> list[tuple[int, object]]:
        """(index into `fns`, new class) for the images on the current page given another class, as the
        dataset's own label (True for the book's is_cat; for multi-label data the labels as a sorted tuple)."""
        return self.state.change()

    def pending(self) -> pd.DataFrame:
        """Every choice not yet applied, in all views: path, split, current label(s) and the choice."""
        return self.state.pending()

    def actions(self) -> list[fileops.Action]:
        """The pending choices as file operations."""
        return self.state.actions()


class ImageClassifierCleaner(ReviewNames):
    """Review the images of a dataset worst first, choose `<Keep>`, `<Delete>` or a new class for each,
    then `apply()` the choices to the files.

    Args:
        learn: a trained Learner; its data and model give the images and their scores.
        max_n: images per page; Next and Previous go further.
        height, width: the size of each thumbnail, in pixels.
        ranking: "auto" (the default) ranks by linear classifiers on the model's own and on
            pretrained features, the best measured without training another network, and says so;
            "loss" by the trained model's own loss (fastai's way); "dynamics" by each image's loss over
            the epochs of training; "neighbours" by the labels of its nearest images in pretrained
            features; "oof-linear" by out-of-fold linear classifiers on those features; "oof" by
            out-of-fold models (see `find_label_issues`; slower); or a table of scores that
            `find_label_issues` or `rank_labels` returned (see `nbtrain.label_issues.rank_labels`).
        sort_by: "loss", "self_confidence" or "margin"; the widget's Sort menu changes it.
        trash: whether `apply()` moves deleted files into a trash folder inside the dataset rather than unlinking them.
        duplicates: pairs from `find_duplicates(learn)`; the View menu then offers them side by
            side, so one copy of each can be deleted. `show_duplicates()` finds and shows them later.
        issues: the table `audit()` returns; the View menu then offers each issue type with its
            flagged images, worst first. `show_issues(table)` adds it later.
        frontend: "keys" (click a card, keyboard shortcuts; needs anywidget's browser code), "plain"
            (ipywidgets only, a button per decision) or "auto" (keys unless it cannot load: Kaggle).
        log: where each decision is saved as it is made: True (the dataset's `.nbtrain` folder, or the
            output folder when the dataset is read-only), a file path, or False (memory only). A new
            cleaner over the same dataset takes up the pending choices the log holds.
        choices: a choices file (`save_choices` writes one) to take up, as a review made by hand.
    """

    def __init__(
        self,
        learn: Learner,
        max_n: int = 30,
        height: int = 128,
        width: int = 256,
        ranking: str | pd.DataFrame = "auto",
        sort_by: str = "loss",
        trash: bool = False,
        scores: pd.DataFrame | None = None,
        duplicates: pd.DataFrame | None = None,
        issues: pd.DataFrame | None = None,
        frontend: str = "auto",
        log: bool | str | Path = True,
        choices: str | Path | None = None,
    ):
        if sort_by not in SORTS:
            raise ValueError(f"sort_by must be one of {list(SORTS)}, not {sort_by!r}.")
        self.learn, self.max_n, self.trash = learn, max_n, trash
        self.multi_label = learn.dls.multi_label
        self.frontend = choose_frontend(frontend, self.multi_label)
        self.issues = None if issues is None else check_issue_table(issues)
        self.duplicates = duplicates
        # The classes by name, as shown and chosen: a bool or int label (the book's is_cat gives
        # True/False) shows as "True"; the state gives back the dataset's own label.
        table = with_sources(ranked(learn, ranking) if scores is None else scores)
        root = dataset_root(table["path"], learn.dls.root)
        saved = (DecisionLog.beside(root) if log is True else DecisionLog(log, root)) if log else None
        self.state = ReviewState(table, learn.dls.vocab, self.multi_label, max_n, root, saved)
        notes = [self.state.restored] if self.state.restored else []
        if choices is not None:
            notes.append(f"Took up {self.state.load_choices(choices)} choices from {choices}.")
        self.vocab = self.state.vocab
        self.thumbs = ThumbnailCache(height, width, capacity=max(512, 3 * max_n))
        self._before_apply: tuple | None = None  # the loaders and tables an undo_apply() brings back
        self._make_controls(sort_by)
        self.front = make_frontend(self.frontend, self.state, self, self.thumbs, max_n, height, width)
        self.grid = self.front.widget
        self.help.value = self.front.help_html
        self.widget = W.VBox(
            [
                W.HBox([self.dd_view, self.dd_cats, self.dd_ds]),
                W.HBox([self.dd_pred, self.dd_sort]),
                W.HBox(
                    [self.prev_button, self.page_label, self.next_button, self.summary],
                    layout=W.Layout(align_items="center", grid_gap="12px"),
                ),
                W.HBox(
                    [self.delete_all_button, self.accept_all_button, self.undo_button, self.apply_button],
                    layout=W.Layout(grid_gap="6px"),
                ),
                self.apply_box,
                self.status,
                self.help,
                self.grid,
            ]
        )
        self._on_view_change()
        if notes:  # said in the widget, and as a message that stays in the cell's output
            print(" ".join(notes))
            self.status.value = html.escape(" ".join(notes))

    def _make_controls(self, sort_by: str) -> None:
        """The menus and buttons around the grid, each wired to the method it calls."""
        self.dd_view = W.Dropdown(
            options=views.view_options(self.duplicates, self.issues), value="classes", description="View"
        )
        self.dd_cats = W.Dropdown(options=views.category_options(self.scores, self.vocab), description="Category")
        self.dd_ds = W.Dropdown(options=list(SPLITS), description="Set")
        self.dd_pred = W.Dropdown(options=[ANY, *self.vocab], description="Predicted")
        self.dd_sort = W.Dropdown(
            options=[("highest loss", "loss"), ("lowest confidence", "self_confidence"), ("lowest margin", "margin")],
            value=sort_by,
            description="Sort by",
        )
        for dd in (self.dd_view, self.dd_cats, self.dd_ds, self.dd_pred, self.dd_sort):
            dd.observe(self._on_view_change, names="value")
        self.prev_button = W.Button(description="◀ Previous", layout=W.Layout(width="110px"))
        self.next_button = W.Button(description="Next ▶", layout=W.Layout(width="110px"))
        self.page_label, self.summary, self.status, self.help = W.HTML(), W.HTML(), W.HTML(), W.HTML()
        self.delete_all_button = W.Button(description="Delete all shown", icon="trash", layout=W.Layout(width="160px"))
        self.accept_all_button = W.Button(
            description="Accept all predictions shown",
            icon="check",
            layout=W.Layout(width="230px"),
            disabled=self.multi_label,
        )
        self.undo_button = W.Button(description="Undo", icon="undo", layout=W.Layout(width="90px"), disabled=True)
        self.apply_button = W.Button(description="Apply…", button_style="warning", layout=W.Layout(width="100px"))
        self.apply_box = W.VBox()
        self.prev_button.on_click(lambda _: self.previous_page())
        self.next_button.on_click(lambda _: self.next_page())
        self.delete_all_button.on_click(lambda _: self.delete_all_shown())
        self.accept_all_button.on_click(lambda _: self.accept_all_shown())
        self.undo_button.on_click(lambda _: self.undo())
        self.apply_button.on_click(lambda _: self.show_plan())

    # -- the front end's parts ---------------------------------------------------------------------

    @property
    def cells(self) -> list:
        """The plain front end's cells (none for the keys front end)."""
        return getattr(self.front, "cells", [])

    @property
    def grid_widget(self):
        """The keys front end's anywidget (None for the plain front end)."""
        return self.front.widget if self.frontend == "keys" else None

    # -- views and pages -------------------------------------------------------------------------

    def show_duplicates(self, threshold: float = 0.97) -> pd.DataFrame:
        """Find near-duplicate pairs with the model's features and switch to the view that shows them."""
        from .embeddings import find_duplicates

        self.duplicates = find_duplicates(self.learn, threshold=threshold)
        self.dd_view.options = views.view_options(self.duplicates, self.issues)
        self.dd_view.value = "duplicates"
        return self.duplicates

    def show_issues(self, table: pd.DataFrame, issue: str | None = None, top: int | None = None) -> None:
        """Offer a view per issue type of the audit table `table` in the View menu, and show `issue`
        (by default the type with the most flagged images).

        `top` adds the `top` highest-scoring images of `issue` to its flagged ones, flagged or not:
        outliers are a ranking, and a group of strays (drawings among photos) can rank first while each
        scores under the threshold. `table` itself is left as it is."""
        table = check_issue_table(table)
        if top is not None:
            if issue is None:
                raise ValueError(
                    f"top= is how many of one issue type's highest scores to show, with issue= "
                    f"naming it, e.g. show_issues(table, 'outlier', top=20); got top={top!r} alone."
                )
            table = views.flag_top(table, issue, top)
        self.issues = table
        options = views.view_options(self.duplicates, self.issues)
        self.dd_view.options = options
        issue_views = [v for _, v in options if v.startswith("issue:")]
        if issue is not None and f"issue:{issue}" not in issue_views:
            raise ValueError(f"No flagged images of issue {issue!r}; the table flags {[v[6:] for v in issue_views]}.")
        if issue_views:
            self.dd_view.value = f"issue:{issue}" if issue is not None else issue_views[0]

    def _select(self) -> pd.DataFrame:
        """The rows the menus ask for: a pair view, an issue view, or one class of one split."""
        view = self.dd_view.value
        if view == "duplicates" and self.duplicates is not None:
            return views.duplicate_view(self.scores, self.duplicates)
        if view.startswith("issue:") and self.issues is not None:
            return views.issue_view(self.scores, self.issues, view[len("issue:") :])
        predicted = None if self.dd_pred.value == ANY else self.vocab.index(self.dd_pred.value)
        return views.class_view(
            self.scores, self.dd_ds.value, self.dd_cats.value, predicted, self.dd_sort.value, self.multi_label
        )

    def _on_view_change(self, change=None) -> None:
        self.state.set_view(self._select())
        self.show_page(0)

    def next_page(self) -> None:
        """Show the next page; the images of this one count as reviewed (left as they are means keep)."""
        self.show_page(self.state.next_page())

    def previous_page(self) -> None:
        """Show the page before this one."""
        self.show_page(self.page - 1)

    def show_page(self, page: int) -> None:
        """Show page `page` of the current view (clamped to the pages there are)."""
        self.state.go_to(page)
        self.front.show(self.state.page_rows())
        self.prev_button.disabled = self.page == 0
        self.next_button.disabled = self.page >= self.n_pages - 1
        self.page_label.value = f"page {self.page + 1} of {self.n_pages} ({len(self.view)} images)"
        self._update_summary()
        # The next page's thumbnails are made now, after this page went out, so Next shows at once.
        for path in self.state.page_rows(self.page + 1)["path"]:
            self.thumbs(path)

    def _update_summary(self) -> None:
        n = self.state.counts()
        self.summary.value = (
            f"<b>{n['delete']} to delete, {n['relabel']} to relabel</b> · reviewed "
            f"{n['reviewed_in_view']} of {n['in_view']} in this view, {n['reviewed']} in all"
        )
        self.undo_button.disabled = not self.history

    # -- decisions: the state records them, the front end shows them ---------------------------------

    def _shown(self, paths: list[Path]) -> list[Path]:
        self.front.refresh(paths)
        self._update_summary()
        return paths

    def set_choice(self, path: Path, choice: str | Sequence[str]) -> None:
        """Record `choice` for `path`: `<Keep>`, `<Delete>`, a class name, or for multi-label data the
        collection of labels it should have. Its own class (or label set) means keep. It is one
        decision, as a key or a click in the widget, and the page shown follows it."""
        self._shown(self.state.set_choice(path, choice))

    def toggle_delete(self, path: Path) -> None:
        """Mark `path` for deletion, or keep it again when it already is (a click on its card)."""
        self._shown(self.state.toggle_delete(path))

    def accept_prediction(self, path: Path) -> None:
        """Relabel `path` as the model predicts (for multi-label data: the predicted label set)."""
        self._shown(self.state.accept_prediction(path))

    def delete_all_shown(self) -> None:
        """Mark every image of the page shown for deletion (one decision: one Undo brings them all back)."""
        self._shown(self.state.delete_all_shown())

    def accept_all_shown(self) -> None:
        """Relabel every readable image of the page shown as the model predicts (one decision)."""
        self._shown(self.state.accept_all_shown())

    def undo(self) -> list[Path]:
        """Take back the last decision (a bulk one as a whole); returns the paths it touched."""
        paths = self.state.undo()
        if not paths:
            self.status.value = "Nothing to undo."
        return self._shown(paths)

    # -- the choices kept on disk ------------------------------------------------------------------------

    def save_choices(self, path: str | Path) -> Path:
        """Write the pending choices as a CSV (path relative to the dataset, label, choice, time), for
        `load_choices` or `ImageClassifierCleaner(learn, choices=path)` in another run."""
        return self.state.save_choices(path)

    def load_choices(self, path: str | Path) -> int:
        """Take up a choices file as one decision (one Undo takes it back); a file that does not fit the
        dataset is refused whole, with what is wrong. Returns how many rows it held."""
        n = self.state.load_choices(path)
        self.show_page(self.page)
        return n

    def discard_choices(self) -> int:
        """Forget every pending choice, restored or new, and the log's: start afresh."""
        n = self.state.discard_choices()
        self.show_page(self.page)
        self.status.value = f"Discarded {n} pending choices."
        return n

    # -- applying ------------------------------------------------------------------------------------

    def plan_text(self, limit: int = 40) -> str:
        """What Apply would do, as HTML: each file deleted, each file moved and where to."""
        return self._plan(limit)[0]

    def _plan(self, limit: int = 40) -> tuple[str, bool]:
        """The plan as HTML, and whether the files can take it (read-only data, or labels not from
        folder names, cannot: the label table can)."""
        if not self.choices:
            return "Nothing to apply: no image is marked.", False
        if self.learn.dls.table is not None:
            lines = self.state.table_plan_lines()
            head = f"Apply rewrites the table: {len(self.choices)} rows change (a backup is kept)."
        else:
            try:
                report = self.apply(dry_run=True)
            except (ValueError, PermissionError) as e:  # nothing can be applied as it stands; say why
                return html.escape(str(e)), False
            root = self.learn.dls.root
            lines = plan_lines(report, root)
            head = (
                f"Apply will delete {len(report.deleted)} files (kept in {root / fileops.STATE_DIR / 'trash'}, so "
                f"Undo apply can bring them back) and move {len(report.moved)} into other class folders:"
            )
        more = f"<br>… and {len(lines) - limit} more" if len(lines) > limit else ""
        return f"{head}<br><code>" + "<br>".join(html.escape(x) for x in lines[:limit]) + f"</code>{more}", True

    def show_plan(self) -> None:
        """The Apply button: show the plan, with a button to confirm it, one to write the choices as a
        label table instead (no image touched: the way for read-only data), and one to cancel."""
        text, can_apply = self._plan()
        confirm = W.Button(
            description=f"Yes, apply {len(self.choices)} changes",
            button_style="danger",
            layout=W.Layout(width="220px"),
            disabled=not can_apply,
        )
        table = W.Button(description="Write a label table instead", layout=W.Layout(width="220px"))
        table.disabled = not self.choices
        cancel = W.Button(description="Cancel", layout=W.Layout(width="90px"))
        confirm.on_click(lambda _: self._confirm_apply())
        table.on_click(lambda _: self._write_table_clicked())
        cancel.on_click(lambda _: setattr(self.apply_box, "children", ()))
        self.apply_box.children = (W.HTML(text), W.HBox([confirm, table, cancel]))

    def _in_apply_box(self, action: Callable[[], object], shown: Callable[[object], tuple]) -> None:
        """Run a button's `action` and show `shown(result)` in the apply box, or its error there."""
        try:
            result = action()
        except Exception as e:
            self.apply_box.children = (W.HTML(_error_html(str(e))),)
            return
        self.apply_box.children = shown(result)

    def _write_table_clicked(self) -> None:
        def shown(path: Path) -> tuple:
            return (
                W.HTML(
                    f"<b>Wrote the label table {html.escape(str(path))}; no image was changed.</b> Build the next "
                    f"run's loaders with <code>label_table={html.escape(repr(str(path)))}</code>."
                ),
            )

        self._in_apply_box(self.write_label_table, shown)

    def _confirm_apply(self) -> None:
        self.apply_box.children = (W.HTML("Applying…"),)
        self._in_apply_box(lambda: self.apply(trash=True), self._applied_children)

    def _applied_children(self, report: fileops.ApplyReport | pd.DataFrame) -> tuple:
        text = report.summary() if isinstance(report, fileops.ApplyReport) else "table rewritten"
        children = [W.HTML(f"<b>Applied: {html.escape(text)}.</b>")]
        if isinstance(report, fileops.ApplyReport) and report.journal:
            undo = W.Button(description="Undo this apply", icon="undo", layout=W.Layout(width="160px"))
            undo.on_click(lambda _: self._undo_apply_clicked())
            children.append(undo)
        return tuple(children)

    def _undo_apply_clicked(self) -> None:
        self._in_apply_box(
            self.undo_apply,
            lambda report: (W.HTML(f"<b>Undone: {html.escape(report.summary())}; the choices are pending again.</b>"),),
        )

    def apply(self, dry_run: bool = False, trash: bool | None = None) -> fileops.ApplyReport | pd.DataFrame:
        """Apply every pending choice, in all views, to the files (or, for a table dataset, to its CSV).

        Deleting unlinks the file (or moves it to the dataset's trash folder with `trash=True`);
        relabelling moves it into the class folder, with a new name if that one is taken. Each step
        is journaled first, so `nbtrain.fileops.resume(journal)` finishes a cut-off apply and
        `undo_apply()` (or `nbtrain.fileops.undo(journal)`) puts every file back. Afterwards the
        learner's loaders point at the files where they now are; retrain with `learn.fine_tune(...)`.
        Returns the report (for a table dataset, the new table).
        """
        trash = self.trash if trash is None else trash
        table = self.learn.dls.table
        if table is not None:
            df = self.state.apply_to_table(table, dry_run)
            if not dry_run:
                changes = self.state.changes
                self._follow_files(table=table.with_df(df))
                self.status.value = (
                    f"Applied to the table: {len(changes.gone)} rows removed, {len(changes.labels)} relabelled."
                )
            return df
        if self.multi_label:
            raise ValueError(
                "Multi-label data comes from a table: build the loaders with from_df or from_csv "
                "so apply() can rewrite it."
            )
        root = self.learn.dls.root
        before = (self.learn.dls, self.duplicates, self.issues)
        try:
            self.state.check_folder_labels()
            report = self.state.apply_to_folder(root, trash=trash, dry_run=dry_run)
        except (fileops.ReadOnlyDatasetError, fileops.DatasetLockedError, ValueError) as e:
            # These are raised before any file is touched.
            text = str(e)
            self.status.value = _error_html(text if text.startswith("Nothing applied") else f"Nothing applied: {text}")
            raise
        except BaseException as e:
            self.status.value = _error_html(
                f"The apply stopped part-way ({type(e).__name__}). Every step is journaled under "
                f"{root / fileops.STATE_DIR}: fileops.resume(journal) finishes it, fileops.undo(journal) reverts it."
            )
            raise
        if not dry_run:
            self._before_apply = before
            self._follow_files()
            self.status.value = html.escape(f"Applied: {report.summary()}. Journal: {report.journal}")
        return report

    def write_label_table(self, dest: Path | str | None = None) -> Path:
        """Apply without touching an image: write the dataset as the pending choices leave it as a label
        table (deleted files left out) in the output folder, or at `dest`; see `nbtrain.label_table`. The
        next run's loaders read it with `label_table=` the path returned. The choices stay pending."""
        deleted = {p for p, c in self.choices.items() if c == DELETE}
        relabelled = {p: c for p, c in self.choices.items() if c != DELETE}
        return label_table.write_choices(self.learn.dls, deleted, relabelled, dest)

    def undo_apply(self) -> fileops.ApplyReport:
        """Put back every file the last `apply()` touched, through its journal, and make its choices
        pending again. Deleted files come back when that apply kept them (`trash=True`, as the Apply
        button does)."""
        report = self.state.undo_apply()
        self.learn.dls, self.duplicates, self.issues = self._before_apply
        self._before_apply = None
        if self.state.changes.gone:  # files the apply had unlinked: the loaders leave them out
            self._follow_files()
        else:
            self._update_menus()
        self.status.value = html.escape(f"Undone: {report.summary()}. The choices are pending again.")
        return report

    def _follow_files(self, table: TableSource | None = None) -> None:
        """Point the learner's loaders and the pair and issue tables at the files where they are now."""
        changes = self.state.changes
        self.learn.dls = self.learn.dls.with_changes(changes.moved, changes.gone, changes.labels, table=table)
        if self.duplicates is not None:
            self.duplicates = views.without_duplicates_of(self.duplicates, changes.done)
        if self.issues is not None:
            self.issues = views.without_issues_of(self.issues, changes.done)
        self._update_menus()

    def _update_menus(self) -> None:
        self.dd_cats.options = views.category_options(self.scores, self.vocab)
        self.dd_view.options = views.view_options(self.duplicates, self.issues)
        self._on_view_change()

    def _ipython_display_(self) -> None:
        display(self.widget)


def with_sources(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with a `source` column (the web address each image was downloaded from) when a manifest
    of `download_images` names any of its files; as it is otherwise."""
    sources = image_sources(table["path"])
    return table.assign(source=table["path"].map(sources)) if sources else table


def ranked(learn: Learner, ranking: str | pd.DataFrame) -> pd.DataFrame:
    """The score table a ranking names (`nbtrain.label_issues.rank_labels`), or a table as it is."""
    from .label_issues import rank_labels

    return rank_labels(learn, ranking)


def _error_html(text: str) -> str:
    return f"<b style='color:#b00'>{html.escape(text)}</b>"
