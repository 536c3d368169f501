"""Image files on disk to batches on the device: finding files, opening any image, datasets, loaders.

Bad files, the policy: the loaders open every file's header when they are built and refuse
files that are not images at all, listing every one with the fix (delete them, or pass
`bad_files="skip"`). A file whose header is fine but whose pixels are broken (a truncated
download) is only found when it is decoded: it is then skipped, with one warning that names it,
and the run goes on. `get_preds` gives such a file a row of NaN, so the cleaner can show it.
Symlinked folders inside the dataset are not followed (they can loop, or lead out of it): one
warning names them. A link with an image's name that leads nowhere counts as a bad file.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import random
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader as TorchDataLoader
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from .augmentation import BatchTransform, Normalize, Resize
from .environment import available_memory, check_device, default_device, default_num_workers, guard_workers, worker_plan
from .image import DataError, load_image
from .label_table import FILE, LabelTableError, apply_label_table
from .paths import PathList
from .plots import image_grid

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}
# Files that operating systems and tools leave in folders; never worth a complaint.
_JUNK_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}


# ---------------------------------------------------------------------------------------------
# Files and images


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".") or p.name in _JUNK_NAMES


def get_image_files(path: Path | str, recurse: bool = True, folders: Sequence[str] | None = None) -> list[Path]:
    """The image files under `path` (by extension), sorted, skipping hidden files and folders.

    Symlinked folders inside `path` are not followed (a link can loop, or lead out of the dataset);
    a link with an image's name that leads nowhere (dangling, or looping) is listed, so the loaders
    and `verify_images` name it instead of dropping it silently.
    """
    path = Path(path)
    roots = [path / f for f in folders] if folders else [path]
    out: list[Path] = []
    for root in roots:
        if not root.is_dir():
            continue
        walker = root.rglob("*") if recurse else root.iterdir()
        for p in walker:
            rel = p.relative_to(root).parts
            if any(part.startswith(".") for part in rel):
                continue
            if p.suffix.lower() in IMAGE_EXTENSIONS and (p.is_file() or (p.is_symlink() and not p.is_dir())):
                out.append(p)
    return sorted(out)


def _non_image_files(path: Path) -> list[Path]:
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() not in IMAGE_EXTENSIONS
        and not any(part.startswith(".") or part in _JUNK_NAMES for part in p.relative_to(path).parts)
        and p.suffix.lower() not in {".csv", ".txt", ".json", ".md", ".pth", ".jsonl"}
    )


def _unfollowed_links(path: Path) -> list[Path]:
    """Symlinks under `path` that `get_image_files` neither follows nor lists: links to folders, and
    links without an image's name that lead nowhere."""
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_symlink()
        and not p.is_file()
        and (p.is_dir() or p.suffix.lower() not in IMAGE_EXTENSIONS)
        and not any(part.startswith(".") or part in _JUNK_NAMES for part in p.relative_to(path).parts)
    )


def _check_header(fn: Path) -> str | None:
    """Why `fn` cannot be an image, from its header alone, or None when it looks fine."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fn) as img:
                if img.width < 1 or img.height < 1:
                    return "has no pixels"
        return None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return f"is too large to open safely ({e})"
    except Exception as e:  # PIL raises many types for non-images
        return f"is not an image PIL can open ({type(e).__name__}: {e})"


def _check_full(fn: Path) -> str | None:
    reason = _check_header(fn)
    if reason is not None:
        return reason
    try:
        with Image.open(fn) as img:
            img.draft(img.mode, (32, 32))
            img.load()
        return None
    except Exception as e:
        return f"cannot be decoded ({type(e).__name__}: {e})"


def verify_images(fns: Sequence[Path | str], n_workers: int = 4, decode: bool = True) -> PathList:
    """The files among `fns` that cannot be opened and fully decoded, as fastai's `verify_images`.

    Remove them with `failed.map(Path.unlink)`, or `for f in verify_images(fns): f.unlink()`.
    `decode=True` decodes every file's pixels, which finds files that open but are truncated (a
    cut-off download); `decode=False` reads only the headers: faster, but misses those.
    """
    fns = [Path(f) for f in fns]
    reasons = _map_files(_check_full if decode else _check_header, fns, n_workers)
    return PathList(f for f, r in zip(fns, reasons) if r is not None)


def _bad_headers(fns: Sequence[Path]) -> dict[Path, str]:
    reasons = _map_files(_check_header, fns)
    return {f: r for f, r in zip(fns, reasons) if r is not None}


def _map_files(
    check: Callable[[Path], str | None], fns: Sequence[Path], n_workers: int = 4, chunk: int = 256
) -> list[str | None]:
    """`check` of every file, in order, on a few threads. Files go in chunks: one future per file
    costs about 2 KB, 86 MB for 50,000 files, which malloc then keeps."""
    chunks = [fns[i : i + chunk] for i in range(0, len(fns), chunk)]
    with ThreadPoolExecutor(max(1, n_workers)) as pool:
        return [r for part in pool.map(lambda c: [check(f) for f in c], chunks) for r in part]


# ---------------------------------------------------------------------------------------------
# Datasets


class CategoryMap(list):
    """The class names, in the order of the model's outputs, as fastai's: a list that can also be
    indexed by a tensor or list of indices (`dls.vocab[torch.where(y == 1)[0]]` gives those names).

    The names keep the type the labels had: a `bool` label function gives `[False, True]`.
    """

    def __getitem__(self, i):
        if isinstance(i, torch.Tensor):
            i = i.tolist()
        if isinstance(i, np.ndarray):
            i = i.tolist()
        if isinstance(i, (list, tuple)):
            return CategoryMap(list.__getitem__(self, int(k)) for k in i)
        out = list.__getitem__(self, i)
        return CategoryMap(out) if isinstance(i, slice) else out

    def o2i(self) -> dict:
        """Each class name's index."""
        return {c: i for i, c in enumerate(self)}


def make_vocab(labels: Sequence, multi_label: bool = False) -> CategoryMap:
    """The sorted distinct labels: by value when they are all numbers or all bools (as fastai's
    `CategoryMap`, so 2 comes before 10), as text otherwise."""
    seen = {lab for labs in labels for lab in labs} if multi_label else set(labels)
    if seen and (
        all(isinstance(v, bool) for v in seen)
        or all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in seen)
    ):
        return CategoryMap(sorted(seen))
    return CategoryMap(sorted(str(v) for v in seen))


def _vocab_labels(labels: Sequence, vocab: Sequence, multi_label: bool) -> list:
    """`labels` with the type the vocabulary's names have: text labels become text when the names are."""
    if not vocab or not all(isinstance(v, str) for v in vocab):
        return list(labels)
    if multi_label:
        return [[str(lab) for lab in labs] for labs in labels]
    return [str(lab) for lab in labels]


class ImageDataset(Dataset):
    """Image files with their targets. An item is `(uint8 CHW tensor or None, index)`.

    `items` are the paths in dataset order and `labels` the given label of each (a string, or a
    list of strings for multi-label data). Decoded images can be kept in `cache` once they have
    their final size, so later epochs skip the decoding.
    """

    def __init__(
        self,
        items: Sequence[Path],
        labels: Sequence,
        vocab: Sequence[str],
        multi_label: bool = False,
        item_tfms: Sequence | None = None,
        train: bool = False,
    ):
        self.items = [Path(p) for p in items]
        self.vocab = CategoryMap(vocab)
        self.labels = _vocab_labels(labels, self.vocab, multi_label)
        self.multi_label = multi_label
        self.item_tfms = list(item_tfms or [])
        self.train = train
        index = self.vocab.o2i()
        unknown = {lab for labs in self.labels for lab in labs} if multi_label else set(self.labels)
        unknown = sorted(str(lab) for lab in unknown - set(index))
        if unknown:
            raise DataError(
                f"Label(s) {unknown[:10]} are not in the vocabulary {list(self.vocab)[:20]}. Add them to "
                "vocab=, or leave out the images that have them."
            )
        if multi_label:
            targets = torch.zeros(len(self.items), len(self.vocab))
            for i, labs in enumerate(self.labels):
                for lab in labs:
                    targets[i, index[lab]] = 1.0
            self.targets = targets
        else:
            self.targets = torch.tensor([index[lab] for lab in self.labels], dtype=torch.long)
        self.bad: set[int] = set()
        self.cache: torch.Tensor | None = None
        self.cached: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def deterministic(self) -> bool:
        return all(getattr(t, "deterministic", False) for t in self.item_tfms) or not (self.train and self.item_tfms)

    def _draft_size(self) -> tuple[int, int] | None:
        for t in self.item_tfms:
            if isinstance(t, Resize) and t.method != "pad":
                side = max(t.size)
                return side, side
        return None

    def decode(self, i: int) -> torch.Tensor:
        img = load_image(self.items[i], draft=self._draft_size())
        for t in self.item_tfms:
            img = t(img, train=self.train)
        return TF.pil_to_tensor(img)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int]:
        if self.cached is not None and self.cached[i]:
            return self.cache[i], i
        try:
            return self.decode(i), i
        except Exception as e:  # a broken file must not end a long run
            return None, (i, f"{type(e).__name__}: {e}")  # type: ignore[return-value]

    def prepare_cache(self, example: torch.Tensor, budget: int) -> None:
        """Make room to keep every decoded image, when they fit in `budget` bytes."""
        if self.cache is not None or not self.deterministic:
            return
        need = example.numel() * len(self)
        if need <= budget:
            self.cache = torch.empty((len(self), *example.shape), dtype=torch.uint8)
            self.cached = torch.zeros(len(self), dtype=torch.bool)

    @property
    def fully_cached(self) -> bool:
        if self.cached is None:
            return False
        done = self.cached.clone()
        for i in self.bad:
            done[i] = True
        return bool(done.all())

    def label_str(self, i: int) -> str:
        lab = self.labels[i]
        return ";".join(map(str, lab)) if self.multi_label else str(lab)

    def label_of(self, target: torch.Tensor) -> str:
        """A target (a class index, or a multi-hot row) as text."""
        if self.multi_label:
            return ";".join(str(self.vocab[i]) for i in torch.nonzero(target > 0.5).flatten().tolist()) or "(none)"
        return str(self.vocab[int(target)])

    def mark_bad(self, indices: Iterable[int]) -> None:
        """Leave these items out from now on: their files could not be decoded."""
        self.bad.update(int(i) for i in indices)

    def subset(self, idx: Sequence[int] | np.ndarray, train: bool | None = None) -> ImageDataset:
        """Items `idx` as a dataset of their own, sharing this one's decoded images where it can."""
        idx = np.asarray(idx, dtype=np.int64)
        train = self.train if train is None else train
        sub = ImageDataset(
            [self.items[i] for i in idx],
            [self.labels[i] for i in idx],
            self.vocab,
            self.multi_label,
            self.item_tfms,
            train=train,
        )
        sub.bad = {j for j, i in enumerate(idx.tolist()) if i in self.bad}
        if self.cache is not None and self.cached is not None and sub.deterministic:
            t = torch.as_tensor(idx)
            sub.cache, sub.cached = self.cache[t], self.cached[t].clone()
        return sub

    def with_item_tfms(self, item_tfms: Sequence, train: bool | None = None) -> ImageDataset:
        """The same files and labels through other item transforms (no decoded images carried over),
        in training form (random transforms random) when `train`; this one's form by default."""
        new = ImageDataset(
            self.items,
            self.labels,
            self.vocab,
            self.multi_label,
            item_tfms,
            train=self.train if train is None else train,
        )
        new.bad = set(self.bad)
        return new

    def without_cache(self) -> ImageDataset:
        """A copy that holds no decoded images (to send to other processes cheaply)."""
        new = copy.copy(self)
        new.cache, new.cached, new.bad = None, None, set(self.bad)
        return new

    def deterministic_view(self) -> ImageDataset:
        """This dataset as predictions see it: random item transforms become their validation form
        (a centre crop at the training size, as fastai's validation does). Bad files are shared."""
        if self.deterministic:
            return self
        view = ImageDataset(self.items, self.labels, self.vocab, self.multi_label, self.item_tfms, train=False)
        view.targets = self.targets
        view.bad = self.bad  # the same set: a file found broken in either is left out of both
        return view


def _collate(samples: list) -> tuple[torch.Tensor | None, torch.Tensor, list]:
    good = [(img, i) for img, i in samples if img is not None]
    bad = [i for img, i in samples if img is None]
    if not good:
        return None, torch.empty(0, dtype=torch.long), bad
    shapes = {tuple(img.shape) for img, _ in good}
    if len(shapes) > 1:
        (c1, h1, w1), (c2, h2, w2) = sorted(shapes)[:2]
        raise DataError(
            f"Images in one batch have different sizes ({h1}x{w1} and {h2}x{w2}): "
            "add item_tfms=Resize(224) (or another size) when you build the loaders."
        )
    return torch.stack([img for img, _ in good]), torch.tensor([i for _, i in good]), bad


def _cache_budget() -> int:
    """Bytes one process may keep decoded images in; the processes of one machine share its memory."""
    if os.environ.get("NBTRAIN_CACHE_BYTES"):
        return int(os.environ["NBTRAIN_CACHE_BYTES"])
    share = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return min(int(available_memory() * 0.3), 8 * 1024**3) // share


def _batch_bytes(ds: ImageDataset, batches: list[list[int]]) -> int:
    """About how many bytes one decoded batch takes, from the first image that decodes."""
    for i in batches[0] if batches else []:
        try:
            return ds.decode(i).numel() * max(len(b) for b in batches)
        except Exception:  # a broken file: try the next
            continue
    return 0


class Batch(NamedTuple):
    """A batch on its way to the model: inputs, targets, dataset indices. A stand-in batch (see
    `DataLoader.sharded`) only keeps a process in step with the others: its loss must count for nothing."""

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor
    stand_in: bool = False


class DataLoader:
    """Batches of one dataset, ready for the model: on the device, scaled to [0, 1], augmented on
    the training set, normalised. Iterating gives `(images, targets)`.

    The first pass decodes files in worker processes; when every resized image fits in memory
    (30% of what is free, at most 8 GB), they are kept, and later passes only index that tensor.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        bs: int = 64,
        shuffle: bool = False,
        drop_last: bool = False,
        batch_tfms: Sequence[BatchTransform] | None = None,
        normalize: Normalize | None = None,
        device: torch.device | str | None = None,
        num_workers: int | None = None,
        seed: int | None = None,
        augment: bool | None = None,
        cache: bool = True,
    ):
        self.dataset, self.bs, self.shuffle, self.drop_last = dataset, bs, shuffle, drop_last
        self.batch_tfms = list(batch_tfms or [])
        self.augment = bool(self.batch_tfms) if augment is None else augment
        self.normalize = normalize
        self.device = check_device(torch.device(device)) if device is not None else default_device()
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.seed, self.cache = seed, cache
        self.memory_format = torch.contiguous_format
        self._generator = torch.Generator().manual_seed(seed if seed is not None else random.randrange(2**31))
        self._warned: set[int] = set()
        # (rank, world size): in distributed training each process takes its part of every batch.
        self._shard: tuple[int, int] = (0, 1)
        self._stand_in: tuple[torch.Tensor, torch.Tensor] | None = None
        self._pinned: list | None = None

    def new(self, **kwargs) -> DataLoader:
        """A loader over the same dataset (and cache) with some settings changed."""
        args = dict(
            dataset=self.dataset,
            bs=self.bs,
            shuffle=self.shuffle,
            drop_last=self.drop_last,
            batch_tfms=self.batch_tfms,
            normalize=self.normalize,
            device=self.device,
            num_workers=self.num_workers,
            seed=self.seed,
            augment=self.augment,
            cache=self.cache,
        )
        args.update(kwargs)
        dl = DataLoader(**args)
        dl.memory_format = self.memory_format
        return dl

    def plain(self, **kwargs) -> DataLoader:
        """A loader over every item in dataset order, without augmentation and with random item
        transforms in their validation form: the one predictions use, so two passes agree."""
        kwargs.setdefault("dataset", self.dataset.deterministic_view())
        return self.new(shuffle=False, drop_last=False, augment=False, **kwargs)

    def sharded(self, rank: int, world: int) -> DataLoader:
        """Process `rank`'s part of every batch, out of `world` processes that build the same batches.

        The part shares this loader's shuffling generator, so it advances as it would in one process.
        When none of a part's images can be decoded, it yields a stand-in batch (`Batch.stand_in`)
        rather than skipping, so every process takes every step together.
        """
        part = self.new(num_workers=max(1, self.num_workers // world) if self.num_workers else 0)
        part._generator = self._generator
        part._shard = (rank, world)
        return part

    def rng_state(self) -> torch.Tensor:
        """The state of the shuffling generator, to restore with `set_rng_state`."""
        return self._generator.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self._generator.set_state(state)

    def bad_indices(self) -> set[int]:
        """Dataset indices of the files found broken so far."""
        return set(self.dataset.bad)

    def fill_cache(self) -> None:
        """Decode every image once, so that later passes (and subsets) read them from memory, when they fit."""
        ds = self.dataset
        if ds.fully_cached or not ds.deterministic or not self.cache:
            return
        for _ in self.plain()._raw_batches(fill_cache=True):
            pass

    @property
    def items(self) -> list[Path]:
        return self.dataset.items

    @property
    def n(self) -> int:
        return len(self.dataset) - len(self.dataset.bad)

    def __len__(self) -> int:
        n = self.n
        return n // self.bs if self.drop_last else -(-n // self.bs)

    def _order(self) -> torch.Tensor:
        idx = torch.arange(len(self.dataset))
        if self.shuffle:
            idx = idx[torch.randperm(len(idx), generator=self._generator)]
        if self.dataset.bad:
            keep = torch.tensor([int(i) not in self.dataset.bad for i in idx], dtype=torch.bool)
            idx = idx[keep]
        return idx

    def _full_batches(self) -> list[list[int]]:
        order = self._order().tolist()
        stop = len(order) - len(order) % self.bs if self.drop_last else len(order)
        return [order[i : i + self.bs] for i in range(0, stop, self.bs)]

    def _share(self, batch: list[int]) -> list[int]:
        """This process's part of a batch that every process built alike. A batch too short to give each
        one an item is padded with its own items repeated (as DistributedSampler pads)."""
        rank, world = self._shard
        if world == 1:
            return batch
        return ((batch * world)[:world] if len(batch) < world else batch)[rank::world]

    def batch_indices(self) -> list[list[int]]:
        """The dataset indices of each batch of the next pass (this process's part, when sharded).
        It draws the shuffle from the generator, as a pass does."""
        return [self._share(b) for b in self._full_batches()]

    def _note_bad(self, bad: list) -> None:
        for i, reason in bad:
            self.dataset.mark_bad([i])
            if i not in self._warned:
                self._warned.add(i)
                warnings.warn(
                    f"Skipping {self.dataset.items[i]}: it cannot be decoded ({reason}). "
                    "Delete the file, or find all such files with verify_images().",
                    stacklevel=3,
                )

    def _raw_batches(self, fill_cache: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
        """(uint8 images, dataset indices, stand-in) for this process's part of each batch."""
        ds = self.dataset
        full = self._full_batches()
        if ds.fully_cached:
            for b in full:
                idx = torch.tensor(self._share(b))
                yield self._gather_cached(idx), idx, False
            return
        sharded = self._shard[1] > 1
        # In distributed training a process that decodes only its part would never hold every image;
        # when they fit, it decodes whole batches once so that later epochs read memory only.
        whole = sharded and fill_cache and self.cache and ds.deterministic
        to_decode = full if whole or not sharded else [self._share(b) for b in full]
        # Starting a worker process costs more than decoding a few hundred small images.
        n_items = sum(len(b) for b in to_decode)
        workers = self.num_workers if n_items >= 500 else 0
        workers = worker_plan(workers, lambda: _batch_bytes(ds, to_decode), prefetch=4)
        # torch seeds the workers' random item transforms with a draw from the global generator. Without
        # such transforms no seed is needed, and skipping the draw keeps the global stream the same
        # whether a pass decodes or reads the cache: an earlier lr_find then changes nothing after it.
        seeds = torch.Generator().manual_seed(0) if ds.deterministic else None
        loader = TorchDataLoader(
            ds,
            batch_sampler=to_decode,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            generator=seeds,
            persistent_workers=False,
            prefetch_factor=4 if workers else None,
        )
        for b, (imgs, idx, bad) in zip(full, guard_workers(loader)):
            if bad:
                self._note_bad(bad)
            if imgs is not None and fill_cache and self.cache:
                if ds.cache is None:
                    ds.prepare_cache(imgs[0], _cache_budget())
                if ds.cache is not None and ds.cache.shape[1:] == imgs.shape[1:]:
                    ds.cache[idx] = imgs
                    ds.cached[idx] = True
            if whole and imgs is not None:
                row = {int(i): k for k, i in enumerate(idx.tolist())}
                keep = [row[i] for i in self._share(b) if i in row]
                imgs, idx = imgs[keep], idx[keep]
            if imgs is None or not len(idx):
                if sharded:
                    yield (*self._stand_in_batch(), True)
                continue
            if sharded:
                self._stand_in = (imgs[:1].clone(), idx[:1].clone())
            yield imgs, idx, False

    def _stand_in_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One readable image: the last this process saw, or the first of the dataset that decodes."""
        if self._stand_in is None:
            for i in range(len(self.dataset)):
                img, _ = self.dataset[i]
                if img is not None:
                    self._stand_in = (img[None], torch.tensor([i]))
                    break
            else:
                raise DataError("No image of this dataset can be decoded. Check the files with verify_images().")
        return self._stand_in

    def _gather_cached(self, idx: torch.Tensor) -> torch.Tensor:
        """Cached images `idx`; for a GPU, gathered into pinned memory and copied without waiting, so
        the next batch is gathered while the GPU works on this one."""
        cache = self.dataset.cache
        if self.device.type != "cuda":
            return cache.index_select(0, idx)
        if self._pinned is None:
            shape = (self.bs, *cache.shape[1:])
            self._pinned = [[torch.empty(shape, dtype=cache.dtype).pin_memory(), None] for _ in range(2)]
        slot = self._pinned[0]
        self._pinned.reverse()
        buf, event = slot
        if event is not None:
            event.synchronize()  # the copy from this buffer two batches ago is done
        out = buf[: len(idx)]
        torch.index_select(cache, 0, idx, out=out)
        x = out.to(self.device, non_blocking=True)
        slot[1] = torch.cuda.Event()
        slot[1].record()
        return x

    def to_model_input(self, imgs: torch.Tensor) -> torch.Tensor:
        """uint8 images to the model's input: device, [0, 1], augmentation, normalisation."""
        x = imgs.to(self.device, non_blocking=True).float().div_(255)
        for t in self.batch_tfms:
            # Without augmentation, a transform that sets the size still resizes (as fastai's do on the validation set).
            x = t(x) if self.augment else t.valid(x) if hasattr(t, "valid") else x
        if self.normalize is not None:
            x = self.normalize(x)
        return x.contiguous(memory_format=self.memory_format)

    def batches(self, fill_cache: bool = True) -> Iterator[Batch]:
        """Every batch ready for the model, with its dataset indices and whether it is a stand-in."""
        targets = self.dataset.targets
        for imgs, idx, stand_in in self._raw_batches(fill_cache):
            yield Batch(self.to_model_input(imgs), targets[idx].to(self.device, non_blocking=True), idx, stand_in)

    def iter_with_index(self, fill_cache: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Like iterating, with each item's index in the dataset as a third element."""
        for b in self.batches(fill_cache):
            if not b.stand_in:
                yield b.x, b.y, b.idx

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y, _ in self.iter_with_index():
            yield x, y

    def one_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first batch, decoded without filling the cache."""
        for x, y, _ in self.new(num_workers=0).iter_with_index(fill_cache=False):
            return x, y
        raise DataError("This loader has no batch: the dataset is empty, or smaller than one batch with drop_last.")

    def show_batch(
        self,
        max_n: int = 9,
        nrows: int | None = None,
        ncols: int | None = None,
        figsize: tuple[float, float] | None = None,
        unique: bool = False,
    ):
        """A grid of one batch of this loader with its labels, as the model sees it (augmented on the
        training loader). `unique` shows the first image `max_n` times, each with its own random
        transforms, to see what the augmentation does."""
        if unique:
            ds = self.dataset
            if not len(ds):
                raise DataError("This loader has no images to show.")
            imgs = torch.stack([ds.decode(0) for _ in range(max_n)])
            x, y = self.to_model_input(imgs), ds.targets[[0] * max_n]
        else:
            x, y = self.new(num_workers=0).one_batch()
        return image_grid(
            self.decode(x[:max_n].float()).cpu(),
            [self.dataset.label_of(t) for t in y[:max_n].cpu()],
            nrows=nrows,
            ncols=ncols,
            figsize=figsize,
        )

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model input back to displayable images in [0, 1]."""
        return self.normalize.decode(x) if self.normalize is not None else x.clamp(0, 1)


# ---------------------------------------------------------------------------------------------
# DataLoaders and their constructors


@dataclass
class TableSource:
    """Where a table-based dataset came from, so the cleaner can write its choices back to it."""

    df: pd.DataFrame
    fn_col: str
    label_col: str
    label_delim: str | None
    folder: Path
    suff: str = ""
    csv_path: Path | None = None

    def with_df(self, df: pd.DataFrame) -> TableSource:
        """The same source after its table was rewritten."""
        return dataclasses.replace(self, df=df)


class DataLoaders:
    """A training and a validation loader, with the class names in `vocab`.

    `path` is where a learner on them saves (fastai's); `root` is the folder the dataset's files are
    in, that the cleaner changes: `path` unless told otherwise (a DataBlock's loaders save in the
    working folder, as fastai's, while their files stay under the source folder).
    """

    def __init__(
        self,
        train: DataLoader,
        valid: DataLoader,
        path: Path | str = ".",
        table: TableSource | None = None,
        root: Path | str | None = None,
    ):
        self.train, self.valid, self.path, self.table = train, valid, Path(path), table
        self.root = Path(root) if root is not None else self.path

    def __getitem__(self, i: int) -> DataLoader:
        return (self.train, self.valid)[i]

    @property
    def loaders(self) -> list[DataLoader]:
        return [self.train, self.valid]

    train_ds = property(lambda self: self.train.dataset, doc="The training dataset; `.items` are its paths.")
    valid_ds = property(lambda self: self.valid.dataset, doc="The validation dataset; `.items` are its paths.")
    vocab = property(lambda self: self.train.dataset.vocab, doc="The class names, in the order of the model's outputs.")
    c = property(lambda self: len(self.vocab), doc="The number of classes.")
    multi_label = property(lambda self: self.train.dataset.multi_label)
    device = property(lambda self: self.train.device)

    @property
    def item_tfms(self) -> list:
        return self.valid.dataset.item_tfms

    @property
    def normalize(self) -> Normalize | None:
        return self.train.normalize

    def set_normalize(self, normalize: Normalize | None) -> None:
        for dl in self.loaders:
            dl.normalize = normalize

    def to(self, device: torch.device | str) -> DataLoaders:
        for dl in self.loaders:
            dl.device = torch.device(device)
        return self

    def set_memory_format(self, fmt: torch.memory_format) -> None:
        for dl in self.loaders:
            dl.memory_format = fmt

    def one_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.train.one_batch()

    def with_changes(
        self, moved: dict[Path, Path], gone: set[Path], relabelled: dict[Path, str], table: TableSource | None = None
    ) -> DataLoaders:
        """These loaders after files were moved, deleted or relabelled (what the cleaner's apply did).

        The class list stays the same, so a trained model still fits; decoded images are dropped
        from memory and decoded afresh on the next pass.
        """
        loaders = []
        for dl in self.loaders:
            ds = dl.dataset
            items, labels = [], []
            for path, label in zip(ds.items, ds.labels):
                if path in gone:
                    continue
                new_label = relabelled.get(path)
                if new_label is not None:
                    label = list(new_label) if ds.multi_label and not isinstance(new_label, str) else new_label
                    if ds.multi_label and isinstance(label, str):
                        label = [label]
                items.append(moved.get(path, path))
                labels.append(label)
            new_ds = ImageDataset(items, labels, ds.vocab, ds.multi_label, ds.item_tfms, ds.train)
            loaders.append(dl.new(dataset=new_ds))
        return DataLoaders(*loaders, path=self.path, table=table if table is not None else self.table, root=self.root)

    def without_caches(self) -> DataLoaders:
        """These loaders without their decoded images (cheap to send to other processes)."""
        loaders = [dl.new(dataset=dl.dataset.without_cache()) for dl in self.loaders]
        return DataLoaders(*loaders, path=self.path, table=self.table, root=self.root)

    def test_dl(self, items: Sequence[Path | str], bs: int | None = None) -> DataLoader:
        """A loader over other image files, with the validation set's transforms and no labels."""
        ds = ImageDataset(
            items,
            [[] if self.multi_label else self.vocab[0]] * len(items),
            self.vocab,
            self.multi_label,
            self.item_tfms,
            train=False,
        )
        return self.valid.plain(dataset=ds, bs=bs or self.valid.bs)

    def show_batch(
        self,
        max_n: int = 9,
        nrows: int | None = None,
        ncols: int | None = None,
        figsize: tuple[float, float] | None = None,
        unique: bool = False,
    ):
        """A grid of one training batch with its labels (augmented, as the model sees it); see
        `DataLoader.show_batch`."""
        return self.train.show_batch(max_n=max_n, nrows=nrows, ncols=ncols, figsize=figsize, unique=unique)

    def label_of(self, target: torch.Tensor) -> str:
        return self.train.dataset.label_of(target)

    def __repr__(self) -> str:
        return (
            f"DataLoaders(train={self.train.n} images, valid={self.valid.n} images, {self.c} classes: "
            f"{self.vocab[:10]}{'...' if self.c > 10 else ''})"
        )


def random_split(n: int, valid_pct: float, seed: int | None = None) -> tuple[list[int], list[int]]:
    """(train, valid) indices of `n` items with a random `valid_pct` in valid: fastai's `RandomSplitter`
    exactly (`torch.manual_seed(seed)`, `torch.randperm`, cut at `int(valid_pct * n)`), so a seed gives
    the split fastai gives. Its own generator leaves the global random state alone."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    perm = torch.randperm(n, generator=gen).tolist()
    cut = int(valid_pct * n)
    return perm[cut:], perm[:cut]


def _listing(paths: Sequence[Path], limit: int = 10) -> str:
    shown = "\n  ".join(str(p) for p in paths[:limit])
    more = f"\n  ... and {len(paths) - limit} more" if len(paths) > limit else ""
    return f"\n  {shown}{more}"


class ImageDataLoaders:
    """Constructors for `DataLoaders` from the usual dataset layouts, under fastai's names."""

    @staticmethod
    def from_lists(
        path: Path | str,
        fnames: Sequence[Path | str],
        labels: Sequence,
        valid_idx: Sequence[int] | None = None,
        valid_pct: float | None = 0.2,
        seed: int | None = None,
        vocab: Sequence[str] | None = None,
        multi_label: bool = False,
        item_tfms=None,
        batch_tfms=None,
        bs: int = 64,
        val_bs: int | None = None,
        shuffle: bool = True,
        device=None,
        num_workers: int | None = None,
        bad_files: str = "error",
        table: TableSource | None = None,
        root: Path | str | None = None,
        label_table: Path | str | None = None,
    ) -> DataLoaders:
        """Loaders from parallel lists of files and labels (a label list per file for multi-label);
        `root` is the folder of the files when it is not `path` (see `DataLoaders`).

        `label_table`: a label table (see `nbtrain.label_table`, written by the cleaner's
        `write_label_table()`): its labels replace the labeller's and the files it leaves out are left
        out, with a line that says so; the cleaner's `apply()` on these loaders then rewrites it. Every
        `from_*` and `DataBlock.dataloaders` take it, as they all end here.
        """
        path, fnames, labels = Path(path), [Path(f) for f in fnames], list(labels)
        if len(fnames) != len(labels):
            raise DataError(f"{len(fnames)} files but {len(labels)} labels: give one label per file.")
        if label_table is not None:
            fnames, labels, valid_idx, vocab, table = _with_label_table(
                label_table, fnames, labels, valid_idx, vocab, multi_label, Path(root) if root is not None else path
            )
        if not fnames:
            raise DataError(
                f"No image files found under {path}. Check the path, and that the images have an "
                f"image extension ({', '.join(sorted(IMAGE_EXTENSIONS))})."
            )
        fnames, labels, valid_idx = _without_bad_files(fnames, labels, valid_idx, bad_files)
        vocab = make_vocab(labels, multi_label) if vocab is None else CategoryMap(vocab)
        if not multi_label and len(vocab) == 1:
            raise DataError(
                f"Only one class ({vocab[0]!r}) found under {path}: a classifier needs at least two. "
                "Put each class's images in a folder named for the class."
            )
        t_idx, v_idx = _split_indices(len(fnames), valid_idx, valid_pct, seed)
        tfms = list(item_tfms) if isinstance(item_tfms, (list, tuple)) else ([item_tfms] if item_tfms else [])
        train_ds = ImageDataset(
            [fnames[i] for i in t_idx], [labels[i] for i in t_idx], vocab, multi_label, tfms, train=True
        )
        valid_ds = ImageDataset(
            [fnames[i] for i in v_idx], [labels[i] for i in v_idx], vocab, multi_label, tfms, train=False
        )
        btfms = list(batch_tfms) if isinstance(batch_tfms, (list, tuple)) else ([batch_tfms] if batch_tfms else [])
        train = DataLoader(
            train_ds,
            bs=bs,
            shuffle=shuffle,
            drop_last=shuffle and len(train_ds) > bs,
            batch_tfms=btfms,
            device=device,
            num_workers=num_workers,
            seed=seed,
        )
        valid = DataLoader(
            valid_ds,
            bs=val_bs or bs * 2,
            shuffle=False,
            batch_tfms=btfms,
            augment=False,
            device=device,
            num_workers=num_workers,
            seed=seed,
        )
        return DataLoaders(train, valid, path=path, table=table, root=root)

    @classmethod
    def from_folder(
        cls,
        path: Path | str,
        train: str = "train",
        valid: str = "valid",
        valid_pct: float | None = None,
        seed: int | None = None,
        vocab: Sequence[str] | None = None,
        item_tfms=None,
        batch_tfms=None,
        bs: int = 64,
        ignore_non_images: bool = False,
        **kwargs,
    ) -> DataLoaders:
        """Loaders from class folders: the label of an image is the name of its parent folder.

        Without `valid_pct`, the split comes from the `train` and `valid` folders; with it, every
        image under `path` is split at random, seeded by `seed`.
        """
        path = Path(path)
        if not path.is_dir():
            raise DataError(
                f"{path} is not a folder. Give the folder that holds the class folders "
                f"(or the {train!r} and {valid!r} folders)."
            )
        if valid_pct is not None and not 0 < valid_pct < 1:
            raise DataError(f"valid_pct must be between 0 and 1 (e.g. 0.2 for 20%), not {valid_pct!r}.")
        folders = None if valid_pct is not None else [train, valid]
        if not get_image_files(path):
            raise DataError(
                f"No image files found under {path}: the folder is empty or holds no images "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))}). Images go in one folder per class, "
                f"e.g. {path / train}/cat/1.jpg and {path / valid}/cat/2.jpg."
            )
        if folders is not None:
            missing = [f for f in folders if not (path / f).is_dir()]
            if missing:
                found = sorted(p.name for p in path.iterdir() if p.is_dir() and not _is_hidden(p))
                raise DataError(
                    f"No {' or '.join(repr(m) for m in missing)} folder in {path} (found: {found}). "
                    f"Pass valid_pct=0.2 to split the images at random, or name the folders "
                    f"with train=... and valid=...."
                )
        for root in [path / f for f in folders] if folders else [path]:
            _check_class_root(root, ignore_non_images, class_folders=bool(folders))
        fnames = get_image_files(path, folders=folders)
        if not fnames:
            raise DataError(
                f"No image files found under {path}. Images go in one folder per class, e.g. "
                f"{path / (train if folders else '')}/cat/1.jpg."
            )
        labels = [f.parent.name for f in fnames]
        valid_idx = [i for i, f in enumerate(fnames) if (path / valid) in f.parents] if folders else None
        if folders and not valid_idx:
            raise DataError(f"The {valid!r} folder in {path} has no images. Put some in it, or pass valid_pct=0.2.")
        return cls.from_lists(
            path,
            fnames,
            labels,
            valid_idx=valid_idx,
            valid_pct=valid_pct,
            seed=seed,
            vocab=vocab,
            item_tfms=item_tfms,
            batch_tfms=batch_tfms,
            bs=bs,
            **kwargs,
        )

    @classmethod
    def from_df(
        cls,
        df: pd.DataFrame,
        path: Path | str = ".",
        folder: str | None = None,
        suff: str = "",
        fn_col: int | str = 0,
        label_col: int | str = 1,
        label_delim: str | None = None,
        valid_col: int | str | None = None,
        valid_pct: float = 0.2,
        seed: int | None = None,
        item_tfms=None,
        batch_tfms=None,
        bs: int = 64,
        csv_path: Path | None = None,
        **kwargs,
    ) -> DataLoaders:
        """Loaders from a table of file names and labels; `label_delim` makes it multi-label."""
        path = Path(path)
        cols = list(df.columns)

        def col(c: int | str, what: str) -> str:
            if isinstance(c, int):
                if c >= len(cols):
                    raise DataError(f"{what}={c} but the table has only {len(cols)} columns: {cols}.")
                return cols[c]
            if c not in cols:
                raise DataError(f"{what}={c!r} is not a column of the table; its columns are {cols}.")
            return c

        fn_name, label_name = col(fn_col, "fn_col"), col(label_col, "label_col")
        base = path / folder if folder else path
        fnames = [base / f"{f}{suff}" for f in df[fn_name].astype(str)]
        missing = [f for f in fnames if not f.exists()]
        if missing:
            raise DataError(
                f"{len(missing)} file(s) named in the table do not exist:{_listing(missing)}\n"
                f"Check path= ({path}), folder= and suff=, or remove those rows."
            )
        raw = df[label_name]
        if label_delim is not None:
            labels = [[s for s in str(v).split(label_delim) if s] if pd.notna(v) else [] for v in raw]
        else:
            if raw.isna().any():
                rows = list(df.index[raw.isna()][:10])
                raise DataError(f"Rows {rows} of the table have no label. Fill them in or drop those rows.")
            labels = [str(v) for v in raw]
        valid_idx = None
        if valid_col is not None:
            valid_idx = list(np.flatnonzero(df[col(valid_col, "valid_col")].astype(bool).to_numpy()))
        table = TableSource(df, fn_name, label_name, label_delim, base, suff, csv_path)
        return cls.from_lists(
            path,
            fnames,
            labels,
            valid_idx=valid_idx,
            valid_pct=valid_pct,
            seed=seed,
            multi_label=label_delim is not None,
            item_tfms=item_tfms,
            batch_tfms=batch_tfms,
            bs=bs,
            table=table,
            **kwargs,
        )

    @classmethod
    def from_csv(
        cls,
        path: Path | str,
        csv_fname: str = "labels.csv",
        header: str | int | None = "infer",
        delimiter: str | None = None,
        **kwargs,
    ) -> DataLoaders:
        """Loaders from a CSV file in `path`; the other arguments are `from_df`'s."""
        path = Path(path)
        csv_path = path / csv_fname
        if not csv_path.exists():
            raise DataError(f"No CSV file at {csv_path}. Give its name with csv_fname=.")
        # Labels are text: read as numbers, a column of single digits with an empty cell (an image with
        # no labels, in multi-label data) would come back as floats, "3" as "3.0".
        df = pd.read_csv(csv_path, header=header, delimiter=delimiter or ",", dtype={kwargs.get("label_col", 1): str})
        return cls.from_df(df, path=path, csv_path=csv_path, **kwargs)

    @classmethod
    def from_name_func(
        cls,
        path: Path | str,
        fnames: Sequence[Path | str],
        label_func: Callable[[str], str],
        valid_pct: float = 0.2,
        seed: int | None = None,
        **kwargs,
    ) -> DataLoaders:
        """Loaders whose labels come from each file's name through `label_func`."""
        fnames = [Path(f) for f in fnames]
        return cls.from_lists(
            path, fnames, [label_func(f.name) for f in fnames], valid_pct=valid_pct, seed=seed, **kwargs
        )

    @classmethod
    def from_path_func(
        cls,
        path: Path | str,
        fnames: Sequence[Path | str],
        label_func: Callable[[Path], str],
        valid_pct: float = 0.2,
        seed: int | None = None,
        **kwargs,
    ) -> DataLoaders:
        """Loaders whose labels come from each file's full path through `label_func`."""
        fnames = [Path(f) for f in fnames]
        return cls.from_lists(path, fnames, [label_func(f) for f in fnames], valid_pct=valid_pct, seed=seed, **kwargs)

    @classmethod
    def from_name_re(
        cls,
        path: Path | str,
        fnames: Sequence[Path | str],
        pat: str,
        valid_pct: float = 0.2,
        seed: int | None = None,
        **kwargs,
    ) -> DataLoaders:
        """Loaders whose label is the first group of the regular expression `pat` in each file name,
        e.g. `r'^(.+)_\\d+\\.jpg$'` for Oxford-IIIT Pets."""
        regex = re.compile(pat)
        fnames = [Path(f) for f in fnames]
        labels, unmatched = [], []
        for f in fnames:
            m = regex.search(f.name)
            if m is None or not m.groups():
                unmatched.append(f)
            else:
                labels.append(m.group(1))
        if unmatched:
            raise DataError(
                f"The pattern {pat!r} does not match {len(unmatched)} file name(s), or has no group:"
                f"{_listing(unmatched)}\nFix the pattern (its first group is the label) or leave those files out."
            )
        return cls.from_lists(path, fnames, labels, valid_pct=valid_pct, seed=seed, **kwargs)

    @classmethod
    def from_path_re(cls, path: Path | str, fnames: Sequence[Path | str], pat: str, **kwargs) -> DataLoaders:
        """Like `from_name_re`, matched against the whole path."""
        regex = re.compile(pat)
        fnames = [Path(f) for f in fnames]
        unmatched = [f for f in fnames if not regex.search(str(f))]
        if unmatched:
            raise DataError(f"The pattern {pat!r} does not match {len(unmatched)} path(s):{_listing(unmatched)}")
        return cls.from_path_func(path, fnames, lambda f: regex.search(str(f)).group(1), **kwargs)


def _with_label_table(
    label_table: Path | str,
    fnames: list[Path],
    labels: list,
    valid_idx: Sequence[int] | None,
    vocab: Sequence | None,
    multi_label: bool,
    root: Path,
) -> tuple[list[Path], list, list[int] | None, Sequence | None, TableSource]:
    """The files, labels, validation indices and vocabulary after a label table, and the table as the
    source the cleaner rewrites. A vocabulary given keeps its classes (a model trained on it still fits),
    with the table's new labels added at the end."""
    try:
        out = apply_label_table(label_table, fnames, labels, valid_idx, multi_label, root)
    except LabelTableError as e:
        raise DataError(str(e)) from None
    if vocab is not None:
        seen = [lab for labs in out.labels for lab in labs] if multi_label else out.labels
        vocab = [*vocab, *sorted({str(v) for v in seen} - {str(v) for v in vocab})]
    source = TableSource(out.table, FILE, out.label_col, " " if multi_label else None, out.folder, "", out.path)
    return out.fnames, out.labels, out.valid_idx, vocab, source


def _without_bad_files(
    fnames: list[Path], labels: list, valid_idx: Sequence[int] | None, bad_files: str
) -> tuple[list[Path], list, list[int] | None]:
    """The files whose headers read as images, with their labels and validation indices; the others
    refused (bad_files="error") or left out with a warning ("skip")."""
    if bad_files not in ("error", "skip"):
        raise DataError(f"bad_files must be 'error' or 'skip', not {bad_files!r}.")
    bad = _bad_headers(fnames)
    if bad and bad_files == "error":
        lines = "\n  ".join(f"{f}: {r}" for f, r in list(bad.items())[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise DataError(
            f"{len(bad)} file(s) are not usable images:\n  {lines}{more}\n"
            "Delete them (`for f in verify_images(get_image_files(path)): f.unlink()`), "
            "or pass bad_files='skip' to leave them out."
        )
    if not bad:
        return fnames, labels, None if valid_idx is None else list(valid_idx)
    warnings.warn(f"Leaving out {len(bad)} file(s) that are not usable images:{_listing(list(bad))}", stacklevel=4)
    keep = [i for i, f in enumerate(fnames) if f not in bad]
    new_index = {old: new for new, old in enumerate(keep)}
    valid_idx = None if valid_idx is None else [new_index[i] for i in valid_idx if i in new_index]
    return [fnames[i] for i in keep], [labels[i] for i in keep], valid_idx


def _split_indices(
    n: int, valid_idx: Sequence[int] | None, valid_pct: float | None, seed: int | None
) -> tuple[list[int], list[int]]:
    """(training, validation) indices: `valid_idx` when given, else a random `valid_pct`."""
    if valid_idx is None:
        if valid_pct is None or not 0 < valid_pct < 1:
            raise DataError(f"valid_pct must be between 0 and 1 (e.g. 0.2 for 20%), not {valid_pct!r}.")
        train_idx, valid_idx = random_split(n, valid_pct, seed)
        valid_idx = valid_idx or train_idx[:1]  # a tiny set still gets one image to validate on
    vset = set(valid_idx)
    t_idx = [i for i in range(n) if i not in vset]
    if not t_idx:
        raise DataError("The training set is empty: every image went to the validation set.")
    return t_idx, sorted(vset)


def _check_class_root(root: Path, ignore_non_images: bool, class_folders: bool) -> None:
    """Warn of symlinks not followed, refuse non-image files (unless ignored) and empty class folders."""
    links = _unfollowed_links(root)
    if links:
        warnings.warn(
            f"Not following {len(links)} symlink(s) under {root} (to folders, or looping); images "
            f"reached only through them are left out:{_listing(links)}\n"
            "Copy those images into the dataset, or build the loaders from the real folder.",
            stacklevel=3,
        )
    others = _non_image_files(root)
    if others and not ignore_non_images:
        raise DataError(
            f"{len(others)} file(s) under {root} are not images:{_listing(others)}\n"
            "Move them out of the dataset, or pass ignore_non_images=True."
        )
    class_dirs = [d for d in root.iterdir() if d.is_dir() and not _is_hidden(d)] if class_folders else []
    for d in sorted(class_dirs):
        if not get_image_files(d):
            raise DataError(f"The class folder {d} has no images. Add images or remove the folder.")
