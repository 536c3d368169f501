"""Neighbour geometry that needs no model: robust z-scores, cosine k-nearest neighbours, the local
outlier factor and class contrast. Arrays in, arrays out, as cleanlab's `rank.py`; the features come
from elsewhere (`embeddings`), and so does any training.
"""

from __future__ import annotations

import numpy as np
import torch


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


def most_similar(
    emb: torch.Tensor, k: int, chunk_bytes: int = 64 * 1024**2, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
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


def nearest_neighbours(
    emb: torch.Tensor, chunk_bytes: int = 64 * 1024**2, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of unit-length `emb`, the cosine similarity of and index of its most similar other
    row (`most_similar` with k=1: chunked on `device`, NaN rows match nothing)."""
    sim, idx = most_similar(emb, 1, chunk_bytes, device)
    return sim[:, 0], idx[:, 0]


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
