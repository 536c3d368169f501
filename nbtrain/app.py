"""ImageClassifierApp: upload images (or name a folder) and see what a trained model predicts.

The fastai book's chapter-2 app as one widget: thumbnails with the top classes and their
probabilities as bars. Plain ipywidgets 8, so it runs wherever the cleaner runs (JupyterLab,
Notebook 7, VS Code, Colab, Kaggle), with no front-end build and nothing fetched from the network.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipywidgets as W
import torch
from IPython.display import display
from PIL import Image

from .data import IMAGE_EXTENSIONS, get_image_files
from .image import PILImage
from .learner import Learner


@dataclass
class Prediction:
    """One image's result: its name, the predicted label(s) and every class's probability."""

    name: str
    label: str | list[str] | None
    probs: torch.Tensor | None
    error: str | None = None

    def top(self, vocab: Sequence[str], k: int) -> list[tuple[str, float]]:
        """The `k` most probable classes with their probabilities, most probable first."""
        if self.probs is None:
            return []
        p, i = self.probs.float().topk(min(k, len(self.probs)))
        return [(str(vocab[int(j)]), float(q)) for q, j in zip(p, i)]


def _thumbnail(img: Image.Image, size: int) -> bytes:
    img = img.copy()
    img.thumbnail((size, size))
    if img.height < size // 2:  # tiny images (MNIST) scaled up, crisp
        scale = max(1, (size // 2) // max(img.height, 1))
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=85)
    return buf.getvalue()


class ImageClassifierApp:
    """Upload one or more images, or give a folder, and see each with the model's `top_k` classes.

    Args:
        learn: a trained Learner (or one from `load_learner`).
        top_k: how many classes each image shows, most probable first.
        size: the thumbnail size in pixels.
        max_n: at most this many images of a folder are shown.

    `classify(items)` does the same from code (paths, bytes, arrays, PIL images) and returns the
    `Prediction`s; `results` holds those on show.
    """

    def __init__(self, learn: Learner, top_k: int = 5, size: int = 160, max_n: int = 60):
        if top_k < 1:
            raise ValueError(f"top_k is how many classes to show per image (1 or more), not {top_k}.")
        self.learn, self.top_k, self.size, self.max_n = learn, top_k, size, max_n
        self.vocab = list(learn.dls.vocab)
        self.results: list[Prediction] = []
        self.upload = W.FileUpload(accept="image/*", multiple=True, description="Upload images")
        self.folder = W.Text(placeholder="a folder of images", description="Folder", layout=W.Layout(width="420px"))
        self.folder_button = W.Button(description="Classify folder")
        self.status = W.HTML()
        self.grid = W.GridBox(
            [], layout=W.Layout(grid_template_columns=f"repeat(auto-fill, minmax({size + 120}px, 1fr))", width="100%")
        )
        self.upload.observe(self._on_upload, names="value")
        self.folder_button.on_click(lambda _: self.show_folder(self.folder.value))
        self.widget = W.VBox(
            [
                W.HBox(
                    [self.upload, self.folder, self.folder_button],
                    layout=W.Layout(align_items="center", grid_gap="12px"),
                ),
                self.status,
                self.grid,
            ]
        )

    # -- predictions -----------------------------------------------------------------------------

    def _predict(self, name: str, item: Any) -> tuple[Prediction, Image.Image | None]:
        try:
            img = PILImage.create(item)
            label, _, probs = self.learn.predict(img)
        except Exception as e:  # one unreadable upload must not hide the others' results
            return Prediction(name, None, None, f"{type(e).__name__}: {e}"), None
        return Prediction(name, label, probs), img

    def classify(self, items: Sequence[Any], names: Sequence[str] | None = None) -> list[Prediction]:
        """Predict each item (anything `PILImage.create` takes), show them, and return the results."""
        names = (
            list(names)
            if names is not None
            else [Path(x).name if isinstance(x, (str, Path)) else f"image {i + 1}" for i, x in enumerate(items)]
        )
        pairs = [self._predict(n, x) for n, x in zip(names, items)]
        self._show(pairs)
        return self.results

    def show_folder(self, folder: str | Path) -> list[Prediction]:
        """Classify the images of `folder` (and its sub-folders), the first `max_n` in name order."""
        path = Path(str(folder).strip()).expanduser()
        if not str(folder).strip() or not path.is_dir():
            self.status.value = (
                f"<span style='color:#b00'>No folder at {html.escape(str(path))}: type the path of "
                "a folder of images.</span>"
            )
            return []
        files = get_image_files(path)
        if not files:
            self.status.value = (
                f"<span style='color:#b00'>No images in {html.escape(str(path))} (looked for "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))}).</span>"
            )
            return []
        shown = files[: self.max_n]
        out = self.classify(shown, [str(f.relative_to(path)) for f in shown])
        if len(files) > len(shown):
            self.status.value += f" Showing the first {len(shown)} of {len(files)} images."
        return out

    def _on_upload(self, change: dict) -> None:
        files = list(change["new"] or ())
        if not files:
            return
        self.classify([f for f in files], [str(f.get("name", f"upload {i + 1}")) for i, f in enumerate(files)])

    # -- display ---------------------------------------------------------------------------------

    def _bars(self, pred: Prediction) -> str:
        if pred.error is not None:
            return f"<div style='color:#b00'>cannot read this image: {html.escape(pred.error)}</div>"
        chosen = set(pred.label) if isinstance(pred.label, list) else {pred.label}
        rows = []
        for cls, p in pred.top(self.vocab, self.top_k):
            colour = "#2a7ae2" if cls in chosen else "#9bbce8"
            weight = "bold" if cls in chosen else "normal"
            rows.append(
                f"<div style='display:flex;align-items:center;gap:6px;font-size:12px'>"
                f"<span style='width:90px;overflow:hidden;text-overflow:ellipsis;font-weight:{weight}'>"
                f"{html.escape(cls)}</span>"
                f"<span style='flex:1;background:#eee;height:10px;min-width:60px'>"
                f"<span style='display:block;height:10px;width:{100 * p:.1f}%;background:{colour}'></span></span>"
                f"<span style='width:44px;text-align:right'>{100 * p:.1f}%</span></div>"
            )
        label = ", ".join(pred.label) if isinstance(pred.label, list) else pred.label
        head = f"<div class='nbtrain-prediction'>Prediction: <b>{html.escape(str(label) or '(none)')}</b></div>"
        return head + "".join(rows)

    def _card(self, pred: Prediction, img: Image.Image | None) -> W.Widget:
        parts: list[W.Widget] = []
        if img is not None:
            parts.append(
                W.Image(
                    value=_thumbnail(img, self.size),
                    format="jpeg",
                    layout=W.Layout(height=f"{self.size}px", width="auto", object_fit="contain"),
                )
            )
        parts.append(
            W.HTML(
                f"<div style='font-size:11px;color:#555'>{html.escape(pred.name)}</div>" + self._bars(pred),
                layout=W.Layout(width="100%"),
            )
        )
        return W.VBox(
            parts, layout=W.Layout(border="1px solid #ddd", padding="4px", margin="2px", align_items="center")
        )

    def _show(self, pairs: list[tuple[Prediction, Image.Image | None]]) -> None:
        self.results = [p for p, _ in pairs]
        self.grid.children = [self._card(p, img) for p, img in pairs]
        bad = sum(p.error is not None for p in self.results)
        self.status.value = f"{len(pairs)} image(s)" + (f", {bad} could not be read." if bad else ".")

    def _ipython_display_(self) -> None:
        display(self.widget)
