"""Progress: a batch bar and an epoch table that read well in notebooks, terminals and logs, shown by
`ProgressCallback`, the learner's own use of the callback events."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from tqdm.auto import tqdm

from . import distributed
from .callbacks import Callback
from .environment import in_notebook


class EpochTable:
    """The per-epoch table: an HTML table updated in place in a notebook, aligned text elsewhere."""

    def __init__(self, names: Sequence[str], show: bool = True):
        self.names, self.rows, self.show = list(names), [], show
        self.widths = [max(10, len(n)) for n in self.names]
        self.notebook = in_notebook()
        self._handle = None
        if show and not self.notebook:
            print("  ".join(f"{n:>{w}}" for n, w in zip(self.names, self.widths)), flush=True)

    @staticmethod
    def _fmt(v: object) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.6f}"
        return str(v)

    def add(self, row: Sequence[object]) -> None:
        cells = [self._fmt(v) for v in row]
        self.rows.append(cells)
        if not self.show:
            return
        if not self.notebook:
            print("  ".join(f"{c:>{w}}" for c, w in zip(cells, self.widths)), flush=True)
            return
        from IPython.display import HTML, display

        head = "".join(f"<th>{n}</th>" for n in self.names)
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in self.rows)
        html = HTML(
            f'<table class="dataframe" border="1"><thead><tr style="text-align: left;">{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>"
        )
        if self._handle is None:
            self._handle = display(html, display_id=True)
        else:
            self._handle.update(html)


def format_time(seconds: float) -> str:
    """mm:ss, as the epoch table shows an epoch's time."""
    m, s = divmod(int(round(seconds)), 60)
    return f"{m:02d}:{s:02d}"


class ProgressCallback(Callback):
    """The batch bar and the epoch table: the learner's own use of the callback events."""

    order = 100  # after the user's callbacks, so the table shows what they changed

    def before_fit(self) -> None:
        learn = self.learn
        names = ["epoch", *learn.recorder.metric_names, "time"]
        self.table = EpochTable(names, show=distributed.is_main())

    def before_epoch(self) -> None:
        self.start, self.rows = time.time(), len(self.learn.recorder.values)

    def before_train(self) -> None:
        learn = self.learn
        # A bar from a forked process would write to the notebook's channels, which it does not own.
        self.bar = tqdm(
            total=learn.n_iter,
            desc=f"epoch {learn.epoch + 1}/{learn.n_epoch}",
            leave=False,
            disable=True if distributed.is_distributed() else None,
            unit="batch",
        )

    def after_batch(self) -> None:
        learn = self.learn
        if not learn.training:
            return
        # Reading the loss waits for the GPU, so the bar reads it only now and then.
        if learn.loss is not None and (learn.iter % 10 == 0 or learn.iter == learn.n_iter - 1):
            self.bar.set_postfix(loss=f"{float(learn.loss):.4f}", refresh=False)
        self.bar.update(1)

    def after_train(self) -> None:
        self.bar.close()

    after_cancel_train = after_train

    def after_epoch(self) -> None:
        learn = self.learn
        if len(learn.recorder.values) > self.rows:  # not when the epoch was cancelled
            self.table.add([learn.epoch, *learn.recorder.values[-1], format_time(time.time() - self.start)])

    def after_fit(self) -> None:
        bar = getattr(self, "bar", None)
        if bar is not None:
            bar.close()
