"""Label tables: a review's result as a CSV of file and label, which the loaders read in place of their
labeller, so a dataset is cleaned without writing, copying or moving one image; and a cleaned copy in
class folders made from one, with hard links where the file system allows.

The format, one row per image kept (deleted images are left out), sorted by file:

    file,label,root
    cats/1.jpg,cat,/kaggle/input/pets

`file` is the image's path relative to the dataset's folder, with `/`; `label` its class, or for
multi-label data a column `labels` instead, the labels separated by spaces (fastai's convention; empty
for an image with none); `root` the folder the table was written for. The paths are relative, so the
table still fits when the dataset sits elsewhere; `root` is where to look when the loaders' own folder
is not it. The file is plain CSV, so `ImageDataLoaders.from_csv(root, table)` reads it too.

Read-only data (Kaggle's /kaggle/input), labels from file names and labels from a CSV are all cleaned
the same way: the table goes in the output folder (`locations.working_dir()`), the images stay.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from .fileops import atomic_write
from .locations import is_read_only, working_dir

FILE, LABEL, LABELS, ROOT = "file", "label", "labels", "root"
# Errors of os.link that mean "not here": another device, a file system without hard links, a file the
# kernel's protected_hardlinks will not let this user link. The file is then copied.
_CANNOT_LINK = {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


class LabelTableError(ValueError):
    """A label table that cannot be used, or a cleaned copy that cannot be made; nothing was changed."""


# ---------------------------------------------------------------------------------------------
# Writing a table


def label_text(label: object, multi_label: bool) -> str:
    """A label (or for multi-label data a collection of labels) as the table's cell holds it."""
    if not multi_label:
        text = str(label)
        if not text.strip():
            raise LabelTableError(f"An empty label ({label!r}) cannot go in a label table: give every image a class.")
        return text
    labels = [label] if isinstance(label, str) else sorted(str(v) for v in label)
    spaced = [v for v in labels if not v.strip() or " " in v]
    if spaced:
        raise LabelTableError(
            f"The label {spaced[0]!r} is empty or holds a space, which separates the labels of multi-label "
            "data: rename that class (e.g. with '_' for the space)."
        )
    return " ".join(labels)


def make_label_table(
    items: Sequence[Path],
    labels: Sequence,
    root: Path | str,
    multi_label: bool = False,
    deleted: Iterable[Path] = (),
    relabelled: Mapping[Path, object] | None = None,
) -> pd.DataFrame:
    """The table of `items` (with their `labels`) after the choices: the `deleted` files left out, the
    `relabelled` ones with their new label (a class, or a collection of them for multi-label data)."""
    root = Path(root).absolute()
    gone, relabelled = {Path(p) for p in deleted}, dict(relabelled or {})
    rows = []
    for item, label in zip(items, labels):
        item = Path(item)
        if item in gone:
            continue
        rel = Path(os.path.relpath(item.absolute(), root)).as_posix()
        rows.append((rel, label_text(relabelled.get(item, label), multi_label), str(root)))
    df = pd.DataFrame(rows, columns=[FILE, LABELS if multi_label else LABEL, ROOT])
    return df.sort_values(FILE, kind="stable").reset_index(drop=True)


def default_table_path(root: Path | str) -> Path:
    """Where a dataset's label table goes when no `dest` is given: `<dataset name>_labels.csv` in the
    output folder (Kaggle's /kaggle/working, else the current folder), or beside the dataset when that
    folder is inside it (a file in the dataset would be taken for a stray non-image)."""
    root = Path(root).absolute()
    folder = working_dir().absolute()
    inside = folder == root or root in folder.parents
    return (root.parent if inside else folder) / f"{root.name}_labels.csv"


def write_label_table(table: pd.DataFrame, dest: Path | str | None = None) -> Path:
    """Write `table` (from `make_label_table`) atomically to `dest` (a .csv file, or a folder to hold
    `<dataset name>_labels.csv`; by default `default_table_path`), and say where. A file there that is
    not a label table (the dataset's own labels.csv) is never overwritten. Returns the path."""
    if not len(table):
        raise LabelTableError("Every image is left out, so there is no label table to write: keep some.")
    root = Path(table[ROOT].iloc[0])
    path = default_table_path(root) if dest is None else Path(dest)
    if path.is_dir() or (dest is not None and path.suffix.lower() != ".csv"):
        path = path / default_table_path(root).name
    path = path.absolute()
    if path.exists():
        try:
            read_label_table(path)
        except LabelTableError as e:
            raise LabelTableError(
                f"{path} exists and is not a label table, so it was left as it is ({e}). Give another dest=."
            ) from None
    if is_read_only(path.parent):
        raise LabelTableError(f"{path.parent} is read-only: give dest= a writable folder (e.g. {working_dir()}).")
    atomic_write(path, lambda f: table.to_csv(f, index=False), text=True)
    return path


def loader_items(dls) -> tuple[list[Path], list]:
    """The files of loaders (training, then validation) and their labels."""
    items, labels = [], []
    for ds in (dls.train_ds, dls.valid_ds):
        items += list(ds.items)
        labels += list(ds.labels)
    return items, labels


def write_choices(
    dls, deleted: Iterable[Path], relabelled: Mapping[Path, object], dest: Path | str | None = None
) -> Path:
    """Write the label table of loaders `dls` after a review's choices, and say so; see `write_label_table`.
    No image is written, copied or moved."""
    items, labels = loader_items(dls)
    present = {Path(p) for p in items}
    deleted, relabelled = set(deleted) & present, {p: v for p, v in relabelled.items() if p in present}
    table = make_label_table(items, labels, dls.root, dls.multi_label, deleted, relabelled)
    path = write_label_table(table, dest)
    print(
        f"Wrote the label table {path}: {len(table)} images, {len(relabelled)} relabelled, {len(deleted)} left out; "
        f"no image was changed. Train on it with label_table={str(path)!r}."
    )
    return path


# ---------------------------------------------------------------------------------------------
# Reading a table


def read_label_table(path: Path | str) -> pd.DataFrame:
    """A label table read and checked: a `file` column, a `label` or `labels` column, each file once."""
    path = Path(path)
    if not path.is_file():
        raise LabelTableError(f"No label table at {path}. Give the path that write_label_table() returned.")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise LabelTableError(f"{path} is not a readable CSV ({type(e).__name__}: {e}).") from None
    cols = list(df.columns)
    if FILE not in cols or (LABEL in cols) == (LABELS in cols):
        raise LabelTableError(
            f"{path} has the columns {cols}; a label table has '{FILE}' and either '{LABEL}' (one class per "
            f"image) or '{LABELS}' (space-separated, multi-label). Write it with write_label_table()."
        )
    empty = df.index[df[FILE].str.strip() == ""].tolist()
    if empty:
        raise LabelTableError(f"Rows {empty[:10]} of {path} have no file name. Fill them in or drop them.")
    twice = sorted(set(df[FILE][df[FILE].duplicated()]))
    if twice:
        raise LabelTableError(
            f"{path} names {len(twice)} file(s) more than once, e.g. {twice[0]!r}: keep one row each."
        )
    if LABEL in cols:
        unlabelled = df.index[df[LABEL].str.strip() == ""].tolist()
        if unlabelled:
            raise LabelTableError(f"Rows {unlabelled[:10]} of {path} have no label. Fill them in or drop them.")
    return df


def table_root(df: pd.DataFrame) -> Path | None:
    """The folder a table was written for (its `root` column), when it says."""
    roots = sorted(set(df[ROOT])) if ROOT in df.columns else []
    return Path(roots[0]) if len(roots) == 1 and roots[0] else None


def _resolved(df: pd.DataFrame, path: Path, root: Path) -> tuple[Path, list[Path]]:
    """The folder the table's files are under (the loaders' `root`, else the table's own) and the files."""
    missing: list[Path] = []
    for base in dict.fromkeys(b for b in (root, table_root(df)) if b is not None):
        files = [base / f for f in df[FILE]]
        gone = [f for f in files if not f.is_file()]
        if not gone:
            return base, files
        missing = missing or gone
    shown = "\n  ".join(str(f) for f in missing[:10]) + (
        f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
    )
    raise LabelTableError(
        f"{len(missing)} of the {len(df)} files in the label table {path} do not exist:\n  {shown}\n"
        f"Its paths are relative to the dataset's folder ({table_root(df) or 'not recorded'}): build the loaders "
        "from that folder, or write the table again from the dataset as it is now."
    )


def _key(p: Path) -> str:
    return os.path.normpath(os.path.abspath(p))


@dataclass
class Relabelled:
    """Loaders' items after a label table: the files kept, their labels, the validation indices among
    them, and what the table is and where its files are (for the cleaner to rewrite it next)."""

    fnames: list[Path]
    labels: list
    valid_idx: list[int] | None
    table: pd.DataFrame
    label_col: str
    folder: Path
    path: Path


def apply_label_table(
    path: Path | str,
    fnames: Sequence[Path],
    labels: Sequence,
    valid_idx: Sequence[int] | None,
    multi_label: bool,
    root: Path | str,
) -> Relabelled:
    """`fnames` and `labels` as the label table at `path` has them: its label replaces the labeller's,
    a file it leaves out is left out; says what changed. A label new to the dataset is fine. The table's
    paths are taken relative to `root` (the loaders' folder), or to the folder recorded in it."""
    path = Path(path).absolute()
    df = read_label_table(path)
    folder, files = _resolved(df, path, Path(root))
    col = LABELS if LABELS in df.columns else LABEL
    if col == LABELS and not multi_label:
        raise LabelTableError(
            f"{path} is a multi-label table (a '{LABELS}' column) but these loaders take one label per image: "
            "build them as multi-label (label_delim=' ', or MultiCategoryBlock), or pass a single-label table."
        )
    by_key = dict(zip(map(_key, files), df[col]))
    flat = [v for labs in labels for v in labs] if multi_label else list(labels)
    own = {str(v): v for v in flat}  # "True" -> True: the labeller's own values stay its own
    keep, new_labels, n_changed = [], [], 0
    for i, (f, old) in enumerate(zip(fnames, labels)):
        text = by_key.get(_key(f))
        if text is None:
            continue
        if multi_label:
            new = [own.get(t, t) for t in text.split()]
            n_changed += set(map(str, new)) != set(map(str, old))
        else:
            new = own.get(text, text)
            n_changed += str(new) != str(old)
        keep.append(i)
        new_labels.append(new)
    if not keep:
        raise LabelTableError(
            f"None of the loaders' {len(fnames)} files is in the label table {path} (its files are under {folder}): "
            "was it written for another dataset? Pass the table written for this one."
        )
    position = {old: new for new, old in enumerate(keep)}
    valid = None if valid_idx is None else [position[i] for i in valid_idx if i in position]
    if valid_idx and not valid:
        raise LabelTableError(f"The label table {path} leaves out every validation image: keep some of them.")
    others = len(df) - len(keep)
    print(
        f"Using the label table {path}: {n_changed} relabelled, {len(fnames) - len(keep)} left out"
        + (f" ({others} of its files are not among these items)" if others else "")
        + "."
    )
    return Relabelled([Path(fnames[i]) for i in keep], new_labels, valid, df, col, folder, path)


# ---------------------------------------------------------------------------------------------
# A cleaned copy


def _check_dest(dest: Path, root: Path) -> None:
    if dest == root or root in dest.parents:
        raise LabelTableError(f"The copy's folder {dest} is inside the dataset {root}; choose a folder outside it.")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise LabelTableError(f"{dest} exists and is not empty; nothing was copied. Choose a new or empty folder.")
    if is_read_only(dest.parent if not dest.exists() else dest):
        raise LabelTableError(f"{dest} is in a read-only place; choose a writable folder (e.g. under {working_dir()}).")


def _class_folder(label: str) -> str:
    if not label.strip() or label in (".", "..") or "/" in label or os.sep in label or label.startswith("."):
        raise LabelTableError(
            f"The class {label!r} cannot be a folder name; rename it in the table, or use the table itself."
        )
    return label


def _targets(df: pd.DataFrame, multi_label: bool) -> list[PurePosixPath]:
    """Where each of the table's files goes in the copy: `<class>/<name>`, with the file's folders in
    its name when two files of a class share a name; for multi-label data, where it was."""
    if multi_label:
        outside = [f for f in df[FILE] if ".." in PurePosixPath(f).parts or PurePosixPath(f).is_absolute()]
        if outside:
            raise LabelTableError(f"{outside[0]!r} is outside the dataset's folder, so the copy has no place for it.")
        return [PurePosixPath(f) for f in df[FILE]]
    names = [(_class_folder(lab), PurePosixPath(f).name) for f, lab in zip(df[FILE], df[LABEL])]
    taken: dict[tuple[str, str], int] = {}
    for key in names:
        taken[key] = taken.get(key, 0) + 1
    out, used = [], set()
    for (label, name), f in zip(names, df[FILE]):
        if taken[(label, name)] > 1:
            name = "_".join(p for p in PurePosixPath(f).parts if p != "..")
        base, n = PurePosixPath(label) / name, 1
        target = base
        while target in used:
            target, n = base.with_name(f"{base.stem}_{n}{base.suffix}"), n + 1
        used.add(target)
        out.append(target)
    return out


def _link_or_copy(src: Path, dst: Path) -> bool:
    """Hard-link `src` at `dst`, or copy it where that cannot be; True when linked. A copy is made
    writable; a link shares the source's mode, which must not change."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
        return True
    except OSError as e:
        if e.errno not in _CANNOT_LINK:
            raise
    shutil.copy2(src, dst)
    os.chmod(dst, os.stat(dst).st_mode | stat.S_IWUSR)
    return False


def cleaned_copy(label_table: Path | str, dest: Path | str, root: Path | str | None = None) -> Path:
    """A copy of the dataset as its label table has it, in class folders (`dest/<class>/<file name>`),
    for `ImageDataLoaders.from_folder(dest, valid_pct=0.2)`; the images left out of the table are not in it.

    Files are hard-linked where the file system allows (no space taken), copied where not (another
    device); the message says which. A hard link is the same file as the source: change the copy's
    folders freely (the cleaner moves and deletes links), never an image's bytes in place. Multi-label
    data cannot be class folders: its copy keeps the source's layout, with `dest/labels.csv` (a label
    table) for `from_csv(dest, 'labels.csv', label_delim=' ')`. The source is never changed; `dest` must
    be new or empty and outside the dataset. The copy is built in a hidden folder beside `dest` and
    renamed into place at the end, so a cut-off copy never looks finished. Returns `dest`.
    """
    df = read_label_table(label_table)
    given = root if root is not None else table_root(df)
    if given is None:
        raise LabelTableError(f"{label_table} does not record the dataset's folder: pass root=.")
    source, files = _resolved(df, Path(label_table), Path(given).absolute())
    source, dest = source.resolve(), Path(dest).resolve()
    _check_dest(dest, source)
    multi_label = LABELS in df.columns
    targets = _targets(df, multi_label)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        build = tmp / "data"
        linked = sum(_link_or_copy(src, build / t) for src, t in zip(files, targets))
        if multi_label:
            copy_table = df.assign(**{ROOT: str(dest)})
            atomic_write(build / "labels.csv", lambda f: copy_table.to_csv(f, index=False), text=True)
        os.replace(build, dest)  # replaces an empty dest folder; atomic
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    copied = len(files) - linked
    layout = "in the source's layout with labels.csv" if multi_label else f"in {df[LABEL].nunique()} class folders"
    how = ", ".join(
        part
        for part in (
            f"{linked} hard-linked (the source's own files: never edit them in place)" if linked else "",
            f"{copied} copied (hard links are not possible there)" if copied else "",
        )
        if part
    )
    print(f"Cleaned copy at {dest}: {len(files)} images {layout}; {how}. The source {source} was not changed.")
    return dest
