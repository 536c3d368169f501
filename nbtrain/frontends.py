"""The cleaner's two front ends behind one small interface: `show(rows)` draws a page, `refresh(paths)`
redraws the marks of those images, `widget` is what goes on screen.

"keys" is a small anywidget (its ES module and CSS ship in the package, nothing comes from a CDN) that
draws a page from one message and sends back clicks and keys; "plain" is ipywidgets 8 alone, for where
that code cannot load (Kaggle), with a button per decision. Both read the choices from the review state
and send every decision to the same controller (the cleaner), so code and clicks give the same choices.
"""

from __future__ import annotations

import html
import io
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import ipywidgets as W
import pandas as pd
from PIL import Image, ImageDraw

from .data import load_image
from .locations import is_kaggle
from .review import DELETE, KEEP, ReviewState

FRONTENDS = ("auto", "keys", "plain")
KEYS_HELP = (
    "Keys (click a picture first): ← → ↑ ↓ or the mouse pointer pick a picture · D delete / keep · "
    "K keep · A accept the prediction · 0-9 relabel as class number · Shift+D delete all shown · "
    "Shift+A accept all predictions shown · N / P next / previous page · U undo"
)
PLAIN_HELP = (
    "One click per picture: Delete (click again to keep), ✓ accepts the model's prediction, the menu "
    "relabels to any class. Nothing changes on disk until Apply."
)
MARK_COLOURS = {"delete": "#d32f2f", "relabel": "#1565c0", "kept": "#81c784"}


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


def choose_frontend(frontend: str, multi_label: bool) -> str:
    """ "keys" (the anywidget grid: click and keyboard) or "plain" (ipywidgets only) for `frontend`.

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
            raise ImportError(
                "frontend='keys' needs anywidget: pip install anywidget, restart the kernel "
                "(and reload the page), or use frontend='plain'."
            ) from None
        return "plain"
    if frontend == "auto" and is_kaggle():
        return "plain"
    return "keys"


def caption(row, vocab: Sequence[str], multi_label: bool) -> str:
    """The HTML under a thumbnail: the pair or issue reason of its view, label, prediction and loss, and
    the web address the image was downloaded from when its folder's manifest says."""
    return _caption_body(row, vocab, multi_label) + source_link(getattr(row, "source", None))


def source_link(url: object, width: int = 40) -> str:
    """A short link to where an image came from, so a reviewer sees which site sent a bad one."""
    if not isinstance(url, str) or not url:
        return ""
    shown = url.split("://", 1)[-1]
    shown = shown if len(shown) <= width else shown[: width - 1] + "…"
    return (
        f"<br><small>from <a href='{html.escape(url, quote=True)}' target='_blank' rel='noopener noreferrer'>"
        f"{html.escape(shown)}</a></small>"
    )


def _caption_body(row, vocab: Sequence[str], multi_label: bool) -> str:
    # Class names are folder names, which may hold "<" or "&": escaped like the reason.
    labels = html.escape(", ".join(row.labels))
    pair = getattr(row, "pair", None)
    if isinstance(pair, str) and pair:
        return f"<small><b>{html.escape(pair)}</b><br>{row.split}: {labels}</small>"
    reason = getattr(row, "reason", None)
    head = f"<small><b>{html.escape(reason)}</b></small><br>" if isinstance(reason, str) and reason else ""
    if not row.readable:
        return head + "<b style='color:#b00'>unreadable file</b>"
    if multi_label:
        pred = html.escape(", ".join(vocab[i] for i in sorted(row.pred_set)) or "(none)")
        return f"{head}<small>labels: {labels}<br>predicted: {pred}<br>loss {row.loss:.3f}</small>"
    pred = vocab[row.pred_idx]
    colour = "#070" if pred in row.labels else "#b00"
    return (
        f"{head}<small>label <b>{labels}</b>, predicted <b style='color:{colour}'>{html.escape(pred)}</b> "
        f"({row.prob:.2f})<br>loss {row.loss:.3f}</small>"
    )


class Controller(Protocol):
    """What a front end asks for; the cleaner does it and redraws through `show` or `refresh`."""

    def set_choice(self, path: Path, choice: str | Sequence[str]) -> None: ...
    def toggle_delete(self, path: Path) -> None: ...
    def accept_prediction(self, path: Path) -> None: ...
    def delete_all_shown(self) -> None: ...
    def accept_all_shown(self) -> None: ...
    def next_page(self) -> None: ...
    def previous_page(self) -> None: ...
    def undo(self) -> list[Path]: ...


class Frontend(Protocol):
    """A grid of thumbnails for one page; the cleaner's controls sit around `widget`."""

    widget: W.Widget
    help_html: str  # shown above the grid ("" where the grid shows its own help)

    def show(self, rows: pd.DataFrame) -> None: ...
    def refresh(self, paths: Iterable[Path]) -> None: ...


class Cell:
    """One image of the plain grid: its thumbnail, a caption, one-click buttons (delete / keep, accept the
    prediction), the menu of choices, and for multi-label data a list of the labels to toggle."""

    def __init__(self, options: Sequence[str], height: int, width: int, toggles: Sequence[str] | None = None):
        self.image = W.Image(format="jpeg", layout=W.Layout(height=f"{height}px", width="auto", object_fit="contain"))
        self.badge = W.HTML()
        self.caption = W.HTML(layout=W.Layout(width=f"{width}px"))
        self.delete_button = W.Button(
            description="Delete", tooltip="mark for deletion; click again to keep", layout=W.Layout(width="80px")
        )
        self.accept_button = W.Button(
            description="✓", tooltip="relabel as the model's prediction", layout=W.Layout(width="80px")
        )
        self.menu = W.Dropdown(options=list(options), layout=W.Layout(width=f"{min(width, 200)}px"))
        self.labels = (
            W.SelectMultiple(
                options=list(toggles), rows=min(5, len(toggles)), layout=W.Layout(width=f"{min(width, 200)}px")
            )
            if toggles
            else None
        )
        parts = [self.badge, self.image, self.caption, W.HBox([self.delete_button, self.accept_button]), self.menu]
        parts += [self.labels] if self.labels else []
        self.box = W.VBox(
            parts, layout=W.Layout(border="3px solid #ddd", padding="4px", margin="2px", align_items="center")
        )
        self.path: Path | None = None


class PlainGrid:
    """The ipywidgets front end: `max_n` cells, made once and refilled page by page."""

    help_html = f"<small>{PLAIN_HELP}</small>"

    def __init__(
        self, state: ReviewState, controller: Controller, thumbs: ThumbnailCache, max_n: int, height: int, width: int
    ):
        self.state, self.controller, self.thumbs = state, controller, thumbs
        multi = state.multi_label
        options = [KEEP, DELETE] if multi else [KEEP, DELETE, *state.vocab]
        self.cells = [Cell(options, height, width, state.vocab if multi else None) for _ in range(max_n)]
        for cell in self.cells:
            cell.menu.observe(self._on_choice(cell), names="value")
            cell.delete_button.on_click(self._on_button(cell, controller.toggle_delete))
            cell.accept_button.on_click(self._on_button(cell, controller.accept_prediction))
            if cell.labels is not None:
                cell.labels.observe(self._on_toggle(cell), names="value")
        self.widget = W.GridBox(
            [c.box for c in self.cells],
            layout=W.Layout(grid_template_columns=f"repeat(auto-fill, minmax({width + 16}px, 1fr))", width="100%"),
        )
        # Set while the grid itself writes a menu, so that write is not taken for a person's choice.
        self._updating = False

    def show(self, rows: pd.DataFrame) -> None:
        self._updating = True
        try:
            for cell, row in zip(self.cells, rows.itertuples(index=False)):
                cell.path = row.path
                cell.image.value = self.thumbs(row.path)
                # The file name on hover. Not as the box's tooltip: ipywidgets 8.1's front end cannot draw a
                # Box that has one ("Could not create a view").
                text = caption(row, self.state.vocab, self.state.multi_label)
                cell.caption.value = f'<div title="{html.escape(Path(row.path).name)}">{text}</div>'
                pred = self.state.predicted(row)
                cell.accept_button.description = f"✓ {pred}" if pred else "✓"
                cell.accept_button.disabled = pred is None or pred in row.labels
                self._set_menus(cell, tuple(row.labels))
                cell.box.layout.display = None
            for cell in self.cells[len(rows) :]:
                cell.path = None
                cell.box.layout.display = "none"
        finally:
            self._updating = False

    def refresh(self, paths: Iterable[Path]) -> None:
        changed = set(paths)
        self._updating = True
        try:
            for cell in self.cells:
                if cell.path is not None and cell.path in changed:
                    self._set_menus(cell, self.state.own_labels(cell.path))
        finally:
            self._updating = False

    def _set_menus(self, cell: Cell, own_labels: tuple[str, ...]) -> None:
        """Show the recorded choice for `cell`'s image in its menu, label list, frame and badge."""
        choice = self.state.choices.get(cell.path, KEEP)
        cell.menu.value = DELETE if choice == DELETE else (choice if isinstance(choice, str) else KEEP)
        if cell.labels is not None:
            cell.labels.value = tuple(sorted(choice)) if isinstance(choice, frozenset) else own_labels
        mark = self.state.mark(cell.path)
        colour = MARK_COLOURS.get(mark["kind"], "#ddd")
        cell.box.layout.border = f"3px solid {colour}"
        text = {"delete": "DELETE", "relabel": f"→ {mark.get('label')}", "kept": "✓"}.get(mark["kind"], "")
        cell.badge.value = (
            f"<b style='background:{colour};color:white;padding:1px 6px;border-radius:3px'>{html.escape(text)}</b>"
            if text
            else ""
        )
        cell.delete_button.description = "Keep" if mark["kind"] == "delete" else "Delete"
        cell.delete_button.button_style = "danger" if mark["kind"] == "delete" else ""

    def _on_choice(self, cell: Cell):
        def handler(change) -> None:
            if not self._updating and cell.path is not None:
                self.controller.set_choice(cell.path, change["new"])

        return handler

    def _on_toggle(self, cell: Cell):
        def handler(change) -> None:
            if not self._updating and cell.path is not None and cell.menu.value != DELETE:
                self.controller.set_choice(cell.path, frozenset(change["new"]))

        return handler

    @staticmethod
    def _on_button(cell: Cell, decide):
        def handler(_) -> None:
            if cell.path is not None:
                decide(cell.path)

        return handler


def review_grid_class():
    """The anywidget class of the keys front end (made on first use, so nbtrain imports without anywidget)."""
    import anywidget
    import traitlets

    class ReviewGrid(anywidget.AnyWidget):
        """A page of cards drawn in the browser; one message per page carries every thumbnail."""

        _esm = Path(__file__).parent / "cleaner.js"
        _css = Path(__file__).parent / "cleaner.css"
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


class KeysGrid:
    """The keys front end: a page of cards drawn in the browser from one message; it sends back what the
    person did ({action, index of the card, label}) and gets the new marks."""

    help_html = ""  # the grid shows KEYS_HELP itself

    def __init__(self, state: ReviewState, controller: Controller, thumbs: ThumbnailCache, height: int, width: int):
        self.state, self.controller, self.thumbs = state, controller, thumbs
        self.widget = review_grid_class()(classes=state.vocab, thumb_height=height, card_width=min(width, 200) + 16)
        self.widget.on_msg(lambda _widget, msg, _buffers=None: self.handle(msg))
        self._shown: list[Path] = []

    def show(self, rows: pd.DataFrame) -> None:
        cards, images = [], []
        for row in rows.itertuples(index=False):
            pred = self.state.predicted(row)
            text = caption(row, self.state.vocab, self.state.multi_label)
            cards.append(
                {"name": Path(row.path).name, "caption": text, "label": ", ".join(row.labels), "pred": pred or ""}
            )
            images.append(self.thumbs(row.path))
        self._shown = list(rows["path"])
        g = self.widget
        with g.hold_sync():  # one message: the cards, their thumbnails and their marks
            g.cards, g.images, g.marks = cards, images, [self.state.mark(p) for p in self._shown]
            g.page_token += 1

    def refresh(self, paths: Iterable[Path]) -> None:
        g = self.widget
        with g.hold_sync():
            g.marks = [self.state.mark(p) for p in self._shown]
            g.marks_token += 1

    def handle(self, msg: dict) -> None:
        """One thing the person did, as the browser sends it: {action, index of the card, label}."""
        action, i = msg.get("action"), msg.get("index")
        c = self.controller
        page_actions = {
            "next": c.next_page,
            "prev": c.previous_page,
            "undo": c.undo,
            "delete_all": c.delete_all_shown,
            "accept_all": c.accept_all_shown,
        }
        if action in page_actions:
            page_actions[action]()
            return
        path = self._shown[i] if isinstance(i, int) and 0 <= i < len(self._shown) else None
        if path is None:
            return
        if action == "toggle_delete":
            c.toggle_delete(path)
        elif action in ("delete", "keep"):
            c.set_choice(path, DELETE if action == "delete" else KEEP)
        elif action == "accept":
            c.accept_prediction(path)
        elif action == "relabel" and msg.get("label") in self.state.vocab:
            c.set_choice(path, msg["label"])


def make_frontend(
    kind: str, state: ReviewState, controller: Controller, thumbs: ThumbnailCache, max_n: int, height: int, width: int
) -> Frontend:
    """The front end `kind` ("keys" or "plain", from `choose_frontend`) over `state`."""
    if kind == "keys":
        return KeysGrid(state, controller, thumbs, height, width)
    return PlainGrid(state, controller, thumbs, max_n, height, width)
