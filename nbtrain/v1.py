"""fastai v1's names, as the 2019 course types them, over nbtrain's one data path and learner.

`ImageDataBunch.from_*` and the `ImageList` chain only gather files, labels and a split: every one
of them builds its loaders with `ImageDataLoaders` (in the end `from_lists`, the builder `DataBlock`
uses too), so the learner, the interpretation and the cleaner see the same loaders as in v2.
`get_transforms` is `aug_transforms` with v1's arguments, and `size=` a `Resize` item transform.
v1 drew its random splits from numpy's generator, so the course's `np.random.seed(42)` before two
bunches gives both the same validation set; here a split without `seed` draws its seed from numpy
for the same reason. A v1 argument that nbtrain cannot honour raises `DataError` (or `ValueError`)
naming it and what to use instead.
"""

from __future__ import annotations

import copy
import inspect
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .augmentation import IMAGENET_STATS, Normalize, Resize, aug_transforms
from .cleaner import ImageClassifierCleaner
from .data import DataError, DataLoader, DataLoaders, ImageDataLoaders, TableSource, get_image_files, random_split
from .data import verify_images as _verify_files
from .datablock import RegexLabeller
from .embeddings import DUPLICATE_COLUMNS, find_duplicates
from .environment import default_device
from .fileops import atomic_write
from .image import PILImage
from .image_resize import resize_images
from .learner import Learner, vision_learner
from .learner import load_learner as _load_learner
from .paths import PathList
from .scores import score_table

imagenet_stats = tuple(IMAGENET_STATS)
"""The mean and standard deviation of ImageNet's channels: `data.normalize(imagenet_stats)`."""


def _refuse(what: str, instead: str) -> DataError:
    return DataError(f"fastai v1's {what} cannot be honoured by nbtrain: {instead}")


def _v1_seed(seed: int | None) -> int:
    """`seed`, or one drawn from numpy's global generator, which v1's random splits used."""
    return int(seed) if seed is not None else int(np.random.randint(0, 2**31 - 1))


# ---------------------------------------------------------------------------------------------
# Transforms


def get_transforms(
    do_flip: bool = True,
    flip_vert: bool = False,
    max_rotate: float = 10.0,
    max_zoom: float = 1.1,
    max_lighting: float = 0.2,
    max_warp: float = 0.2,
    p_affine: float = 0.75,
    p_lighting: float = 0.75,
    xtra_tfms: Sequence[Callable] | None = None,
) -> tuple[list, list]:
    """v1's `(train, valid)` transforms: the train list is `aug_transforms` with these arguments (batch
    transforms, run on the device), the valid list is empty (the validation images are only resized).

    As v1's, `flip_vert` takes effect with `do_flip`; it adds vertical flips to the horizontal ones
    (v1's dihedral group also transposed the image).
    """
    return aug_transforms(
        do_flip=do_flip,
        flip_vert=flip_vert and do_flip,
        max_rotate=max_rotate,
        max_zoom=max_zoom,
        max_lighting=max_lighting,
        max_warp=max_warp,
        p_affine=p_affine,
        p_lighting=p_lighting,
        xtra_tfms=xtra_tfms,
    ), []


def _train_tfms(ds_tfms: Any) -> list:
    """The batch transforms of v1's `ds_tfms`: `get_transforms()`'s pair, or one list for training."""
    if ds_tfms is None:
        return []
    if isinstance(ds_tfms, tuple) and len(ds_tfms) == 2 and all(isinstance(t, (list, tuple)) for t in ds_tfms):
        train, valid = ds_tfms
        if valid:
            raise _refuse(
                "validation transforms (the second list of ds_tfms)",
                "the validation images are only resized to size=. Pass get_transforms(...) or one list.",
            )
        return list(train)
    tfms = list(ds_tfms) if isinstance(ds_tfms, (list, tuple)) else [ds_tfms]
    bad = [t for t in tfms if not callable(t)]
    if bad:
        raise _refuse(f"ds_tfms={bad[0]!r}", "give get_transforms(...), or aug_transforms(...)'s list.")
    return tfms


def _loader_args(
    ds_tfms: Any = None,
    size: int | tuple[int, int] | None = None,
    bs: int = 64,
    val_bs: int | None = None,
    num_workers: int | None = None,
    dl_tfms: Sequence | None = None,
    device: torch.device | str | None = None,
    resize_method: str | None = None,
    padding_mode: str = "reflection",
    mode: str = "bilinear",
    test: Any = None,
    tfm_y: bool = False,
    collate_fn: Any = None,
    no_check: bool = False,
    mult: int | None = None,
) -> dict:
    """v1's loader arguments as `ImageDataLoaders.from_lists`' keyword arguments."""
    refused = {
        "test": (
            test,
            "add a test set with data.add_test(ImageList.from_folder(folder)), or predict a folder with "
            "learn.get_preds(dl=data.test_dl(get_image_files(folder))).",
        ),
        "tfm_y": (tfm_y, "nbtrain's targets are labels, never images; leave it out."),
        "collate_fn": (collate_fn, "nbtrain collates image batches itself; leave it out."),
        "no_check": (no_check, "nbtrain always checks the files when it builds the loaders; leave it out."),
        "mult": (mult, "give size= a multiple of what the model needs."),
    }
    for name, (value, instead) in refused.items():
        if value:
            raise _refuse(f"{name}={value!r}", instead)
    if mode != "bilinear":
        raise _refuse(f"mode={mode!r}", "pass aug_transforms(mode=...) as ds_tfms for another interpolation.")
    if size is None and resize_method is not None:
        raise _refuse(f"resize_method={resize_method!r} without size=", "give size= too.")
    item_tfms = [] if size is None else [Resize(size, resize_method or "crop", pad_mode=padding_mode)]
    # As v1's, padding_mode also fills what a rotation or a zoom out leaves empty.
    batch_tfms = [_with_pad_mode(t, padding_mode) for t in _train_tfms(ds_tfms)]
    return dict(
        item_tfms=item_tfms,
        batch_tfms=batch_tfms + list(dl_tfms or []),
        bs=bs,
        val_bs=val_bs,
        num_workers=num_workers,
        device=device,
    )


def _with_pad_mode(tfm: Any, pad_mode: str) -> Any:
    if getattr(tfm, "pad_mode", pad_mode) == pad_mode:
        return tfm
    new = copy.copy(tfm)
    new.pad_mode = pad_mode
    return new


# ---------------------------------------------------------------------------------------------
# ImageDataBunch


class ImageDataBunch(DataLoaders):
    """v1's loaders: nbtrain's `DataLoaders` (the learner and the cleaner take them as they are) with
    v1's constructors, `normalize(stats)`, `show_batch(rows=)` and `classes`.

    Every constructor takes v1's `ds_tfms` (e.g. `get_transforms()`), `size`, `bs`, `val_bs`,
    `num_workers`, `dl_tfms`, `device`, `resize_method` ('crop', 'squish', 'pad') and `padding_mode`.
    `add_test(items)` adds a test set (`test_ds`), which `get_preds(ds_type=DatasetType.Test)` predicts.
    """

    test: DataLoader | None = None

    @classmethod
    def of(cls, dls: DataLoaders) -> ImageDataBunch:
        """These loaders as an `ImageDataBunch` (the same loader objects)."""
        return cls(dls.train, dls.valid, path=dls.path, table=dls.table, root=dls.root)

    @classmethod
    def from_folder(
        cls,
        path: Path | str,
        train: str = "train",
        valid: str = "valid",
        test: Any = None,
        valid_pct: float | None = None,
        seed: int | None = None,
        classes: Sequence | None = None,
        **kwargs,
    ) -> ImageDataBunch:
        """Class folders under `path/train` and `path/valid`, or with `valid_pct` every image under
        `path` split at random (the course's `train="."`). Files that are not images are left out, as v1's."""
        args = _loader_args(test=test, **kwargs)
        seed = _v1_seed(seed) if valid_pct is not None else seed
        return cls.of(
            ImageDataLoaders.from_folder(
                path,
                train=train,
                valid=valid,
                valid_pct=valid_pct,
                seed=seed,
                vocab=classes,
                ignore_non_images=True,
                **args,
            )
        )

    @classmethod
    def from_df(
        cls,
        path: Path | str,
        df: pd.DataFrame,
        folder: str | None = None,
        label_delim: str | None = None,
        valid_pct: float = 0.2,
        seed: int | None = None,
        fn_col: int | str = 0,
        label_col: int | str = 1,
        suffix: str = "",
        **kwargs,
    ) -> ImageDataBunch:
        """File names (relative to `path/folder`, plus `suffix`) and labels from a table; `label_delim`
        makes it multi-label. The cleaner rewrites this table, not the files."""
        return cls.of(
            ImageDataLoaders.from_df(
                df,
                path=path,
                folder=folder,
                suff=suffix,
                fn_col=fn_col,
                label_col=label_col,
                label_delim=label_delim,
                valid_pct=valid_pct,
                seed=_v1_seed(seed),
                **_loader_args(**kwargs),
            )
        )

    @classmethod
    def from_csv(
        cls,
        path: Path | str,
        folder: str | None = None,
        label_delim: str | None = None,
        csv_labels: str = "labels.csv",
        valid_pct: float = 0.2,
        seed: int | None = None,
        fn_col: int | str = 0,
        label_col: int | str = 1,
        suffix: str = "",
        delimiter: str | None = None,
        header: str | int | None = "infer",
        **kwargs,
    ) -> ImageDataBunch:
        """`from_df` on the CSV file `path/csv_labels` (the cleaner's `cleaned.csv`, for one); the
        cleaner rewrites that file, not the images."""
        return cls.of(
            ImageDataLoaders.from_csv(
                path,
                csv_fname=csv_labels,
                header=header,
                delimiter=delimiter,
                folder=folder,
                suff=suffix,
                fn_col=fn_col,
                label_col=label_col,
                label_delim=label_delim,
                valid_pct=valid_pct,
                seed=_v1_seed(seed),
                **_loader_args(**kwargs),
            )
        )

    @classmethod
    def from_lists(
        cls,
        path: Path | str,
        fnames: Sequence[Path | str],
        labels: Sequence,
        valid_pct: float = 0.2,
        seed: int | None = None,
        item_cls: Any = None,
        **kwargs,
    ) -> ImageDataBunch:
        """Parallel lists of files and labels, split at random."""
        if item_cls is not None:
            raise _refuse("item_cls", "nbtrain's items are image files; leave it out.")
        return cls.of(
            ImageDataLoaders.from_lists(
                path, fnames, labels, valid_pct=valid_pct, seed=_v1_seed(seed), **_loader_args(**kwargs)
            )
        )

    @classmethod
    def from_name_func(
        cls,
        path: Path | str,
        fnames: Sequence[Path | str],
        label_func: Callable,
        valid_pct: float = 0.2,
        seed: int | None = None,
        **kwargs,
    ) -> ImageDataBunch:
        """Labels from `label_func` of each file's path (v1 gave it the whole path, as here)."""
        return cls.of(
            ImageDataLoaders.from_path_func(
                path, fnames, label_func, valid_pct=valid_pct, seed=_v1_seed(seed), **_loader_args(**kwargs)
            )
        )

    @classmethod
    def from_name_re(
        cls,
        path: Path | str,
        fnames: Sequence[Path | str],
        pat: str,
        valid_pct: float = 0.2,
        seed: int | None = None,
        **kwargs,
    ) -> ImageDataBunch:
        """Labels from the first group of `pat`, searched in each file's whole path written with '/'
        (v1's, hence the course's `r'/([^/]+)_\\d+.jpg$'`)."""
        return cls.from_name_func(path, fnames, RegexLabeller(pat), valid_pct=valid_pct, seed=seed, **kwargs)

    classes = property(lambda self: self.vocab, doc="The class names (v1's name for `vocab`).")

    def add_test(self, items: Sequence[Path | str]) -> None:
        """Unlabelled images (an `ImageList` or files) as the test set, with the validation set's
        transforms, in their order: `learn.get_preds(ds_type=DatasetType.Test)` predicts them."""
        self.test = self.test_dl(list(items))

    @property
    def test_ds(self):
        """The test set (`.items` are its paths), which `add_test` or `load_learner(test=)` gave."""
        if self.test is None:
            raise DataError(
                "These loaders have no test set: add one with data.add_test(ImageList.from_folder(folder))."
            )
        return self.test.dataset

    def batch_stats(self) -> tuple[list[float], list[float]]:
        """The mean and standard deviation of each channel over one training batch, before normalising."""
        x, _ = self.train.new(normalize=None, num_workers=0).one_batch()
        return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()

    def normalize(self, stats: Sequence | None = None, do_x: bool = True, do_y: bool = False) -> ImageDataBunch:
        """Normalise the inputs with `stats` (`(mean, std)`, e.g. `imagenet_stats`), or with one batch's
        own statistics when not given, as v1's. Returns the loaders, so it chains."""
        if not do_x or do_y:
            raise _refuse(f"normalize(do_x={do_x}, do_y={do_y})", "nbtrain normalises the inputs only; leave them out.")
        mean, std = self.batch_stats() if stats is None else stats
        self.set_normalize(
            Normalize(
                [float(v) for v in torch.as_tensor(mean).flatten()], [float(v) for v in torch.as_tensor(std).flatten()]
            )
        )
        return self

    def show_batch(
        self,
        rows: int | None = None,
        figsize: tuple[float, float] | None = None,
        max_n: int | None = None,
        nrows: int | None = None,
        ncols: int | None = None,
        unique: bool = False,
        return_fig: bool = False,
    ):
        """v1's `rows` x `rows` grid of training images (`max_n`, `nrows`, `ncols`, `unique` as v2's). As
        v1's, the figure is returned only with `return_fig` (a notebook shows it either way)."""
        if rows is not None:
            max_n, nrows = rows * rows, rows
        fig = super().show_batch(
            max_n=9 if max_n is None else max_n, nrows=nrows, ncols=ncols, figsize=figsize, unique=unique
        )
        return fig if return_fig else None


# ---------------------------------------------------------------------------------------------
# ImageList: items, then a split, then labels, then transforms, then a bunch


@dataclass(repr=False)
class ImageList:
    """v1's data block chain, e.g. `ImageList.from_folder(path).split_by_rand_pct(0.2)
    .label_from_folder().transform(get_transforms(), size=224).databunch(bs=64).normalize(imagenet_stats)`.

    Each step returns a new list, so one labelled source can be transformed twice (the course's planet
    notebook does, at two sizes). A table source (`from_csv`, `from_df`) is kept with the loaders, so
    the cleaner rewrites it rather than the files.
    """

    items: list
    path: Path = Path(".")
    df: pd.DataFrame | None = None
    fn_col: Any = None
    folder: Path | None = None
    suffix: str = ""
    csv_path: Path | None = None
    valid_idx: list[int] | None = None
    labels: list | None = None
    label_col: Any = None
    label_delim: str | None = None
    classes: Sequence | None = None
    tfms: dict = field(default_factory=dict)

    def __post_init__(self):
        self.items, self.path = [Path(p) for p in self.items], Path(self.path)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Path:
        return self.items[i]

    def __repr__(self) -> str:
        split = (
            "not split"
            if self.valid_idx is None
            else f"{len(self) - len(self.valid_idx)} train, {len(self.valid_idx)} valid"
        )
        return f"ImageList({len(self)} items in {self.path}, {split}, {'labelled' if self.labels else 'not labelled'})"

    # -- items --------------------------------------------------------------------------------------

    @classmethod
    def from_folder(
        cls,
        path: Path | str = ".",
        extensions: Sequence[str] | None = None,
        recurse: bool = True,
        include: Sequence[str] | None = None,
    ) -> ImageList:
        """The image files under `path` (in its subfolders `include` only), sorted."""
        items = get_image_files(path, recurse=recurse, folders=include)
        if extensions is not None:
            exts = {e.lower() for e in extensions}
            items = [p for p in items if p.suffix.lower() in exts]
        if not items:
            raise DataError(f"ImageList.from_folder: no image files under {path}.")
        return cls(items, path)

    @classmethod
    def from_df(
        cls,
        df: pd.DataFrame,
        path: Path | str = ".",
        cols: int | str = 0,
        folder: str | None = None,
        suffix: str = "",
        csv_path: Path | None = None,
    ) -> ImageList:
        """The files named in column `cols` of `df`, under `path/folder`, with `suffix` added."""
        fn_col = df.columns[cols] if isinstance(cols, int) else cols
        if fn_col not in df.columns:
            raise DataError(
                f"ImageList.from_df: {cols!r} is not a column of the table; its columns are {list(df.columns)}."
            )
        base = Path(path) / folder if folder else Path(path)
        items = [base / f"{name}{suffix}" for name in df[fn_col].astype(str)]
        missing = [p for p in items if not p.exists()]
        if missing:
            raise DataError(
                f"ImageList.from_df: {len(missing)} file(s) named in the table do not exist, e.g. "
                f"{missing[0]}. Check path=, folder= and suffix=."
            )
        return cls(
            items, path, df=df.reset_index(drop=True), fn_col=fn_col, folder=base, suffix=suffix, csv_path=csv_path
        )

    @classmethod
    def from_csv(
        cls, path: Path | str, csv_name: str, header: str | int | None = "infer", delimiter: str | None = None, **kwargs
    ) -> ImageList:
        """`from_df` on the CSV file `path/csv_name` (its other arguments: `cols`, `folder`, `suffix`)."""
        csv_path = Path(path) / csv_name
        if not csv_path.exists():
            raise DataError(f"No CSV file at {csv_path}.")
        df = pd.read_csv(csv_path, header=header, delimiter=delimiter or ",", dtype=str, keep_default_na=False)
        return cls.from_df(df, path, csv_path=csv_path, **kwargs)

    def add(self, items: ImageList) -> ImageList:
        """These items followed by those of `items` (the course's test set from two folders), before
        any split or label."""
        if any(il.valid_idx is not None or il.df is not None for il in (self, items)):
            raise DataError("ImageList.add joins lists of files (from_folder), before any split or label.")
        return replace(self, items=self.items + list(items.items))

    # -- splits ------------------------------------------------------------------------------------

    def _split(self, valid_idx: Sequence[int], keep: Sequence[int] | None = None) -> ImageList:
        if self.labels is not None:
            raise DataError("Split before labelling, as in fastai v1: .split_by_rand_pct(0.2).label_from_folder().")
        if keep is None:
            return replace(self, valid_idx=sorted(int(i) for i in valid_idx))
        new_index = {old: new for new, old in enumerate(keep)}
        df = None if self.df is None else self.df.iloc[list(keep)].reset_index(drop=True)
        return replace(
            self, items=[self.items[i] for i in keep], df=df, valid_idx=sorted(new_index[i] for i in valid_idx)
        )

    def split_by_rand_pct(self, valid_pct: float = 0.2, seed: int | None = None) -> ImageList:
        """A random `valid_pct` of the items for validation (seeded by numpy's generator unless `seed`)."""
        return self._split(random_split(len(self), valid_pct, _v1_seed(seed))[1])

    def split_none(self) -> ImageList:
        """Every item for training, none for validation (to look at or clean a whole dataset)."""
        return self._split([])

    def split_by_idx(self, valid_idx: Sequence[int]) -> ImageList:
        """The items at `valid_idx` for validation."""
        bad = [i for i in valid_idx if not 0 <= int(i) < len(self)]
        if bad:
            raise DataError(f"split_by_idx: indices {bad[:5]} are out of range for {len(self)} items.")
        return self._split(valid_idx)

    def split_by_valid_func(self, func: Callable[[Path], bool]) -> ImageList:
        """The items for which `func(path)` is true for validation."""
        return self._split([i for i, p in enumerate(self.items) if func(p)])

    def split_by_folder(self, train: str = "train", valid: str = "valid") -> ImageList:
        """By the first folder under `path`: `train/...` for training, `valid/...` for validation; items
        under neither are left out, as v1's."""
        first = [p.relative_to(self.path).parts[0] if p.is_relative_to(self.path) else "" for p in self.items]
        keep = [i for i, f in enumerate(first) if f in (train, valid)]
        if not any(first[i] == valid for i in keep):
            raise DataError(
                f"split_by_folder: no item is under {self.path / valid}. Name the folders with "
                "train= and valid=, or use split_by_rand_pct(0.2)."
            )
        return self._split([i for i in keep if first[i] == valid], keep)

    def split_from_df(self, col: int | str = 2) -> ImageList:
        """Rows whose column `col` of the table is true for validation."""
        if self.df is None:
            raise DataError("split_from_df needs items from a table: ImageList.from_csv or from_df.")
        values = self.df.iloc[:, col] if isinstance(col, int) else self.df[col]
        return self._split([i for i, v in enumerate(values) if str(v).strip().lower() in ("true", "1", "yes")])

    # -- labels ------------------------------------------------------------------------------------

    def _label(self, labels: list, **table) -> ImageList:
        if self.valid_idx is None:
            raise DataError(
                "Split before labelling, as in fastai v1: e.g. .split_by_rand_pct(0.2) or .split_none(), "
                "then .label_from_folder()."
            )
        return replace(self, labels=labels, **table)

    def label_from_folder(self, classes: Sequence | None = None) -> ImageList:
        """Each item's label is the name of its folder."""
        return replace(self._label([p.parent.name for p in self.items]), classes=classes)

    def label_from_func(self, func: Callable[[Path], Any], classes: Sequence | None = None) -> ImageList:
        """Each item's label is `func(path)`."""
        return replace(self._label([func(p) for p in self.items]), classes=classes)

    def label_from_re(self, pat: str, full_path: bool = False, classes: Sequence | None = None) -> ImageList:
        """Each item's label is the first group of `pat` searched in its path written with '/' (the file
        name only when `full_path` is false and the pattern does not start with '/')."""
        labeller = RegexLabeller(pat)
        whole = full_path or pat.startswith("/")
        return self.label_from_func(lambda p: labeller(p if whole else p.name), classes=classes)

    def label_from_df(
        self, cols: int | str = 1, label_delim: str | None = None, classes: Sequence | None = None
    ) -> ImageList:
        """Labels from column `cols` of the table; `label_delim` splits them into several per image."""
        if self.df is None:
            raise DataError("label_from_df needs items from a table: ImageList.from_csv or ImageList.from_df.")
        col = self.df.columns[cols] if isinstance(cols, int) else cols
        raw = self.df[col].tolist()
        if label_delim is None:
            labels = [str(v) for v in raw]
        else:
            labels = [[s for s in str(v).split(label_delim) if s] if pd.notna(v) else [] for v in raw]
        return replace(self._label(labels, label_col=col, label_delim=label_delim), classes=classes)

    # -- transforms and loaders ---------------------------------------------------------------------

    def transform(
        self,
        tfms: Any = None,
        size: int | tuple[int, int] | None = None,
        resize_method: str | None = None,
        padding_mode: str = "reflection",
        mode: str = "bilinear",
        tfm_y: bool = False,
    ) -> ImageList:
        """The transforms (e.g. `get_transforms()`) and the size of the images, for `databunch`."""
        return replace(
            self,
            tfms=dict(
                ds_tfms=tfms, size=size, resize_method=resize_method, padding_mode=padding_mode, mode=mode, tfm_y=tfm_y
            ),
        )

    def databunch(self, path: Path | str | None = None, bs: int = 64, **kwargs) -> ImageDataBunch:
        """The loaders (`ImageDataLoaders.from_lists`) of the labelled, split items."""
        if self.labels is None:
            raise DataError("Label the items before databunch(), as in fastai v1: e.g. .label_from_folder().")
        args = _loader_args(**self.tfms, bs=bs, **kwargs)
        multi = self.label_delim is not None
        table = None
        if self.df is not None and self.label_col is not None:
            table = TableSource(
                self.df, self.fn_col, self.label_col, self.label_delim, self.folder, self.suffix, self.csv_path
            )
        return ImageDataBunch.of(
            ImageDataLoaders.from_lists(
                path or self.path,
                self.items,
                self.labels,
                valid_idx=self.valid_idx,
                vocab=self.classes,
                multi_label=multi,
                table=table,
                root=self.path,
                **args,
            )
        )


# ---------------------------------------------------------------------------------------------
# Learners


class Defaults:
    """v1's `defaults`: `defaults.device = torch.device('cpu')` puts the loaders and learners made
    afterwards on that device (through `NBTRAIN_DEVICE`, which `default_device()` reads)."""

    @property
    def device(self) -> torch.device:
        return default_device()

    @device.setter
    def device(self, device: torch.device | str | None) -> None:
        if device is None:
            os.environ.pop("NBTRAIN_DEVICE", None)
        else:
            os.environ["NBTRAIN_DEVICE"] = str(torch.device(device))

    def __setattr__(self, name: str, value: Any) -> None:
        if name != "device":
            raise AttributeError(f"nbtrain's defaults has only `device`; v1's defaults.{name} cannot be honoured.")
        super().__setattr__(name, value)


defaults = Defaults()
"""v1's `defaults`: `defaults.device = torch.device('cpu')`."""

# v1's cnn_learner arguments nbtrain does not have, with what to do instead.
_LEARNER_REFUSED = {
    "cut": "nbtrain cuts each torchvision architecture's body itself.",
    "lin_ftrs": "nbtrain's head has one hidden layer of 512; build a Learner(dls, model) for another head.",
    "custom_head": "build a Learner(dls, model) with your own model.",
    "split_on": "nbtrain puts the body and the head in two groups itself.",
    "bn_final": "leave it out.",
    "init": "leave it out: the head is initialised as torch's defaults do.",
    "concat_pool": "nbtrain's head always concatenates average and max pooling.",
    "callback_fns": "pass callbacks as cbs=[...].",
    "callbacks": "pass callbacks as cbs=[...].",
    "true_wd": "nbtrain's weight decay is always decoupled (AdamW), as v1's true_wd=True.",
    "bn_wd": "nbtrain never decays batch-norm weights and biases, as v1's bn_wd=False.",
    "train_bn": "a frozen body's batch-norm layers keep training, as v1's train_bn=True.",
    "layer_groups": "nbtrain puts the body and the head in two groups itself.",
    "silent": "pass progress=False to fit for no output.",
    "add_time": "leave it out.",
}


def cnn_learner(
    data: DataLoaders, base_arch: str | Callable, pretrained: bool = True, ps: float = 0.5, **kwargs
) -> Learner:
    """v1's `cnn_learner` (and `create_cnn`): `vision_learner` with v1's arguments; `ps` is the dropout
    of the head's last layer (half of it before the first, as v1's). Loaders that `normalize()` gave
    their own statistics keep them; others are normalised with ImageNet's."""
    given = [k for k in _LEARNER_REFUSED if k in kwargs]
    if given:
        raise ValueError(
            f"fastai v1's cnn_learner({given[0]}=...) cannot be honoured by nbtrain: {_LEARNER_REFUSED[given[0]]}"
        )
    learn = vision_learner(data, base_arch, pretrained=pretrained, normalize=data.train.normalize is None, **kwargs)
    dropouts = [m for m in learn.model.head.modules() if isinstance(m, nn.Dropout)]
    for m, p in zip(dropouts, [ps / 2] * (len(dropouts) - 1) + [ps]):
        m.p = p
    return learn


create_cnn = cnn_learner  # the name of the 2018-2019 course notes


def load_learner(
    fname: Path | str, cpu: bool = True, file: str = "export.pkl", test: Sequence[Path | str] | None = None
) -> Learner:
    """A Learner rebuilt from `export()`'s file (`nbtrain.learner.load_learner`; given a folder, as
    v1's, the file is `fname/file`), its loaders an `ImageDataBunch` (`learn.data.classes`). v1's
    `test=` (an `ImageList` or files) becomes their test set: `learn.data.test_ds`, predicted by
    `learn.get_preds(ds_type=DatasetType.Test)` in the same order."""
    learn = _load_learner(fname, cpu=cpu, file=file)
    learn.data = ImageDataBunch.of(learn.dls)
    if test is not None:
        learn.data.add_test(test)
    return learn


def doc(elt: Any) -> None:
    """Print the signature and the documentation of `elt` (fastai's `doc(learn.fit_one_cycle)`)."""
    name = getattr(elt, "__qualname__", None) or getattr(elt, "__name__", None) or type(elt).__name__
    try:
        name += str(inspect.signature(elt))
    except (TypeError, ValueError):  # some builtins and objects have no signature
        pass
    print(f"{name}\n\n{inspect.getdoc(elt) or 'No documentation.'}")


# ---------------------------------------------------------------------------------------------
# Lesson 2's files: verify_images, open_image


def verify_images(
    fns: Sequence[Path | str] | Path | str,
    n_workers: int = 4,
    decode: bool = True,
    *,
    delete: bool | None = None,
    max_workers: int | None = None,
    max_size: int | None = None,
    recurse: bool = False,
    dest: Path | str = ".",
    n_channels: int = 3,
    interp: int | None = None,
    ext: str | None = None,
    img_format: str | None = None,
    resume: bool | None = None,
    **kwargs,
) -> PathList:
    """The files that cannot be opened and decoded, in either fastai's form.

    fastai v2's (the book's): `verify_images(fns)` of a list of files returns the failed ones and
    changes nothing. fastai v1's (the course's): `verify_images(folder, delete=True, max_size=500)`
    checks the images in the folder (its subfolders with `recurse`), deletes the failed ones with
    `delete` (v1's default), then writes the others that are larger than `max_size` or not
    `n_channels` into `folder/dest` (the folder itself by default, each file replaced only once its
    new version is complete, through `resize_images`); it returns the failed files too.
    """
    if not (isinstance(fns, (str, os.PathLike)) and Path(fns).is_dir()):
        v1_args = {
            "delete": delete,
            "max_workers": max_workers,
            "max_size": max_size,
            "resume": resume,
            "ext": ext,
            "img_format": img_format,
            "interp": interp,
            **kwargs,
        }
        given = (
            [k for k, v in v1_args.items() if v is not None]
            + (["recurse"] if recurse else [])
            + (["dest"] if str(dest) != "." else [])
            + (["n_channels"] if n_channels != 3 else [])
        )
        if given:
            raise DataError(
                f"verify_images({given[0]}=...) is fastai v1's form, which takes a folder: "
                f"verify_images(folder, {given[0]}=...). For a list of files, delete the failed ones "
                "with verify_images(fns).map(Path.unlink)."
            )
        if isinstance(fns, (str, os.PathLike)):
            raise DataError(f"verify_images: {fns} is not a folder. Give a folder (v1) or a list of files (v2).")
        return _verify_files(fns, n_workers=n_workers, decode=decode)
    path = Path(fns)
    failed = _verify_files(get_image_files(path, recurse=recurse), n_workers=max_workers or n_workers, decode=decode)
    for f in failed:
        print(f"{f}: cannot be opened{', deleted' if delete is not False else ''}")
        if delete is not False:
            f.unlink()
    resize = dict(
        max_workers=max_workers,
        max_size=max_size,
        recurse=recurse,
        dest=path / dest,
        n_channels=n_channels,
        ext=ext,
        img_format=img_format,
        resume=resume,
        **kwargs,
    )
    if interp is not None:
        resize["resample"] = interp
    resize_images(path, **resize)
    return failed


def open_image(
    fn: Path | str, div: bool = True, convert_mode: str = "RGB", cls: Any = None, after_open: Callable | None = None
) -> PILImage:
    """The image in `fn`, as RGB (what `learn.predict` takes); `after_open` is applied to it first."""
    if not div or convert_mode != "RGB" or cls is not None:
        raise _refuse("open_image(div=, convert_mode=, cls=)", "nbtrain opens every image as RGB; leave them out.")
    img = PILImage.create(fn)
    return PILImage.create(after_open(img)) if after_open is not None else img


# ---------------------------------------------------------------------------------------------
# Lesson 2's cleaning: DatasetFormatter and ImageCleaner


@dataclass(repr=False)
class CleaningSet:
    """What `DatasetFormatter` picks images from: a learner, its score table (training images, then
    validation ones) and, for `from_similars`, the near-duplicate pairs. `ImageCleaner` takes it."""

    learn: Learner
    scores: pd.DataFrame
    pairs: pd.DataFrame | None = None

    @property
    def items(self) -> list[Path]:
        return list(self.scores["path"])

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, i: int) -> tuple[Path, tuple]:
        row = self.scores.iloc[int(i)]
        return row["path"], row["labels"]

    def __repr__(self) -> str:
        return f"CleaningSet({len(self)} images)"


class DatasetFormatter:
    """v1's way to pick the images `ImageCleaner` shows: `from_toplosses` (highest loss first) and
    `from_similars` (pairs of near-identical images)."""

    @classmethod
    def from_toplosses(cls, learn: Learner, n_imgs: int | None = None) -> tuple[CleaningSet, torch.Tensor]:
        """`(ds, idxs)`: every image scored by `learn`, and the indices of the `n_imgs` highest losses
        (every image by default), highest first; a file that cannot be decoded comes first."""
        scores = score_table(learn)
        order = scores["loss"].sort_values(ascending=False, na_position="first", kind="stable").index
        return CleaningSet(learn, scores), torch.tensor(list(order[:n_imgs]), dtype=torch.long)

    @classmethod
    def from_similars(
        cls, learn: Learner, layer_ls: Sequence[int] = (0, 7, 2), n_pairs: int | None = None
    ) -> tuple[CleaningSet, torch.Tensor]:
        """`(ds, idxs)`: idxs holds each image's most similar other image (cosine similarity of the
        model's pooled features), as consecutive pairs, most similar first."""
        if tuple(layer_ls) != (0, 7, 2):
            raise _refuse(f"layer_ls={list(layer_ls)}", "nbtrain compares the pooled features of the model's body.")
        scores = score_table(learn)
        pairs = find_duplicates(learn, threshold=-1.0).head(n_pairs)
        row_of = {p: i for i, p in enumerate(scores["path"])}
        idxs = [row_of[p] for a, b in zip(pairs["path_a"], pairs["path_b"]) for p in (a, b)]
        return CleaningSet(learn, scores, pairs), torch.tensor(idxs, dtype=torch.long)


def _write_label_table(df: pd.DataFrame, csv_path: Path) -> None:
    """Write `df` to `csv_path` atomically; a different file already there is kept as a dated backup."""
    text = df.to_csv(index=False)
    if csv_path.exists():
        if csv_path.read_text() == text:
            return
        shutil.copy2(csv_path, csv_path.with_name(f"{csv_path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}"))
    atomic_write(csv_path, lambda f: f.write(text), text=True)


def ImageCleaner(
    dataset: CleaningSet,
    fns_idxs: Sequence[int] | torch.Tensor,
    path: Path | str,
    batch_size: int | None = None,
    duplicates: bool = False,
) -> ImageClassifierCleaner:
    """v1's cleaner, shown as nbtrain's `ImageClassifierCleaner` on the images `fns_idxs` picks.

    As v1's, it leaves the files alone: it writes every image of `dataset` with its label to
    `path/'cleaned.csv'` (a different file already there is kept as a dated backup), and the
    widget's Apply removes the deleted images' rows and relabels the others there. Train on the
    result with `ImageDataBunch.from_csv(path, folder='.', csv_labels='cleaned.csv', ...)`.
    `duplicates=True` (with `DatasetFormatter.from_similars`) shows the pairs side by side.
    `batch_size` is how many images a page shows.
    """
    if not isinstance(dataset, CleaningSet):
        raise DataError(
            "ImageCleaner takes the `ds` that DatasetFormatter().from_toplosses(learn) or "
            ".from_similars(learn) returns: ds, idxs = DatasetFormatter().from_toplosses(learn)."
        )
    path, learn = Path(path), dataset.learn
    idxs = [int(i) for i in (fns_idxs.tolist() if hasattr(fns_idxs, "tolist") else fns_idxs)]
    multi = learn.dls.multi_label
    names = [os.path.relpath(p, path) for p in dataset.scores["path"]]
    labels = [" ".join(lab) if multi else lab[0] for lab in dataset.scores["labels"]]
    table = pd.DataFrame({"name": names, "label": labels})
    csv_path = path / "cleaned.csv"
    _write_label_table(table, csv_path)
    dls = learn.dls
    source = TableSource(table, "name", "label", " " if multi else None, path, "", csv_path)
    view = Learner(
        DataLoaders(dls.train, dls.valid, path=dls.path, table=source, root=path),
        learn.model,
        loss_func=learn.loss_func,
        metrics=learn.metrics,
        path=learn.path,
        model_dir=learn.model_dir,
        thresh=learn.thresh,
    )
    options = {} if batch_size is None else {"max_n": batch_size}
    if not duplicates:
        return ImageClassifierCleaner(view, ranking=dataset.scores.iloc[idxs].reset_index(drop=True), **options)
    scores = dataset.scores
    similarity = (
        {}
        if dataset.pairs is None
        else {
            (a, b): s for a, b, s in zip(dataset.pairs["path_a"], dataset.pairs["path_b"], dataset.pairs["similarity"])
        }
    )
    rows = []
    for a, b in zip(idxs[::2], idxs[1::2]):
        pa, pb, sa, sb = scores["path"][a], scores["path"][b], scores["split"][a], scores["split"][b]
        rows.append((pa, pb, sa, sb, similarity.get((pa, pb), float("nan")), sa != sb))
    cleaner = ImageClassifierCleaner(
        view, ranking=scores, duplicates=pd.DataFrame(rows, columns=DUPLICATE_COLUMNS), **options
    )
    cleaner.dd_view.value = "duplicates"
    return cleaner
