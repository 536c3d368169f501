"""Understanding a trained model: confusion matrix, the most confused pairs, top losses, a report.

Every plot returns its matplotlib figure, so it shows in a notebook and can be saved with `savefig`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from .learner import Learner
from .plots import image_grid


class TopLosses(NamedTuple):
    losses: torch.Tensor
    idxs: torch.Tensor


class ClassificationInterpretation:
    """Predictions, targets and per-item losses of a learner on one dataset, computed once."""

    def __init__(self, learn: Learner, ds_idx: int, probs: torch.Tensor, targs: torch.Tensor, losses: torch.Tensor):
        self.learn, self.ds_idx = learn, ds_idx
        self.vocab = list(learn.dls.vocab)
        self.multi_label = learn.dls.multi_label
        # Files that could not be decoded have NaN rows; they take no part in any statistic.
        self.ok = ~torch.isnan(probs).any(dim=1)
        self.probs, self.targs, self.losses = probs, targs, losses
        self.items = learn.dls[ds_idx].dataset.items if ds_idx in (0, 1) else []
        if self.multi_label:
            self.decoded = (probs > learn.thresh).float()
        else:
            self.decoded = torch.nan_to_num(probs, nan=-1.0).argmax(dim=1)

    @classmethod
    def from_learner(cls, learn: Learner, ds_idx: int = 1) -> ClassificationInterpretation:
        probs, targs, losses = learn.get_preds(ds_idx=ds_idx, with_loss=True)
        return cls(learn, ds_idx, probs, targs, losses)

    def _single_label_only(self, what: str) -> None:
        if self.multi_label:
            raise ValueError(
                f"{what} is for single-label data; for multi-label data use "
                "print_classification_report(), which gives precision and recall per class."
            )

    def confusion_matrix(self) -> np.ndarray:
        """Counts: rows are the actual classes, columns the predicted ones."""
        self._single_label_only("The confusion matrix")
        c = len(self.vocab)
        t, p = self.targs[self.ok].long(), self.decoded[self.ok].long()
        return torch.bincount(t * c + p, minlength=c * c).reshape(c, c).numpy()

    def plot_confusion_matrix(
        self,
        normalize: bool = False,
        title: str = "Confusion matrix",
        cmap: str = "Blues",
        norm_dec: int = 2,
        plot_txt: bool = True,
        figsize: tuple[float, float] | None = None,
        dpi: float | None = None,
        **kwargs,
    ):
        """The confusion matrix as a picture, with fastai's arguments: with `normalize`, each row shows
        fractions of its class (to `norm_dec` decimals); `plot_txt=False` leaves the numbers out;
        other keyword arguments go to `matplotlib.pyplot.figure`."""
        import matplotlib.pyplot as plt

        cm = self.confusion_matrix().astype(float)
        if normalize:
            cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        names = [str(v) for v in self.vocab]
        c = len(names)
        size = figsize or (max(4.0, 0.5 * c + 2), max(4.0, 0.5 * c + 2))
        fig = plt.figure(figsize=size, dpi=dpi, **kwargs)
        ax = fig.add_subplot()
        ax.imshow(cm, interpolation="nearest", cmap=cmap)
        ax.set_title(title)
        ax.set_xticks(range(c), names, rotation=90 if c > 8 and max(map(len, names)) > 3 else 0)
        ax.set_yticks(range(c), names)
        ax.set_xlabel("Predicted")
        ax.set_ylabel("Actual")
        if plot_txt and c <= 30:
            thresh = cm.max() / 2 if cm.max() else 0.5
            for i in range(c):
                for j in range(c):
                    text = f"{cm[i, j]:.{norm_dec}f}" if normalize else f"{int(cm[i, j])}"
                    ax.text(
                        j,
                        i,
                        text,
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if cm[i, j] > thresh else "black",
                    )
        fig.tight_layout()
        return fig

    def most_confused(self, min_val: int = 1) -> list[tuple[str, str, int]]:
        """(actual, predicted, count) for every pair of different classes seen at least `min_val` times,
        largest first."""
        cm = self.confusion_matrix()
        pairs = [
            (self.vocab[i], self.vocab[j], int(cm[i, j]))
            for i in range(len(cm))
            for j in range(len(cm))
            if i != j and cm[i, j] >= min_val
        ]
        return sorted(pairs, key=lambda r: -r[2])

    def top_losses(self, k: int | None = None, largest: bool = True) -> TopLosses:
        """The `k` largest (or smallest) losses and the dataset indices of their items."""
        losses = torch.where(self.ok, self.losses, torch.tensor(float("-inf") if largest else float("inf")))
        k = int(self.ok.sum()) if k is None else min(k, int(self.ok.sum()))
        values, idxs = torch.topk(losses, k, largest=largest)
        return TopLosses(values, idxs)

    def _label(self, target: torch.Tensor) -> str:
        return self.learn.dls.label_of(target)

    def plot_top_losses(
        self,
        k: int = 9,
        largest: bool = True,
        nrows: int | None = None,
        ncols: int | None = None,
        figsize: tuple[float, float] | None = None,
    ):
        """The images with the highest losses, titled prediction / actual / loss / probability,
        in `nrows` rows (or `ncols` columns) as fastai's."""
        from .data import load_image

        losses, idxs = self.top_losses(k, largest)
        imgs = [load_image(self.items[i]) if self.items else None for i in idxs.tolist()]
        titles = []
        for loss, i in zip(losses.tolist(), idxs.tolist()):
            if self.multi_label:
                pred, prob = self._label(self.decoded[i]), float(self.probs[i].max())
            else:
                p = int(self.decoded[i])
                pred, prob = str(self.vocab[p]), float(self.probs[i, p])
            titles.append(f"{pred}/{self._label(self.targs[i])}\n{loss:.2f} / {prob:.2f}")
        return image_grid(
            imgs,
            titles,
            nrows=nrows,
            ncols=ncols,
            figsize=figsize,
            panel=3.0,
            title_size=9,
            suptitle="prediction/actual\nloss / probability",
        )

    def classification_report(self) -> pd.DataFrame:
        """Per-class precision, recall, F1 and support, then the macro and weighted averages."""
        c = len(self.vocab)
        if self.multi_label:
            t = self.targs[self.ok].bool()
            p = self.decoded[self.ok].bool()
            tp = (t & p).sum(0).double()
            fp = (~t & p).sum(0).double()
            fn = (t & ~p).sum(0).double()
        else:
            cm = torch.from_numpy(self.confusion_matrix()).double()
            tp = cm.diag()
            fp = cm.sum(0) - tp
            fn = cm.sum(1) - tp
        support = tp + fn
        precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1), torch.zeros(c, dtype=torch.float64))
        recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros(c, dtype=torch.float64))
        f1 = torch.where(
            precision + recall > 0,
            2 * precision * recall / (precision + recall).clamp(min=1e-12),
            torch.zeros(c, dtype=torch.float64),
        )
        df = pd.DataFrame(
            {
                "precision": precision.numpy(),
                "recall": recall.numpy(),
                "f1-score": f1.numpy(),
                "support": support.numpy().astype(int),
            },
            index=self.vocab,
        )
        total = max(int(support.sum()), 1)
        w = support.numpy() / total
        df.loc["macro avg"] = [precision.mean().item(), recall.mean().item(), f1.mean().item(), int(support.sum())]
        df.loc["weighted avg"] = [
            float((precision.numpy() * w).sum()),
            float((recall.numpy() * w).sum()),
            float((f1.numpy() * w).sum()),
            int(support.sum()),
        ]
        df["support"] = df["support"].astype(int)
        return df

    def print_classification_report(self) -> pd.DataFrame:
        """Print `classification_report()` and return it."""
        df = self.classification_report()
        print(df.to_string(float_format=lambda v: f"{v:.4f}"))
        return df
