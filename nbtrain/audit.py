"""One table of everything that may be wrong with an image dataset: wrong labels, outliers, exact and near
copies (and copies across train and valid), image properties, and a class-balance summary.

`audit(path)` needs no model: image properties and copies found from the files alone. `audit(learn)`
adds what a model sees: label issues (out-of-fold, or the model's own loss for the fast way), outliers
(local density and class contrast in the pretrained body's features), near copies by those features, and
per-class error.

The table has one row per (image, issue type) for every image scored, flagged or not, so a person can
see how near a threshold an image came; `table[table.flagged]` is what to review. Columns: `path`
(absolute), `split` ("train", "valid" or ""), `issue`, `score` (higher is worse), `flagged`, `reason`,
`threshold` (of the flagging rule, NaN for rules without one), `label`, `prediction` (with a model),
and `other` (for copies: the file this one copies, the one to keep). Of each group of copies one file
is left unflagged, so deleting every flagged copy keeps one of each picture.
`table.attrs["balance"]` is the class-balance summary (a `BalanceSummary`; its `.table` is a DataFrame).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .data import DataLoaders, get_image_files
from .embeddings import image_features_and_texture
from .image_downloads import image_sources
from .image_properties import (
    HASH_BITS,
    THRESHOLD_NOTES,
    THRESHOLDS,
    exact_groups,
    grey_images,
    hash_neighbours,
    measure_images,
    property_issues,
    relative_sharpness,
    thresholds_with,
)
from .label_issues import rank_labels
from .learner import Learner
from .models import VisionModel, pretrained_body
from .neighbours import (
    class_cores,
    combined_evidence,
    cosine_knn,
    distance_to_class_core,
    group_robust_z,
    label_mix,
    nearest_neighbours,
    outlier_scores,
    robust_sd,
    robust_z,
)

# `source`: the web address an image was downloaded from, where a `download_images` manifest says.
COLUMNS = [
    "path",
    "split",
    "issue",
    "score",
    "flagged",
    "reason",
    "threshold",
    "label",
    "prediction",
    "other",
    "source",
]

# The outlier threshold holds from this many images up and rises by the slope per e-fold fewer.
OUTLIER_FULL_N = 1000
OUTLIER_SMALL_SLOPE = 0.0

# The most one piece of evidence adds to the outlier score: a stray is unusual in several ways at once,
# a clean image that is extreme in one way (a night sky's darkness, a texture) gains no more than this.
OUTLIER_CAP = 8.0
# Pieces of outlier evidence that measure one thing, distance from the class in the same (last-layer)
# features, counted once, as the largest: a clean image far from its class is far in both at once.
OUTLIER_ALIKE = ("features", "core")
# Grey among colour photos (or colour among grey) counts up to this many caps: judged against the class in
# units of the dataset's spread (LOOK_FLOOR_SHARE), it is extreme only for an image of another kind.
OUTLIER_WEIGHTS = {"colour": 1.5}
# Colour and detail are judged against the class in units of at least this share of the dataset's spread:
# the tiles of one picture barely differ, so their own spread would make a natural variation extreme.
LOOK_FLOOR_SHARE = 0.75
# In a grey class colour says nothing, so a stray there (a drawing among grey photos) shows in detail alone:
# its detail is judged in units of at least this smaller share of the dataset's spread.
GREY_CLASS_DETAIL_FLOOR_SHARE = 0.25

# Rules that need a model, with why each default (see image_properties for the others).
MODEL_THRESHOLDS: dict[str, float] = {
    "label": 0.5,
    "outlier": 28.5,
    "near_duplicate_similarity": 0.97,
}
MODEL_THRESHOLD_NOTES: dict[str, str] = {
    "label": "normalised margin (p[given] - max p[other] + 1) / 2 below this: another class is more likely "
    "than the given one",
    "outlier": "the sum of the independent evidence (outlier_evidence: features or distance to the class's core, "
    "texture, neighbours' labels, colour and detail for the class, a group apart), each counted up to "
    f"{OUTLIER_CAP:g} robust standard deviations (colour up to {OUTLIER_WEIGHTS['colour']:g} times that): set "
    "from the tail of clean real photos' scores, so few clean images pass it while photos among digits do "
    "(docs/audit.md has the figures)",
    "near_duplicate_similarity": "cosine similarity of the model's features at or above this: as find_duplicates",
}
OUTLIER_K = 10


NEIGHBOURS_FOR_LABELS = 10


def outlier_evidence(
    feats: torch.Tensor, texture: torch.Tensor | None, stats: pd.DataFrame, targets: np.ndarray, k: int
) -> pd.DataFrame:
    """The independent evidence that an image does not belong, one robust z-score a column (NaN where
    not scored), and `score`, their capped sum (neighbours.combined_evidence):

    - `features`: far from its nearest images and nearer other classes than its own (outlier_scores);
    - `texture`: the same in the body's first-block texture;
    - `labels`: how many labels its nearest images carry, times the share not its own
      (neighbours.label_mix), which a group of strays spread over the classes raises, as each other's
      neighbours;
    - `colour`: grey among its class's colour (or colour among grey), judged against the class's core;
    - `detail`: sharpness unusual for its class's core, either way (enlarged or drawn among photos),
      judged more finely in a grey class, where colour tells nothing;
    - `core`: far from the core of its class (neighbours.distance_to_class_core), for a group of
      strays all in one class; counted with `features` as one piece (OUTLIER_ALIKE);
    - `group`: in a part of its class that looks unlike the whole dataset, grey or blurred, and sits
      apart from the other classes (neighbours.class_cores): strays that may outnumber their class.
    Rows of `stats` are the images' measurements (image_properties.measure_images), in `feats`' order."""
    z = outlier_scores(feats, targets, k)[0]
    zt = outlier_scores(texture, targets, k)[0] if texture is not None else np.full(len(z), np.nan)
    _, idx = cosine_knn(feats, NEIGHBOURS_FOR_LABELS)
    labels = robust_z(label_mix(idx, targets), floor=0.5)
    ok = (stats["error"] == "").to_numpy()
    looks = np.full((2, len(z)), np.nan)
    looks[0, ok] = np.log(stats["colour"].to_numpy()[ok] + 0.01)
    looks[1, ok] = np.log(relative_sharpness(stats[ok]) + 1e-3)
    # Grey or blurred for the dataset: which part of a split class is ordinary, and which a group of strays.
    unusual = np.clip(np.abs(robust_z(looks[0], floor=0.1)), 0, OUTLIER_CAP)
    unusual += np.clip(np.abs(robust_z(looks[1], floor=0.1)), 0, OUTLIER_CAP)
    cores, group = class_cores(feats, targets, unusual)
    # A class is judged by its core, outside a group of strays, which may be most of it.
    colour, detail, detail_in_grey = (
        np.abs(group_robust_z(x, targets, floor=max(0.1, share * robust_sd(x)), reference=cores))
        for x, share in zip(looks[[0, 1, 1]], (LOOK_FLOOR_SHARE, LOOK_FLOOR_SHARE, GREY_CLASS_DETAIL_FLOOR_SHARE))
    )
    grey = grey_images(stats) & ok
    detail = np.where(_in_grey_class(grey, targets, cores), detail_in_grey, detail)
    core = distance_to_class_core(feats, targets, cores)
    parts = {"features": z, "texture": zt, "labels": labels, "colour": colour, "detail": detail, "core": core}
    parts["group"] = group
    table = pd.DataFrame(parts)
    table["score"] = np.where(
        np.isnan(z), np.nan, combined_evidence(parts, OUTLIER_CAP, OUTLIER_WEIGHTS, (OUTLIER_ALIKE,))
    )
    return table


def _in_grey_class(grey: np.ndarray, targets: np.ndarray, core: np.ndarray) -> np.ndarray:
    """Whether each image's class is grey, most of its core grey (faces, the moon): there colour cannot
    tell a stray, so detail is judged more finely. Unlabelled rows (target -1): False."""
    t = np.asarray(targets)
    out = np.zeros(len(t), bool)
    for c in np.unique(t[t >= 0]):
        ref = (t == c) & np.asarray(core, bool)
        out[t == c] = bool(ref.any()) and float(np.asarray(grey, bool)[ref].mean()) > 0.5
    return out


def outlier_k(n: int) -> int:
    """How many nearest images an outlier's distance averages over: 10, or 2% of a large dataset (at most 200)."""
    return max(OUTLIER_K, min(200, n // 50))


def outlier_threshold(base: float, n: int) -> float:
    """The outlier threshold for `n` scored images: `base` from OUTLIER_FULL_N images up, raised by
    OUTLIER_SMALL_SLOPE per e-fold fewer, as clean images of a small set score higher (see the note)."""
    return base + OUTLIER_SMALL_SLOPE * max(0.0, math.log(OUTLIER_FULL_N / max(n, 1)))


@dataclass(frozen=True, eq=False)
class BalanceSummary:
    """Per class: images in train and valid, its share, and with a model its error rate, worst first.

    Kept in a table's `attrs` as an object compared by identity: pandas compares attrs when it joins
    tables, which a DataFrame cannot be."""

    table: pd.DataFrame
    # One line per class whose look would pass for a fault: "class 'night': 80% of its images are dark".
    notes: tuple[str, ...] = ()

    def __deepcopy__(self, memo: dict) -> BalanceSummary:
        return self

    def __repr__(self) -> str:
        return "\n".join([repr(self.table), *self.notes])

    def _repr_html_(self) -> str:
        return self.table._repr_html_() + "".join(f"<p>{html.escape(n)}</p>" for n in self.notes)


def trait_notes(traits: list[tuple[str, str, float]]) -> tuple[str, ...]:
    """The balance summary's line for each class most of whose images are past a property's fixed level."""
    return tuple(f"class '{c}': {100 * share:.0f}% of its images are {issue}" for c, issue, share in traits)


def threshold_notes() -> dict[str, tuple[float, str]]:
    """Every threshold's default value and why it is that value."""
    notes = {**THRESHOLD_NOTES, **MODEL_THRESHOLD_NOTES}
    return {k: (v, notes[k]) for k, v in {**THRESHOLDS, **MODEL_THRESHOLDS}.items()}


# ---------------------------------------------------------------------------------------------
# What is audited


@dataclass
class _Items:
    paths: list[Path]
    splits: list[str]
    labels: list[str]
    vocab: list[str]


def _from_folder(path: Path) -> _Items:
    if not path.exists():
        raise FileNotFoundError(f"audit: {path} does not exist. Pass a folder of images, DataLoaders or a Learner.")
    if not path.is_dir():
        raise NotADirectoryError(f"audit: {path} is a file, not a folder. Pass the folder that holds the images.")
    paths = [p.absolute() for p in get_image_files(path)]
    if not paths:
        raise ValueError(f"audit: no image files under {path} (looked for .jpg, .png, ... in every sub-folder).")
    splits, labels = [], []
    for p in paths:
        rel = p.relative_to(path.absolute()).parts
        split = rel[0].lower() if len(rel) > 1 and rel[0].lower() in ("train", "valid") else ""
        splits.append(split)
        inner = rel[1:] if split else rel
        labels.append(inner[-2] if len(inner) > 1 else "")
    return _Items(paths, splits, labels, sorted(set(labels) - {""}))


def _from_dls(dls: DataLoaders) -> _Items:
    paths, splits, labels = [], [], []
    for split, dl in (("train", dls.train), ("valid", dls.valid)):
        ds = dl.dataset
        paths += [Path(p).absolute() for p in ds.items]
        splits += [split] * len(ds)
        labels += [" ".join(lab) if isinstance(lab, (list, tuple)) else str(lab) for lab in ds.labels]
    return _Items(paths, splits, labels, [str(v) for v in dls.vocab])


# ---------------------------------------------------------------------------------------------
# Copies


def _keeper_first(members: list[int], items: _Items) -> list[int]:
    """The copies in the order to keep them: a training copy first (its valid twin is the leak), then by name."""
    return sorted(members, key=lambda i: (items.splits[i] == "valid", str(items.paths[i])))


def _copy_rows(
    items: _Items, stats: pd.DataFrame, t: dict[str, float], emb: torch.Tensor | None, use_hash: bool = True
) -> list[dict]:
    """Exact copies, near copies (by perceptual hash and/or the model's features) and the copies that
    leak between train and valid."""
    rows, grouped = _exact_copy_rows(items, stats)
    for (a, b), (score, why, thr) in sorted(_near_pairs(stats, t, emb, use_hash).items(), key=lambda kv: -kv[1][0]):
        if a in grouped and b in grouped:
            continue  # already exact copies
        keep, copy = _keeper_first([a, b], items)
        rows.append(
            dict(
                idx=copy,
                issue="near_duplicate",
                score=score,
                flagged=True,
                threshold=thr,
                other=items.paths[keep],
                reason=f"near copy of {items.paths[keep].name}: {why}",
            )
        )
        rows += _leak(items, copy, keep, score, thr, "near copy of", f": {why}")
    return rows


def _leak(items: _Items, copy: int, keep: int, score: float, thr: float, what: str, why: str = "") -> list[dict]:
    """A leakage row when `copy` and `keep` sit on two sides of the validation split: "`what` <split>
    file <name>`why`"."""
    if items.splits[copy] == items.splits[keep] or "valid" not in (items.splits[copy], items.splits[keep]):
        return []
    return [
        dict(
            idx=copy,
            issue="leakage",
            score=score,
            flagged=True,
            threshold=thr,
            other=items.paths[keep],
            reason=f"{what} {items.splits[keep]} file {items.paths[keep].name}{why}",
        )
    ]


def _exact_copy_rows(items: _Items, stats: pd.DataFrame) -> tuple[list[dict], set[int]]:
    """A row per file of each group of identical files (the kept one unflagged), and the files grouped."""
    rows: list[dict] = []
    grouped: set[int] = set()
    for members, kind in exact_groups(stats):
        order = _keeper_first(members, items)
        keep = order[0]
        grouped.update(order)
        for i in order:
            flagged = i != keep
            rows.append(
                dict(
                    idx=i,
                    issue="exact_duplicate",
                    score=1.0,
                    flagged=flagged,
                    threshold=math.nan,
                    other=items.paths[keep] if flagged else items.paths[order[1]],
                    reason=(
                        f"same {kind} as {items.paths[keep].name}"
                        if flagged
                        else f"kept copy; same {kind} as {len(order) - 1} other file(s)"
                    ),
                )
            )
        for i in order[1:]:
            rows += _leak(items, i, keep, 1.0, math.nan, f"same {kind} as")
    return rows, grouped


def _near_pairs(
    stats: pd.DataFrame, t: dict[str, float], emb: torch.Tensor | None, use_hash: bool
) -> dict[tuple[int, int], tuple[float, str, float]]:
    """Each near pair (i < j) with its best (score, why, threshold), by hash and/or features."""
    pairs: dict[tuple[int, int], tuple[float, str, float]] = {}
    ok = (stats["error"] == "").to_numpy()
    if use_hash:
        bits, nb = hash_neighbours(list(stats["phash"]), ok)
    else:
        bits, nb = np.full(len(ok), HASH_BITS), np.full(len(ok), -1)
    limit = t["near_duplicate_bits"]
    for i in np.flatnonzero((bits <= limit) & (nb >= 0)):
        j = int(nb[i])
        key = (min(i, j), max(i, j))
        score = 1 - bits[i] / HASH_BITS
        pairs[key] = max(
            pairs.get(key, (-1.0, "", 0.0)),
            (
                score,
                f"perceptual hashes differ in {bits[i]} of {HASH_BITS} bits "
                f"(<= {limit:g}, near_duplicate_bits threshold)",
                limit,
            ),
        )
    if emb is not None and len(emb) > 1:
        sim, arg = nearest_neighbours(emb)
        thr = t["near_duplicate_similarity"]
        for i in torch.nonzero(sim >= thr).flatten().tolist():
            j = int(arg[i])
            key = (min(i, j), max(i, j))
            s = float(sim[i])
            if s > pairs.get(key, (-1.0,))[0]:
                pairs[key] = (s, f"feature similarity {s:.3f} (>= {thr:.2f}, near_duplicate_similarity threshold)", thr)
    return pairs


# ---------------------------------------------------------------------------------------------
# With a model


def _embeddings(learn: Learner, body: torch.nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Features and texture (embeddings.image_features_and_texture) of train then valid."""
    parts = [
        image_features_and_texture(learn, dl.plain(), body=body)
        for dl in (learn.dls.train, learn.dls.valid)
        if len(dl.dataset)
    ]
    parts = [p for p in parts if p[0].numel()]
    if not parts:
        return torch.empty(0, 0), None
    texture = torch.cat([p[1] for p in parts]) if all(p[1] is not None for p in parts) else None
    return torch.cat([p[0] for p in parts]), texture


def _label_probs(
    learn: Learner, items: _Items, method: str, with_bar: bool, oof_kwargs: dict
) -> tuple[np.ndarray, str]:
    """Probabilities per item (rows in `items` order, NaN for unreadable files) and how they were had."""
    if method not in ("loss", "dynamics"):  # the rankings whose tables carry their probabilities
        table = rank_labels(learn, method, with_bar=with_bar, **oof_kwargs)
        probs = table.attrs.get("oof", table.attrs.get("probs")).for_paths(table["path"])
        row = {Path(p).absolute(): i for i, p in enumerate(table["path"])}
        how = "out-of-fold" if "oof" in table.attrs else table.attrs["ranking"]["name"]
        return probs[[row[p] for p in items.paths]], how
    if method == "loss":
        parts = [learn.get_preds(dl=dl.plain())[0] for dl in (learn.dls.train, learn.dls.valid) if len(dl.dataset)]
        return torch.cat(parts).numpy(), "the model's own"
    raise ValueError(
        f"label_method must be 'oof' (out-of-fold models, slower, finds more) or 'loss' (the "
        f"trained model's own loss, fast), not {method!r}."
    )


def _label_rows(items: _Items, probs: np.ndarray, how: str, t: dict[str, float]) -> tuple[list[dict], np.ndarray]:
    index = {c: i for i, c in enumerate(items.vocab)}
    targets = np.array([index[lab] for lab in items.labels])
    n = len(targets)
    ok = ~np.isnan(probs).any(axis=1)
    p = np.nan_to_num(probs)
    given = p[np.arange(n), targets]
    others = p.copy()
    others[np.arange(n), targets] = -1
    pred = p.argmax(1)
    margin = (given - others.max(1) + 1) / 2
    thr = t["label"]
    rows = []
    for i in range(n):
        if not ok[i]:
            continue
        flagged = bool(margin[i] < thr)
        rows.append(
            dict(
                idx=i,
                issue="label",
                score=float(-math.log(max(given[i], 1e-12))),
                flagged=flagged,
                threshold=thr,
                prediction=items.vocab[pred[i]],
                reason=(
                    f"{how} p('{items.vocab[pred[i]]}') {p[i, pred[i]]:.2f}, p(given '{items.labels[i]}') "
                    f"{given[i]:.2f}; margin {margin[i]:.2f} {'<' if flagged else '>='} {thr:.2f} "
                    "(label threshold)"
                ),
            )
        )
    return rows, np.where(ok, pred, -1)


# The evidence a property flag already accounts for: a blurred photo's unusual detail is its blur. Either
# also accounts for `group`, the group it forms with other grey or blurred images of its class.
PROPERTY_EVIDENCE = {"blurry": "detail", "grayscale": "colour"}


def _outlier_rows(
    items: _Items,
    feats: torch.Tensor,
    texture: torch.Tensor | None,
    stats: pd.DataFrame,
    t: dict[str, float],
    explained: dict[int, list[str]],
    source: str,
) -> list[dict]:
    """Outlier rows from `outlier_evidence`. An image also flagged grey or blurry keeps its outlier flag
    when the evidence those do not account for (PROPERTY_EVIDENCE) still passes the threshold's share
    for the pieces left, and its reason names both: a digit among photos is grey and smooth, and it is
    also a stray. One flagged dark, blank or of odd shape is reported as that alone."""
    k = outlier_k(len(feats))
    index = {c: i for i, c in enumerate(items.vocab)}
    targets = np.array([index.get(lab, -1) for lab in items.labels])
    ev = outlier_evidence(feats, texture, stats, targets, k)
    z = ev["score"].to_numpy()
    scored = np.flatnonzero(~np.isnan(z))
    thr = outlier_threshold(t["outlier"], len(scored))
    which = (
        f"outlier threshold {t['outlier']:g}, raised for {len(scored)} images"
        if thr > t["outlier"]
        else "outlier threshold"
    )
    parts = [c for c in ev.columns if c != "score"]
    # The weight of the pieces counted, other than `group`, which only adds to the others'.
    weight = {c: OUTLIER_WEIGHTS.get(c, 1.0) for c in parts if c not in ("group", *OUTLIER_ALIKE[1:])}
    rows = []
    for i in scored:
        props = explained.get(int(i), [])
        accounted = [PROPERTY_EVIDENCE[p] for p in props if p in PROPERTY_EVIDENCE]
        # Without the evidence a property accounts for, against the threshold's share of what is left
        # (their weight's share of the pieces counted).
        rest = z[i] - sum(weight[c] * min(max(float(np.nan_to_num(ev.at[i, c])), 0.0), OUTLIER_CAP) for c in accounted)
        rest -= min(float(ev.at[i, "group"]), OUTLIER_CAP) if accounted else 0.0
        # A dark, blank or stretched image is unlike the rest for that reason alone: reported as that.
        instead = [p for p in props if p not in PROPERTY_EVIDENCE]
        flagged = bool(rest > thr * (1 - sum(weight[c] for c in accounted) / sum(weight.values()))) and not instead
        strongest = sorted(parts, key=lambda c: -np.nan_to_num(ev.at[i, c]))[:3]
        also = f"; also flagged {' and '.join(props)}" if props and not instead else ""
        also += f"; flagged as {' and '.join(instead)} instead" if instead and z[i] > thr else ""
        rows.append(
            dict(
                idx=int(i),
                issue="outlier",
                score=float(z[i]),
                flagged=flagged,
                threshold=thr,
                reason=(
                    f"in {source} features, unlike its class '{items.labels[i]}' by "
                    + ", ".join(f"{c} {ev.at[i, c]:.1f}" for c in strongest)
                    + f" (robust SD, each counted up to {OUTLIER_CAP:g}); score {z[i]:.1f} "
                    f"{'>' if z[i] > thr else '<='} {thr:.3g} ({which}){also}"
                ),
            )
        )
    return rows


def _balance(items: _Items, pred: np.ndarray | None, notes: tuple[str, ...] = ()) -> BalanceSummary:
    labels = pd.Series(items.labels)
    splits = pd.Series(items.splits)
    vocab = items.vocab or sorted(set(items.labels) - {""})
    table = pd.DataFrame(index=pd.Index(vocab, name="class"))
    table["train"] = [int(((labels == c) & (splits != "valid")).sum()) for c in vocab]
    table["valid"] = [int(((labels == c) & (splits == "valid")).sum()) for c in vocab]
    total = table["train"] + table["valid"]
    table["share"] = total / max(int(total.sum()), 1)
    expected = 1 / max(len(vocab), 1)
    table["under_represented"] = table["share"] < expected / 2
    if pred is not None:
        index = {c: i for i, c in enumerate(vocab)}
        targets = np.array([index.get(lab, -1) for lab in items.labels])
        err = []
        for c in range(len(vocab)):
            m = (targets == c) & (pred >= 0)
            err.append(float((pred[m] != c).mean()) if m.any() else math.nan)
        table["error"] = err
        overall = float(np.nanmean(np.where(pred >= 0, pred != targets, np.nan))) if len(pred) else math.nan
        # The classes the model does worst on: at least 1.5x the overall error, at most three of them.
        worst = table["error"].nlargest(3).index
        table["worst"] = table.index.isin(worst) & (table["error"] >= 1.5 * overall) & (table["error"] > 0)
        table = table.sort_values("error", ascending=False, kind="stable")
    return BalanceSummary(table, notes)


# ---------------------------------------------------------------------------------------------


def audit(
    learn_or_path_or_dls: Learner | DataLoaders | str | Path,
    label_method: str = "oof",
    thresholds: dict[str, float] | None = None,
    near_duplicates: str = "hash",
    n_workers: int | None = None,
    with_bar: bool = True,
    outlier_features: str = "pretrained",
    ranking: str | None = None,
    **oof_kwargs,
) -> pd.DataFrame:
    """Every problem of an image dataset, in one table (see the module's notes for the columns).

    Args:
        learn_or_path_or_dls: a folder of images (no model needed: image properties and copies; a
            `train`/`valid` first level is read as the split and the parent folder as the label),
            DataLoaders (the same, with its split and labels), or a trained Learner (adds label
            issues, outliers, near copies by features and per-class error).
        label_method: "oof" ranks labels with `find_label_issues` (K fold models: slower, and the
            model has not memorised the labels it judges); "loss" uses the trained model's own
            predictions (the fast way). Extra keyword arguments go to `find_label_issues`.
        ranking: the cleaner's name for `label_method`, which it overrides when given: also "auto",
            "neighbours" or "oof-linear" (see `rank_labels`; "dynamics" has no probabilities to judge by).
        thresholds: overrides of the defaults by name, e.g. `{"dark": 0.2, "outlier": 8}`;
            `threshold_notes()` (in nbtrain.audit) lists them with why each default.
        near_duplicates: how near copies are found: "hash" (a perceptual hash of the pixels, the
            default: no model needed, and it does not depend on how well a model trained), "features"
            (the learner's features, as `find_duplicates`) or "both".
        n_workers: threads reading the files (default: the CPU count, at most 8).
        outlier_features: "pretrained" (default) scores outliers in the features of the model's
            architecture with its pretrained weights (ImageNet), which still tell a photo from a digit
            after fine-tuning on digits has taught the body to see only digits; "trained" uses the
            learner's own body. Without the pretrained weights on this machine, the learner's own.
    """
    t = thresholds_with(
        thresholds,
        {**THRESHOLDS, **MODEL_THRESHOLDS},
        notes="THRESHOLD_NOTES in nbtrain.image_properties and nbtrain.audit",
    )
    items, learn = _items_and_learner(learn_or_path_or_dls)
    label_method = ranking or label_method
    _check_choices(near_duplicates, outlier_features, label_method, learn is not None)

    stats = measure_images(items.paths, n_workers=n_workers)
    props = property_issues(stats, {k: v for k, v in t.items() if k in THRESHOLDS}, labels=items.labels)
    row_of = {p: i for i, p in enumerate(items.paths)}
    props["idx"] = [row_of[p] for p in props["path"]]

    rows: list[dict] = []
    pred = None
    emb = None
    if learn is not None:
        # Features need a body and a head (vision_learner's models); other models get no outlier rows.
        vision = isinstance(learn.model, VisionModel)
        feats, texture = _embeddings(learn) if vision else (torch.empty(0, 0), None)
        if len(feats) == len(items.paths):
            emb = feats
            fl = props[props["flagged"]]
            explained: dict[int, list[str]] = {}
            for i, issue in zip(fl["idx"], fl["issue"]):
                explained.setdefault(int(i), []).append(issue)
            # Outliers in the pretrained body's features: fine-tuning pulls every image, a stray
            # photo among digits too, into the clusters of the classes it was taught.
            body = pretrained_body(learn.model) if outlier_features == "pretrained" else None
            (of, otex), source = (
                (_embeddings(learn, body=body), "the pretrained body's")
                if body is not None
                else ((feats, texture), "the trained model's")
            )
            rows += _outlier_rows(items, of, otex, stats, t, explained, source)
        probs, how = _label_probs(learn, items, label_method, with_bar, oof_kwargs)
        label_rows, pred = _label_rows(items, probs, how, t)
        rows += label_rows
    rows += _copy_rows(
        items, stats, t, emb if near_duplicates != "hash" else None, use_hash=near_duplicates != "features"
    )

    return _one_table(items, props, rows, pred, trait_notes(props.attrs.get("class_traits", [])))


def _check_choices(near_duplicates: str, outlier_features: str, label_method: str, has_learner: bool) -> None:
    if near_duplicates not in ("hash", "features", "both"):
        raise ValueError(f"near_duplicates must be 'hash', 'features' or 'both', not {near_duplicates!r}.")
    if near_duplicates != "hash" and not has_learner:
        raise ValueError("near_duplicates='features' needs a model's features: pass a Learner, or use 'hash'.")
    if outlier_features not in ("pretrained", "trained"):
        raise ValueError(f"outlier_features must be 'pretrained' or 'trained', not {outlier_features!r}.")
    if label_method not in ("oof", "loss", "auto", "neighbours", "oof-linear"):
        raise ValueError(
            f"label_method must be 'oof' (out-of-fold models, slower, finds more) or 'loss' (the trained "
            f"model's own loss, fast), or a ranking 'auto', 'neighbours' or 'oof-linear', not {label_method!r}."
        )


def _items_and_learner(source: Learner | DataLoaders | str | Path) -> tuple[_Items, Learner | None]:
    """The images to audit, and the learner when one was given."""
    learn = None
    if isinstance(source, Learner):
        learn = source
        if learn.dls.multi_label:
            raise ValueError(
                "audit's label and outlier checks are for single-label data; for multi-label data "
                "audit the DataLoaders (audit(learn.dls)) and rank labels with the cleaner."
            )
        items = _from_dls(learn.dls)
    elif isinstance(source, DataLoaders):
        items = _from_dls(source)
    elif isinstance(source, (str, Path)):
        items = _from_folder(Path(source))
    else:
        raise TypeError(
            f"audit needs a Learner, DataLoaders or the path of a folder of images, not {type(source).__name__}."
        )
    return items, learn


def _one_table(
    items: _Items, props: pd.DataFrame, rows: list[dict], pred: np.ndarray | None, notes: tuple[str, ...] = ()
) -> pd.DataFrame:
    """The property rows and the other checks' rows as one table, in `COLUMNS`, sorted by issue and score."""
    extra = pd.DataFrame(
        rows, columns=["idx", "issue", "score", "flagged", "threshold", "reason", "prediction", "other"]
    )
    table = pd.concat([props.drop(columns=["path"]), extra], ignore_index=True)
    idx = table["idx"].to_numpy()
    table.insert(0, "path", [items.paths[i] for i in idx])
    table.insert(1, "split", [items.splits[i] for i in idx])
    table["label"] = [items.labels[i] for i in idx]
    table["source"] = table["path"].map(image_sources(items.paths))
    if pred is not None:
        table["prediction"] = [items.vocab[pred[i]] if pred[i] >= 0 else None for i in idx]
    table = table.drop(columns=["idx"])[COLUMNS]
    table["flagged"] = table["flagged"].astype(bool)
    table["score"] = table["score"].astype(float)
    table["threshold"] = table["threshold"].astype(float)
    table = table.sort_values(["issue", "score"], ascending=[True, False], kind="stable").reset_index(drop=True)
    table.attrs["balance"] = _balance(items, pred, notes)
    return table


def flagged(table: pd.DataFrame, issue: str | None = None) -> pd.DataFrame:
    """The flagged rows of an audit table (of one issue type), worst first."""
    out = table[table["flagged"]] if issue is None else table[table["flagged"] & (table["issue"] == issue)]
    return out.sort_values("score", ascending=False, kind="stable")


def issue_counts(table: pd.DataFrame) -> pd.Series:
    """How many images each issue type flags, most first: what a view menu shows as "blurry (12)"."""
    return table.loc[table["flagged"], "issue"].value_counts()
