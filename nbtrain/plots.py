"""The one image-grid plotter: batches, results and top losses are all drawn by `image_grid`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _as_hwc(img) -> np.ndarray:
    """A CHW tensor in [0, 1], an HWC array or a PIL image, as an HWC (or HW) array imshow takes."""
    if hasattr(img, "permute"):  # a torch tensor, channels first
        return img.detach().cpu().permute(1, 2, 0).numpy()
    return np.asarray(img)


def image_grid(
    images: Sequence,
    titles: Sequence[str],
    colors: Sequence[str | None] | None = None,
    nrows: int | None = None,
    ncols: int | None = None,
    figsize: tuple[float, float] | None = None,
    panel: float = 2.4,
    title_size: int = 10,
    suptitle: str | None = None,
):
    """Images in a grid, each with its title (and title colour); returns the figure.

    Panels are shaped like the images (two digits side by side are twice as wide as high), and the
    layout is constrained so that titles of several lines stay clear of the image above.
    `nrows` or `ncols` fix one side, as fastai's; the other follows from the number of images.
    """
    import matplotlib.pyplot as plt

    arrays = [_as_hwc(im) if im is not None else None for im in images]
    n = len(arrays)
    if nrows is None and ncols is None:
        ncols = max(1, math.ceil(math.sqrt(n)))
    if ncols is None:
        ncols = max(1, math.ceil(n / nrows))
    nrows = nrows or max(1, math.ceil(n / ncols))
    shapes = [a.shape for a in arrays if a is not None]
    aspect = float(np.median([s[0] / s[1] for s in shapes])) if shapes else 1.0
    lines = max((str(t).count("\n") + 1 for t in titles), default=1)
    height = (panel * aspect + 0.2 * lines) * nrows + (0.5 if suptitle else 0)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=figsize or (panel * ncols, height), squeeze=False, layout="constrained"
    )
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        if arrays[k] is not None:
            ax.imshow(arrays[k], cmap="gray" if arrays[k].ndim == 2 else None)
        ax.set_title(titles[k], fontsize=title_size, color=(colors[k] if colors else None) or "black")
    if suptitle:
        fig.suptitle(suptitle, fontsize=title_size)
    return fig
