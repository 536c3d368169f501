"""nbtrain's own files in the output folder: how much they hold, and clearing them.

On Kaggle all of /kaggle/working is the notebook's output: 20 GB at most, and a saved version lists
about 500 files. Cleaning a dataset copy there leaves nbtrain's housekeeping in the copy's one hidden
`.nbtrain` folder: the trash (deleted files kept for undo), the staging of an apply under way and the
journals. It lives inside the dataset because a move that can never lose a file (a hard link, then an
unlink) needs the same file system. A copy cut off halfway leaves a hidden `.<name>.partial-*` folder.
Images, models, exports and logs are the user's: counted in the totals, never removed.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .fileops import STATE_DIR, apply_finished
from .locations import KAGGLE_OUTPUT_BYTES, KAGGLE_OUTPUT_FILES, working_dir


@dataclass
class HousekeepingReport:
    """nbtrain's own files under `where`, and everything under it, against a saved Kaggle version's limits.

    Attributes:
        folders: nbtrain's folders found (each dataset's `.nbtrain`, leftover partial copies).
        files, bytes: what those folders hold.
        unfinished: journals of applies not finished; `clear_housekeeping` keeps them and their files,
            since `fileops.resume` or `fileops.undo` needs them.
        output_files, output_bytes: everything under `where`, nbtrain's files included.
        removed_files, removed_bytes: what `clear_housekeeping` removed.
    """

    where: Path
    folders: list[Path] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    unfinished: list[Path] = field(default_factory=list)
    output_files: int = 0
    output_bytes: int = 0
    removed_files: int = 0
    removed_bytes: int = 0

    def __str__(self) -> str:
        lines = []
        if self.removed_files:
            lines.append(f"Removed {self.removed_files:,} of nbtrain's files ({_mb(self.removed_bytes)}).")
        lines.append(
            f"nbtrain's housekeeping under {self.where}: {self.files:,} files, {_mb(self.bytes)} in "
            f"{len(self.folders)} folder(s) (trash, journals, leftover partial copies)."
        )
        lines.append(
            f"All of {self.where}: {self.output_files:,} files, {_mb(self.output_bytes)}; a saved Kaggle "
            f"version keeps {KAGGLE_OUTPUT_BYTES / 1000**3:.0f} GB and lists about "
            f"{KAGGLE_OUTPUT_FILES} files."
        )
        for journal in self.unfinished:
            lines.append(f"Kept: the apply in {journal} is not finished; run fileops.resume or fileops.undo on it.")
        if self.files and not self.removed_files:
            lines.append("nbtrain.clear_housekeeping() removes the trash and the journals of finished applies.")
        return "\n".join(lines)


def housekeeping_report(where: Path | str | None = None) -> HousekeepingReport:
    """What nbtrain keeps under `where` (default: `working_dir()`, /kaggle/working on Kaggle), with sizes."""
    where = Path(where) if where is not None else working_dir()
    report = HousekeepingReport(where, folders=_own_folders(where))
    report.output_files, report.output_bytes = _tree_size(where)
    for folder in report.folders:
        files, size = _tree_size(folder)
        report.files, report.bytes = report.files + files, report.bytes + size
        if folder.name == STATE_DIR:
            report.unfinished += [j for j in sorted(folder.glob("journal-*.jsonl")) if not apply_finished(j)]
    return report


def clear_housekeeping(where: Path | str | None = None) -> HousekeepingReport:
    """Remove nbtrain's housekeeping under `where` (default: `working_dir()`) and report what is left.

    Removed: the trash and journal of every finished apply (it can no longer be undone), and copies
    cut off halfway. Kept: an unfinished apply's journal and files, and everything that is not
    nbtrain's own: images, models, exports, logs.
    """
    before = housekeeping_report(where)
    for folder in before.folders:
        if folder.name != STATE_DIR:
            shutil.rmtree(folder, ignore_errors=True)
            continue
        for journal in folder.glob("journal-*.jsonl"):
            if journal in before.unfinished:
                continue
            run_id = journal.stem.removeprefix("journal-")
            for kind in ("trash", "staging"):
                shutil.rmtree(folder / kind / run_id, ignore_errors=True)
            journal.unlink()
        for kind in ("trash", "staging"):
            _remove_if_empty(folder / kind)
    after = housekeeping_report(before.where)
    after.removed_files, after.removed_bytes = before.files - after.files, before.bytes - after.bytes
    return after


def _own_folders(where: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, _ in os.walk(where):
        for name in list(dirnames):
            if name == STATE_DIR or (name.startswith(".") and ".partial-" in name):
                found.append(Path(dirpath) / name)
                dirnames.remove(name)  # counted once, as a whole
    return found


def _tree_size(folder: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            try:
                size += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue  # removed meanwhile
            files += 1
    return files, size


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty, or not there


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"
