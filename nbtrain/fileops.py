"""Applying a person's cleaning choices to image files, so that no data is ever lost.

A choice is an `Action`: delete a file, or relabel it. In a folder dataset (label = parent folder)
relabelling moves the file into the sibling class folder, `src.parent.parent / label / src.name`;
in a table dataset (`apply_table_actions`) it rewrites the table instead and files are not touched.

How `apply_actions` keeps every byte safe:

- It refuses read-only data (Kaggle's /kaggle/input) before touching anything, and holds an
  exclusive lock on the dataset, so two appliers never interleave.
- It never overwrites: a taken name gets a suffix (`1.jpg` -> `1_1.jpg`), and the move itself is
  `os.link` (which fails if the name exists) followed by `os.unlink`.
- It never leaves the dataset's root, symlinks included.
- Deleting first moves the file into a staging folder inside the root; the staged files are unlinked
  only when everything else is done (the "commit"). `trash=True` moves them to a trash folder instead.
- Every file operation is written to a journal (JSON Lines) and fsynced *before* it is done, so an
  apply cut off at any point, even by SIGKILL, can be finished with `resume(journal)` or reverted
  with `undo(journal)`. Both work out what happened from the files themselves (is the file still at
  its source? at its destination? both, as one hard link?), so they are safe to run twice or after
  being cut off in turn. After a power cut the journal is on disk; the links and unlinks rely on the
  file system's own journal (ext4, xfs) to reach the disk in order.

The journal lives in `root/.nbtrain/` (hidden, so the loaders skip it) unless the caller passes
another place. Its first line is a header (format version, the resolved absolute root, created time,
pid, id); its second is the plan (every operation, with paths relative to the root, POSIX style);
then one "begin" line before and one "done" line after each operation.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import stat
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING

from .locations import KAGGLE_WORKING, is_read_only, working_dir

if TYPE_CHECKING:
    import pandas as pd

try:
    import fcntl
except ImportError:  # Windows: a student's laptop must still import nbtrain and clean a dataset
    fcntl = None
    import msvcrt

JOURNAL_VERSION = 1
STATE_DIR = ".nbtrain"

# Test hooks (the `_hook` argument) are called with these names between the steps of an operation, so
# that a test can cut a run off between any two of them.
Hook = Callable[[str], None]


class ReadOnlyDatasetError(PermissionError):
    """The dataset cannot be written; copy it somewhere writable with `copy_dataset`."""


class DatasetLockedError(RuntimeError):
    """Another process is applying, resuming or undoing changes to the same dataset."""


class InjectedFault(Exception):
    """Raised by `apply_actions(..., _fail_after=n)`, which tests use to cut an apply off halfway."""


@dataclass(frozen=True)
class Action:
    """One cleaning choice for one image file.

    Attributes:
        kind: "delete" or "relabel".
        src: the image file; a relative path is taken from the current folder, as everywhere in Python.
        label: the new class for "relabel" (for a table with several labels per row, a list or set).
    """

    kind: str
    src: Path
    label: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("delete", "relabel"):
            raise ValueError(f"Action kind must be 'delete' or 'relabel', not {self.kind!r}.")
        if self.kind == "relabel" and self.label is None:
            raise ValueError(f"Relabelling {self.src} needs a label: Action('relabel', path, 'new_class').")
        object.__setattr__(self, "src", Path(self.src))


@dataclass
class ApplyReport:
    """What an apply, resume or undo did (or, for a dry run, would do).

    Attributes:
        deleted: files deleted (unlinked, or moved to the trash).
        moved: (from, to) pairs: relabelled files, or for an undo the files put back.
        skipped: relabels to the class the file already has.
        missing: files that were not there to act on.
        errors: one line per operation that failed; that file was left where it was.
        unrecoverable: files an undo could not put back because the apply had already unlinked them.
        notes: anything else the person should know.
        journal: the journal to pass to `resume` or `undo`; None when nothing was written.
        operation: "apply", "dry run", "resume" or "undo".
        trash: where deleted files were moved, when `trash=True`.
    """

    deleted: list[Path] = field(default_factory=list)
    moved: list[tuple[Path, Path]] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    missing: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    unrecoverable: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    journal: Path | None = None
    operation: str = "apply"
    trash: Path | None = None

    def summary(self) -> str:
        """One line, e.g. "3 deleted, 2 relabelled, 1 skipped (already in class), 1 missing"."""
        if self.operation == "undo":
            parts = [f"{len(self.moved)} put back"]
            if self.unrecoverable:
                parts.append(
                    f"{len(self.unrecoverable)} unrecoverable (unlinked when the apply finished; "
                    "apply with trash=True to keep deleted files)"
                )
        else:
            parts = [f"{len(self.deleted)} deleted", f"{len(self.moved)} relabelled"]
            if self.skipped:
                parts.append(f"{len(self.skipped)} skipped (already in class)")
        if self.missing:
            parts.append(f"{len(self.missing)} missing")
        if self.errors:
            parts.append(f"{len(self.errors)} failed")
        text = ", ".join(parts)
        return f"Dry run, nothing changed: would have {text}" if self.operation == "dry run" else text

    def __str__(self) -> str:
        lines = [self.summary()]
        if self.trash and self.deleted:
            lines.append(f"Deleted files are kept in {self.trash}")
        lines += [f"  missing: {p}" for p in self.missing]
        lines += [f"  unrecoverable: {p}" for p in self.unrecoverable]
        lines += [f"  failed: {e}" for e in self.errors]
        lines += self.notes
        if self.journal:
            lines.append(f"Journal: {self.journal} (fileops.undo(journal) reverts, fileops.resume(journal) finishes)")
        return "\n".join(lines)


# -- read-only data and copying it ------------------------------------------------------------------


def _suggest_copy(root: Path) -> str:
    if KAGGLE_WORKING.is_dir():
        dest = KAGGLE_WORKING / root.name
    else:
        dest = (Path.home() if is_read_only(Path.cwd()) else Path.cwd()) / root.name
    return f"from nbtrain.fileops import copy_dataset; path = copy_dataset({str(root)!r}, {str(dest)!r})"


def _refuse_read_only(root: Path, folders: Iterable[Path]) -> None:
    for folder in [root, *folders]:
        if is_read_only(folder):
            raise ReadOnlyDatasetError(
                f"{folder} is read-only, so the cleaning choices cannot be applied to the dataset at {root}. "
                f"Nothing was changed. Copy the dataset somewhere writable and use the copy:\n"
                f"    {_suggest_copy(root)}\n"
                f"then build the DataLoaders from `path`, train, and clean again. Or leave every file as it is: "
                f"the cleaner's write_label_table() writes the choices as a table the next run reads (label_table=)."
            )


def copy_dataset(src: Path | str, dest: Path | str | None = None) -> Path:
    """Copy a (read-only) dataset to a writable place and return where the copy is.

    `dest` defaults to /kaggle/working/<name> on Kaggle; elsewhere it must be given. An existing,
    non-empty `dest` is never overwritten. The copy is made in a hidden folder next to `dest` and
    renamed into place at the end, so a copy that was cut off never looks finished. The source's
    `.nbtrain` folder (journals, trash) is not copied: its journals name the source's location.
    """
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"copy_dataset: {src} is not a folder. Pass the dataset's root folder.")
    if dest is None:
        if not KAGGLE_WORKING.is_dir():
            raise ValueError(
                f"copy_dataset({str(src)!r}) needs a destination outside Kaggle: "
                f"copy_dataset({str(src)!r}, 'path/to/writable/{src.name}')."
            )
        dest = KAGGLE_WORKING / src.name
    dest = Path(dest).absolute()
    if dest == src.resolve() or src.resolve() in dest.resolve().parents:
        raise ValueError(
            f"copy_dataset: the destination {dest} is inside the source {src}; choose a folder outside it."
        )
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(
            f"copy_dataset: {dest} already exists and is not empty; nothing was copied. "
            f"Use it as it is, or choose another destination."
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    if is_read_only(dest.parent):
        raise ReadOnlyDatasetError(f"copy_dataset: {dest.parent} is read-only; choose a writable destination.")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        copy = tmp / "data"
        shutil.copytree(src, copy, ignore=shutil.ignore_patterns(STATE_DIR))
        _make_writable(copy)
        os.replace(copy, dest)  # replaces an empty dest folder; atomic
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _make_writable(folder: Path) -> None:
    # copytree keeps the source's modes, and a read-only source would give a read-only copy.
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in [".", *dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            mode = os.lstat(p).st_mode
            if not stat.S_ISLNK(mode) and not mode & stat.S_IWUSR:
                os.chmod(p, stat.S_IMODE(mode) | stat.S_IWUSR)


# -- the lock and the journal -------------------------------------------------------------------------


class _DatasetLock:
    """An exclusive flock on root/.nbtrain/lock; the kernel drops it when the holder dies, even by SIGKILL."""

    def __init__(self, root: Path):
        self.path = root / STATE_DIR / "lock"
        self.fd: int | None = None

    def __enter__(self) -> _DatasetLock:
        self.path.parent.mkdir(exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:  # a byte past the holder's pid, so the pid stays readable by whoever is refused
                os.lseek(fd, 64, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                os.lseek(fd, 0, os.SEEK_SET)
        except OSError as e:  # held: BlockingIOError from flock, any OSError from msvcrt
            if fcntl is not None and not isinstance(e, BlockingIOError):
                os.close(fd)
                raise
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DatasetLockedError(
                f"Another process (pid {holder}) is changing the dataset at {self.path.parent.parent} "
                f"(it holds {self.path}). Nothing was changed. Wait for it to finish, then try again."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())  # only to name the holder in the error above
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None


class _Journal:
    """An append-only JSON Lines file."""

    def __init__(self, path: Path, create: bool):
        self.path = path
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.f = open(path, "x", encoding="utf-8")
            _fsync_dir(path.parent)
            return
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            torn = f.tell() > 0 and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n"
        self.f = open(path, "a", encoding="utf-8")
        if torn:  # a line cut off by a kill must not swallow the next one
            self.f.write("\n")

    def write(self, record: dict, sync: bool = True) -> None:
        self.f.write(json.dumps({"t": round(time.time(), 6), **record}) + "\n")
        self.f.flush()
        if sync:
            os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":  # folders cannot be opened there; NTFS orders its own metadata
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO], None], text: bool = False) -> None:
    """Write `path` through `write(f)` on a temporary file beside it, fsync, then rename it over `path`:
    readers, and a kill mid-write, see the old file or the complete new one, never half of one.

    The temporary file's name holds the writer's process id, so the leftovers of a writer that was
    killed are removed by the next write, while another process's write in progress is left alone.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_writers_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") if text else os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _remove_dead_writers_temps(path: Path) -> None:
    prefix = f".{path.name}."
    for tmp in path.parent.iterdir():
        name = tmp.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix) :].split(".")[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@dataclass
class _Op:
    """One planned file operation; its paths are relative to the resolved root, POSIX style."""

    i: int
    op: str  # "move" (relabel), "stage" (delete; unlinked at the commit) or "trash" (delete into the trash)
    src: str
    dst: str


@dataclass
class _Plan:
    ops: list[_Op] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class _History:
    """A journal read back."""

    header: dict | None = None
    plan: _Plan | None = None
    last_dst: dict[int, str] = field(default_factory=dict)  # per operation, the destination of its latest "begin"
    begun: list[tuple[str, int | str]] = field(default_factory=list)  # ("op", i) or ("mkdir", folder), in order
    commit_begun: bool = False
    undo_begun: bool = False


def _read_journal(path: Path) -> _History:
    if not path.is_file():
        raise FileNotFoundError(f"No journal at {path}. An apply's journal is <dataset>/{STATE_DIR}/journal-*.jsonl.")
    h, seen = _History(), set()
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # torn by a kill while being written, so never fsynced and never acted on
        kind, op, state = rec.get("kind"), rec.get("op"), rec.get("state")
        if kind == "header":
            if rec.get("version") != JOURNAL_VERSION:
                raise ValueError(
                    f"{path} is a version {rec.get('version')} journal; this nbtrain reads version {JOURNAL_VERSION}."
                )
            h.header = rec
        elif kind == "plan":
            h.plan = _Plan([_Op(**o) for o in rec["ops"]], rec["skipped"], rec["missing"], rec["errors"])
        elif op in ("move", "stage", "trash", "mkdir") and state == "begin":
            key = ("mkdir", rec["dst"]) if op == "mkdir" else ("op", rec["i"])
            if op != "mkdir":
                h.last_dst[rec["i"]] = rec["dst"]
            if key not in seen:
                seen.add(key)
                h.begun.append(key)
        elif op == "commit":
            h.commit_begun = True
        elif op == "undo":
            h.undo_begun = True
    return h


# -- checks on labels and paths -----------------------------------------------------------------------


def _check_label(label: object) -> str:
    if not isinstance(label, str) or label in ("", ".", "..") or any(c in label for c in "/\\\0"):
        raise ValueError(
            f"Cannot relabel to {label!r}: a label must be a plain folder name (not empty, "
            f"not '.' or '..', without '/', '\\' or NUL), such as 'dog'. Nothing was changed."
        )
    return label


def _inside(root: Path, path: Path, what: str) -> PurePosixPath:
    """`path` (already resolved) relative to the resolved `root`; ValueError if it is not below it."""
    try:
        rel = PurePosixPath(path.relative_to(root).as_posix())
    except ValueError:
        raise ValueError(
            f"{what} {path} is outside the dataset's root {root}; nbtrain never moves files "
            f"out of the dataset. Nothing was changed."
        ) from None
    if rel.parts[:1] == (STATE_DIR,) or not rel.parts:
        raise ValueError(f"{what} {path} is not a place for images in the dataset at {root}. Nothing was changed.")
    return rel


def _free_name(folder: Path, name: str, taken: set[Path]) -> Path:
    """`folder/name`, else `folder/stem_1.ext`, `stem_2.ext`...: the first that neither exists nor is taken."""
    candidate, stem, suffix, k = folder / name, Path(name).stem, Path(name).suffix, 0
    while os.path.lexists(candidate) or candidate in taken:
        k += 1
        candidate = folder / f"{stem}_{k}{suffix}"
    return candidate


def _same_file(a: Path, b: Path) -> bool:
    sa, sb = os.lstat(a), os.lstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


# -- planning -----------------------------------------------------------------------------------------


def _plan(actions: Sequence[Action], root: Path, trash: bool, run_id: str) -> tuple[_Plan, dict[str, Path]]:
    """Every operation with its destination name, touching nothing; and each file's path as the caller wrote it."""
    plan, shown, choice = _Plan(), {}, {}
    deleted_to = PurePosixPath(STATE_DIR, "trash" if trash else "staging", run_id)
    taken: set[Path] = set()
    for a in actions:
        if a.kind == "relabel":
            _check_label(a.label)
        src = a.src.absolute()
        real = src.parent.resolve() / src.name  # resolve the folders; a symlinked image is moved as a link
        rel = _inside(root, real, "The file")
        if str(rel) in choice:
            if choice[str(rel)] != (a.kind, a.label):
                raise ValueError(
                    f"Two different choices for {a.src}: {choice[str(rel)]} and {(a.kind, a.label)}. "
                    f"Keep one. Nothing was changed."
                )
            continue
        choice[str(rel)], shown[str(rel)] = (a.kind, a.label), a.src
        if a.kind == "relabel":
            if a.label == src.parent.name:
                plan.skipped.append(str(rel))
                continue
            class_dir = (real.parent.parent / a.label).resolve()  # follows a symlinked class folder
            _inside(root, class_dir, f"Relabelling {a.src} to {a.label!r} would move it into")
        if not os.path.lexists(real):
            plan.missing.append(str(rel))
        elif real.is_dir():
            plan.errors.append(f"{a.src}: is a folder, not an image file; left as it is")
        elif a.kind == "relabel":
            dst = _free_name(class_dir, real.name, taken)
            taken.add(dst)
            plan.ops.append(_Op(len(plan.ops), "move", str(rel), dst.relative_to(root).as_posix()))
        else:
            plan.ops.append(_Op(len(plan.ops), "trash" if trash else "stage", str(rel), str(deleted_to / rel)))
    return plan, shown


def _folders_written(root: Path, plan: _Plan) -> set[Path]:
    folders = {(root / op.src).parent for op in plan.ops}
    for op in plan.ops:
        if op.op == "move":
            class_dir = (root / op.dst).parent
            folders.add(class_dir if class_dir.exists() else class_dir.parent)
    if (root / STATE_DIR).exists():
        folders.add(root / STATE_DIR)
    return folders


# -- doing: the steps shared by apply, resume and undo ------------------------------------------------


class _Run:
    """One apply, resume or undo in progress."""

    def __init__(self, root: Path, journal: _Journal, hook: Hook | None = None, fail_after: int | None = None):
        self.root, self.journal, self.hook, self.fail_after = root, journal, hook, fail_after
        self.ops_done = 0
        self.can_link = True

    def step(self, name: str) -> None:
        if self.hook is not None:
            self.hook(name)

    def begin(self, record: dict) -> None:
        """Journal an operation, on disk, before doing it."""
        self.journal.write({**record, "state": "begin"})
        self.step("journaled")
        if self.fail_after is not None and self.ops_done >= self.fail_after:
            raise InjectedFault(
                f"Injected fault after {self.ops_done} file operations (a test hook). Journal: {self.journal.path}"
            )

    def done(self, record: dict) -> None:
        self.step("moved")
        # No fsync: were this line lost, resume and undo would learn the outcome from the files.
        self.journal.write({**record, "state": "done"}, sync=False)
        self.ops_done += 1
        self.step("done")

    def move(self, src: Path, dst: Path) -> None:
        """Move without ever overwriting: link (which fails if dst exists), then unlink the old name."""
        if self.can_link:
            try:
                os.link(src, dst, follow_symlinks=False)
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                self.can_link = False  # no hard links here (FAT, some network file systems)
            else:
                self.step("linked")
                os.unlink(src)
                return
        if os.path.lexists(dst):  # we hold the lock, so only a process outside nbtrain could race this check
            raise FileExistsError(errno.EEXIST, "File exists", str(dst))
        os.rename(src, dst)

    def make_class_folder(self, folder: Path) -> None:
        # Journaled so that undo removes it again.
        _inside(self.root, folder.parent.resolve() / folder.name, "The class folder")
        record = {"op": "mkdir", "dst": folder.relative_to(self.root).as_posix()}
        self.journal.write({**record, "state": "begin"})
        folder.mkdir(exist_ok=True)
        self.journal.write({**record, "state": "done"}, sync=False)


def _forward(run: _Run, op: _Op, taken: set[Path], commit_begun: bool) -> bool:
    """Bring one operation to done, from wherever an earlier run left it. False if its file is gone."""
    src, dst = run.root / op.src, run.root / op.dst
    record = {"i": op.i, "op": op.op, "src": op.src}
    if not os.path.lexists(src):
        return os.path.lexists(dst) or (op.op == "stage" and commit_begun)
    if os.path.lexists(dst) and _same_file(src, dst):
        os.unlink(src)  # an earlier run was cut off between linking and unlinking
        run.done({**record, "dst": op.dst})
        return True
    while True:
        if os.path.lexists(dst):  # taken since the plan was made (outside nbtrain): another free name
            dst = _free_name(dst.parent, src.name, taken)
            taken.add(dst)
            op.dst = dst.relative_to(run.root).as_posix()
        if not dst.parent.is_dir():
            if op.op == "move":
                run.make_class_folder(dst.parent)
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)  # inside .nbtrain: ours, removed when empty
        run.begin({**record, "dst": op.dst})
        try:
            run.move(src, dst)
        except FileExistsError:
            continue
        run.done({**record, "dst": op.dst})
        return True


def _commit(run: _Run, plan: _Plan, run_id: str, report: ApplyReport) -> None:
    """Unlink the staged deletions, now that every other operation is done."""
    run.journal.write({"op": "commit", "state": "begin"})
    run.step("commit")
    for op in plan.ops:
        if op.op == "stage" and os.path.lexists(run.root / op.dst):
            record = {"i": op.i, "op": "unlink", "src": op.dst}
            run.begin(record)
            try:
                os.unlink(run.root / op.dst)
            except OSError as e:
                report.errors.append(
                    f"{run.root / op.dst}: could not be unlinked ({e.strerror or e}); resume(journal) tries again"
                )
                continue
            run.done(record)
    _remove_empty_folders(run.root / STATE_DIR / "staging" / run_id)
    run.journal.write({"op": "commit", "state": "done"})


def _carry_out(
    run: _Run, plan: _Plan, history: _History | None, run_id: str, shown: Callable[[str], Path], report: ApplyReport
) -> None:
    """Do (or finish) every operation of the plan, then commit."""
    for op in plan.ops:
        if history and op.i in history.last_dst:
            op.dst = history.last_dst[op.i]
    taken = {run.root / op.src for op in plan.ops} | {run.root / op.dst for op in plan.ops}
    for op in plan.ops:
        try:
            there = _forward(run, op, taken, history.commit_begun if history else False)
        except (OSError, ValueError) as e:  # ValueError: a class folder became a link out of the root
            report.errors.append(f"{shown(op.src)}: {getattr(e, 'strerror', None) or e}; left where it was")
            continue
        if not there:
            report.missing.append(shown(op.src))
        elif op.op == "move":
            report.moved.append((shown(op.src), shown(op.dst)))
        else:
            report.deleted.append(shown(op.src))
    _commit(run, plan, run_id, report)


def _backward(run: _Run, op: _Op, commit_begun: bool, report: ApplyReport) -> None:
    """Put one operation's file back, from wherever the apply (or an earlier undo) left it."""
    src, dst = run.root / op.src, run.root / op.dst
    record = {"i": op.i, "op": "restore", "src": op.dst, "dst": op.src}
    if os.path.lexists(src):
        if os.path.lexists(dst) and _same_file(src, dst):
            run.begin(record)
            os.unlink(dst)  # cut off between linking and unlinking
            run.done(record)
            report.moved.append((dst, src))
        return  # never done, or already put back
    if not os.path.lexists(dst):
        if op.op == "stage" and commit_begun:
            report.unrecoverable.append(src)
        else:
            report.errors.append(f"{src}: neither it nor {dst} exists; something outside nbtrain moved or deleted it")
        return
    src.parent.mkdir(parents=True, exist_ok=True)
    run.begin(record)
    run.move(dst, src)
    run.done(record)
    report.moved.append((dst, src))


def _remove_empty_folder(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (what is in it stays), or already gone


def _remove_empty_folders(folder: Path) -> None:
    """Remove `folder` and the folders in it, deepest first, as far as they are empty."""
    if not folder.is_dir():
        return
    for dirpath, _, _ in sorted(os.walk(folder), key=lambda w: -len(w[0])):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass  # not empty: what is in it stays


# -- the public operations ----------------------------------------------------------------------------


def apply_actions(
    actions: Iterable[Action],
    root: Path | str,
    *,
    trash: bool = False,
    journal: Path | str | None = None,
    dry_run: bool = False,
    _fail_after: int | None = None,
    _hook: Hook | None = None,
) -> ApplyReport:
    """Delete and relabel image files in the folder dataset at `root`, journaled, never losing data.

    Args:
        actions: the choices; relabelling moves a file into `src.parent.parent / label`.
        root: the dataset's root; nothing is ever moved outside it.
        trash: keep deleted files in `root/.nbtrain/trash/<id>/` (same relative paths) instead of unlinking them.
        journal: an existing folder to write the journal in, or the journal file's path, instead of
            `root/.nbtrain/journal-<id>.jsonl`.
        dry_run: only report what would happen, with the destination names; touch nothing.
        _fail_after: for tests: raise InjectedFault after this many file operations (moves and the
            commit's unlinks), just after journaling the next one, as a process killed there would stop.
        _hook: for tests: called with a step name ("journaled", "linked", "moved", "done", "commit")
            between the steps of each operation.

    Raises:
        ReadOnlyDatasetError: the data cannot be written; nothing was changed.
        DatasetLockedError: another process is changing this dataset; nothing was changed.
        ValueError: a bad label, or a file or destination outside the dataset; nothing was changed.
    """
    actions = list(actions)
    caller_root = Path(root)
    root = caller_root.resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"The dataset root {caller_root} is not a folder.")
    run_id = datetime.now().strftime("%Y%m%dT%H%M%S-%f")  # sorts by time: the latest journal is max()
    plan, shown_src = _plan(actions, root, trash, run_id)
    _refuse_read_only(root, _folders_written(root, plan))
    if dry_run or not plan.ops:
        return _report(plan, lambda rel: shown_src.get(rel, caller_root / rel), "dry run" if dry_run else "apply")

    with _DatasetLock(root):
        plan, shown_src = _plan(actions, root, trash, run_id)  # again, now that no other applier can interfere
        shown = lambda rel: shown_src.get(rel, caller_root / rel)  # noqa: E731
        path = root / STATE_DIR if journal is None else Path(journal)
        if path.is_dir():
            path = path / f"journal-{run_id}.jsonl"
        report = _report(plan, shown, "apply", with_ops=False)
        report.journal = path
        report.trash = caller_root / STATE_DIR / "trash" / run_id if trash else None
        log = _Journal(path, create=True)
        try:
            log.write(
                {
                    "kind": "header",
                    "version": JOURNAL_VERSION,
                    "id": run_id,
                    "root": str(root),
                    "created": datetime.now().astimezone().isoformat(),
                    "pid": os.getpid(),
                    "trash": trash,
                }
            )
            log.write(
                {
                    "kind": "plan",
                    "ops": [dataclasses.asdict(op) for op in plan.ops],
                    "skipped": plan.skipped,
                    "missing": plan.missing,
                    "errors": plan.errors,
                }
            )
            _carry_out(_Run(root, log, _hook, _fail_after), plan, None, run_id, shown, report)
        finally:
            log.close()
    return report


def _report(plan: _Plan, shown: Callable[[str], Path], operation: str, with_ops: bool = True) -> ApplyReport:
    ops = plan.ops if with_ops else []
    return ApplyReport(
        deleted=[shown(op.src) for op in ops if op.op != "move"],
        moved=[(shown(op.src), shown(op.dst)) for op in ops if op.op == "move"],
        skipped=[shown(r) for r in plan.skipped],
        missing=[shown(r) for r in plan.missing],
        errors=list(plan.errors),
        operation=operation,
    )


def _open_history(journal: Path) -> tuple[_History, Path | None]:
    history = _read_journal(journal)
    if history.header is None or history.plan is None:
        return history, None  # cut off before the plan was on disk, so before any file was touched
    root = Path(history.header["root"])
    if not root.is_dir():
        raise FileNotFoundError(f"The dataset of journal {journal} was at {root}, which is no longer a folder.")
    _refuse_read_only(root, _folders_written(root, history.plan))
    return history, root


_NOT_STARTED = (
    "The apply was cut off before its plan was on disk, so it had not touched any file. "
    "Nothing to do; apply the choices again."
)


def resume(journal: Path | str, *, _hook: Hook | None = None) -> ApplyReport:
    """Finish an apply that was cut off, from its journal. Safe to run again, or after being cut off itself.

    The report covers the whole apply, not only what this call did.
    """
    journal = Path(journal)
    history, root = _open_history(journal)
    if root is None:
        return ApplyReport(journal=journal, operation="resume", notes=[_NOT_STARTED])
    with _DatasetLock(root):
        history = _read_journal(journal)  # again, under the lock
        if history.undo_begun:
            raise ValueError(
                f"The apply in {journal} was undone (at least in part), so it cannot be resumed. "
                f"Run fileops.undo({str(journal)!r}) to finish undoing it, then apply again."
            )
        run_id, shown = history.header["id"], (lambda rel: root / rel)
        report = _report(history.plan, shown, "resume", with_ops=False)
        report.journal = journal
        report.trash = root / STATE_DIR / "trash" / run_id if history.header.get("trash") else None
        log = _Journal(journal, create=False)
        try:
            _carry_out(_Run(root, log, _hook), history.plan, history, run_id, shown, report)
        finally:
            log.close()
    return report


def undo(journal: Path | str, *, _hook: Hook | None = None) -> ApplyReport:
    """Put every file an apply touched back where it was. Safe to run again, or after being cut off itself.

    Files that a completed apply without trash had unlinked cannot come back: the report lists them
    as `unrecoverable`. Class folders the apply created are removed when empty.
    """
    journal = Path(journal)
    history, root = _open_history(journal)
    report = ApplyReport(journal=journal, operation="undo")
    if root is None:
        report.notes.append(_NOT_STARTED)
        return report
    with _DatasetLock(root):
        history = _read_journal(journal)
        log = _Journal(journal, create=False)
        try:
            log.write({"op": "undo", "state": "begin"})
            run = _Run(root, log, _hook)
            ops = {op.i: op for op in history.plan.ops}
            for kind, key in reversed(history.begun):  # last done, first undone
                if kind == "mkdir":
                    _remove_empty_folder(root / key)
                    continue
                op = dataclasses.replace(ops[key], dst=history.last_dst[key])
                try:
                    _backward(run, op, history.commit_begun, report)
                except OSError as e:
                    report.errors.append(
                        f"{root / op.dst}: could not be put back at {root / op.src} "
                        f"({e.strerror or e}); undo(journal) tries again"
                    )
            for kind in ("staging", "trash"):
                _remove_empty_folders(root / STATE_DIR / kind / history.header["id"])
            log.write({"op": "undo", "state": "done"})
        finally:
            log.close()
    return report


def apply_finished(journal: Path | str) -> bool:
    """Whether the apply in `journal` is over, committed or undone, so that `resume` has nothing left
    to finish; only an undo of its relabels and trashed files would still read the journal."""
    records = []
    for line in Path(journal).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # torn by a kill while being written
    if not any(r.get("kind") == "plan" for r in records):
        return True  # cut off before its plan was on disk: it touched no file
    return records[-1].get("op") in ("commit", "undo") and records[-1].get("state") == "done"


# -- table datasets -----------------------------------------------------------------------------------


def apply_table_actions(
    table: pd.DataFrame,
    actions: Iterable[Action],
    *,
    fn_col: str | int,
    label_col: str | int,
    label_delim: str | None = None,
    path: Path | str | None = None,
    csv_path: Path | str | None = None,
) -> pd.DataFrame:
    """Apply the choices to a table dataset: delete removes the file's rows, relabel sets their label.

    Image files are not touched. A file not in the table is skipped with a warning.

    Args:
        table: one row per image; it is not changed (a new DataFrame, with a fresh index, is returned).
        actions: `src` is the value in `fn_col`, or a path under `path`; for a multi-label table,
            `label` may be a list or set of labels.
        fn_col: the column of file names.
        label_col: the column of labels.
        label_delim: the separator between labels in one cell, for a multi-label table.
        path: the folder the file names are relative to, so that actions may give full paths.
        csv_path: the CSV the table came from. It is rewritten atomically, its old version kept as
            `<name>.bak-<timestamp>`, without the index (as `pd.read_csv` reads it back).
    """
    df = table.copy()
    rows_of: dict[str, list[int]] = {}
    for r, name in enumerate(df[fn_col].astype(str)):
        rows_of.setdefault(name, []).append(r)
    col = df.columns.get_loc(label_col)
    keep, not_found, changed = [True] * len(df), [], False
    for a in actions:
        rows = next((rows_of[n] for n in _table_names(a.src, path) if n in rows_of), None)
        if rows is None:
            not_found.append(str(a.src))
        elif a.kind == "delete":
            for r in rows:
                keep[r] = False
            changed = True
        else:
            new = _table_label(a.label, label_delim)
            for r in rows:
                if not _same_labels(df.iat[r, col], new, label_delim):  # its own label: nothing to do
                    df.iat[r, col] = new
                    changed = True
    if not_found:
        warnings.warn(
            f"{len(not_found)} file(s) are not in the table and were skipped: {', '.join(not_found[:5])}"
            + (" ..." if len(not_found) > 5 else ""),
            stacklevel=2,
        )
    df = df[keep].reset_index(drop=True)
    if csv_path is not None and changed:  # nothing to change: no rewrite, no backup
        _write_csv_atomically(df, Path(csv_path))
    return df


def _table_names(src: Path, path: Path | str | None) -> list[str]:
    names = [str(src), src.as_posix()]
    if path is not None and src.is_absolute():
        try:
            names.append(src.relative_to(path).as_posix())
        except ValueError:
            pass
    return names


def _table_label(label: str | Iterable[str], delim: str | None) -> str:
    if isinstance(label, str):
        labels = [label]
    else:
        labels = sorted(label) if isinstance(label, (set, frozenset)) else list(label)
    if delim is None and len(labels) != 1:
        raise ValueError(
            f"Cannot give one row several labels {labels} in a single-label table; give one "
            f"label, or pass label_delim for a multi-label table. Nothing was changed."
        )
    for lab in labels:
        if not isinstance(lab, str) or not lab.strip() or (len(labels) > 1 and delim in lab):
            raise ValueError(
                f"Bad label {lab!r}: a label must be non-empty text"
                + (f" without the separator {delim!r}" if delim else "")
                + ". Nothing was changed."
            )
    return labels[0] if len(labels) == 1 else delim.join(labels)


def _same_labels(old: object, new: str, delim: str | None) -> bool:
    if delim is None:
        return str(old) == new
    return set(str(old).split(delim)) == set(new.split(delim))


def _write_csv_atomically(df: pd.DataFrame, csv_path: Path) -> None:
    """Rewrite the CSV atomically (`atomic_write`), after a backup of the old one."""
    folder = csv_path.parent
    if is_read_only(folder) or (csv_path.exists() and not os.access(csv_path, os.W_OK)):
        raise ReadOnlyDatasetError(
            f"{csv_path} is in a read-only folder, so the table cannot be rewritten. "
            f"Nothing was changed. Copy the dataset somewhere writable:\n"
            f"    {_suggest_copy(folder)}"
        )
    if csv_path.exists():
        stamp = datetime.now().strftime("%Y%m%dT%H%M%S-%f")
        shutil.copy2(csv_path, csv_path.with_name(f"{csv_path.name}.bak-{stamp}"))
    atomic_write(csv_path, lambda f: df.to_csv(f, index=False), text=True)


def copy_to_working(src: Path | str, working: Path | str | None = None) -> Path:
    """Copy a read-only dataset (one under /kaggle/input) into the working folder, where it can be
    cleaned, and return the copy's path; `working` defaults to `working_dir()`.

    Run again, it returns the copy already there, with whatever cleaning was applied to it, rather
    than failing or copying afresh: delete that folder to start again from the original.
    """
    src = Path(src)
    dest = Path(working if working is not None else working_dir()) / src.name
    if dest.is_dir() and any(dest.iterdir()):
        print(f"Using the copy already at {dest} (delete it to copy {src} afresh).")
        return dest
    return copy_dataset(src, dest)
