"""Neighbour geometry that needs no model: robust z-scores, cosine k-nearest neighbours, the local
outlier factor and class contrast. Arrays in, arrays out, as cleanlab's `rank.py`; the features come
from elsewhere (`embeddings`), and so does any training.
"""

from __future__ import annotations

import numpy as np
import torch


def robust_sd(x: np.ndarray) -> float:
    """The robust standard deviation of `x` (1.4826 median absolute deviations), NaN ignored; 0 if all NaN."""
    x = np.asarray(x, dtype=float)
    x = x[~np.isnan(x)]
    return 1.4826 * float(np.median(np.abs(x - np.median(x)))) if len(x) else 0.0


def robust_z(x: np.ndarray, floor: float = 1e-9) -> np.ndarray:
    """`x` in robust standard deviations (1.4826 MADs) above its median, NaN kept. The MAD is floored
    at `floor`, so values that barely differ (a dataset of identical sizes) do not make every small
    difference infinite."""
    ok = ~np.isnan(x)
    if not ok.any():
        return x
    return (x - float(np.median(x[ok]))) / max(robust_sd(x), floor)


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


def group_robust_z(
    x: np.ndarray,
    groups: np.ndarray,
    min_size: int = 8,
    floor: float = 1e-9,
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """`robust_z` of `x` within each group (a class) of at least `min_size` values, and against the whole
    of `x` for the smaller groups and the rows of group -1, whose own spread says too little. With a
    boolean `reference`, each group's median and spread come from its reference rows alone (its core),
    so a large group of strays in a class does not set what the class looks like; a group with too few
    reference rows is judged against the whole."""
    x = np.asarray(x, dtype=float)
    groups = np.asarray(groups)
    ref = np.ones(len(x), bool) if reference is None else np.asarray(reference, bool)
    out = robust_z(x, floor)
    for g in np.unique(groups[groups >= 0]):
        m = groups == g
        base = m & ref & ~np.isnan(x)
        if np.count_nonzero(base) >= min_size:
            out[m] = _z_against(x[m], x[base], floor)
    return out


def _z_against(x: np.ndarray, base: np.ndarray, floor: float) -> np.ndarray:
    """`x` in robust standard deviations of `base` above the median of `base`."""
    return (x - float(np.median(base))) / max(robust_sd(base), floor)


def share_less_extreme(x: np.ndarray, groups: np.ndarray, min_size: int = 8) -> np.ndarray:
    """For each value, the share of the other values of its group (as `group_robust_z` chooses it) that
    are lower: 0.995 reads "higher than 99.5% of its class"."""
    x = np.asarray(x, dtype=float)
    groups = np.asarray(groups)
    out = np.full(len(x), np.nan)
    everyone = np.sort(x[~np.isnan(x)])
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        own = x[rows][~np.isnan(x[rows])]
        values = np.sort(own) if len(own) >= min_size and g >= 0 else everyone
        for i in rows:
            if not np.isnan(x[i]):
                out[i] = np.searchsorted(values, x[i], side="left") / max(len(values) - 1, 1)
    return np.minimum(out, 1.0)


def label_diversity(idx: torch.Tensor | np.ndarray, targets: np.ndarray) -> np.ndarray:
    """How many different labels an image's nearest neighbours (rows of `idx`, -1 for none) carry. A
    group of strays spread over the classes are each other's neighbours and carry all their labels;
    an image among its own class sees one or two."""
    idx = np.asarray(idx)
    targets = np.asarray(targets)
    out = np.full(len(idx), np.nan)
    for i, row in enumerate(idx):
        row = row[row >= 0]
        if len(row):
            out[i] = len(np.unique(targets[row]))
    return out


def label_mix(idx: torch.Tensor | np.ndarray, targets: np.ndarray) -> np.ndarray:
    """How many different labels an image's nearest neighbours (rows of `idx`, -1 for none) carry, times
    the share of them that are not its own label. A stray among a group spread over the classes has
    neighbours of many labels, few its own; a photo on the border of two or three classes has mostly its
    own."""
    idx = np.asarray(idx)
    targets = np.asarray(targets)
    own = np.array([np.mean(targets[r[r >= 0]] == targets[i]) if (r >= 0).any() else np.nan for i, r in enumerate(idx)])
    return label_diversity(idx, targets) * (1 - own)


def combined_evidence(
    parts: dict[str, np.ndarray],
    cap: float,
    weights: dict[str, float] | None = None,
    alike: tuple[tuple[str, ...], ...] = (),
) -> np.ndarray:
    """The sum of independent pieces of evidence, each a robust z-score counted only above 0 and at
    most `cap`: a stray is unusual in several ways at once, while a clean image that is extreme in one
    (a night sky's darkness) gains only `cap` from it. Each tuple of names in `alike` is one piece
    measured several ways (distances in the same features), counted once, as its largest; else a clean
    image far from its class would gain it several times. NaN parts count 0."""
    weights = weights or {}
    counted = {
        name: weights.get(name, 1.0) * np.clip(np.nan_to_num(np.asarray(z, dtype=float), nan=0.0), 0.0, cap)
        for name, z in parts.items()
    }
    for names in alike:
        present = [counted.pop(n) for n in names if n in counted]
        if present:
            counted["+".join(names)] = np.maximum.reduce(present)
    total = None
    for part in counted.values():
        total = part if total is None else total + part
    return total if total is not None else np.zeros(0)


def two_means(m: torch.Tensor, steps: int = 10, first: int | None = None) -> np.ndarray:
    """A split of unit rows `m` in two by cosine 2-means, started from row `first` (by default the least
    typical row) and the row least like it: the part (0 or 1) of each row."""
    first = int((m @ m.mean(0)).argmin()) if first is None else first
    centres = torch.stack([m[first], m[int((m @ m[first]).argmin())]])
    for _ in range(steps):
        part = (m @ centres.T).argmax(1)
        centres = torch.stack([m[part == j].mean(0) if (part == j).any() else centres[j] for j in (0, 1)])
    return (m @ centres.T).argmax(1).numpy()


def class_cores(
    feats: torch.Tensor, targets: np.ndarray, unusual: np.ndarray, margin: float = 3.0
) -> tuple[np.ndarray, np.ndarray]:
    """Which images form the core of their class (True), and for each image in a group of strays found
    as below, how much more unusual its group is than the core (the difference in medians; else 0).

    The core is by default the larger part of a 2-means split of each class of four or more
    (`two_means`). A second split starts from the class's most unusual image in `unusual` (dataset-level
    evidence, such as grey or blurred among colour photos), and keeps of its part only the images more
    unusual than `margin`. When three or more, further from the other classes' images and more unusual
    than the rest by over `margin` in the medians, they are a group of strays, even one that outnumbers
    its class's own images, and the rest is the core. Unreadable, unlabelled rows and small classes: all
    core."""
    ok = ~torch.isnan(feats).any(dim=1)
    t = np.asarray(targets)
    e = torch.nn.functional.normalize(torch.where(ok[:, None], feats, torch.zeros_like(feats)).double(), dim=1)
    e[~ok] = 0
    core = np.ones(len(t), bool)
    group = np.zeros(len(t))
    use = ok.numpy() & (t >= 0)
    for c in np.unique(t[use]):
        rows = np.flatnonzero((t == c) & use)
        if len(rows) < 4:
            continue
        part = two_means(e[rows])
        core[rows] = part == int((part == 1).sum() > (part == 0).sum())
        odd = np.nan_to_num(unusual[rows], nan=0.0)
        rest = torch.as_tensor(use & (t != c))
        if not bool(rest.any()):
            continue
        # Only its unusual members: a diverse class's split also takes in ordinary images alike in content.
        stray = (two_means(e[rows], first=int(odd.argmax())) == 0) & (odd > margin)
        if stray.all() or stray.sum() < 3:
            continue
        near = (e[rows] @ e[rest].mean(0)).numpy()
        gap = float(np.median(odd[stray]) - np.median(odd[~stray]))
        if near[stray].mean() < near[~stray].mean() and gap > margin:
            core[rows] = ~stray
            group[rows[stray]] = gap
    return core, group


def distance_to_class_core(feats: torch.Tensor, targets: np.ndarray, core: np.ndarray | None = None) -> np.ndarray:
    """How far each image sits from the core of its class, in robust deviations of the core's own
    distances to its centre. The core (`class_cores`, or the larger part of a 2-means split of each class
    without `core`) leaves out a group of strays, even all in one class and alike among themselves.
    NaN for unreadable or unlabelled rows and classes under four images."""
    ok = ~torch.isnan(feats).any(dim=1)
    t = np.asarray(targets)
    e = torch.nn.functional.normalize(torch.where(ok[:, None], feats, torch.zeros_like(feats)).double(), dim=1)
    out = np.full(len(t), np.nan)
    for c in np.unique(t[t >= 0]):
        rows = np.flatnonzero((t == c) & ok.numpy())
        if len(rows) < 4:
            continue
        m = e[rows]
        if core is None:
            part = two_means(m)
            mine = part == int((part == 1).sum() > (part == 0).sum())
        else:
            mine = np.asarray(core)[rows]
        centre = torch.nn.functional.normalize(m[torch.as_tensor(mine)].mean(0), dim=0)
        dist = (1 - m @ centre).numpy()
        out[rows] = _z_against(dist, dist[mine], 1e-3)
    return out
