"""ImageClassifierCleaner: review a dataset's images worst first, mark each one, apply the choices safely.

One click or one key per decision: the "keys" front end is a small anywidget (its ES module ships in
the package, nothing comes from a CDN) that draws a page from one message and sends back clicks and
keys; the "plain" front end is ipywidgets 8 alone, for where that code cannot load (Kaggle), with a
button per decision. Both drive the same methods (`toggle_delete`, `accept_prediction`, `set_choice`,
the bulk ones, `undo`), so code and clicks give the same choices. The scores are computed once, from
images without augmentation; a page shows `max_n` images and makes only their thumbnails (and the next
page's), so a dataset of any size opens quickly.

Choices are kept per file, across categories, splits and pages. `delete()`, `change()` and `fns`
describe the current view, as fastai's do, so the fastai book's loops work unchanged; `apply()`
applies every choice in every view through `nbtrain.fileops`, which journals each step, never
overwrites, never leaves the dataset's root, and can resume or undo a cut-off run.
"""
from __future__ import annotations

import html
import io
import os
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
from .locations import is_kaggle
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


FRONTENDS = ("auto", "keys", "plain")
ISSUE_COLUMNS = ("path", "issue", "score", "flagged", "reason")
KEYS_HELP = ("Keys (click a picture first): ← → ↑ ↓ or the mouse pointer pick a picture · D delete / keep · "
             "K keep · A accept the prediction · 0-9 relabel as class number · Shift+D delete all shown · "
             "Shift+A accept all predictions shown · N / P next / previous page · U undo")
PLAIN_HELP = ("One click per picture: Delete (click again to keep), ✓ accepts the model's prediction, the menu "
              "relabels to any class. Nothing changes on disk until Apply.")


def _asset(name: str) -> str:
    return (Path(__file__).parent / name).read_text(encoding="utf-8")


def choose_frontend(frontend: str, multi_label: bool) -> str:
    """"keys" (the anywidget grid: click and keyboard) or "plain" (ipywidgets only) for `frontend`.

    "auto" takes keys where its browser code can load: not in a Kaggle kernel, where installing a
    front-end package needs a restart, and not for multi-label data, whose cards need label lists.
    """
    if frontend not in FRONTENDS:
        raise ValueError(f"frontend must be one of {list(FRONTENDS)}, not {frontend!r}.")
    if frontend == "plain":
        return "plain"
    if multi_label:
        if frontend == "keys":
            raise ValueError("The keys front end is for single-label data; use frontend='plain' (or 'auto').")
        return "plain"
    try:
        import anywidget  # noqa: F401
    except ImportError:
        if frontend == "keys":
            raise ImportError("frontend='keys' needs anywidget: pip install anywidget, restart the kernel "
                              "(and reload the page), or use frontend='plain'.") from None
        return "plain"
    if frontend == "auto" and is_kaggle():
        return "plain"
    return "keys"


def check_issue_table(table: pd.DataFrame) -> pd.DataFrame:
    """The audit table with the columns the issue views need, or a clear error."""
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"issues must be the DataFrame that audit() returns, not {type(table).__name__}.")
    missing = [c for c in ISSUE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"The issue table lacks the columns {missing}; it needs {list(ISSUE_COLUMNS)} "
                         "(one row per image and issue type, as audit() returns).")
    return table


class _Cell:
    """One image of the plain grid: its thumbnail, a caption, one-click buttons (delete / keep, accept the
    prediction), the menu of choices, and for multi-label data a list of the labels to toggle."""

    def __init__(self, options: Sequence[str], height: int, width: int, toggles: Sequence[str] | None = None):
        self.image = W.Image(format="jpeg", layout=W.Layout(height=f"{height}px", width="auto", object_fit="contain"))
        self.badge = W.HTML()
        self.caption = W.HTML(layout=W.Layout(width=f"{width}px"))
        self.delete_button = W.Button(description="Delete", tooltip="mark for deletion; click again to keep",
                                      layout=W.Layout(width="80px"))
        self.accept_button = W.Button(description="✓", tooltip="relabel as the model's prediction",
                                      layout=W.Layout(width="80px"))
        self.menu = W.Dropdown(options=list(options), layout=W.Layout(width=f"{min(width, 200)}px"))
        self.labels = W.SelectMultiple(options=list(toggles), rows=min(5, len(toggles)),
                                       layout=W.Layout(width=f"{min(width, 200)}px")) if toggles else None
        parts = [self.badge, self.image, self.caption, W.HBox([self.delete_button, self.accept_button]), self.menu]
        parts += [self.labels] if self.labels else []
        self.box = W.VBox(parts, layout=W.Layout(border="3px solid #ddd", padding="4px", margin="2px",
                                                 align_items="center"))
        self.path: Path | None = None


def _review_grid_class():
    """The anywidget class of the keys front end (made on first use, so nbtrain imports without anywidget)."""
    import anywidget
    import traitlets

    class ReviewGrid(anywidget.AnyWidget):
        """A page of cards drawn in the browser; one message per page carries every thumbnail."""

        _esm = _asset("cleaner.js")
        _css = _asset("cleaner.css")
        cards = traitlets.List().tag(sync=True)
        images = traitlets.List().tag(sync=True)  # JPEG bytes, sent as binary buffers
        marks = traitlets.List().tag(sync=True)
        classes = traitlets.List().tag(sync=True)
        page_token = traitlets.Int(0).tag(sync=True)
        marks_token = traitlets.Int(0).tag(sync=True)
        help = traitlets.Unicode(KEYS_HELP).tag(sync=True)
        thumb_height = traitlets.Int(128).tag(sync=True)
        card_width = traitlets.Int(170).tag(sync=True)

    return ReviewGrid


def _as_names(choice: object) -> object:
    """A class given as a label value (True, 3) as its name ("True", "3"), as the cleaner shows it;
    a collection of them (multi-label) name by name; text as it is."""
    if isinstance(choice, (set, frozenset, list, tuple)):
        return [c if isinstance(c, str) else str(c) for c in choice]
    return choice if isinstance(choice, str) else str(choice)


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
        issues: the table `audit()` returns; the View menu then offers each issue type with its
            flagged images, worst first. `show_issues(table)` adds it later.
        frontend: "keys" (click a card, keyboard shortcuts; needs anywidget's browser code), "plain"
            (ipywidgets only, a button per decision) or "auto" (keys unless it cannot load: Kaggle).
    """

    def __init__(self, learn: Learner, max_n: int = 30, height: int = 128, width: int = 256,
                 ranking: str | pd.DataFrame = "loss", sort_by: str = "loss", trash: bool = False,
                 scores: pd.DataFrame | None = None, duplicates: pd.DataFrame | None = None,
                 issues: pd.DataFrame | None = None, frontend: str = "auto"):
        if sort_by not in SORTS:
            raise ValueError(f"sort_by must be one of {list(SORTS)}, not {sort_by!r}.")
        self.learn, self.max_n, self.trash = learn, max_n, trash
        # The classes by name, as shown and chosen: a bool or int label (the book's is_cat gives
        # True/False) shows as "True"; `_values` gives back the dataset's own label.
        self.vocab = [str(v) for v in learn.dls.vocab]
        self._values = dict(zip(self.vocab, learn.dls.vocab))
        self.multi_label = learn.dls.multi_label
        self.frontend = choose_frontend(frontend, self.multi_label)
        self.issues = None if issues is None else check_issue_table(issues)
        self.scores = self._scores(ranking) if scores is None else scores
        # path -> "<Delete>", a new class, or for multi-label data the new set of labels.
        self.choices: dict[Path, str | frozenset] = {}
        # Images a person has decided on or paged past: the "reviewed" count.
        self.reviewed: set[Path] = set()
        # One entry per decision (a bulk one counts once): the choices it replaced, and the images it
        # was the first decision on (so an undo takes them out of the reviewed count again).
        self.history: list[tuple[dict[Path, str | frozenset], set[Path]]] = []
        self.thumbs = ThumbnailCache(height, width, capacity=max(512, 3 * max_n))
        self.page = 0
        self.last_report: fileops.ApplyReport | None = None
        self._before_apply: tuple | None = None
        self._updating = False
        self._shown: list[Path] = []

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
        self.delete_all_button = W.Button(description="Delete all shown", icon="trash",
                                          layout=W.Layout(width="160px"))
        self.accept_all_button = W.Button(description="Accept all predictions shown", icon="check",
                                          layout=W.Layout(width="230px"), disabled=self.multi_label)
        self.undo_button = W.Button(description="Undo", icon="undo", layout=W.Layout(width="90px"), disabled=True)
        self.apply_button = W.Button(description="Apply…", button_style="warning", layout=W.Layout(width="100px"))
        self.apply_box = W.VBox()
        self.help = W.HTML()
        self.cells: list[_Cell] = []
        self.grid_widget = None
        if self.frontend == "keys":
            self.grid_widget = _review_grid_class()(classes=self.vocab, thumb_height=height,
                                                    card_width=min(width, 200) + 16)
            self.grid_widget.on_msg(self._on_grid_message)
            self.grid = self.grid_widget
        else:
            options = [KEEP, DELETE] if self.multi_label else [KEEP, DELETE, *self.vocab]
            self.cells = [_Cell(options, height, width, self.vocab if self.multi_label else None) for _ in range(max_n)]
            for cell in self.cells:
                cell.menu.observe(self._on_choice(cell), names="value")
                cell.delete_button.on_click(self._on_cell_button(cell, self.toggle_delete))
                cell.accept_button.on_click(self._on_cell_button(cell, self.accept_prediction))
                if cell.labels is not None:
                    cell.labels.observe(self._on_toggle(cell), names="value")
            self.grid = W.GridBox([c.box for c in self.cells], layout=W.Layout(
                grid_template_columns=f"repeat(auto-fill, minmax({width + 16}px, 1fr))", width="100%"))
            self.help.value = f"<small>{PLAIN_HELP}</small>"
        self.duplicates = duplicates
        self.dd_view = W.Dropdown(options=self._view_options(), value="classes", description="View")
        for dd in (self.dd_view, self.dd_cats, self.dd_ds, self.dd_pred, self.dd_sort):
            dd.observe(self._on_view_change, names="value")
        self.prev_button.on_click(lambda _: self.show_page(self.page - 1))
        self.next_button.on_click(lambda _: self.next_page())
        self.delete_all_button.on_click(lambda _: self.delete_all_shown())
        self.accept_all_button.on_click(lambda _: self.accept_all_shown())
        self.undo_button.on_click(lambda _: self.undo())
        self.apply_button.on_click(lambda _: self.show_plan())
        self.widget = W.VBox([
            W.HBox([self.dd_view, self.dd_cats, self.dd_ds]), W.HBox([self.dd_pred, self.dd_sort]),
            W.HBox([self.prev_button, self.page_label, self.next_button, self.summary],
                   layout=W.Layout(align_items="center", grid_gap="12px")),
            W.HBox([self.delete_all_button, self.accept_all_button, self.undo_button, self.apply_button],
                   layout=W.Layout(grid_gap="6px")),
            self.apply_box, self.status, self.help, self.grid])
        self._view: pd.DataFrame = self.scores.iloc[:0]
        self._view_paths: set[Path] = set()
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
        return [(f"{c} ({counts.get(c, 0)})", c) for c in self.vocab] + [(f"all classes ({len(self.scores)})", ANY)]

    def _view_options(self) -> list[tuple[str, str]]:
        opts = [("images by class", "classes")]
        if self.duplicates is not None:
            opts.append((f"near-duplicates ({len(self.duplicates)} pairs)", "duplicates"))
        if self.issues is not None:
            flagged = self.issues[self.issues["flagged"].astype(bool)]
            counts = flagged.groupby("issue").size().sort_values(ascending=False, kind="stable")
            opts += [(f"{issue} ({n})", f"issue:{issue}") for issue, n in counts.items()]
        return opts

    def show_duplicates(self, threshold: float = 0.97) -> pd.DataFrame:
        """Find near-duplicate pairs with the model's features and switch to the view that shows them."""
        from .label_issues import find_duplicates

        self.duplicates = find_duplicates(self.learn, threshold=threshold)
        self.dd_view.options = self._view_options()
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
            if issue is None or isinstance(top, bool) or not isinstance(top, int) or top < 1:
                raise ValueError(f"top= is how many of one issue type's highest scores to show, with issue= "
                                 f"naming it, e.g. show_issues(table, 'outlier', top=20); got issue={issue!r}, "
                                 f"top={top!r}.")
            rows = table["issue"] == issue
            if not rows.any():
                raise ValueError(f"The table has no rows of issue {issue!r}; its types are "
                                 f"{sorted(table['issue'].unique())}.")
            table = table.copy()
            table.loc[table[rows].nlargest(top, "score").index, "flagged"] = True
        self.issues = table
        options = self._view_options()
        self.dd_view.options = options
        views = [v for _, v in options if v.startswith("issue:")]
        if issue is not None and f"issue:{issue}" not in views:
            raise ValueError(f"No flagged images of issue {issue!r}; the table flags {[v[6:] for v in views]}.")
        if views:
            self.dd_view.value = f"issue:{issue}" if issue is not None else views[0]

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

    def _select_issue(self, issue: str) -> pd.DataFrame:
        """The flagged images of one issue type, worst (highest score) first, each with its reason."""
        t = self.issues
        t = t[(t["issue"] == issue) & t["flagged"].astype(bool)].sort_values("score", ascending=False, kind="stable")
        index = {Path(os.path.abspath(p)): i for i, p in enumerate(self.scores["path"])}
        rows = []
        for path, reason in zip(t["path"], t["reason"]):
            i = index.get(Path(os.path.abspath(path)))
            if i is not None:
                row = self.scores.iloc[i].copy()
                row["reason"] = str(reason)
                rows.append(row)
        return pd.DataFrame(rows).reset_index(drop=True) if rows else self.scores.iloc[:0].assign(reason="")

    def _select(self) -> pd.DataFrame:
        view = self.dd_view.value
        if view == "duplicates" and self.duplicates is not None:
            return self._select_duplicates()
        if view.startswith("issue:") and self.issues is not None:
            return self._select_issue(view[len("issue:"):])
        df = self.scores
        cat, split = self.dd_cats.value, self.dd_ds.value
        df = df[df["split"] == split]
        if cat != ANY:
            df = df[df["labels"].map(lambda labs: cat in labs)]
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
        self._view_paths = set(self._view["path"])
        self.show_page(0)

    @property
    def n_pages(self) -> int:
        return max(1, -(-len(self._view) // self.max_n))

    @property
    def fns(self) -> list[Path]:
        """The paths of the current page, in display order."""
        return list(self._view["path"].iloc[self.page * self.max_n:(self.page + 1) * self.max_n])

    def next_page(self) -> None:
        """Show the next page; the images of this one count as reviewed (left as they are means keep)."""
        if self.page < self.n_pages - 1:
            self.reviewed.update(self.fns)
        self.show_page(self.page + 1)

    def show_page(self, page: int) -> None:
        """Show page `page` of the current view (clamped to the pages there are)."""
        self.page = min(max(0, page), self.n_pages - 1)
        rows = self._view.iloc[self.page * self.max_n:(self.page + 1) * self.max_n]
        self._shown = list(rows["path"])
        if self.grid_widget is not None:
            self._show_cards(rows)
        else:
            self._show_cells(rows)
        self.prev_button.disabled = self.page == 0
        self.next_button.disabled = self.page >= self.n_pages - 1
        self.page_label.value = f"page {self.page + 1} of {self.n_pages} ({len(self._view)} images)"
        self._update_summary()
        self._prefetch(self.page + 1)

    def _prefetch(self, page: int) -> None:
        """Make the next page's thumbnails now, after this page went out, so Next shows at once."""
        for path in self._view["path"].iloc[page * self.max_n:(page + 1) * self.max_n]:
            self.thumbs(path)

    def _show_cells(self, rows: pd.DataFrame) -> None:
        self._updating = True
        try:
            for cell, row in zip(self.cells, rows.itertuples(index=False)):
                cell.path = row.path
                cell.image.value = self.thumbs(row.path)
                # The file name on hover. Not as the box's tooltip: ipywidgets 8.1's front end cannot draw a
                # Box that has one ("Could not create a view").
                cell.caption.value = f'<div title="{html.escape(Path(row.path).name)}">{self._caption(row)}</div>'
                pred = self._predicted(row)
                cell.accept_button.description = f"✓ {pred}" if pred else "✓"
                cell.accept_button.disabled = pred is None or pred in row.labels
                self._set_menus(cell, tuple(row.labels))
                cell.box.layout.display = None
            for cell in self.cells[len(rows):]:
                cell.path = None
                cell.box.layout.display = "none"
        finally:
            self._updating = False

    def _show_cards(self, rows: pd.DataFrame) -> None:
        cards, images = [], []
        for row in rows.itertuples(index=False):
            pred = self._predicted(row)
            cards.append({"name": Path(row.path).name, "caption": self._caption(row), "label": ", ".join(row.labels),
                          "pred": pred or ""})
            images.append(self.thumbs(row.path))
        g = self.grid_widget
        with g.hold_sync():  # one message: the cards, their thumbnails and their marks
            g.cards, g.images, g.marks = cards, images, [self._mark(p) for p in self._shown]
            g.page_token += 1

    def _predicted(self, row) -> str | None:
        """The class the model predicts for a score row (None for multi-label data or unreadable files)."""
        if self.multi_label or not getattr(row, "readable", True) or row.pred_idx < 0:
            return None
        return self.vocab[int(row.pred_idx)]

    def _caption(self, row) -> str:
        # Class names are folder names, which may hold "<" or "&": escaped like the reason.
        labels = html.escape(", ".join(row.labels))
        pair = getattr(row, "pair", None)
        if isinstance(pair, str) and pair:
            return f"<small><b>{html.escape(pair)}</b><br>{row.split}: {labels}</small>"
        reason = getattr(row, "reason", None)
        head = f"<small><b>{html.escape(reason)}</b></small><br>" if isinstance(reason, str) and reason else ""
        if not row.readable:
            return head + "<b style='color:#b00'>unreadable file</b>"
        if self.multi_label:
            pred = html.escape(", ".join(self.vocab[i] for i in sorted(row.pred_set)) or "(none)")
            return (f"{head}<small>labels: {labels}<br>predicted: {pred}<br>"
                    f"loss {row.loss:.3f}</small>")
        pred = self.vocab[row.pred_idx]
        colour = "#070" if pred in row.labels else "#b00"
        return (f"{head}<small>label <b>{labels}</b>, predicted <b style='color:{colour}'>{html.escape(pred)}</b> "
                f"({row.prob:.2f})<br>loss {row.loss:.3f}</small>")

    # -- choices -----------------------------------------------------------------------------------

    def _on_choice(self, cell: _Cell):
        def handler(change) -> None:
            if self._updating or cell.path is None:
                return
            self.set_choice(cell.path, change["new"])
        return handler

    def _on_toggle(self, cell: _Cell):
        def handler(change) -> None:
            if self._updating or cell.path is None or cell.menu.value == DELETE:
                return
            self.set_choice(cell.path, frozenset(change["new"]))
        return handler

    def _on_cell_button(self, cell: _Cell, decide):
        def handler(_) -> None:
            if cell.path is not None:
                decide(cell.path)
        return handler

    def _on_grid_message(self, _widget, msg: dict, _buffers=None) -> None:
        """One thing the person did in the keys grid: {action, index of the card, label}."""
        action, i = msg.get("action"), msg.get("index")
        path = self._shown[i] if isinstance(i, int) and 0 <= i < len(self._shown) else None
        if action == "next":
            self.next_page()
        elif action == "prev":
            self.show_page(self.page - 1)
        elif action == "undo":
            self.undo()
        elif action == "delete_all":
            self.delete_all_shown()
        elif action == "accept_all":
            self.accept_all_shown()
        elif path is None:
            return
        elif action == "toggle_delete":
            self.toggle_delete(path)
        elif action == "delete":
            self.set_choice(path, DELETE)
        elif action == "keep":
            self.set_choice(path, KEEP)
        elif action == "accept":
            self.accept_prediction(path)
        elif action == "relabel" and msg.get("label") in self.vocab:
            self.set_choice(path, msg["label"])

    @property
    def scores(self) -> pd.DataFrame:
        """One row per image: path, split, labels, the model's prediction and the ranking's scores."""
        return self._scores_table

    @scores.setter
    def scores(self, table: pd.DataFrame) -> None:
        self._scores_table = table
        # Menus and badges look rows up by path once per cell: a dict, not a scan of the table.
        self._row_at = {p: i for i, p in enumerate(table["path"])}

    def _score_row(self, path: Path):
        """`path`'s row of the score table as a named tuple, or None when it is not among the images."""
        i = self._row_at.get(path)
        return None if i is None else next(self.scores.iloc[i:i + 1].itertuples(index=False))

    def _own_labels(self, path: Path) -> tuple[str, ...]:
        row = self._score_row(path)
        return tuple(row.labels) if row is not None else ()

    def _normalise(self, path: Path, choice: str | Sequence[str]) -> str | frozenset:
        """`choice` checked, with a relabel to the image's own class (or label set) turned into <Keep>."""
        own = self._own_labels(path)
        choice = _as_names(choice)
        if not isinstance(choice, str):
            labels = frozenset(choice)
            unknown = sorted(labels - set(self.vocab))
            if not self.multi_label or unknown:
                raise ValueError(f"A set of labels is for multi-label data, with labels from {self.vocab}"
                                 + (f"; unknown: {unknown}" if unknown else "") + ".")
            return KEEP if labels == frozenset(own) else labels
        if choice not in (KEEP, DELETE) and choice not in self.vocab:
            raise ValueError(f"{choice!r} is not <Keep>, <Delete> or one of the classes {self.vocab}.")
        if choice in own and not self.multi_label:
            return KEEP
        return choice

    def _decide(self, new: dict[Path, str | frozenset]) -> None:
        """Record several choices as one decision (one undo step) and show them."""
        if not new:
            return
        step = {p: self.choices.get(p, KEEP) for p in new}
        self.history.append((step, set(new) - self.reviewed))
        self._record(new)
        self.reviewed.update(new)
        self._refresh(new)

    def _record(self, choices: dict[Path, str | frozenset]) -> None:
        """Set each path's choice; <Keep> is kept as no entry at all."""
        for p, c in choices.items():
            if c == KEEP:
                self.choices.pop(p, None)
            else:
                self.choices[p] = c

    def set_choice(self, path: Path, choice: str | Sequence[str], from_widget: bool = False) -> None:
        """Record `choice` for `path`: <Keep>, <Delete>, a class name, or for multi-label data the
        collection of labels it should have. Its own class (or label set) means keep. It is one
        decision, as a key or a click in the widget, and the page shown follows it (`from_widget` is
        accepted for older callers and changes nothing)."""
        path = Path(path)
        self._decide({path: self._normalise(path, choice)})

    def toggle_delete(self, path: Path) -> None:
        """Mark `path` for deletion, or keep it again when it already is (a click on its card)."""
        path = Path(path)
        self._decide({path: KEEP if self.choices.get(path) == DELETE else DELETE})

    def accept_prediction(self, path: Path) -> None:
        """Relabel `path` as the model predicts (for multi-label data: the predicted label set)."""
        path = Path(path)
        self._decide({path: self._prediction_choice(path)})

    def _prediction_choice(self, path: Path) -> str | frozenset:
        row = self._score_row(path)
        if row is None:
            raise ValueError(f"{path} is not among the cleaner's images.")
        if self.multi_label:
            return self._normalise(path, [self.vocab[i] for i in row.pred_set])
        pred = self._predicted(row)
        if pred is None:
            raise ValueError(f"{path} is unreadable, so it has no prediction to accept; delete it instead.")
        return self._normalise(path, pred)

    def delete_all_shown(self) -> None:
        """Mark every image of the page shown for deletion (one decision: one Undo brings them all back)."""
        self._decide({p: DELETE for p in self.fns})

    def accept_all_shown(self) -> None:
        """Relabel every readable image of the page shown as the model predicts (one decision)."""
        rows = self.scores.set_index("path", drop=False).loc[self.fns] if self.fns else self.scores.iloc[:0]
        self._decide({row.path: self._normalise(row.path, self._predicted(row))
                      for row in rows.itertuples(index=False) if self._predicted(row) is not None})

    def undo(self) -> list[Path]:
        """Take back the last decision (a bulk one as a whole); returns the paths it touched."""
        if not self.history:
            self.status.value = "Nothing to undo."
            return []
        step, first_seen = self.history.pop()
        self.reviewed -= first_seen
        self._record(step)
        self._refresh(step)
        return list(step)

    def _mark(self, path: Path) -> dict:
        choice = self.choices.get(path, KEEP)
        if choice == DELETE:
            return {"kind": "delete"}
        if choice != KEEP:
            return {"kind": "relabel", "label": choice if isinstance(choice, str) else ", ".join(sorted(choice))}
        return {"kind": "kept" if path in self.reviewed else "keep"}

    def _refresh(self, paths) -> None:
        """Show the choices of `paths` wherever they are on the page, and the counts."""
        if self.grid_widget is not None:
            g = self.grid_widget
            with g.hold_sync():
                g.marks = [self._mark(p) for p in self._shown]
                g.marks_token += 1
        else:
            changed = set(paths)
            for cell in self.cells:
                if cell.path is not None and cell.path in changed:
                    self._updating = True
                    try:
                        self._set_menus(cell, self._own_labels(cell.path))
                    finally:
                        self._updating = False
        self._update_summary()

    def _set_menus(self, cell: _Cell, own_labels: tuple[str, ...]) -> None:
        """Show the recorded choice for `cell`'s image in its menu, label list, frame and badge; the
        caller holds `_updating`, so this is not taken for a new choice."""
        choice = self.choices.get(cell.path, KEEP)
        cell.menu.value = DELETE if choice == DELETE else (choice if isinstance(choice, str) else KEEP)
        if cell.labels is not None:
            cell.labels.value = tuple(sorted(choice)) if isinstance(choice, frozenset) else own_labels
        mark = self._mark(cell.path)
        colour = {"delete": "#d32f2f", "relabel": "#1565c0", "kept": "#81c784"}.get(mark["kind"], "#ddd")
        cell.box.layout.border = f"3px solid {colour}"
        text = {"delete": "DELETE", "relabel": f"→ {mark.get('label')}", "kept": "✓"}.get(mark["kind"], "")
        cell.badge.value = (f"<b style='background:{colour};color:white;padding:1px 6px;border-radius:3px'>"
                            f"{html.escape(text)}</b>" if text else "")
        cell.delete_button.description = "Keep" if mark["kind"] == "delete" else "Delete"
        cell.delete_button.button_style = "danger" if mark["kind"] == "delete" else ""

    def _update_summary(self) -> None:
        n_del = sum(v == DELETE for v in self.choices.values())
        n_rel = len(self.choices) - n_del
        n_seen = len(self.reviewed & self._view_paths)
        self.summary.value = (f"<b>{n_del} to delete, {n_rel} to relabel</b> · reviewed {n_seen} of "
                              f"{len(self._view)} in this view, {len(self.reviewed)} in all")
        self.undo_button.disabled = not self.history

    def values(self) -> list[str | frozenset]:
        """The choice shown under each image of the current page."""
        return [self.choices.get(p, KEEP) for p in self.fns]

    def delete(self) -> list[int]:
        """Indices into `fns` of the images marked <Delete> on the current page."""
        return [i for i, v in enumerate(self.values()) if v == DELETE]

    def change(self) -> list[tuple[int, object]]:
        """(index into `fns`, new class) for the images on the current page given another class, as the
        dataset's own label (True for the book's is_cat; for multi-label data the labels as a sorted tuple)."""
        return [(i, self._values[v] if isinstance(v, str) else tuple(sorted(v))) for i, v in enumerate(self.values())
                if v not in (KEEP, DELETE)]

    def pending(self) -> pd.DataFrame:
        """Every choice not yet applied, in all views: path, split, current label(s) and the choice."""
        rows = [(p, *self._row_info(p), c) for p, c in self.choices.items()]
        return pd.DataFrame(rows, columns=["path", "split", "labels", "choice"])

    def _row_info(self, path: Path) -> tuple[str, tuple]:
        row = self._score_row(path)
        return (row.split, tuple(row.labels)) if row is not None else ("", ())

    # -- applying ------------------------------------------------------------------------------------

    def actions(self) -> list[fileops.Action]:
        """The pending choices as file operations."""
        return [fileops.Action("delete", p, None) if c == DELETE
                else fileops.Action("relabel", p, c if isinstance(c, str) else sorted(c))
                for p, c in self.choices.items()]

    def plan_text(self, limit: int = 40) -> str:
        """What Apply would do, as HTML: each file deleted, each file moved and where to."""
        if not self.choices:
            return "Nothing to apply: no image is marked."
        if self.learn.dls.table is not None:
            lines = [f"{'remove row' if c == DELETE else 'relabel'} {Path(p).name}"
                     + ("" if c == DELETE else f" → {c if isinstance(c, str) else ', '.join(sorted(c))}")
                     for p, c in self.choices.items()]
            head = f"Apply rewrites the table: {len(self.choices)} rows change (a backup is kept)."
        else:
            try:
                report = self.apply(dry_run=True)
            except ValueError as e:  # nothing can be applied as it stands; say why
                return html.escape(str(e))
            root = self.learn.dls.root
            rel = lambda p: os.path.relpath(p, root)  # noqa: E731
            lines = [f"delete {rel(p)}" for p in report.deleted]
            lines += [f"move {rel(a)} → {rel(b)}" for a, b in report.moved]
            lines += [f"skip (already there) {rel(p)}" for p in report.skipped]
            lines += [f"missing {rel(p)}" for p in report.missing]
            lines += [f"cannot: {e}" for e in report.errors]
            head = (f"Apply will delete {len(report.deleted)} files (kept in {root / fileops.STATE_DIR / 'trash'}, so "
                    f"Undo apply can bring them back) and move {len(report.moved)} into other class folders:")
        more = f"<br>… and {len(lines) - limit} more" if len(lines) > limit else ""
        return f"{head}<br><code>" + "<br>".join(html.escape(x) for x in lines[:limit]) + f"</code>{more}"

    def show_plan(self) -> None:
        """The Apply button: show the plan, with a button to confirm it and one to cancel."""
        confirm = W.Button(description=f"Yes, apply {len(self.choices)} changes", button_style="danger",
                           layout=W.Layout(width="220px"), disabled=not self.choices)
        cancel = W.Button(description="Cancel", layout=W.Layout(width="90px"))
        confirm.on_click(lambda _: self._confirm_apply())
        cancel.on_click(lambda _: setattr(self.apply_box, "children", ()))
        self.apply_box.children = (W.HTML(self.plan_text()), W.HBox([confirm, cancel]))

    def _confirm_apply(self) -> None:
        self.apply_box.children = (W.HTML("Applying…"),)
        try:
            report = self.apply(trash=True)
        except Exception as e:
            self.apply_box.children = (W.HTML(f"<b style='color:#b00'>{html.escape(str(e))}</b>"),)
            return
        text = report.summary() if isinstance(report, fileops.ApplyReport) else "table rewritten"
        children = [W.HTML(f"<b>Applied: {html.escape(text)}.</b>")]
        if isinstance(report, fileops.ApplyReport) and report.journal:
            undo = W.Button(description="Undo this apply", icon="undo", layout=W.Layout(width="160px"))
            undo.on_click(lambda _: self._undo_apply_clicked())
            children.append(undo)
        self.apply_box.children = tuple(children)

    def _undo_apply_clicked(self) -> None:
        try:
            report = self.undo_apply()
        except Exception as e:
            self.apply_box.children = (W.HTML(f"<b style='color:#b00'>{html.escape(str(e))}</b>"),)
            return
        self.apply_box.children = (W.HTML(f"<b>Undone: {html.escape(report.summary())}; the choices are "
                                          "pending again.</b>"),)

    def apply(self, dry_run: bool = False, trash: bool | None = None) -> fileops.ApplyReport | pd.DataFrame:
        """Apply every pending choice, in all views, to the files (or, for a table dataset, to its CSV).

        Deleting unlinks the file (or moves it to the dataset's trash folder with `trash=True`);
        relabelling moves it into the class folder, with a new name if that one is taken. Each step
        is journaled first, so `nbtrain.fileops.resume(journal)` finishes a cut-off apply and
        `undo_apply()` (or `nbtrain.fileops.undo(journal)`) puts every file back. Afterwards the
        learner's loaders point at the files where they now are; retrain with `learn.fine_tune(...)`.
        """
        trash = self.trash if trash is None else trash
        table = self.learn.dls.table
        if table is not None:
            return self._apply_table(dry_run)
        if self.multi_label:
            raise ValueError("Multi-label data comes from a table: build the loaders with from_df or from_csv "
                             "so apply() can rewrite it.")
        root = self.learn.dls.root
        self._check_folder_labels()
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
        self._before_apply = (self.scores, self.learn.dls, dict(self.choices), self.duplicates)
        moved = {Path(src): Path(dst) for src, dst in report.moved}
        gone = {Path(p) for p in report.deleted} | {Path(p) for p in report.missing}
        self._after_apply(moved, gone)
        self.status.value = f"Applied: {report.summary()}. Journal: {report.journal}"
        return report

    def _check_folder_labels(self) -> None:
        """Refuse, before touching any file, relabels that a move into a class folder cannot express:
        the image's label does not come from its folder (a label_func or a pattern on the file name)."""
        stuck = [p for p, c in self.choices.items() if c != DELETE and self._own_labels(p) != (p.parent.name,)]
        if not stuck:
            return
        p = stuck[0]
        msg = (f"Nothing applied: {len(stuck)} relabel(s) cannot be done by moving files, because this dataset's labels "
               f"do not come from folder names ({p.name} is labelled {', '.join(self._own_labels(p))!r} in the folder "
               f"{p.parent.name!r}: a label_func or a pattern on the file name). Rename those files, or fix the "
               "labelling, then build the loaders again; or keep them (set_choice(path, '<Keep>')) and apply the deletions.")
        self.status.value = f"<b style='color:#b00'>{html.escape(msg)}</b>"
        raise ValueError(msg)

    def undo_apply(self) -> fileops.ApplyReport:
        """Put back every file the last `apply()` touched, through its journal, and make its choices
        pending again. Deleted files come back when that apply kept them (`trash=True`, as the Apply
        button does)."""
        if self.last_report is None or self.last_report.journal is None:
            raise ValueError("Nothing to undo: no apply() from this cleaner has changed files since it was made "
                             "(or the last one was undone already).")
        report = fileops.undo(self.last_report.journal)
        scores, dls, choices, duplicates = self._before_apply
        self.scores, self.learn.dls, self.duplicates = scores, dls, duplicates
        self.choices = choices
        self.last_report, self._before_apply = None, None
        self.history.clear()
        lost = {Path(p) for p in report.unrecoverable}
        if lost:
            self._after_apply({}, lost)
        else:
            self.dd_cats.options = self._category_options()
            self.dd_view.options = self._view_options()
            self._on_view_change()
        self.status.value = f"Undone: {report.summary()}. The choices are pending again."
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
        values = {p: self._values.get(lab, lab) if isinstance(lab, str) else lab for p, lab in relabelled.items()}
        self.learn.dls = self.learn.dls.with_changes(moved, gone, values, table=table)
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
        self.history.clear()  # the files the steps named have moved
        self.dd_cats.options = self._category_options()
        if self.duplicates is not None:
            done = gone | set(moved)
            self.duplicates = self.duplicates[~(self.duplicates["path_a"].isin(done) | self.duplicates["path_b"].isin(done))]
        if self.issues is not None:
            self.issues = self.issues[~self.issues["path"].map(lambda p: Path(p) in done)]
        self.dd_view.options = self._view_options()
        self._on_view_change()

    def _ipython_display_(self) -> None:
        display(self.widget)
