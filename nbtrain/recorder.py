"""What training leaves behind: losses, learning rates and momentums per batch, and the epoch table's rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from .lr_suggestions import on_curve, valley


def smooth(values: Sequence[float], beta: float = 0.98) -> list[float]:
    """The debiased exponential moving average of `values`, as fastai smooths its losses."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**i))
    return out


@dataclass
class Recorder:
    """Losses, learning rates and momentums per batch, and the epoch table's rows."""

    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    moms: list[float] = field(default_factory=list)
    values: list[list[float]] = field(default_factory=list)
    metric_names: list[str] = field(default_factory=list)
    epoch_iters: list[int] = field(default_factory=list)
    lr_find_lrs: list[float] = field(default_factory=list)
    lr_find_losses: list[float] = field(default_factory=list)
    valid_error: float = float("nan")  # single-label error of the latest validation (fine_tune's probe)

    def last(self, name: str) -> float:
        """The latest epoch's value of a column of the epoch table ("train_loss", "valid_loss", a metric)."""
        if name not in self.metric_names:
            raise KeyError(f"No column {name!r} in the epoch table; its columns are {self.metric_names}.")
        if not self.values:
            raise ValueError("No epoch has finished yet.")
        return float(self.values[-1][self.metric_names.index(name)])

    def plot_loss(self, skip_start: int = 5, with_valid: bool = True):
        """Training loss per batch (smoothed) and validation loss per epoch; returns the figure."""
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        smoothed = smooth(self.losses)
        ax.plot(range(skip_start, len(smoothed)), smoothed[skip_start:], label="train")
        if with_valid and self.values and self.epoch_iters:
            ax.plot(self.epoch_iters, [v[1] for v in self.values], "o-", label="valid")
        ax.set_xlabel("batch")
        ax.set_ylabel("loss")
        ax.legend()
        fig.tight_layout()
        return fig

    def plot_losses(self, skip_start: int = 0, skip_end: int = 0, return_fig: bool = False):
        """fastai v1's name for `plot_loss`, without the last `skip_end` batches; as v1's, the figure is
        returned only with `return_fig` (a notebook shows it either way)."""
        fig = replace(self, losses=self.losses[: len(self.losses) - skip_end]).plot_loss(skip_start=skip_start)
        return fig if return_fig else None

    def plot(self, skip_start: int = 0, skip_end: int = 0, suggestion: bool = False, return_fig: bool = False):
        """fastai v1's `recorder.plot()`: the last `lr_find`'s loss against learning rate (which already
        leaves out the last points, where the loss blows up), with the valley marked when `suggestion`
        (v1 marked the steepest slope); the figure as `plot_losses`."""
        end = len(self.lr_find_lrs) - skip_end
        part = Recorder(
            lr_find_lrs=self.lr_find_lrs[skip_start:end], lr_find_losses=self.lr_find_losses[skip_start:end]
        )
        if not part.lr_find_lrs:
            raise ValueError(
                "recorder.plot() shows the learning-rate finder's curve: run learn.lr_find() first "
                "(and skip fewer points). For the losses of training, use recorder.plot_losses()."
            )
        fig = part.plot_lr_find(valley(part.lr_find_lrs, part.lr_find_losses)[0] if suggestion else None)
        return fig if return_fig else None

    def plot_sched(self):
        """The learning rate and momentum of every batch; returns the figure."""
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
        a.plot(self.lrs)
        a.set_title("learning rate")
        b.plot(self.moms)
        b.set_title("momentum")
        fig.tight_layout()
        return fig

    def plot_lr_find(self, suggestion: float | None = None, points: dict[str, tuple[float, float]] | None = None):
        """Loss against learning rate from the last `lr_find`, with `suggestion` (the valley) or the
        named `points` of several suggestion functions marked; returns the figure."""
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(self.lr_find_lrs, self.lr_find_losses)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss (smoothed)")
        if suggestion is not None:
            points = {
                "valley": (suggestion, on_curve(suggestion, self.lr_find_lrs, self.lr_find_losses)),
                **(points or {}),
            }
        if points:
            for (name, (lr, loss)), colour in zip(points.items(), ["r", "g", "b", "m", "c", "y"] * 4):
                ax.plot([lr], [loss], "o", color=colour, label=f"{name}: {lr:.2e}")
            ax.legend()
        fig.tight_layout()
        return fig
