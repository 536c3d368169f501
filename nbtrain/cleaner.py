"""ImageClassifierCleaner: review a dataset's images worst first, mark each one, apply the choices safely.

It is built from plain ipywidgets 8 (no front-end build), so it renders in JupyterLab 4, Notebook 7,
VS Code, Colab and Kaggle. The scores are computed once, from images without augmentation; a page
shows `max_n` images and makes only their thumbnails, so a dataset of any size opens quickly.

Choices are kept per file, across categories, splits and pages. `delete()`, `change()` and `fns`
describe the current view, as fastai's do, so the fastai book's loops work unchanged; `apply()`
applies every choice in every view through `nbtrain.fileops`, which journals each step, never
overwrites, never leaves the dataset's root, and can resume or undo a cut-off run.
"""
from __future__ import annotations

import io
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import ipywidgets as W
import pandas as pd
from IPython.display import display
from PIL import Image, ImageDraw

from . import fileops
from .data import TableSource, load_image
from .learner import Learner
from .scores import SORTS, SPLITS, score_table

KEEP, DELETE = "<Keep>", "<Delete>"
ANY = "(any)"


class ThumbnailCache:
    """JPEG thumbnails made on demand and kept for the most recent `capacity` files, so memory stays flat."""

    def __init__(self, height: int, width: int, capacity: int = 512):
        self.height, self.width, self.capacity = height, width, capacity
        self._items: OrderedDict[Path, bytes] = OrderedDict()

    def __call__(self, path: Path) -> bytes:
        if path in self._items:
            self._items.move_to_end(path)
            return self._items[path]
        data = self._make(path)
        self._items[path] = data
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return data

    def _make(self, path: Path) -> bytes:
        try:
            img = load_image(path, draft=(self.width, self.height))
            img.thumbnail((self.width, self.height))
            if img.height < self.height // 2:  # tiny images (MNIST) are scaled up, crisp
                scale = max(1, (self.height // 2) // max(img.height, 1))
                img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        except Exception as e:
            img = Image.new("RGB", (self.width, self.height), (230, 230, 230))
            ImageDraw.Draw(img).text((6, 6), f"cannot open:\n{type(e).__name__}", fill=(180, 0, 0))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        return buf.getvalue()


class _Cell:
    """One image of the grid: its thumbnail, a caption, the menu of choices, and for multi-label
    data a list of the labels to toggle."""

    def __init__(self, options: Sequence[str], height: int, width: int, toggles: Sequence[str] | None = None):
        self.image = W.Image(format="jpeg", layout=W.Layout(height=f"{height}px", width="auto", object_fit="contain"))
        self.caption = W.HTML(layout=W.Layout(width=f"{width}px"))
        self.menu = W.Dropdown(options=list(options), layout=W.Layout(width=f"{min(width, 200)}px"))
        self.labels = W.SelectMultiple(options=list(toggles), rows=min(5, len(toggles)),
                                       layout=W.Layout(width=f"{min(width, 200)}px")) if toggles else None
        parts = [self.image, self.caption, self.menu] + ([self.labels] if self.labels else [])
        self.box = W.VBox(parts, layout=W.Layout(border="1px solid #ddd", padding="4px", margin="2px",
                                                 align_items="center"))
        self.path: Path | None = None


class ImageClassifierCleaner:
    """Review the images of a dataset worst first, choose <Keep>, <Delete> or a new class for each,
    then `apply()` the choices to the files.

    Args:
        learn: a trained Learner; its data and model give the images and their scores.
        max_n: images per page; Next and Previous go further.
        height, width: the size of each thumbnail, in pixels.
        ranking: "loss" ranks by the trained model's own loss (fastai's way, fast), "oof" by
            out-of-fold predictions (see `find_label_issues`; slower, finds more wrong labels), or a
            table of scores that `find_label_issues` returned.
        sort_by: "loss", "self_confidence" or "margin"; the widget's Sort menu changes it.
        trash: whether `apply()` moves deleted files into a trash folder inside the dataset rather than unlinking them.
        duplicates: pairs from `find_duplicates(learn)`; the View menu then offers them side by
            side, so one copy of each can be deleted. `show_duplicates()` finds and shows them later.
    """

    def __init__(self, learn: Learner, max_n: int = 30, height: int = 128, width: int = 256,
                 ranking: str | pd.DataFrame = "loss", sort_by: str = "loss", trash: bool = False,
                 scores: pd.DataFrame | None = None, duplicates: pd.DataFrame | None = None):
        if sort_by not in SORTS:
            raise ValueError(f"sort_by must be one of {list(SORTS)}, not {sort_by!r}.")
        self.learn, self.max_n, self.trash = learn, max_n, trash
        self.vocab = list(learn.dls.vocab)
        self.multi_label = learn.dls.multi_label
        self.scores = self._scores(ranking) if scores is None else scores
        # path -> "<Delete>", a new class, or for multi-label data the new set of labels.
        self.choices: dict[Path, str | frozenset] = {}
        self.thumbs = ThumbnailCache(height, width)
        self.page = 0
        self.last_report: fileops.ApplyReport | None = None
        self._updating = False

        self.dd_cats = W.Dropdown(options=self._category_options(), description="Category")
        self.dd_ds = W.Dropdown(options=list(SPLITS), description="Set")
        self.dd_pred = W.Dropdown(options=[ANY, *self.vocab], description="Predicted")
        self.dd_sort = W.Dropdown(options=[("highest loss", "loss"), ("lowest confidence", "self_confidence"),
                                           ("lowest margin", "margin")], value=sort_by, description="Sort by")
        self.prev_button = W.Button(description="◀ Previous", layout=W.Layout(width="110px"))
        self.next_button = W.Button(description="Next ▶", layout=W.Layout(width="110px"))
        self.page_label = W.HTML()
        self.summary = W.HTML()
        self.status = W.HTML()
        options = [KEEP, DELETE] if self.multi_label else [KEEP, DELETE, *self.vocab]
        self.cells = [_Cell(options, height, width, self.vocab if self.multi_label else None) for _ in range(max_n)]
        for cell in self.cells:
            cell.menu.observe(self._on_choice(cell), names="value")
            if cell.labels is not None:
                cell.labels.observe(self._on_toggle(cell), names="value")
        self.grid = W.GridBox([c.box for c in self.cells], layout=W.Layout(
            grid_template_columns=f"repeat(auto-fill, minmax({width + 16}px, 1fr))", width="100%"))
        self.duplicates = duplicates
        self.dd_view = W.Dropdown(options=self._view_options(), value="classes", description="View")
        for dd in (self.dd_view, self.dd_cats, self.dd_ds, self.dd_pred, self.dd_sort):
            dd.observe(self._on_view_change, names="value")
        self.prev_button.on_click(lambda _: self.show_page(self.page - 1))
        self.next_button.on_click(lambda _: self.show_page(self.page + 1))
        self.widget = W.VBox([
            W.HBox([self.dd_view, self.dd_cats, self.dd_ds]), W.HBox([self.dd_pred, self.dd_sort]),
            W.HBox([self.prev_button, self.page_label, self.next_button, self.summary],
                   layout=W.Layout(align_items="center", grid_gap="12px")),
            self.status, self.grid])
        self._view: pd.DataFrame = self.scores.iloc[:0]
        self._on_view_change()

    # -- scores and views ------------------------------------------------------------------------

    def _scores(self, ranking: str | pd.DataFrame) -> pd.DataFrame:
        if isinstance(ranking, pd.DataFrame):
            return ranking
        if ranking == "loss":
            return score_table(self.learn)
        if ranking == "oof":
            from .label_issues import find_label_issues

            return find_label_issues(self.learn)
        raise ValueError(f"ranking must be 'loss', 'oof' or a table from find_label_issues(), not {ranking!r}.")

    def _category_options(self) -> list[tuple[str, str]]:
        counts: dict[str, int] = {}
        for labels in self.scores["labels"]:
            for lab in labels:
                counts[lab] = counts.get(lab, 0) + 1
        return [(f"{c} ({counts.get(c, 0)})", c) for c in self.vocab]

    def _view_options(self) -> list[tuple[str, str]]:
        opts = [("images by class", "classes")]
        if self.duplicates is not None:
            opts.append((f"near-duplicates ({len(self.duplicates)} pairs)", "duplicates"))
        return opts

    def show_duplicates(self, threshold: float = 0.97) -> pd.DataFrame:
        """Find near-duplicate pairs with the model's features and switch to the view that shows them."""
        from .label_issues import find_duplicates

        self.duplicates = find_duplicates(self.learn, threshold=threshold)
        self.dd_view.options = self._view_options()
        self.dd_view.value = "duplicates"
        return self.duplicates

    def _select_duplicates(self) -> pd.DataFrame:
        by_path = self.scores.set_index("path", drop=False)
        rows = []
        for n, pair in enumerate(self.duplicates.itertuples(index=False), 1):
            where = "train and valid: leakage" if pair.cross_split else pair.split_a.lower()
            for p in (pair.path_a, pair.path_b):
                if p in by_path.index:
                    row = by_path.loc[p].copy()
                    row["pair"] = f"pair {n}, similarity {pair.similarity:.3f} ({where})"
                    rows.append(row)
        return pd.DataFrame(rows).reset_index(drop=True) if rows else self.scores.iloc[:0].assign(pair="")

    def _select(self) -> pd.DataFrame:
        if self.dd_view.value == "duplicates" and self.duplicates is not None:
            return self._select_duplicates()
        df = self.scores
        cat, split = self.dd_cats.value, self.dd_ds.value
        df = df[(df["split"] == split) & df["labels"].map(lambda labs: cat in labs)]
        if self.dd_pred.value != ANY:
            want = self.vocab.index(self.dd_pred.value)
            if self.multi_label:
                df = df[df["pred_set"].map(lambda s: want in s)]
            else:
                df = df[df["pred_idx"] == want]
        key = self.dd_sort.value
        return df.sort_values(key, ascending=SORTS[key], kind="stable")

    def _on_view_change(self, change=None) -> None:
        self._view = self._select()
        self.show_page(0)

    @property
    def n_pages(self) -> int:
        return max(1, -(-len(self._view) // self.max_n))

    @property
    def fns(self) -> list[Path]:
        """The paths of the current page, in display order."""
        return list(self._view["path"].iloc[self.page * self.max_n:(self.page + 1) * self.max_n])

    def show_page(self, page: int) -> None:
        """Show page `page` of the current view (clamped to the pages there are)."""
        self.page = min(max(0, page), self.n_pages - 1)
        rows = self._view.iloc[self.page * self.max_n:(self.page + 1) * self.max_n]
        self._updating = True
        try:
            for cell, row in zip(self.cells, rows.itertuples(index=False)):
                cell.path = row.path
                cell.image.value = self.thumbs(row.path)
                cell.caption.value = self._caption(row)
                self._set_menus(cell, tuple(row.labels))
                cell.box.layout.display = None
            for cell in self.cells[len(rows):]:
                cell.path = None
                cell.box.layout.display = "none"
        finally:
            self._updating = False
        self.prev_button.disabled = self.page == 0
        self.next_button.disabled = self.page >= self.n_pages - 1
        self.page_label.value = f"page {self.page + 1} of {self.n_pages} ({len(self._view)} images)"
        self._update_summary()

    def _caption(self, row) -> str:
        pair = getattr(row, "pair", None)
        if isinstance(pair, str) and pair:
            return f"<small><b>{pair}</b><br>{row.split}: {', '.join(row.labels)}</small>"
        if not row.readable:
            return "<b style='color:#b00'>unreadable file</b>"
        if self.multi_label:
            pred = ", ".join(self.vocab[i] for i in sorted(row.pred_set)) or "(none)"
            return (f"<small>labels: {', '.join(row.labels)}<br>predicted: {pred}<br>"
                    f"loss {row.loss:.3f}</small>")
        pred = self.vocab[row.pred_idx]
        colour = "#070" if pred in row.labels else "#b00"
        return (f"<small>predicted <b style='color:{colour}'>{pred}</b> ({row.prob:.2f})<br>"
                f"loss {row.loss:.3f}</small>")

    # -- choices -----------------------------------------------------------------------------------

    def _on_choice(self, cell: _Cell):
        def handler(change) -> None:
            if self._updating or cell.path is None:
                return
            self.set_choice(cell.path, change["new"], from_widget=True)
        return handler

    def _on_toggle(self, cell: _Cell):
        def handler(change) -> None:
            if self._updating or cell.path is None or cell.menu.value == DELETE:
                return
            self.set_choice(cell.path, frozenset(change["new"]), from_widget=True)
        return handler

    def _own_labels(self, path: Path) -> tuple[str, ...]:
        row = self.scores.loc[self.scores["path"] == path]
        return tuple(row["labels"].iloc[0]) if len(row) else ()

    def set_choice(self, path: Path, choice: str | Sequence[str], from_widget: bool = False) -> None:
        """Record `choice` for `path`: <Keep>, <Delete>, a class name, or for multi-label data the
        collection of labels it should have. Its own class (or label set) means keep. The menu
        under the image, when it is on the page shown, shows the choice (`from_widget`: it already does)."""
        path = Path(path)
        own = self._own_labels(path)
        if not isinstance(choice, str):
            labels = frozenset(choice)
            unknown = sorted(labels - set(self.vocab))
            if not self.multi_label or unknown:
                raise ValueError(f"A set of labels is for multi-label data, with labels from {self.vocab}"
                                 + (f"; unknown: {unknown}" if unknown else "") + ".")
            choice = KEEP if labels == frozenset(own) else labels
        elif choice not in (KEEP, DELETE) and choice not in self.vocab:
            raise ValueError(f"{choice!r} is not <Keep>, <Delete> or one of the classes {self.vocab}.")
        if choice == KEEP or (isinstance(choice, str) and choice in own and not self.multi_label):
            self.choices.pop(path, None)
        else:
            self.choices[path] = choice
        self._update_summary()
        if not from_widget:  # a call from code: the page shown follows it, as after a click
            self._show_choice(path)

    def _show_choice(self, path: Path) -> None:
        cell = next((c for c in self.cells if c.path == path), None)
        if cell is None:
            return
        self._updating = True
        try:
            self._set_menus(cell, self._own_labels(path))
        finally:
            self._updating = False

    def _set_menus(self, cell: _Cell, own_labels: tuple[str, ...]) -> None:
        """Show the recorded choice for `cell`'s image in its menu (and its label list); the caller
        holds `_updating`, so this is not taken for a new choice."""
        choice = self.choices.get(cell.path, KEEP)
        cell.menu.value = DELETE if choice == DELETE else (choice if isinstance(choice, str) else KEEP)
        if cell.labels is not None:
            cell.labels.value = tuple(sorted(choice)) if isinstance(choice, frozenset) else own_labels

    def _update_summary(self) -> None:
        n_del = sum(v == DELETE for v in self.choices.values())
        n_rel = len(self.choices) - n_del
        self.summary.value = f"<b>{n_del} to delete, {n_rel} to relabel</b>"

    def values(self) -> list[str | frozenset]:
        """The choice shown under each image of the current page."""
        return [self.choices.get(p, KEEP) for p in self.fns]

    def delete(self) -> list[int]:
        """Indices into `fns` of the images marked <Delete> on the current page."""
        return [i for i, v in enumerate(self.values()) if v == DELETE]

    def change(self) -> list[tuple[int, str | tuple[str, ...]]]:
        """(index into `fns`, new class) for the images on the current page given another class
        (for multi-label data, the new labels as a sorted tuple)."""
        return [(i, v if isinstance(v, str) else tuple(sorted(v))) for i, v in enumerate(self.values())
                if v not in (KEEP, DELETE)]

    def pending(self) -> pd.DataFrame:
        """Every choice not yet applied, in all views: path, split, current label(s) and the choice."""
        rows = [(p, *self._row_info(p), c) for p, c in self.choices.items()]
        return pd.DataFrame(rows, columns=["path", "split", "labels", "choice"])

    def _row_info(self, path: Path) -> tuple[str, tuple]:
        row = self.scores.loc[self.scores["path"] == path]
        return (row["split"].iloc[0], tuple(row["labels"].iloc[0])) if len(row) else ("", ())

    # -- applying ------------------------------------------------------------------------------------

    def actions(self) -> list[fileops.Action]:
        """The pending choices as file operations."""
        return [fileops.Action("delete", p, None) if c == DELETE
                else fileops.Action("relabel", p, c if isinstance(c, str) else sorted(c))
                for p, c in self.choices.items()]

    def apply(self, dry_run: bool = False, trash: bool | None = None) -> fileops.ApplyReport | pd.DataFrame:
        """Apply every pending choice, in all views, to the files (or, for a table dataset, to its CSV).

        Deleting unlinks the file (or moves it to the dataset's trash folder with `trash=True`);
        relabelling moves it into the class folder, with a new name if that one is taken. Each step
        is journaled first, so `nbtrain.fileops.resume(journal)` finishes a cut-off apply and
        `nbtrain.fileops.undo(journal)` puts every file back. Afterwards the learner's loaders point
        at the files where they now are; retrain with `learn.fine_tune(...)`.
        """
        trash = self.trash if trash is None else trash
        table = self.learn.dls.table
        if table is not None:
            return self._apply_table(dry_run)
        if self.multi_label:
            raise ValueError("Multi-label data comes from a table: build the loaders with from_df or from_csv "
                             "so apply() can rewrite it.")
        root = Path(self.learn.dls.path)
        try:
            report = fileops.apply_actions(self.actions(), root, trash=trash, dry_run=dry_run)
        except (fileops.ReadOnlyDatasetError, fileops.DatasetLockedError, ValueError) as e:
            # These are raised before any file is touched.
            self.status.value = f"<b style='color:#b00'>Nothing applied: {e}</b>"
            raise
        except BaseException as e:
            self.status.value = (f"<b style='color:#b00'>The apply stopped part-way ({type(e).__name__}). Every step "
                                 f"is journaled under {root / '.nbtrain'}: fileops.resume(journal) finishes it, "
                                 "fileops.undo(journal) reverts it.</b>")
            raise
        if dry_run:
            return report
        self.last_report = report
        moved = {Path(src): Path(dst) for src, dst in report.moved}
        gone = {Path(p) for p in report.deleted} | {Path(p) for p in report.missing}
        self._after_apply(moved, gone)
        self.status.value = f"Applied: {report.summary()}. Journal: {report.journal}"
        return report

    def _apply_table(self, dry_run: bool):
        t = self.learn.dls.table
        by_file = {}
        for p, c in self.choices.items():
            rel = str(Path(p).relative_to(t.folder))
            name = rel[: -len(t.suff)] if t.suff and rel.endswith(t.suff) else rel
            by_file[name] = (fileops.Action("delete", Path(name), None) if c == DELETE
                             else fileops.Action("relabel", Path(name), c if isinstance(c, str) else sorted(c)))
        if dry_run:
            return t.df.copy()
        df = fileops.apply_table_actions(t.df, list(by_file.values()), fn_col=t.fn_col, label_col=t.label_col,
                                         label_delim=t.label_delim, csv_path=t.csv_path)
        deleted = {t.folder / f"{name}{t.suff}" for name, a in by_file.items() if a.kind == "delete"}
        relabelled = {t.folder / f"{name}{t.suff}": a.label for name, a in by_file.items() if a.kind == "relabel"}
        self._after_apply({}, deleted, relabelled, table=t.with_df(df))
        self.status.value = f"Applied to the table: {len(deleted)} rows removed, {len(relabelled)} relabelled."
        return df

    def _after_apply(self, moved: dict[Path, Path], gone: set[Path], relabelled: dict[Path, str] | None = None,
                     table: TableSource | None = None) -> None:
        """Point the cleaner and the learner's loaders at where the files are now."""
        relabelled = dict(relabelled or {})
        for src, dst in moved.items():
            relabelled[src] = dst.parent.name
        self.learn.dls = self.learn.dls.with_changes(moved, gone, relabelled, table=table)
        keep = ~self.scores["path"].isin(gone)
        scores = self.scores[keep].copy()
        for src, label in relabelled.items():
            mask = scores["path"] == src
            scores.loc[mask, "path"] = moved.get(src, src)
            labels = (label,) if isinstance(label, str) else tuple(sorted(label))
            scores.loc[mask, "labels"] = pd.Series([labels] * int(mask.sum()), index=scores.index[mask], dtype=object)
        self.scores = scores.reset_index(drop=True)
        # A choice whose file operation failed stays pending: that file was left where it was.
        done = gone | set(moved) | set(relabelled)
        self.choices = {p: c for p, c in self.choices.items() if p not in done and p.exists()}
        self.dd_cats.options = self._category_options()
        if self.duplicates is not None:
            done = gone | set(moved)
            self.duplicates = self.duplicates[~(self.duplicates["path_a"].isin(done) | self.duplicates["path_b"].isin(done))]
            self.dd_view.options = self._view_options()
        self._on_view_change()

    def _ipython_display_(self) -> None:
        display(self.widget)
