"""A review's decisions kept on disk: the log written as each decision is made, and the choices file
that another run replays.

The log is JSON lines, appended and fsynced one record per decision, so a crashed kernel loses at most
the decision being written; a torn last line is ignored on read and cut off before the next append.
It lives in the dataset's `.nbtrain` folder, or under the output folder (`locations.working_dir()`,
/kaggle/working on Kaggle) when the dataset cannot be written. Records:

    {"op": "decide", "t": ..., "items": [item, ...]}   one decision (a bulk one is one record)
    {"op": "undo", "t": ...}                            takes back the last decision
    {"op": "reset", "t": ..., "why": ..., "items": [...]}  what is pending from here on, as one decision
                                                        (after an apply, an undone apply, a discard)

A restore rewrites a log that has become mostly history (undone or applied decisions) as its pending
decisions alone. An item names a file relative to the dataset's root, with its labels, the choice, the time it was made,
and the file's size and mtime_ns, so that a decision about a file changed or gone since is dropped.

The choices file is a plain CSV (path, label, choice, time) for a person or another run to read.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from . import fileops
from .locations import is_read_only_location, working_dir

LOG_NAME = "review.jsonl"
CHOICE_COLUMNS = ("path", "label", "choice", "time")
COMPACT_AFTER = 1000  # records of history a log may hold beyond twice its pending decisions
LABEL_SEP = ";"  # between the labels of one image in the choices file (multi-label data)
# The log each review in this process took up last, by file: an older review over the same dataset stops
# writing to it, so two cleaners never interleave their decisions (and undos) in one log.
_HOLDERS: weakref.WeakValueDictionary[str, DecisionLog] = weakref.WeakValueDictionary()


# -- items: one file's decision, as the log and the choices file hold it --------------------------------


def relative(path: Path, root: Path) -> str:
    """`path` relative to the dataset's root, with forward slashes; as it is when it lies outside."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def dataset_root(paths: Iterable[Path], root: Path | str | None = None) -> Path:
    """The folder the log and the choices file name files relative to: `root` (the loaders' own) when it
    holds every image, else the deepest folder that does (a DataBlock over a table has no root of its own)."""
    paths = [str(p) for p in paths]
    if root is not None and all(p.startswith(os.path.join(str(root), "")) for p in paths):
        return Path(root)
    return Path(os.path.commonpath([os.path.dirname(p) for p in paths])) if paths else Path(root or ".")


def fingerprint(path: Path) -> dict[str, int] | None:
    """The file's size and modification time, or None when it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def make_item(root: Path, path: Path, labels: Sequence[str], choice: str | frozenset, when: float) -> dict:
    """One file's decision as a log item."""
    return {
        "path": relative(path, root),
        "labels": list(labels),
        "choice": choice if isinstance(choice, str) else sorted(choice),
        "t": when,
        **(fingerprint(path) or {}),
    }


def item_choice(item: dict) -> str | frozenset:
    """An item's choice as the review holds it: text, or a set of labels."""
    c = item["choice"]
    return c if isinstance(c, str) else frozenset(c)


def stale_reason(item: dict, root: Path, labels_now: tuple[str, ...] | None, classes: Iterable[str]) -> str | None:
    """Why a logged decision no longer holds (the file is gone, changed, labelled otherwise now, or the
    class is unknown), or None when it still does."""
    path = root / item["path"]
    if labels_now is None:
        return "not among the images under review"
    now = fingerprint(path)
    if now is None:
        return "gone"
    if (now["size"], now["mtime_ns"]) != (item.get("size"), item.get("mtime_ns")):
        return "changed since"
    if sorted(labels_now) != sorted(item.get("labels", [])):
        return f"labelled {', '.join(labels_now)} now, not {', '.join(item.get('labels', []))}"
    choice = item_choice(item)
    names = {choice} if isinstance(choice, str) else set(choice)
    if names - set(classes) - {"<Keep>", "<Delete>"}:
        return f"{choice!r} is not one of the classes"
    return None


def still_pending(
    contents: LogContents, root: Path, labels_of: Callable[[Path], tuple[str, ...] | None], classes: Sequence[str]
) -> tuple[list[tuple[dict[Path, str | frozenset], dict[Path, float]]], list[str]]:
    """The log's pending decisions, each as (choice by path, time by path), without the items that no
    longer hold (`labels_of(path)` is None for a file not under review); and a note for each dropped."""
    kept, dropped = [], []
    for d in contents.decisions:
        new, times = {}, {}
        for item in d.items:
            path = root / item["path"]
            labels, choice = labels_of(path), item_choice(item)
            if labels is not None and sorted(labels) == sorted([choice] if isinstance(choice, str) else choice):
                continue  # carried out already (a label table written from it): nothing to take up or to note
            why = stale_reason(item, root, labels, classes)
            if why is None:
                new[path], times[path] = choice, item.get("t", d.t)
            else:
                dropped.append(f"{item['path']} ({why})")
        kept.append((new, times))
    return kept, dropped


def span(times: Iterable[float]) -> str:
    """When decisions were made, as '2026-12-07 20:51–21:03' (local time)."""
    times = sorted(times)
    if not times:
        return ""
    first, last = (datetime.fromtimestamp(t).astimezone() for t in (times[0], times[-1]))
    end = last.strftime("%H:%M") if first.date() == last.date() else last.strftime("%Y-%m-%d %H:%M")
    zone = first.strftime(" %Z") if first.strftime("%Z") else ""
    return first.strftime("%Y-%m-%d %H:%M") + (f"–{end}" if end != first.strftime("%H:%M") else "") + zone


def restore_note(n: int, times: list[float], log: Path, dropped: list[str], contents: LogContents) -> str:
    """What a restore took up, from when, and what it dropped; empty when the log held nothing."""
    parts = []
    if n:
        parts.append(
            f"Restored {n} pending choice{'s' * (n != 1)} made {span(times)} from {log}; "
            "cleaner.discard_choices() starts afresh."
        )
    if dropped:
        more = f" and {len(dropped) - 5} more" if len(dropped) > 5 else ""
        parts.append(
            f"Dropped {len(dropped)} saved decision(s) about files changed or gone since: "
            + ", ".join(dropped[:5])
            + more
            + "."
        )
    if contents.unreadable:
        parts.append(f"{contents.unreadable} damaged line(s) of {log} were skipped.")
    return " ".join(parts)


def checked_choices(
    rows: list[dict],
    source: Path | str,
    root: Path,
    labels_of: Callable[[Path], tuple[str, ...] | None],
    classes: Sequence[str],
    multi_label: bool,
) -> tuple[dict[Path, str | list[str]], dict[Path, float]]:
    """A choices file's rows as (choice by path, time by path), every row checked against the dataset
    first: a file under review, named once, with the labels it has now, and a known choice. Raises a
    ValueError naming each row that does not fit."""
    new, times, problems = {}, {}, []
    for row in rows:
        path, choice = root / row["path"], row["choice"]
        labels = labels_of(path)
        as_set = multi_label and choice not in ("<Keep>", "<Delete>")
        names = [n for n in choice.split(LABEL_SEP) if n] if as_set else [choice]
        if labels is None:
            why = f"not among the images under review (paths are relative to {root})"
        elif path in new:
            why = "named twice"
        elif sorted(labels) != sorted(row["labels"]):
            why = f"labelled {', '.join(labels)!r} here, {', '.join(row['labels'])!r} in the file"
        elif not choice or any(n not in ("<Keep>", "<Delete>", *classes) for n in names):
            why = f"the choice {choice!r} is not <Keep>, <Delete> or one of the classes"
        else:
            new[path], times[path] = (names if as_set else choice), row["t"]
            continue
        problems.append(f"line {row['line']}: {row['path']}: {why}")
    if problems:
        raise ValueError(choices_error(source, problems, root, classes))
    return new, times


def choices_error(path: Path | str, problems: list[str], root: Path, classes: Sequence[str]) -> str:
    """The error for a choices file whose rows do not fit the dataset: each problem, and how to fix it."""
    more = f"\n  … and {len(problems) - 10} more" if len(problems) > 10 else ""
    return (
        f"Nothing loaded from {path}: {len(problems)} row(s) do not fit this dataset:\n  "
        + "\n  ".join(problems[:10])
        + more
        + f"\nEach row names a file relative to {root}, the label(s) it has now, and a choice of <Keep>, <Delete> "
        f"or one of the classes {list(classes)}. Fix or remove those rows and load the file again."
    )


# -- the log ----------------------------------------------------------------------------------------------


@dataclass
class Decision:
    """One decision read back from the log: its items (file by file) and when it was made."""

    items: list[dict]
    t: float


@dataclass
class LogContents:
    """What a log holds: the decisions still pending, in order, and lines that could not be read."""

    decisions: list[Decision] = field(default_factory=list)
    torn: int = 0  # an unfinished last line (a kill mid-write)
    unreadable: int = 0  # damaged lines before the last
    records: int = 0  # whole records read


def replay(records: Iterable[dict]) -> list[Decision]:
    """The decisions that records leave pending: each decide adds one, an undo takes back the last, a
    reset starts again from its items."""
    stack: list[Decision] = []
    for r in records:
        op = r.get("op")
        if op == "decide":
            stack.append(Decision(list(r.get("items", [])), r.get("t", 0.0)))
        elif op == "undo" and stack:
            stack.pop()
        elif op == "reset":
            items = list(r.get("items", []))
            stack = [Decision(items, r.get("t", 0.0))] if items else []
    return stack


class DecisionLog:
    """The append-only log of one dataset's review decisions at `path`; file names in it are relative
    to `root`. The file is made at the first decision. A write that fails (a full disk) warns once and
    the review goes on in memory; `error` says why."""

    def __init__(self, path: Path | str, root: Path | str):
        self.path, self.root = Path(path), Path(root)
        self.error: str | None = None
        self._checked_tail = False

    @classmethod
    def beside(cls, root: Path | str, output: Path | str | None = None) -> DecisionLog:
        """The log of the dataset at `root`: in its `.nbtrain` folder, or under `output` (by default
        `working_dir()`, /kaggle/working on Kaggle) when the dataset cannot be written, named after
        the dataset so two datasets never share one."""
        root = Path(root).absolute()
        if not is_read_only_location(root):
            return cls(root / fileops.STATE_DIR / LOG_NAME, root)
        key = hashlib.sha256(str(root).encode()).hexdigest()[:8]
        folder = Path(output) if output is not None else working_dir()
        return cls(folder / fileops.STATE_DIR / f"review-{root.name}-{key}.jsonl", root)

    # -- writing

    def decide(self, items: list[dict], when: float | None = None) -> None:
        self.append({"op": "decide", "t": time.time() if when is None else when, "items": items})

    def undo(self) -> None:
        self.append({"op": "undo", "t": time.time()})

    def reset(self, why: str, items: list[dict]) -> None:
        """From here on only `items` are pending (after an apply, an undone apply, or a discard)."""
        if items or self.path.exists():
            self.append({"op": "reset", "t": time.time(), "why": why, "items": items})

    def append(self, record: dict) -> None:
        """Write one record as one line and fsync it: once this returns, a crash keeps it."""
        if self.error is not None:
            return
        if _HOLDERS.get(str(self.path.absolute()), self) is not self:
            self.error = (
                f"A newer cleaner over this dataset took up its saved decisions ({self.path}); this one's "
                "decisions are kept in memory only from now on. Use the newer one."
            )
            warnings.warn(self.error, stacklevel=3)
            return
        line = _line(record)
        try:
            self._cut_torn_tail()
            new = not self.path.exists()
            if new:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            if new:
                _fsync_folder(self.path.parent)
        except OSError as e:
            self.error = f"The review's decisions cannot be saved to {self.path} ({e}); they are kept in memory only."
            warnings.warn(self.error, stacklevel=3)

    def _cut_torn_tail(self) -> None:
        """Cut an unfinished last line (a writer killed mid-line) so the next record starts a line."""
        if self._checked_tail:
            return
        self._checked_tail = True
        try:
            with open(self.path, "rb+") as f:
                size = f.seek(0, os.SEEK_END)
                if size == 0:
                    return
                f.seek(size - 1)
                if f.read(1) == b"\n":
                    return
                f.seek(0)
                f.truncate(f.read().rfind(b"\n") + 1)
                os.fsync(f.fileno())
        except FileNotFoundError:
            pass

    # -- reading

    def read(self) -> LogContents:
        """The decisions pending in the log (none when there is no log)."""
        try:
            data = self.path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return LogContents()
        except OSError as e:
            warnings.warn(
                f"The review's saved decisions in {self.path} cannot be read ({e}); starting afresh.", stacklevel=3
            )
            return LogContents()
        lines = data.split(b"\n")
        torn = 1 if lines[-1].strip() else 0  # no newline after it: cut off mid-write
        records, unreadable = [], 0
        for line in lines[:-1]:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                unreadable += 1
                continue
            if isinstance(record, dict):
                records.append(record)
        return LogContents(replay(records), torn, unreadable, len(records))

    def take_up(self) -> LogContents:
        """`read()`, and when most of the log is history (undone, applied or discarded decisions) rewrite
        it, atomically, as the pending decisions alone, so it does not grow from review to review."""
        contents = self.read()
        _HOLDERS[str(self.path.absolute())] = self
        if contents.records > 2 * len(contents.decisions) + COMPACT_AFTER and not contents.unreadable:
            data = b"".join(_line({"op": "decide", "t": d.t, "items": d.items}) for d in contents.decisions)
            try:
                fileops.atomic_write(self.path, lambda f: f.write(data))
            except OSError as e:  # a read-only log still restores; it is only not made smaller
                warnings.warn(f"The review's log {self.path} could not be made smaller ({e}).", stacklevel=3)
            self._checked_tail = True  # the new file ends with a whole line
        return contents


def _line(record: dict) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _fsync_folder(folder: Path) -> None:
    """Make a new file's name durable too (folders cannot be opened on Windows; NTFS orders its own)."""
    if os.name != "nt":
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- the choices file -------------------------------------------------------------------------------------


def write_choices(
    path: Path | str,
    root: Path,
    choices: dict[Path, str | frozenset],
    labels_of: Callable[[Path], Sequence[str]],
    decided_at: dict[Path, float],
) -> Path:
    """Write each pending choice as a CSV row (path relative to `root`, its labels, the choice, when it
    was made), atomically; returns the file's path."""
    path, now = Path(path), time.time()

    def write(f) -> None:
        out = csv.writer(f)
        out.writerow(CHOICE_COLUMNS)
        for p, choice in choices.items():
            text = choice if isinstance(choice, str) else LABEL_SEP.join(sorted(choice))
            stamp = datetime.fromtimestamp(decided_at.get(p, now)).astimezone().isoformat(timespec="seconds")
            out.writerow([relative(p, root), LABEL_SEP.join(labels_of(p)), text, stamp])

    fileops.atomic_write(path, write, text=True)
    return path


def read_choices(path: Path | str) -> list[dict]:
    """The rows of a choices file (path, label, choice, time), checked for its columns only: which
    files and classes it names is for the review to check. Times that cannot be read become now."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No choices file at {path}; cleaner.save_choices(path) writes one.")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("path", "label", "choice") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"Nothing loaded: {path} has no column {', '.join(missing)} (it has {reader.fieldnames}). A choices "
                f"file has the columns {', '.join(CHOICE_COLUMNS)}, as cleaner.save_choices(path) writes them."
            )
        rows = []
        for n, row in enumerate(reader, start=2):
            try:
                when = datetime.fromisoformat(row.get("time") or "").timestamp()
            except ValueError:
                when = time.time()
            labels = [x for x in (row["label"] or "").split(LABEL_SEP) if x]
            rows.append(
                {"line": n, "path": row["path"] or "", "labels": labels, "choice": row["choice"] or "", "t": when}
            )
    return rows
