"""A trained model's features of every image, and near-duplicates found with them.

`find_duplicates` pairs each image with its most similar other image by the cosine similarity of the
model's features (the body's output, average-pooled) and keeps the pairs above a threshold: copies,
re-encodes and resizes of one picture, within a split or across train and valid (leakage). The default
threshold keeps copies and most resizes, and no two distinct digits (bench/label_noise.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from .data import DataLoader
from .dynamics import pooled_features
from .learner import Learner
from .models import VisionModel
from .neighbours import nearest_neighbours
from .scores import SPLITS


def _body_of(learn: Learner, body: nn.Module | None) -> nn.Module:
    if body is None and not isinstance(learn.model, VisionModel):
        raise TypeError("Embeddings need a model with a body and a head, as vision_learner makes.")
    if body is None:
        return learn.model.body
    return body.to(next(learn.model.parameters()).device).eval()


def _in_dataset_order(learn: Learner, dl: DataLoader, forward: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    feats, _, idx = learn.outputs(dl, forward=forward)
    if not len(feats):
        return torch.empty(0, 0)
    out = torch.full((len(dl.dataset), feats.shape[1]), float("nan"))
    out[idx] = feats.cpu()
    return out


def image_embeddings(learn: Learner, dl: DataLoader, body: nn.Module | None = None) -> torch.Tensor:
    """The penultimate features of every item of `dl` (the body's output, average-pooled), in dataset
    order, unit length, on the CPU; a file that cannot be decoded gets a row of NaN. `body` replaces
    the learner's own body (e.g. the same architecture as pretrained)."""
    body = _body_of(learn, body)
    return _in_dataset_order(learn, dl, lambda x: pooled_features(body(x)))


def image_features_and_texture(
    learn: Learner, dl: DataLoader, body: nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`image_embeddings` and, from the same pass, each image's texture: the spread (standard deviation
    over the image) of each channel of the body's second module, the first block after the stem of
    the mobilenets, efficientnets and convnexts. Edges and flat areas show there before the body has
    turned them into what the picture shows, so a drawing among photos differs in it even where the
    last layer sees "a thing". Texture is None for a body that is not a sequence of modules."""
    resolved = _body_of(learn, body)
    mods = list(resolved.children()) if isinstance(resolved, nn.Sequential) else []
    if len(mods) < 3:
        return image_embeddings(learn, dl, body), None
    width: list[int] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        for i, m in enumerate(mods):
            x = m(x)
            if i == 1:
                spread = x.float().std(dim=(2, 3), correction=0) if x.ndim == 4 else x.float().flatten(1)
        width[:] = [spread.shape[1]]
        return torch.cat([pooled_features(x), spread], dim=1)

    both = _in_dataset_order(learn, dl, forward)
    if not both.numel():
        return both, None
    return both[:, : -width[0]], both[:, -width[0] :]


DUPLICATE_COLUMNS = ["path_a", "path_b", "split_a", "split_b", "similarity", "cross_split"]


def find_duplicates(learn: Learner, threshold: float = 0.97, chunk_bytes: int = 64 * 1024**2) -> pd.DataFrame:
    """Pairs of images that are probably the same picture, most similar first.

    Each training and validation image is paired with its most similar other image by the cosine
    similarity of the model's features, and the pairs at or above `threshold` are kept (each pair
    once). `cross_split` is True when one copy is in train and the other in valid: the validation
    score then flatters the model. Delete one copy of each pair.
    """
    paths: list[Path] = []
    splits: list[str] = []
    embs = []
    for ds_idx, split in enumerate(SPLITS):
        dl = learn.dls[ds_idx]
        if not len(dl.dataset):
            continue
        embs.append(image_embeddings(learn, dl.plain()))
        paths += list(dl.dataset.items)
        splits += [split] * len(dl.dataset)
    if not embs:
        return pd.DataFrame(columns=DUPLICATE_COLUMNS)
    sim, nn_idx = nearest_neighbours(torch.cat(embs), chunk_bytes, device=learn.device)
    pairs: dict[tuple[int, int], float] = {}
    for i in torch.nonzero(sim >= threshold).flatten().tolist():
        j = int(nn_idx[i])
        key = (min(i, j), max(i, j))
        pairs[key] = max(pairs.get(key, -math.inf), float(sim[i]))
    rows = [(paths[a], paths[b], splits[a], splits[b], s, splits[a] != splits[b]) for (a, b), s in pairs.items()]
    df = pd.DataFrame(rows, columns=DUPLICATE_COLUMNS)
    return df.sort_values("similarity", ascending=False, kind="stable").reset_index(drop=True)
