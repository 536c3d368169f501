"""fastai's DataBlock API: say how to get the items, split them, and label them; get the same loaders.

`DataBlock(...).dataloaders(source)` ends in `ImageDataLoaders.from_lists`, the one builder every
`ImageDataLoaders.from_*` uses, so the learner, the interpretation, `find_label_issues` and the
cleaner work on its loaders unchanged. When the source is a DataFrame, the loaders remember which
columns hold the file names and the labels (read from `ColReader`, or found by comparing the values),
so the cleaner's `apply()` rewrites that table instead of moving files.

A mistake gets an error that names the step that failed: `get_items`, `splitter`, `get_x`, `get_y`,
the label block, or (in `summary`) the item transforms and the collation of a batch.
"""

from __future__ import annotations

import copy
import os
import posixpath
import re
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from .data import CategoryMap, DataError, DataLoaders, ImageDataLoaders, TableSource, make_vocab, random_split
from .image import PILImage

# ---------------------------------------------------------------------------------------------
# Images


# ---------------------------------------------------------------------------------------------
# Labellers


def parent_label(o: Path | str) -> str:
    """The name of the folder the file is in: fastai's labeller for one folder per class."""
    return Path(o).parent.name


class RegexLabeller:
    """The first group of `pat` in the item's path (as text, with `/`), found with `re.search`, or
    `re.match` with `match=True`. As fastai's, it sees the whole path: wrap it in
    `using_attr(RegexLabeller(pat), 'name')` to match the file name only."""

    def __init__(self, pat: str, match: bool = False):
        self.pat, self.match = re.compile(pat), match
        if self.pat.groups < 1:
            raise DataError(
                f"RegexLabeller: the pattern {pat!r} has no group; put the label in parentheses, "
                r"e.g. r'(.+)_\d+.jpg$'."
            )

    def __call__(self, o: Any) -> str:
        text = str(o).replace(os.sep, posixpath.sep)
        res = (self.pat.match if self.match else self.pat.search)(text)
        if res is None:
            how = "match the start of" if self.match else "find"
            raise DataError(
                f"RegexLabeller could not {how} {self.pat.pattern!r} in {text!r}. Fix the pattern, or "
                "label the file name only with using_attr(RegexLabeller(pat), 'name')."
            )
        return res.group(1)

    def __repr__(self) -> str:
        return f"RegexLabeller({self.pat.pattern!r}, match={self.match})"


def _using_attr(f: Callable, attr: str, x: Any) -> Any:
    return f(getattr(x, attr))


def using_attr(f: Callable, attr: str) -> Callable:
    """`f` applied to `x.<attr>`, e.g. `using_attr(RegexLabeller(pat), 'name')` labels by file name."""
    return partial(_using_attr, f, attr)


class ColReader:
    """Reads column(s) `cols` of a DataFrame row: with `pref`/`suff` as text around the value (a
    `Path` prefix gets a separator), with `label_delim` split into a list of labels."""

    def __init__(
        self,
        cols: int | str | Sequence[int | str],
        pref: str | Path = "",
        suff: str = "",
        label_delim: str | None = None,
    ):
        self.cols = list(cols) if isinstance(cols, (list, tuple)) else [cols]
        self.pref = str(pref) + os.path.sep if isinstance(pref, Path) else pref
        self.suff, self.label_delim = suff, label_delim

    def _do_one(self, r: Any, c: int | str) -> Any:
        if isinstance(r, pd.Series):
            if isinstance(c, int) and c not in r.index:
                if c >= len(r):
                    raise DataError(
                        f"ColReader: column {c} does not exist; the table has {len(r)} columns: {list(r.index)}."
                    )
                o = r.iloc[c]
            elif c not in r.index:
                raise DataError(f"ColReader: {c!r} is not a column of the table; its columns are {list(r.index)}.")
            else:
                o = r[c]
        else:
            o = r[c] if isinstance(c, int) or c not in getattr(r, "_fields", []) else getattr(r, c)
        if len(self.pref) == 0 and len(self.suff) == 0 and self.label_delim is None:
            return o
        if self.label_delim is None:
            return f"{self.pref}{o}{self.suff}"
        if o is None or (isinstance(o, float) and np.isnan(o)):
            return []
        o = str(o)
        return [s for s in o.split(self.label_delim) if s] if len(o) > 0 else []

    def __call__(self, o: Any) -> Any:
        if len(self.cols) == 1:
            return self._do_one(o, self.cols[0])
        return [self._do_one(o, c) for c in self.cols]

    def __repr__(self) -> str:
        return f"ColReader({self.cols if len(self.cols) > 1 else self.cols[0]!r})"


# ---------------------------------------------------------------------------------------------
# Splitters: each takes the items and gives (train indices, valid indices).


def _n_items(o: Any) -> int:
    return len(o)


def _rows(o: Any) -> list:
    return [o.iloc[i] for i in range(len(o))] if isinstance(o, pd.DataFrame) else list(o)


def _mask_split(mask: Sequence[bool]) -> tuple[list[int], list[int]]:
    mask = [bool(m) for m in mask]
    return [i for i, m in enumerate(mask) if not m], [i for i, m in enumerate(mask) if m]


class RandomSplitter:
    """A random `valid_pct` of the items to the validation set; with `seed`, the split fastai gives
    (see `random_split`), the same one `ImageDataLoaders.from_*(valid_pct=..., seed=...)` makes."""

    def __init__(self, valid_pct: float = 0.2, seed: int | None = None):
        if not 0 <= valid_pct <= 1:
            raise DataError(f"RandomSplitter: valid_pct is a fraction between 0 and 1 (e.g. 0.2), not {valid_pct!r}.")
        self.valid_pct, self.seed = valid_pct, seed

    def __call__(self, o: Any) -> tuple[list[int], list[int]]:
        return random_split(_n_items(o), self.valid_pct, self.seed)

    def __repr__(self) -> str:
        return f"RandomSplitter(valid_pct={self.valid_pct}, seed={self.seed})"


class GrandparentSplitter:
    """By the name of the folder two levels up: `train/cat/1.jpg` is training, `valid/cat/2.jpg`
    validation; items under neither are left out."""

    def __init__(self, train_name: str = "train", valid_name: str = "valid"):
        self.train_name, self.valid_name = train_name, valid_name

    def __call__(self, o: Any) -> tuple[list[int], list[int]]:
        gp = [Path(x).parent.parent.name for x in _rows(o)]
        return [i for i, g in enumerate(gp) if g == self.train_name], [
            i for i, g in enumerate(gp) if g == self.valid_name
        ]

    def __repr__(self) -> str:
        return f"GrandparentSplitter(train_name={self.train_name!r}, valid_name={self.valid_name!r})"


class IndexSplitter:
    """The items at `valid_idx` to the validation set, the rest to training."""

    def __init__(self, valid_idx: Sequence[int]):
        self.valid_idx = [int(i) for i in (valid_idx.tolist() if hasattr(valid_idx, "tolist") else valid_idx)]

    def __call__(self, o: Any) -> tuple[list[int], list[int]]:
        n = _n_items(o)
        bad = [i for i in self.valid_idx if not -n <= i < n]
        if bad:
            raise DataError(f"IndexSplitter: indices {bad[:10]} are out of range for {n} items.")
        valid = [i % n for i in self.valid_idx]
        vset = set(valid)
        return [i for i in range(n) if i not in vset], valid

    def __repr__(self) -> str:
        return f"IndexSplitter({len(self.valid_idx)} indices)"


class MaskSplitter:
    """The items whose `mask` is true to the validation set."""

    def __init__(self, mask: Sequence[bool]):
        self.mask = list(mask)

    def __call__(self, o: Any) -> tuple[list[int], list[int]]:
        if len(self.mask) != _n_items(o):
            raise DataError(f"MaskSplitter: the mask has {len(self.mask)} values for {_n_items(o)} items.")
        return _mask_split(self.mask)


class FuncSplitter:
    """The items for which `func(item)` is true to the validation set (a DataFrame's items are its rows)."""

    def __init__(self, func: Callable[[Any], bool]):
        self.func = func

    def __call__(self, o: Any) -> tuple[list[int], list[int]]:
        return _mask_split([self.func(x) for x in _rows(o)])

    def __repr__(self) -> str:
        return f"FuncSplitter({getattr(self.func, '__name__', self.func)!r})"


class ColSplitter:
    """By a column of the DataFrame: rows whose `col` is true (or, with `on`, equals `on` or is in
    it) go to the validation set."""

    def __init__(self, col: int | str = "is_valid", on: Any = None):
        self.col, self.on = col, on

    def __call__(self, o: Any) -> tuple[list[int], list[int]]:
        if not isinstance(o, pd.DataFrame):
            raise DataError(
                f"ColSplitter reads a column of a DataFrame, but the items are a {type(o).__name__}: "
                "pass the DataFrame itself as the source (and no get_items)."
            )
        cols = list(o.columns)
        if isinstance(self.col, int) and self.col not in cols:
            if self.col >= len(cols):
                raise DataError(f"ColSplitter: column {self.col} does not exist; the table has columns {cols}.")
            col = o.iloc[:, self.col]
        elif self.col not in cols:
            raise DataError(
                f"ColSplitter: {self.col!r} is not a column of the table; its columns are {cols}. "
                "Name the column that says which rows are for validation: ColSplitter('is_valid')."
            )
        else:
            col = o[self.col]
        if self.on is None:
            text = not (pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col))
            if text and set(col.dropna().map(str).str.lower()) - {"true", "false", "1", "0"}:
                raise DataError(
                    f"ColSplitter: column {self.col!r} holds {sorted(set(col.map(str)))[:5]}, not true/false. "
                    f"Pass on= the value(s) that mean validation, e.g. ColSplitter({self.col!r}, on='valid')."
                )
            mask = col.map(lambda v: str(v).lower() in ("true", "1") if isinstance(v, str) else bool(v)).to_numpy()
        elif isinstance(self.on, (list, tuple, set)):
            mask = col.isin(self.on).to_numpy()
        else:
            mask = (col == self.on).to_numpy()
        return _mask_split(mask)

    def __repr__(self) -> str:
        return f"ColSplitter({self.col!r}" + (f", on={self.on!r})" if self.on is not None else ")")


class EndSplitter:
    """The last (or, with `valid_last=False`, first) `valid_pct` of the items to the validation set."""

    def __init__(self, valid_pct: float = 0.2, valid_last: bool = True):
        self.valid_pct, self.valid_last = valid_pct, valid_last

    def __call__(self, o: Any) -> tuple[list[int], list[int]]:
        n = _n_items(o)
        cut = int(self.valid_pct * n)
        idx = list(range(n))
        return (idx[: n - cut], idx[n - cut :]) if self.valid_last else (idx[cut:], idx[:cut])


class TrainTestSplitter:
    """scikit-learn's `train_test_split` of the items: `stratify` (a label per item) keeps each
    class's share the same in both sets. Needs scikit-learn (`pip install scikit-learn`)."""

    def __init__(
        self,
        test_size: float = 0.2,
        random_state: int | None = None,
        stratify: Sequence | None = None,
        train_size: float | None = None,
        shuffle: bool = True,
    ):
        self.test_size, self.random_state, self.stratify = test_size, random_state, stratify
        self.train_size, self.shuffle = train_size, shuffle

    def __call__(self, o: Any) -> tuple[list[int], list[int]]:
        try:
            from sklearn.model_selection import train_test_split
        except ImportError:
            raise ImportError(
                "TrainTestSplitter uses scikit-learn's train_test_split: pip install scikit-learn "
                "(or use RandomSplitter, which needs nothing more)."
            ) from None
        n = _n_items(o)
        if self.stratify is not None and len(self.stratify) != n:
            raise DataError(
                f"TrainTestSplitter: stratify has {len(self.stratify)} labels for {n} items; give one "
                "label per item, in the items' order."
            )
        try:
            train, valid = train_test_split(
                list(range(n)),
                test_size=self.test_size,
                random_state=self.random_state,
                stratify=self.stratify,
                train_size=self.train_size,
                shuffle=self.shuffle,
            )
        except ValueError as e:
            raise DataError(f"TrainTestSplitter could not split {n} items: {e}") from e
        return list(train), list(valid)

    def __repr__(self) -> str:
        return f"TrainTestSplitter(test_size={self.test_size}, random_state={self.random_state})"


# ---------------------------------------------------------------------------------------------
# Blocks


class TransformBlock:
    """A block that keeps what the getter gives, as it is (`DataBlock()`'s default for both)."""

    def encode(self, v: Any, vocab: CategoryMap | None) -> Any:
        return v

    def __repr__(self) -> str:
        return type(self).__name__


class ImageBlock(TransformBlock):
    """The input is an image file, opened as RGB (`PILImage`)."""

    def __init__(self, cls: type | None = None):
        if cls is not None and cls is not PILImage:
            raise DataError(
                f"ImageBlock(cls={getattr(cls, '__name__', cls)}) is not supported: nbtrain opens every "
                "image as RGB (grayscale ones are converted). Use ImageBlock (or ImageBlock(cls=PILImage))."
            )

    def encode(self, v: Any, vocab: CategoryMap | None) -> PILImage:
        return PILImage.create(v)


class CategoryBlock(TransformBlock):
    """One label per item, from `vocab` (found in the training set's labels when not given: sorted
    with `sort`, else in order of appearance; `add_na` puts fastai's '#na#' first)."""

    multi_label = False

    def __init__(self, vocab: Sequence | None = None, sort: bool = True, add_na: bool = False):
        self.vocab, self.sort, self.add_na = vocab, sort, add_na

    def make_vocab(self, labels: Sequence) -> CategoryMap:
        if self.vocab is not None:
            vocab = list(self.vocab)
        elif self.sort:
            vocab = list(make_vocab(labels, self.multi_label))
        else:
            flat = [lab for labs in labels for lab in labs] if self.multi_label else list(labels)
            vocab = list(dict.fromkeys(flat))
        if self.add_na and "#na#" not in vocab:
            vocab = ["#na#", *vocab]
        return CategoryMap(vocab)

    def encode(self, v: Any, vocab: CategoryMap | None) -> torch.Tensor:
        return torch.tensor(vocab.o2i()[v])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab={self.vocab!r})" if self.vocab is not None else type(self).__name__


class MultiCategoryBlock(CategoryBlock):
    """A list of labels per item (possibly empty), one-hot encoded. With `encoded`, `get_y` already
    gives the one-hot row, and `vocab` names its columns."""

    multi_label = True

    def __init__(self, encoded: bool = False, vocab: Sequence | None = None, add_na: bool = False):
        if encoded and vocab is None:
            raise DataError("MultiCategoryBlock(encoded=True) needs vocab=, the class name of each one-hot column.")
        super().__init__(vocab=vocab, sort=True, add_na=add_na)
        self.encoded = encoded

    def encode(self, v: Any, vocab: CategoryMap | None) -> torch.Tensor:
        out = torch.zeros(len(vocab))
        index = vocab.o2i()
        for lab in v:
            out[index[lab]] = 1.0
        return out


class UnsupportedBlock:
    """A fastai block for a task nbtrain does not train (it trains image classifiers): naming it in
    `blocks=` or calling it says so, and what to use instead, rather than failing later."""

    task = advice = ""

    def __init__(self, *args: Any, **kwargs: Any):
        raise DataError(self.unsupported())

    @classmethod
    def unsupported(cls) -> str:
        return f"{cls.__name__} ({cls.task}) is not supported: nbtrain trains image classifiers. {cls.advice}"


class PointBlock(UnsupportedBlock):
    task = "points in the image, e.g. the head centres of the book's BIWI head-pose model"
    advice = (
        "Use fastai for point regression, or make it a classification: CategoryBlock on a label per "
        "region of the image (e.g. a 3x3 grid cell)."
    )


class RegressionBlock(UnsupportedBlock):
    task = "a number per image"
    advice = "Use fastai for regression, or make it a classification: CategoryBlock on ranges of the value."


class MaskBlock(UnsupportedBlock):
    task = "a class per pixel (segmentation), e.g. the book's CamVid model"
    advice = "Use fastai for segmentation, or make it a classification: CategoryBlock on a label per image."


class SegmentationDataLoaders:
    """fastai's segmentation loaders, which nbtrain does not build: every way in says so."""

    def __init__(self, *args: Any, **kwargs: Any):
        raise DataError(MaskBlock.unsupported())

    @classmethod
    def from_label_func(cls, *args: Any, **kwargs: Any) -> SegmentationDataLoaders:
        raise DataError(MaskBlock.unsupported())


def _block(b: Any, where: str) -> TransformBlock:
    if isinstance(b, type) and issubclass(b, UnsupportedBlock):
        raise DataError(f"{where}: {b.unsupported()}")
    if isinstance(b, type) and issubclass(b, TransformBlock):
        return b()
    if isinstance(b, TransformBlock):
        return b
    raise DataError(
        f"{where}: {b!r} is not a block. Use ImageBlock for the input and CategoryBlock (one label) or "
        "MultiCategoryBlock (several labels) for the target."
    )


def _name(f: Any) -> str:
    if isinstance(f, partial) and f.func is _using_attr:
        return f"using_attr({_name(f.args[0])}, {f.args[1]!r})"
    return getattr(f, "__name__", None) or repr(f)


def _short(v: Any, limit: int = 120) -> str:
    text = repr(v) if not isinstance(v, pd.Series) else repr(dict(v))
    return text if len(text) <= limit else text[:limit] + "..."


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and np.isnan(v):
        return True
    return isinstance(v, str) and not v.strip()


# ---------------------------------------------------------------------------------------------
# Datasets


class _Subset:
    """One split of a `Datasets`: `ds[i]` is `(x, y)` after the blocks, as fastai's."""

    def __init__(self, owner: Datasets, idx: list[int]):
        self.owner, self.idx = owner, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> tuple:
        return self.owner.encoded(self.idx[i])

    @property
    def items(self) -> list:
        return [self.owner.xs[i] for i in self.idx]

    vocab = property(lambda self: self.owner.vocab)


class Datasets:
    """The items of a `DataBlock`, labelled and split: `train` and `valid` give `(x, y)` pairs."""

    def __init__(
        self,
        block: DataBlock,
        items: Any,
        xs: list,
        ys: list,
        splits: tuple[list[int], list[int]],
        vocab: CategoryMap | None,
    ):
        self.block, self.items, self.xs, self.ys, self.splits, self.vocab = block, items, xs, ys, splits, vocab
        self.train, self.valid = _Subset(self, splits[0]), _Subset(self, splits[1])
        self.n_inp = 1

    def encoded(self, i: int) -> tuple:
        x_block, y_block = self.block.blocks
        return x_block.encode(self.xs[i], None), y_block.encode(self.ys[i], self.vocab)

    def __getitem__(self, i: int) -> tuple:
        return self.encoded(i)

    def __len__(self) -> int:
        return len(self.xs)

    def __repr__(self) -> str:
        return f"Datasets(train={len(self.train)}, valid={len(self.valid)})"


# ---------------------------------------------------------------------------------------------
# DataBlock


# The keyword arguments of ImageDataLoaders.from_lists that dataloaders() passes on.
_LOADER_ARGS = {"val_bs", "shuffle", "device", "num_workers", "bad_files", "seed", "label_table"}


def _listify(t: Any) -> list:
    if t is None:
        return []
    return list(t) if isinstance(t, (list, tuple)) else [t]


class DataBlock:
    """How to build loaders from a source, step by step, with fastai's arguments.

    blocks: `(ImageBlock, CategoryBlock)`, or `(ImageBlock, MultiCategoryBlock)` for several labels
        per image (`DataBlock()` keeps both as the getters give them, for `datasets()`).
    get_items: source -> items, e.g. `get_image_files`; without it the source is the items (a list,
        or a DataFrame whose rows are the items).
    splitter: items -> (train indices, valid indices); `RandomSplitter()` by default.
    get_x, get_y: item -> input (an image path) and item -> label(s); `getters=[get_x, get_y]` too.
    item_tfms, batch_tfms: as `ImageDataLoaders`' (e.g. `Resize(224)`, `aug_transforms()`).
    """

    def __init__(
        self,
        blocks: Sequence | None = None,
        dl_type: Any = None,
        getters: Sequence | None = None,
        n_inp: int | None = None,
        item_tfms: Any = None,
        batch_tfms: Any = None,
        get_items: Callable | None = None,
        splitter: Callable | None = None,
        get_y: Callable | None = None,
        get_x: Callable | None = None,
    ):
        blocks = (TransformBlock, TransformBlock) if blocks is None else blocks
        if not isinstance(blocks, (list, tuple)) or len(blocks) != 2:
            raise DataError(
                f"blocks={blocks!r}: nbtrain's DataBlock takes two blocks, the input and the target, "
                "e.g. blocks=(ImageBlock, CategoryBlock)."
            )
        self.blocks = [_block(b, "blocks") for b in blocks]
        if dl_type is not None:
            raise DataError("dl_type cannot be honoured: nbtrain builds its own DataLoader. Leave dl_type out.")
        if n_inp not in (None, 1):
            raise DataError(f"n_inp={n_inp}: nbtrain's DataBlock has one input and one target; leave n_inp out.")
        if getters is not None:
            if get_x is not None or get_y is not None:
                raise DataError("Give getters=[get_x, get_y] or get_x=/get_y=, not both.")
            getters = list(getters)
            if len(getters) != 2:
                raise DataError(f"getters holds {len(getters)} functions; give two, [get_x, get_y].")
            get_x, get_y = getters
        for name, f in (("get_x", get_x), ("get_y", get_y), ("get_items", get_items), ("splitter", splitter)):
            if f is not None and not callable(f):
                raise DataError(f"{name}={f!r} is not a function. nbtrain's DataBlock takes one function for {name}.")
        self.get_items, self.get_x, self.get_y = get_items, get_x, get_y
        self.splitter = splitter if splitter is not None else RandomSplitter()
        self.item_tfms, self.batch_tfms = _listify(item_tfms), _listify(batch_tfms)

    def new(self, item_tfms: Any = None, batch_tfms: Any = None) -> DataBlock:
        """A copy with other item and/or batch transforms (those not given are kept)."""
        out = copy.copy(self)
        if item_tfms is not None:
            out.item_tfms = _listify(item_tfms)
        if batch_tfms is not None:
            out.batch_tfms = _listify(batch_tfms)
        return out

    # -- the steps, each with an error that names it --------------------------------------------------

    def _items(self, source: Any) -> Any:
        if self.get_items is None:
            if isinstance(source, (str, Path)):
                raise DataError(
                    f"The source {str(source)!r} is a path, and there is no get_items to list the items "
                    "in it: pass get_items=get_image_files."
                )
            items = source
        else:
            try:
                items = self.get_items(source)
            except Exception as e:
                raise DataError(
                    f"get_items ({_name(self.get_items)}) failed on {_short(source)}: {type(e).__name__}: {e}"
                ) from e
        if not isinstance(items, pd.DataFrame):
            items = list(items)
        if len(items) == 0:
            where = (
                f"get_items ({_name(self.get_items)}) found no items in {_short(source)}"
                if self.get_items
                else "The source has no items"
            )
            raise DataError(f"{where}. Check the path, and that the images have an image extension.")
        return items

    @staticmethod
    def _item(items: Any, i: int) -> Any:
        return items.iloc[i] if isinstance(items, pd.DataFrame) else items[i]

    def _get(self, which: str, f: Callable | None, item: Any, i: int) -> Any:
        if f is None:
            return item
        try:
            return f(item)
        except DataError as e:
            raise DataError(f"{which} failed on item {i} ({_short(item)}): {e}") from e
        except Exception as e:
            raise DataError(f"{which} ({_name(f)}) failed on item {i} ({_short(item)}): {type(e).__name__}: {e}") from e

    def _check_x(self, x: Any, item: Any, i: int) -> Any:
        if isinstance(self.blocks[0], ImageBlock):
            if isinstance(x, (str, os.PathLike)):
                return Path(x)
            if isinstance(x, Image.Image):
                return x
            raise DataError(
                f"get_x gave {_short(x)} ({type(x).__name__}) for item {i} ({_short(item)}), but ImageBlock "
                "needs the path of an image file. Make get_x return one, e.g. "
                "get_x=lambda r: path/'train'/r['fname'] or ColReader('fname', pref=path/'train')."
            )
        return x

    def _check_y(self, y: Any, item: Any, i: int) -> Any:
        block = self.blocks[1]
        where = f"get_y ({_name(self.get_y)})" if self.get_y is not None else "the item itself (there is no get_y)"
        if isinstance(block, MultiCategoryBlock):
            if y is None:
                raise DataError(
                    f"{where} gave None for item {i} ({_short(item)}): no labels. For an image with no "
                    "labels return an empty list."
                )
            if block.encoded:
                row = list(np.asarray(y).reshape(-1))
                if len(row) != len(block.vocab):
                    raise DataError(
                        f"{where} gave {len(row)} one-hot values for item {i}, but MultiCategoryBlock's "
                        f"vocab has {len(block.vocab)} classes."
                    )
                return [c for c, v in zip(block.vocab, row) if v]
            if isinstance(y, str):
                raise DataError(
                    f"{where} gave the text {y!r} for item {i} ({_short(item)}), but MultiCategoryBlock "
                    "needs a list of labels per item. Split it: ColReader(col, label_delim=' ') or "
                    "get_y=lambda r: r['labels'].split(' ')."
                )
            if not isinstance(y, (list, tuple, set, frozenset, np.ndarray, pd.Series)):
                raise DataError(
                    f"{where} gave {_short(y)} ({type(y).__name__}) for item {i}, but MultiCategoryBlock "
                    "needs a list of labels per item. For one label per item use CategoryBlock."
                )
            labels = [lab for lab in list(y) if not _is_missing(lab)]
            return list(dict.fromkeys(labels))
        if isinstance(block, CategoryBlock):
            if _is_missing(y):
                raise DataError(
                    f"{where} gave {y!r} for item {i} ({_short(item)}): no label. Make get_y return "
                    "the item's class, or leave out the items it cannot label."
                )
            if isinstance(y, (list, tuple, set, frozenset, np.ndarray, pd.Series)):
                raise DataError(
                    f"{where} gave a list of labels ({_short(y)}) for item {i}, but CategoryBlock takes "
                    "one label per item. For several labels per image use "
                    "blocks=(ImageBlock, MultiCategoryBlock)."
                )
            return y.item() if isinstance(y, np.generic) else y
        return y

    def _split(self, items: Any) -> tuple[list[int], list[int]]:
        name = _name(self.splitter)
        try:
            out = self.splitter(items)
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"The splitter ({name}) failed: {type(e).__name__}: {e}") from e
        if not isinstance(out, (list, tuple)) or len(out) != 2:
            raise DataError(
                f"The splitter ({name}) returned {_short(out)}; a splitter returns two lists of indices, "
                "(train, valid)."
            )
        n = len(items)
        train, valid = ([int(i) for i in (s.tolist() if hasattr(s, "tolist") else s)] for s in out)
        bad = [i for i in train + valid if not 0 <= i < n]
        if bad:
            raise DataError(f"The splitter ({name}) gave indices {bad[:10]} out of range for {n} items.")
        if not valid:
            raise DataError(
                f"The splitter ({name}) left the validation set empty ({len(train)} training items, "
                "0 validation). Check its settings (e.g. the folder names of GrandparentSplitter, the "
                "column of ColSplitter), or use RandomSplitter(valid_pct=0.2, seed=42)."
            )
        if not train:
            raise DataError(f"The splitter ({name}) left the training set empty ({len(valid)} validation items).")
        return train, valid

    def _labelled(self, source: Any) -> tuple[Any, list, list, tuple[list[int], list[int]]]:
        items = self._items(source)
        splits = self._split(items)
        xs, ys = [], []
        for i in range(len(items)):
            item = self._item(items, i)
            xs.append(self._check_x(self._get("get_x", self.get_x, item, i), item, i))
            ys.append(self._check_y(self._get("get_y", self.get_y, item, i), item, i))
        return items, xs, ys, splits

    def _vocab(self, ys: list, splits: tuple[list[int], list[int]]) -> CategoryMap | None:
        block = self.blocks[1]
        if not isinstance(block, CategoryBlock):
            return None
        train_labels = [ys[i] for i in splits[0]]
        vocab = block.make_vocab(train_labels)
        # As fastai's: the classes come from the training set, and every label must be one of them.
        index = vocab.o2i()
        for part, idx in (("training", splits[0]), ("validation", splits[1])):
            for i in idx:
                labels = ys[i] if block.multi_label else [ys[i]]
                missing = [lab for lab in labels if lab not in index]
                if missing:
                    given = "the vocab you gave" if block.vocab is not None else "the training set's labels"
                    raise DataError(
                        f"{block!r}: label {missing[0]!r} of {part} item {i} is not in the vocabulary "
                        f"({given}: {list(vocab)[:20]}). Pass {type(block).__name__}(vocab=[...]) with "
                        "every class, or split so that each class has training images."
                    )
        return vocab

    # -- what users call ------------------------------------------------------------------------------

    def datasets(self, source: Any, verbose: bool = False) -> Datasets:
        """The labelled, split items: `dsets.train[0]` is the first training `(x, y)`."""
        items, xs, ys, splits = self._labelled(source)
        vocab = self._vocab(ys, splits)
        if verbose:
            print(
                f"Collecting items from {source}\nFound {len(xs)} items\n2 datasets of sizes "
                f"{len(splits[0])},{len(splits[1])}"
            )
        return Datasets(self, items, xs, ys, splits, vocab)

    def dataloaders(
        self, source: Any, path: Path | str = ".", verbose: bool = False, bs: int = 64, **kwargs
    ) -> DataLoaders:
        """Loaders from `source`, through `ImageDataLoaders.from_lists` (so they are the same as its).

        Other keyword arguments are `from_lists`': `val_bs`, `shuffle`, `device`, `num_workers`,
        `bad_files`, `seed` (of the loaders' shuffling), `label_table` (a cleaned dataset's labels in
        place of get_y's; the classes are then found from its labels). `path` is where the learner
        saves: the working folder, as fastai's (so the book's `learn.export()` then
        `load_learner(Path()/'export.pkl')` runs); the cleaner changes the files under the source
        folder (`dls.root`).
        """
        unknown = sorted(set(kwargs) - _LOADER_ARGS)
        if unknown:
            raise DataError(
                f"dataloaders({', '.join(f'{k}=...' for k in unknown)}) cannot be honoured: nbtrain's loaders "
                f"take bs, path, {', '.join(sorted(_LOADER_ARGS))}. Leave the others out."
            )
        x_block, y_block = self.blocks
        if not isinstance(x_block, ImageBlock) or not isinstance(y_block, CategoryBlock):
            raise DataError(
                f"dataloaders needs blocks=(ImageBlock, CategoryBlock) or (ImageBlock, MultiCategoryBlock); "
                f"this DataBlock has ({x_block!r}, {y_block!r}). datasets() works with any blocks."
            )
        dsets = self.datasets(source, verbose=verbose)
        train, valid = dsets.splits
        keep = train + valid
        fnames = [dsets.xs[i] for i in keep]
        not_files = [f for f in fnames if not isinstance(f, Path)]
        if not_files:
            raise DataError("dataloaders needs image files; get_x gave in-memory images. Save them to files first.")
        labels = [dsets.ys[i] for i in keep]
        root = source if isinstance(source, (str, Path)) and Path(source).is_dir() else None
        table, vocab = None, dsets.vocab
        if kwargs.get("label_table") is not None and y_block.vocab is None and y_block.sort and not y_block.add_na:
            vocab = None  # found after the table's labels replace get_y's, as from_lists finds them
        if isinstance(dsets.items, pd.DataFrame):
            table = _table_source(dsets.items, keep, fnames, labels, self.get_x, self.get_y, y_block.multi_label)
        return ImageDataLoaders.from_lists(
            path,
            fnames,
            labels,
            valid_idx=list(range(len(train), len(keep))),
            vocab=vocab,
            multi_label=y_block.multi_label,
            item_tfms=self.item_tfms,
            batch_tfms=self.batch_tfms,
            bs=bs,
            table=table,
            root=root,
            **kwargs,
        )

    def summary(self, source: Any, bs: int = 4, show_batch: bool = False) -> None:
        """Walk one item, then one small batch, through every step, printing what each gives; the
        step that fails is named in the error."""
        step = "get_items"
        try:
            print(f"Collecting items from {source}")
            items = self._items(source)
            print(f"Found {len(items)} items")
            step = "splitter"
            splits = self._split(items)
            print(f"2 datasets of sizes {len(splits[0])},{len(splits[1])}")
            x_block, y_block = self.blocks
            print(f"Setting up Pipeline: {_name(self.get_x) if self.get_x else '(the item)'} -> {x_block!r}")
            print(f"Setting up Pipeline: {_name(self.get_y) if self.get_y else '(the item)'} -> {y_block!r}")
            step = "labelling every item (get_x, get_y)"
            _, xs, ys, _ = self._labelled(source)
            step = "vocabulary"
            vocab = self._vocab(ys, splits)
            if vocab is not None:
                print(f"  vocab ({len(vocab)} classes): {list(vocab)[:20]}{'...' if len(vocab) > 20 else ''}")
            i = splits[0][0]
            item = self._item(items, i)
            print(f"\nBuilding one sample\n  starting from\n    {_short(item)}")
            print(f"  applying get_x ({_name(self.get_x) if self.get_x else 'none'}) gives\n    {_short(xs[i])}")
            step = f"{x_block!r} on item {i}"
            x = x_block.encode(xs[i], None)
            print(f"  applying {x_block!r} gives\n    {_short(x)}")
            print(f"  applying get_y ({_name(self.get_y) if self.get_y else 'none'}) gives\n    {_short(ys[i])}")
            step = f"{y_block!r} on item {i}"
            y = y_block.encode(ys[i], vocab)
            print(f"  applying {y_block!r} gives\n    {_short(y)}")
            print(f"\nFinal sample: ({_short(x, 60)}, {_short(y, 60)})")
            if not isinstance(x_block, ImageBlock):
                return
            print(
                f"\nBuilding one batch\nApplying item_tfms to the first {min(bs, len(splits[0]))} samples: "
                f"{self.item_tfms or 'none'}"
            )
            tensors = []
            for k in splits[0][:bs]:
                step = f"item_tfms on item {k} ({xs[k]})"
                img = x_block.encode(xs[k], None)
                for t in self.item_tfms:
                    img = t(img, train=True)
                tensors.append(TF.pil_to_tensor(img))
                print(f"  item {k}: {tuple(tensors[-1].shape)}")
            step = "collating items in a batch"
            shapes = sorted({tuple(t.shape) for t in tensors})
            if len(shapes) > 1:
                raise DataError(
                    f"the images have different sizes ({', '.join('x'.join(map(str, s[1:])) for s in shapes)}) "
                    "and cannot be stacked into one batch. Add item_tfms=Resize(224) (or another size) "
                    "so every image gets the same size."
                )
            batch = torch.stack(tensors).float().div_(255)
            print(f"Collating items in a batch: {tuple(batch.shape)}")
            print(f"Applying batch_tfms to the batch built: {self.batch_tfms or 'none'}")
            for t in self.batch_tfms:
                step = f"batch_tfms ({t!r})"
                batch = t(batch)
            print(f"  gives {tuple(batch.shape)}")
            if show_batch:
                step = "show_batch"
                self.dataloaders(source, bs=bs, num_workers=0).show_batch(max_n=bs)
        except DataError as e:
            raise DataError(f"DataBlock.summary: the step '{step}' failed: {e}") from e
        except Exception as e:
            raise DataError(f"DataBlock.summary: the step '{step}' failed: {type(e).__name__}: {e}") from e


def _table_source(
    table: pd.DataFrame, rows: list[int], fnames: list[Path], labels: list, get_x: Any, get_y: Any, multi_label: bool
) -> TableSource | None:
    """Which columns of `table` give the file names and the labels (of its `rows`, in order), so the
    cleaner can rewrite the table; None when no column does."""
    df = table.iloc[rows]
    fn_found = None
    for col in ([get_x.cols[0]] if isinstance(get_x, ColReader) else []) + list(df.columns):
        if col not in df.columns:
            continue
        values = df[col].astype(str).tolist()
        first, v0 = str(fnames[0]), values[0]
        at = first.rfind(v0) if v0 else -1
        if at < 0:
            continue
        pref, suff = first[:at], first[at + len(v0) :]
        if not pref.endswith(os.sep) or not all(str(f) == f"{pref}{v}{suff}" for f, v in zip(fnames, values)):
            continue
        fn_found = (col, Path(pref), suff)
        break
    if fn_found is None:
        return None
    label_cols = ([get_y.cols[0]] if isinstance(get_y, ColReader) and len(get_y.cols) == 1 else []) + list(df.columns)
    for col in label_cols:
        if col not in df.columns or col == fn_found[0]:
            continue
        raw = df[col].tolist()
        if multi_label:
            for delim in ([get_y.label_delim] if isinstance(get_y, ColReader) and get_y.label_delim else []) + [
                " ",
                ",",
                ";",
                "|",
            ]:
                split = [[] if _is_missing(v) else [s for s in str(v).split(delim) if s] for v in raw]
                if all(list(map(str, labs)) == s for labs, s in zip(labels, split)):
                    return TableSource(table, fn_found[0], col, delim, fn_found[1], fn_found[2])
        elif all(lab == v or str(lab) == str(v) for lab, v in zip(labels, raw)):
            return TableSource(table, fn_found[0], col, None, fn_found[1], fn_found[2])
    return None
