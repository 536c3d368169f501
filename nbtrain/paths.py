"""fastai's `Path`, with `ls()`, and its list of paths with `.map`.

fastai gives `pathlib.Path` an `ls` method by patching the class (fastcore's `@patch`). nbtrain
changes no other library's classes, so `from nbtrain import *` gives this subclass instead: the
book's `Path().ls(file_exts='.pkl')` and `untar_data(...).ls()` run, and every other pathlib
path is left as it is.
"""

from __future__ import annotations

import itertools
import mimetypes
import pathlib
from collections.abc import Callable, Iterable

# pathlib.Path itself can be subclassed only from Python 3.12; its concrete class can be on every version.
_ConcretePath = type(pathlib.Path())


class PathList(list):
    """A list of paths with fastai's `.map`, so the book's `failed.map(Path.unlink)` runs."""

    def map(self, f: Callable) -> list:
        return [f(p) for p in self]


class Path(_ConcretePath):
    """A `pathlib.Path` with fastai's `ls`."""

    def ls(
        self, n_max: int | None = None, file_type: str | None = None, file_exts: str | Iterable[str] | None = None
    ) -> PathList:
        """The folder's entries (sorted, where fastai's keep the file system's order), at most `n_max`,
        only those with an extension in `file_exts` or of MIME type `file_type` (e.g. 'image') when given."""
        exts = [file_exts] if isinstance(file_exts, str) else list(file_exts or [])
        if file_type:
            exts += [k for k, v in mimetypes.types_map.items() if v.startswith(file_type + "/")]
        entries = (p for p in sorted(self.iterdir()) if not exts or p.suffix in exts)
        return PathList(itertools.islice(entries, n_max))
