"""Per-image scores and the score table that the cleaner and the label-issue ranking share.

The scoring functions are pure functions of probabilities, targets and losses (as cleanlab's
`rank.py`); `score_table` is the one place that runs a learner to get them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .data import ImageDataset
from .learner import Learner

SPLITS = ("Train", "Valid")

# How each score ranks: a high loss, a low confidence in the given label, a low margin are suspicious.
SORTS = {"loss": False, "self_confidence": True, "margin": True}


def item_scores(probs: torch.Tensor, targets: torch.Tensor, losses: torch.Tensor) -> pd.DataFrame:
    """Per-item scores from probabilities, single-label targets and losses.

    self_confidence is the probability of the given label; margin is cleanlab's normalised margin,
    (p[given] - max p[other] + 1) / 2, in [0, 1]. Unreadable files (NaN rows) rank first.
    """
    ok = ~torch.isnan(probs).any(dim=1)
    p = torch.nan_to_num(probs, nan=0.0)
    t = targets.long()
    self_conf = p.gather(1, t[:, None]).squeeze(1)
    others = p.scatter(1, t[:, None], -1.0)
    margin = (self_conf - others.max(dim=1).values + 1) / 2
    pred = p.argmax(dim=1)
    return pd.DataFrame(
        {
            "target": t.numpy(),
            "pred_idx": pred.numpy(),
            "prob": p.gather(1, pred[:, None]).squeeze(1).numpy(),
            "loss": torch.where(ok, losses, torch.tensor(float("inf"))).numpy(),
            "self_confidence": torch.where(ok, self_conf, torch.tensor(-1.0)).numpy(),
            "margin": torch.where(ok, margin, torch.tensor(-1.0)).numpy(),
            "readable": ok.numpy(),
        }
    )


def multilabel_scores(probs: torch.Tensor, targets: torch.Tensor, losses: torch.Tensor, thresh: float) -> pd.DataFrame:
    """Per-item scores for multi-hot targets: the loss, and the confidence in the worst given decision."""
    ok = ~torch.isnan(probs).any(dim=1)
    p = torch.nan_to_num(probs, nan=0.5)
    agree = torch.where(targets > 0.5, p, 1 - p)
    worst = agree.min(dim=1).values
    return pd.DataFrame(
        {
            "target": [-1] * len(p),
            "pred_idx": [-1] * len(p),
            "prob": worst.numpy(),
            "loss": torch.where(ok, losses, torch.tensor(float("inf"))).numpy(),
            "self_confidence": torch.where(ok, worst, torch.tensor(-1.0)).numpy(),
            "margin": torch.where(ok, worst, torch.tensor(-1.0)).numpy(),
            "readable": ok.numpy(),
            "pred_set": [frozenset(torch.nonzero(r > thresh).flatten().tolist()) for r in p],
        }
    )


# On the CPU the activations live in the same memory as everything else: batches of 32 halve what
# the scoring pass adds to the peak at the same speed as 64; 16 is slower.
CPU_SCORE_BS = 32


def split_frame(ds: ImageDataset, split: str, scores: pd.DataFrame) -> pd.DataFrame:
    """`scores` of the items of `ds`, with their `path`, `split` and given `labels` in front: a tuple of
    class names, as text whatever the labels' type (the book's is_cat gives True/False)."""
    scores.insert(0, "path", list(ds.items))
    scores.insert(1, "split", split)
    scores.insert(2, "labels", [tuple(map(str, lab)) if ds.multi_label else (str(lab),) for lab in ds.labels])
    return scores


def score_table(learn: Learner, with_bar: bool = True) -> pd.DataFrame:
    """Scores for every training and validation image, from one pass of `learn` without augmentation."""
    frames = []
    for ds_idx, split in enumerate(SPLITS):
        dl = learn.dls[ds_idx]
        ds = dl.dataset
        if not len(ds):
            continue
        bs = min(dl.bs, CPU_SCORE_BS) if dl.device.type == "cpu" else dl.bs
        probs, targets, losses = learn.get_preds(dl=dl.plain(bs=bs), with_loss=True, with_bar=with_bar)
        if learn.dls.multi_label:
            df = multilabel_scores(probs, targets, losses, learn.thresh)
        else:
            df = item_scores(probs, targets, losses)
        frames.append(split_frame(ds, split, df))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# Scores from training dynamics and from neighbours: arrays in, one value per item out


def area_under_margin(margins: np.ndarray) -> np.ndarray:
    """Each item's mean margin over the epochs that saw it (Pleiss et al. 2020), from an (epochs, n)
    array of given-label logit minus largest other; NaN where no epoch saw the item. Low is suspicious:
    training pushes a wrong label's margin up only as the model memorises it."""
    m = np.asarray(margins, dtype=np.float64)
    seen = ~np.isnan(m)
    total = np.where(seen, m, 0.0).sum(0)
    count = seen.sum(0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def forgetting_events(margins: np.ndarray) -> np.ndarray:
    """How often an item went from right (margin > 0) to wrong between epochs that saw it (Toneva et
    al. 2019); an item never right counts as forgotten every epoch, as the paper ranks it."""
    m = np.asarray(margins, dtype=np.float64)
    out = np.zeros(m.shape[1])
    right = np.zeros(m.shape[1], dtype=bool)
    ever = np.zeros(m.shape[1], dtype=bool)
    for row in m:
        seen = ~np.isnan(row)
        now = seen & (row > 0)
        out += right & seen & ~now
        right = np.where(seen, now, right)
        ever |= now
    return np.where(ever, out, len(m))


def neighbour_vote(knn_idx: np.ndarray, targets: np.ndarray, n_classes: int, prior: float = 1.0) -> np.ndarray:
    """Each item's class distribution among its nearest neighbours (SimiFeat's vote, Zhu et al. 2022):
    row i counts the given labels of `knn_idx[i]` (index -1: no neighbour), plus `prior` for every
    class, normalised. An item whose neighbours mostly carry another label is likely mislabelled."""
    idx = np.asarray(knn_idx)
    t = np.asarray(targets)
    ok = idx >= 0
    labels = np.where(ok, t[np.clip(idx, 0, None)], 0)
    counts = np.zeros((len(idx), n_classes))
    np.add.at(counts, (np.repeat(np.arange(len(idx)), idx.shape[1]), labels.ravel()), ok.ravel())
    counts += prior
    return counts / counts.sum(1, keepdims=True)
