"""Predictions of a trained model: the one prediction loop (`outputs`), and what is built on it:
`get_preds`, `predict`, `show_results`, test-time augmentation (`tta`).

The functions take the learner as their first argument; the Learner's methods of the same names
call them. Validation during training goes through `outputs` too.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from enum import Enum
from typing import TYPE_CHECKING

import torch
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from . import distributed
from .data import Batch, DataLoader
from .image import PILImage
from .plots import image_grid

if TYPE_CHECKING:
    from .learner import Learner


def outputs(
    learn: Learner,
    dl: DataLoader | Iterable[tuple[torch.Tensor, torch.Tensor]],
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    with_bar: bool = False,
    fill_cache: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The one prediction loop: raw outputs of `forward` (the model by default), targets and dataset
    indices of every readable item of `dl`, gathered from every process in distributed training.

    `dl` may also be batches already made, `(x, y)` pairs as `dls.one_batch()` gives (fastai's
    `get_preds(dl=[(x,y)])`): they are this process's own, their indices count from 0.
    Only validation during training fills the loader's image cache: a one-off pass over a large
    set (the cleaner's) should not keep every image in memory.
    """
    learn.model.eval()
    forward = forward or learn.model
    given = not isinstance(dl, DataLoader)
    if given:
        batches = _given_batches(dl, learn.device)
        size = sum(len(b.x) for b in batches)
    else:
        dl = distributed.process_part(dl)
        batches, size = dl.batches(fill_cache=fill_cache), len(dl.dataset)
    bar = tqdm(
        total=len(batches) if given else len(dl),
        desc="predicting",
        leave=False,
        disable=None if with_bar and not distributed.is_distributed() else True,
        unit="batch",
    )
    # One buffer for every batch's outputs: small tensors kept between the large short-lived
    # activations fragment malloc's heap.
    out = targ = None
    idx, n = torch.empty(size, dtype=torch.long), 0
    with torch.inference_mode(), learn.autocast():
        for b in batches:
            learn.idx = None if b.stand_in else b.idx  # the batch's dataset indices, for callbacks' hooks
            if b.stand_in:
                o = forward(b.x)  # every process runs the same number of forward passes
                bar.update(1)
                continue
            o = forward(b.x).float()
            if out is None:
                out = torch.empty((size, *o.shape[1:]), device=o.device)
                targ = torch.empty((size, *b.y.shape[1:]), dtype=b.y.dtype, device=o.device)
            out[n : n + len(o)] = o
            targ[n : n + len(o)] = b.y
            idx[n : n + len(o)] = b.idx
            n += len(o)
            bar.update(1)
    bar.close()
    learn.idx = None
    if out is None:
        out, targ, idx = torch.empty(0, learn.dls.c), torch.empty(0), torch.empty(0, dtype=torch.long)
    else:
        out, targ, idx = out[:n], targ[:n], idx[:n]
    return (out, targ, idx) if given else distributed.gather_outputs(out, targ, idx, learn.device)


def plain_loader(learn: Learner, ds_idx: int) -> DataLoader:
    """The training (0) or validation (1) set in dataset order, without augmentation."""
    dl = learn.dls[ds_idx]
    return dl.plain() if ds_idx == 0 else dl


class DatasetType(Enum):
    """fastai v1's names of a learner's sets: `learn.get_preds(ds_type=DatasetType.Test)`."""

    Train = 1
    Valid = 2
    Test = 3
    Single = 4
    Fix = 5


def loader_of(learn: Learner, ds_type: DatasetType) -> DataLoader:
    """The loader `ds_type` names: the training set (Train and Fix: in order, without augmentation),
    the validation set, or the test set the loaders hold (fastai v1's `load_learner(path, test=...)`)."""
    if ds_type is DatasetType.Test:
        test = getattr(learn.dls, "test", None)
        if test is None:
            raise ValueError(
                "These loaders have no test set. Load the learner with one, load_learner(path, "
                "test=ImageList.from_folder(folder)), or give the files: get_preds(dl=learn.dls.test_dl(files))."
            )
        return test
    if ds_type is DatasetType.Single:
        raise ValueError("DatasetType.Single is one item: predict it with learn.predict(img).")
    if not isinstance(ds_type, DatasetType):
        raise ValueError(f"ds_type={ds_type!r} is not a DatasetType: give e.g. DatasetType.Test.")
    return plain_loader(learn, 1 if ds_type is DatasetType.Valid else 0)


def activation(learn: Learner, out: torch.Tensor) -> torch.Tensor:
    """Probabilities from raw outputs: sigmoid for multi-label data, softmax otherwise."""
    return torch.sigmoid(out) if learn.dls.multi_label else torch.softmax(out, dim=1)


def item_losses(learn: Learner, out: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
    """The work of `Learner.item_losses`."""
    fn = copy.copy(learn.loss_func)
    if hasattr(fn, "reduction"):
        fn.reduction = "none"
        loss = fn(out, targ)
    else:
        loss = torch.stack([learn.loss_func(o[None], t[None]) for o, t in zip(out, targ)])
    return loss.mean(dim=1) if loss.ndim > 1 else loss


def get_preds(
    learn: Learner,
    ds_idx: int = 1,
    dl: DataLoader | Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    with_loss: bool = False,
    act: Callable | None = None,
    with_bar: bool = False,
    ds_type: DatasetType | None = None,
):
    """The work of `Learner.get_preds`, through the one prediction loop (`outputs`)."""
    if isinstance(ds_idx, DatasetType):
        ds_idx, ds_type = 1, ds_idx
    if ds_type is not None:
        if dl is not None:
            raise ValueError("Give get_preds either ds_type= or dl=, not both.")
        dl = loader_of(learn, ds_type)
    dl = plain_loader(learn, ds_idx) if dl is None else dl
    out, targ, idx = outputs(learn, dl, with_bar=with_bar)
    if isinstance(dl, DataLoader):  # every item, an unreadable one included (as NaN)
        n, targets = len(dl.dataset), dl.dataset.targets.clone()
    else:
        n, targets = len(out), targ.cpu()
    probs = torch.full((n, learn.dls.c), float("nan"))
    if len(out):
        probs[idx] = (act(out) if act else activation(learn, out)).cpu()
    if not with_loss:
        return probs, targets
    losses = torch.full((n,), float("nan"))
    if len(out):
        with torch.no_grad():
            losses[idx] = item_losses(learn, out, targets[idx].to(out.device)).float().cpu()
    return probs, targets, losses


def _to_input(learn: Learner, item: object) -> torch.Tensor:
    img = PILImage.create(item)
    for t in learn.dls.item_tfms:
        img = t(img, train=False)
    return learn.dls.valid.new(augment=False).to_model_input(TF.pil_to_tensor(img)[None])


class Category(str):
    """A predicted class name, as fastai's own `Category`: a str, and `.obj` the name, as the 2019
    course's `pred_class.obj` reads it."""

    @property
    def obj(self) -> str:
        return str(self)


def predict(learn: Learner, item: object):
    """The work of `Learner.predict` (its docstring says what it returns)."""
    x = _to_input(learn, item)
    learn.model.eval()
    with torch.inference_mode(), learn.autocast():
        probs = activation(learn, learn.model(x).float())[0].cpu()
    if learn.dls.multi_label:
        mask = probs > learn.thresh
        return [learn.dls.vocab[i] for i in torch.nonzero(mask).flatten().tolist()], mask, probs
    idx = probs.argmax()
    label = learn.dls.vocab[int(idx)]
    # A class named by text comes back as a Category (a str); another label (the book's bool is_cat) as itself.
    return (Category(label) if isinstance(label, str) else label), idx, probs


def show_results(learn: Learner, ds_idx: int = 1, max_n: int = 9, figsize: tuple[float, float] | None = None):
    """The work of `Learner.show_results`."""
    dl = plain_loader(learn, ds_idx).new(num_workers=0)
    x, y, _ = next(dl.iter_with_index(fill_cache=False))
    x, y = x[:max_n], y[:max_n]
    learn.model.eval()
    with torch.inference_mode():
        probs = activation(learn, learn.model(x).float()).cpu()
    titles, colors = [], []
    for k in range(len(x)):
        actual = learn.dls.label_of(y[k].cpu())
        if learn.dls.multi_label:
            pred = learn.dls.label_of((probs[k] > learn.thresh).float())
        else:
            pred = str(learn.dls.vocab[int(probs[k].argmax())])
        titles.append(f"{actual}\n{pred}")
        colors.append("green" if str(actual) == pred else "red")
    return image_grid(dl.decode(x).cpu(), titles, colors, figsize=figsize, title_size=9)


def tta(
    learn: Learner,
    ds_idx: int = 1,
    dl: DataLoader | None = None,
    n: int = 4,
    item_tfms: Sequence | None = None,
    batch_tfms: Sequence | None = None,
    beta: float | None = 0.25,
    use_max: bool = False,
):
    """The work of `Learner.tta` (its docstring says what it returns)."""
    if n < 1:
        raise ValueError(
            f"n is the number of augmented passes and must be 1 or more, not {n}. "
            "For predictions without augmentation, use get_preds()."
        )
    plain = (dl or learn.dls[ds_idx]).plain()
    ds = plain.dataset
    aug_ds = ds.with_item_tfms(ds.item_tfms if item_tfms is None else list(item_tfms), train=True)
    aug_dl = plain.new(
        dataset=aug_ds,
        augment=True,
        cache=False,
        batch_tfms=plain.batch_tfms if batch_tfms is None else list(batch_tfms),
    )
    aug = torch.stack([get_preds(learn, dl=aug_dl)[0] for _ in range(n)])
    aug = aug.max(0)[0] if use_max else aug.mean(0)
    preds, targs = get_preds(learn, dl=plain)
    if use_max:
        return torch.stack([preds, aug]).max(0)[0], targs
    return ((aug, preds) if beta is None else torch.lerp(aug, preds, beta)), targs


def _given_batches(batches: Iterable, device: torch.device) -> list[Batch]:
    """Batches made elsewhere, `(x, y)` pairs, as the prediction loop's `Batch`es on `device`."""
    out, start = [], 0
    for b in batches:
        if not (isinstance(b, (tuple, list)) and len(b) == 2 and all(isinstance(t, torch.Tensor) for t in b)):
            raise TypeError(
                "get_preds(dl=...) takes a DataLoader (e.g. dls.test_dl(files)) or batches as (x, y) "
                f"pairs of tensors, as dls.one_batch() gives; got a {type(b).__name__} in it."
            )
        x, y = b
        out.append(Batch(x.to(device), y.to(device), torch.arange(start, start + len(x))))
        start += len(x)
    return out
