"""`Learner.summary()`: the model's layers with their output shapes, parameter counts and whether they
train, then the totals, optimizer, loss and precision."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .data import DataError
from .environment import mixed_precision

if TYPE_CHECKING:
    from .learner import Learner


class ModelSummary(str):
    """`Learner.summary()`'s table: a string that prints well, with the rows as a DataFrame in `.df`."""

    df: object

    def __new__(cls, text: str, df: object) -> ModelSummary:
        out = super().__new__(cls, text)
        out.df = df
        return out

    def __repr__(self) -> str:  # a notebook shows the table, not a quoted string
        return str(self)

    @classmethod
    def of(cls, learn: Learner, x: torch.Tensor | None = None) -> ModelSummary:
        """Run `x` (by default one batch of the learner's data) through `learn.model`, in eval mode and
        without gradients, and tabulate it."""
        import pandas as pd

        if x is None:
            x = _one_batch(learn)
        model = learn.model
        mods = [
            (name, m)
            for name, m in model.named_modules()
            if not list(m.children()) or list(m.parameters(recurse=False))
        ]
        shapes = _output_shapes(learn, mods, x)
        rows = []
        for name, m in mods:
            params = list(m.parameters(recurse=False))
            rows.append(
                {
                    "layer": name or type(m).__name__,
                    "type": type(m).__name__,
                    "output_shape": shapes.get(id(m)),
                    "params": sum(p.numel() for p in params),
                    "trainable": bool(params) and all(p.requires_grad for p in params),
                }
            )
        df = pd.DataFrame(rows, columns=["layer", "type", "output_shape", "params", "trainable"])
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        dtype = mixed_precision(learn.device, learn.amp)[0]
        opt = (
            type(learn.opt).__name__
            if learn.opt is not None
            else getattr(learn.opt_func, "__name__", str(learn.opt_func))
        )
        precision = "float32" if dtype is None else f"mixed ({str(dtype).removeprefix('torch.')} autocast)"
        text = _table_text(model, x, rows, total, trainable, opt, learn.loss_func, precision)
        return cls(text, df)


def _output_shapes(learn: Learner, mods: list[tuple[str, nn.Module]], x: torch.Tensor) -> dict[int, tuple]:
    """Each module's first output shape, by id, from one pass in eval mode without gradients."""
    model = learn.model
    shapes: dict[int, tuple] = {}

    def hook(m: nn.Module, _inp: object, out: object) -> None:
        t = out[0] if isinstance(out, (tuple, list)) and out else out
        if isinstance(t, torch.Tensor) and id(m) not in shapes:
            shapes[id(m)] = tuple(t.shape)

    handles = [m.register_forward_hook(hook) for _, m in mods]
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode(), learn.autocast():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return shapes


def _table_text(
    model: nn.Module,
    x: torch.Tensor,
    rows: list[dict],
    total: int,
    trainable: int,
    opt: str,
    loss_func: object,
    precision: str,
) -> str:
    """fastai's summary layout: a line per layer, then the totals, optimizer, loss and precision."""
    width = [max(24, *(len(r["layer"]) + len(r["type"]) + 3 for r in rows)), 24, 12, 10]
    line = "=" * sum(width)
    head = f"{'Layer (type)':<{width[0]}}{'Output Shape':<{width[1]}}{'Param #':>{width[2]}}{'Trainable':>{width[3]}}"
    body = []
    for r in rows:
        shape = " x ".join(map(str, r["output_shape"])) if r["output_shape"] else "-"
        flag = ("True" if r["trainable"] else "False") if r["params"] else ""
        body.append(
            f"{r['layer'] + ' (' + r['type'] + ')':<{width[0]}}{shape:<{width[1]}}"
            f"{r['params']:>{width[2]},}{flag:>{width[3]}}"
        )
    text = "\n".join(
        [
            f"{type(model).__name__} (Input shape: {' x '.join(map(str, x.shape))})",
            line,
            head,
            line,
            *body,
            line,
            f"Total params: {total:,}",
            f"Total trainable params: {trainable:,}",
            f"Total non-trainable params: {total - trainable:,}",
            "",
            f"Optimizer used: {opt}",
            f"Loss function: {loss_func!r}",
            f"Precision: {precision}",
        ]
    )
    return text


def _one_batch(learn: Learner) -> torch.Tensor:
    dl = learn.dls.valid if learn.dls.valid.n else learn.dls.train
    if not dl.n:
        raise DataError(
            "summary() runs one batch through the model, and this learner has no images "
            "(e.g. one from load_learner). Build it with DataLoaders to see the layers."
        )
    return dl.one_batch()[0]
