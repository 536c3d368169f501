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
    return pd.DataFrame({
        "target": t.numpy(), "pred_idx": pred.numpy(), "prob": p.gather(1, pred[:, None]).squeeze(1).numpy(),
        "loss": torch.where(ok, losses, torch.tensor(float("inf"))).numpy(),
        "self_confidence": torch.where(ok, self_conf, torch.tensor(-1.0)).numpy(),
        "margin": torch.where(ok, margin, torch.tensor(-1.0)).numpy(),
        "readable": ok.numpy(),
    })


def multilabel_scores(probs: torch.Tensor, targets: torch.Tensor, losses: torch.Tensor, thresh: float) -> pd.DataFrame:
    """Per-item scores for multi-hot targets: the loss, and the confidence in the worst given decision."""
    ok = ~torch.isnan(probs).any(dim=1)
    p = torch.nan_to_num(probs, nan=0.5)
    agree = torch.where(targets > 0.5, p, 1 - p)
    worst = agree.min(dim=1).values
    return pd.DataFrame({
        "target": [-1] * len(p), "pred_idx": [-1] * len(p), "prob": worst.numpy(),
        "loss": torch.where(ok, losses, torch.tensor(float("inf"))).numpy(),
        "self_confidence": torch.where(ok, worst, torch.tensor(-1.0)).numpy(),
        "margin": torch.where(ok, worst, torch.tensor(-1.0)).numpy(),
        "readable": ok.numpy(),
        "pred_set": [frozenset(torch.nonzero(r > thresh).flatten().tolist()) for r in p],
    })


# On the CPU the activations live in the same memory as everything else: batches of 32 halve what
# the scoring pass adds to the peak (measured at 10,000 images: +114 MB against +219 MB at 64) at
# the same speed; 16 is slower (27 s against 18 s).
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
# Outliers: pure functions of features and labels


def robust_z(x: np.ndarray, floor: float = 1e-9) -> np.ndarray:
    """`x` in robust standard deviations (1.4826 MADs) above its median, NaN kept. The MAD is floored
    at `floor`, so values that barely differ (a dataset of identical sizes) do not make every small
    difference infinite."""
    ok = ~np.isnan(x)
    if not ok.any():
        return x
    med = float(np.median(x[ok]))
    mad = max(1.4826 * float(np.median(np.abs(x[ok] - med))), floor)
    return (x - med) / mad


def most_similar(emb: torch.Tensor, k: int, chunk_bytes: int = 64 * 1024**2,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of unit-length `emb`, the cosine similarities (n, k) of and indices of its `k`
    most similar other rows, most similar first.

    Rows are compared a chunk at a time on `device` (a GPU does the n x n products far sooner), so
    memory stays at about `chunk_bytes` for any number of images; NaN rows match nothing (similarity
    -inf, index -1). The results come back to the CPU once, at the end.
    """
    n = len(emb)
    device = torch.device(device) if device is not None else emb.device
    emb = emb.to(device)
    ok = ~torch.isnan(emb).any(dim=1)
    e = torch.where(ok[:, None], emb, torch.zeros_like(emb))
    best = torch.full((n, k), float("-inf"), device=device)
    arg = torch.full((n, k), -1, dtype=torch.long, device=device)
    if n < 2:
        return best.cpu(), arg.cpu()
    step = max(1, chunk_bytes // (4 * n))
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        sim = e[i0:i1] @ e.T
        rows = torch.arange(i1 - i0, device=device)
        sim[rows, rows + i0] = float("-inf")  # not itself
        sim[:, ~ok] = float("-inf")
        # max gives the first of equal rows, so the nearest copy of an image does not depend on k.
        best[i0:i1], arg[i0:i1] = sim.max(dim=1, keepdim=True) if k == 1 else sim.topk(k, dim=1)
    best[~ok], arg[~ok] = float("-inf"), -1
    return best.cpu(), arg.cpu()


def cosine_knn(feats: torch.Tensor, k: int, chunk_bytes: int = 64 * 1024**2) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine distances (n, k) to each row's `k` nearest other rows, nearest first, and their indices
    (`most_similar` of the unit-length rows); NaN rows neither have nor are neighbours (distance NaN,
    index -1)."""
    ok = ~torch.isnan(feats).any(dim=1)
    e = torch.nn.functional.normalize(torch.where(ok[:, None], feats, torch.zeros_like(feats)).float(), dim=1)
    e[~ok] = float("nan")
    sim, idx = most_similar(e, max(1, min(k, int(ok.sum()) - 1)), chunk_bytes)
    dist = (1 - sim).clamp_min(0)
    dist[~ok] = float("nan")
    return dist, idx


def local_outlier_factor(dist: torch.Tensor, idx: torch.Tensor) -> np.ndarray:
    """LOF (Breunig et al. 2000) from a k-nearest-neighbour graph: how much sparser an image's
    neighbourhood is than its neighbours' own, about 1 inside a group and larger outside one."""
    ok = idx[:, 0] >= 0
    j = idx.clamp_min(0)
    kdist = dist[:, -1]
    reach = torch.maximum(dist, kdist[j])
    lrd = 1 / (reach.mean(1) + 1e-6)
    lof = lrd[j].mean(1) / lrd
    return torch.where(ok, lof, torch.full_like(lof, float("nan"))).double().numpy()


def class_contrast(feats: torch.Tensor, targets: np.ndarray) -> np.ndarray:
    """Mean cosine distance of each image to the rest of its class over its mean distance to the
    other classes' images: below 1 for an image like its class, about 1 or more for one that is no
    nearer its own class than any other. From class sums of unit features, O(n x classes); NaN for
    unreadable rows, unlabelled rows (target -1) and classes of one image."""
    n = len(feats)
    ok = ~torch.isnan(feats).any(dim=1)
    t = torch.as_tensor(targets, dtype=torch.long)
    use = ok & (t >= 0)
    out = np.full(n, np.nan)
    if int(use.sum()) < 3:
        return out
    e = torch.nn.functional.normalize(torch.where(ok[:, None], feats, torch.zeros_like(feats)).double(), dim=1)
    e[~use] = 0
    c = int(t[use].max()) + 1
    tt = torch.where(use, t, torch.zeros_like(t))
    sums = torch.zeros(c, e.shape[1], dtype=e.dtype).index_add_(0, tt[use], e[use])
    counts = torch.bincount(tt[use], minlength=c).double()
    own_sum, own_n = sums[tt], counts[tt]
    total, total_n = sums.sum(0), counts.sum()
    own = 1 - ((e * own_sum).sum(1) - 1) / (own_n - 1)
    other = 1 - (e @ total - (e * own_sum).sum(1)) / (total_n - own_n)
    ratio = own / other.clamp_min(1e-9)
    good = use & (own_n > 1) & (total_n - own_n > 0)
    out[good.numpy()] = ratio[good].numpy()
    return out


def outlier_scores(feats: torch.Tensor, targets: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """(score, lof, knn, contrast) per image. The dataset-level part is the larger of the local outlier
    factor and the mean distance to the `k` nearest images (a group of strays smaller than `k` does not
    hide either); the class-level part, counted twice, is the class contrast: a group of strays larger
    than `k`, spread over the classes, still each sits in a class it is unlike. Each part in robust
    standard deviations above its median. Higher is stranger; NaN for unreadable rows."""
    dist, idx = cosine_knn(feats, k)
    lof = local_outlier_factor(dist, idx)
    knn = dist.mean(1).double().numpy()
    contrast = class_contrast(feats, targets)
    score = np.maximum(robust_z(lof), robust_z(knn)) + 2 * np.nan_to_num(robust_z(contrast), nan=0.0)
    return score, lof, knn, contrast
