"""Cut `nbtrain.fileops` off with SIGKILL, and check that no file is ever lost.

Run as a script, this is the child that gets killed: it applies, resumes or undoes, on a dataset,
the actions in a JSON file:

    python testkit/fileops_child.py apply ROOT ACTIONS.json [--trash]
    python testkit/fileops_child.py resume|undo JOURNAL

With NBTRAIN_TEST_SLOW_OPS=<seconds> it sleeps that long between the steps of every file operation
(through fileops' `_hook` test argument, so no user ever runs a slowed code path), which spreads the
kills over every point of an operation. With NBTRAIN_TEST_WAIT_FOR=<file> it stops after journaling
its first operation, holding the dataset's lock, until that file exists. It exits with 3 when the
dataset is locked by another applier.

Imported, it gives the parent side: `make_dataset`, `digest`, `crash_trial`, used by
tests/test_apply_crash.py and bench/faults_apply.py.

The module loads fileops from its file rather than through `import nbtrain`, which would import torch
and take seconds per child.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

FILEOPS_PATH = Path(__file__).resolve().parent.parent / "nbtrain" / "fileops.py"
LOCKED_EXIT = 3


def load_fileops():
    """nbtrain.fileops, loaded from its file without importing the nbtrain package (and torch)."""
    if "nbtrain.fileops" in sys.modules:
        return sys.modules["nbtrain.fileops"]
    if "nbtrain" not in sys.modules:
        # An empty package over the source folder: its modules import each other, __init__ never runs.
        package = types.ModuleType("nbtrain")
        package.__path__ = [str(FILEOPS_PATH.parent)]
        sys.modules["nbtrain"] = package
    return importlib.import_module("nbtrain.fileops")


# -- the child ----------------------------------------------------------------------------------------


def _child(argv: list[str]) -> int:
    fileops = load_fileops()
    slow = float(os.environ.get("NBTRAIN_TEST_SLOW_OPS", "0"))
    release = os.environ.get("NBTRAIN_TEST_WAIT_FOR")

    def hook(step: str) -> None:
        time.sleep(slow)
        deadline = time.monotonic() + 60
        while release and not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.005)

    mode = argv[0]
    try:
        if mode == "apply":
            root, actions_file = Path(argv[1]), Path(argv[2])
            actions = [fileops.Action(k, Path(s), lab) for k, s, lab in json.loads(actions_file.read_text())]
            report = fileops.apply_actions(actions, root, trash="--trash" in argv, _hook=hook)
        elif mode in ("resume", "undo"):
            report = getattr(fileops, mode)(Path(argv[1]), _hook=hook)
        else:
            print(f"unknown mode {mode!r}", file=sys.stderr)
            return 2
    except fileops.DatasetLockedError as e:
        print(e, file=sys.stderr)
        return LOCKED_EXIT
    print(report.summary())
    return 0


# -- the parent ---------------------------------------------------------------------------------------


def make_image(path: Path, seed: int) -> None:
    """A small PNG whose pixels (hence bytes) are unique to `seed`."""
    from PIL import Image

    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.frombytes("RGB", (8, 8), bytes(rng.randrange(256) for _ in range(8 * 8 * 3))).save(path)


def make_dataset(root: Path, classes=("a", "b", "c"), per_class: int = 10, split: str = "train") -> Path:
    """root/split/<class>/<k>.png; the same names in every class, so relabelling collides."""
    for c, cls in enumerate(classes):
        for k in range(per_class):
            make_image(root / split / cls / f"{k}.png", seed=c * 1000 + k)
    return root


def digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root, outside nbtrain's own folder."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".nbtrain" not in p.relative_to(root).parts
    }


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def mixed_actions(root: Path, rng: random.Random, split: str = "train") -> list[list]:
    """Deletes, relabels (onto taken names, and into a new class), own-class choices and a missing file."""
    files = sorted((root / split).rglob("*.png"))
    rng.shuffle(files)
    actions = []
    for p in files[:8]:
        actions.append(["delete", str(p), None])
    for p in files[8:20]:
        actions.append(["relabel", str(p), rng.choice([c for c in ("a", "b", "c", "new") if c != p.parent.name])])
    for p in files[20:22]:
        actions.append(["relabel", str(p), p.parent.name])
    actions.append(["delete", str(root / split / "a" / "gone.png"), None])
    return actions


@dataclass
class TrialResult:
    recovery: str  # "resume" or "undo"
    checked: int  # files whose place and bytes were checked
    lost: int  # files not where they should be, or with other bytes
    extra: int  # files that should not be there
    unrecoverable: int  # deletions an undo reported it could not bring back (trash=False, commit begun)
    recovery_killed: bool
    killed_during: str  # "start-up", "moves", "commit" or "nothing (it had finished)"


def _run_child(args: list[str], slow: float, kill_after: float | None) -> int:
    env = {**os.environ, "NBTRAIN_TEST_SLOW_OPS": str(slow)}
    proc = subprocess.Popen(
        [sys.executable, __file__, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    if kill_after is None:
        _, err = proc.communicate(timeout=60)
        if proc.returncode:
            raise RuntimeError(f"child {args} failed: {err.decode()}")
        return proc.returncode
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    return proc.returncode


def crash_trial(
    root: Path,
    seed: int,
    recovery: str,
    trash: bool = False,
    slow: float = 0.003,
    window: tuple[float, float] = (0.15, 0.6),
) -> TrialResult:
    """Apply mixed actions in a child, SIGKILL it at a random moment, recover, and check every file.

    `slow` seconds pass between the steps of each file operation and the kill comes `window` seconds
    after the start (the child needs about 0.15 s to start, then about 0.4 s for its operations).

    One trial in three also kills the recovery once, in another child, before recovering for good.
    """
    fileops = load_fileops()
    rng = random.Random(seed)
    make_dataset(root)
    before = digest(root)
    actions = mixed_actions(root, rng)
    expected_plan = fileops.apply_actions(
        [fileops.Action(k, Path(s), lab) for k, s, lab in actions], root, trash=trash, dry_run=True
    )
    actions_file = root.parent / f"{root.name}-actions.json"
    actions_file.write_text(json.dumps(actions))

    _run_child(
        ["apply", str(root), str(actions_file)] + (["--trash"] if trash else []), slow, kill_after=rng.uniform(*window)
    )
    journals = sorted((root / ".nbtrain").glob("journal-*.jsonl"))
    killed_during = _phase(journals[-1]) if journals else "start-up"
    recovery_killed = False
    report = None
    if journals:
        if rng.random() < 1 / 3:
            _run_child([recovery, str(journals[-1])], slow, kill_after=rng.uniform(*window))
            recovery_killed = True
        report = getattr(fileops, recovery)(journals[-1])

    rel = lambda p: Path(p).resolve().relative_to(root.resolve()).as_posix()  # noqa: E731
    expected = dict(before)
    unrecoverable: set[str] = set()
    planned = bool(journals) and _has_plan(journals[-1])  # a kill before the plan was on disk: nothing to resume
    if recovery == "resume" and planned:
        for p in expected_plan.deleted:
            expected.pop(rel(p))
        for src, dst in expected_plan.moved:
            expected[rel(dst)] = expected.pop(rel(src))
    elif report is not None:
        unrecoverable = {rel(p) for p in report.unrecoverable}
        deleted = {rel(p) for p in expected_plan.deleted}
        assert unrecoverable <= deleted, f"undo called never-deleted files unrecoverable: {unrecoverable - deleted}"
        for r in unrecoverable:
            expected.pop(r)
    after = digest(root)
    lost = sum(1 for r, sha in expected.items() if after.get(r) != sha)
    extra = sum(1 for r in after if r not in expected)
    staged = files_in(root / ".nbtrain" / "staging")
    if not trash and journals:
        extra += len(staged)  # a finished resume or undo leaves nothing staged
    if trash and recovery == "resume" and planned:
        in_trash = {hashlib.sha256(p.read_bytes()).hexdigest() for p in files_in(root / ".nbtrain" / "trash")}
        lost += sum(1 for p in expected_plan.deleted if before[rel(p)] not in in_trash)
    return TrialResult(recovery, len(before), lost, extra, len(unrecoverable), recovery_killed, killed_during)


def _has_plan(journal: Path) -> bool:
    for line in journal.read_text().splitlines():
        try:
            if json.loads(line).get("kind") == "plan":
                return True
        except json.JSONDecodeError:
            pass
    return False


def _phase(journal: Path) -> str:
    """How far the killed apply had got, from its journal."""
    text = journal.read_text()
    if '"op": "commit", "state": "done"' in text:
        return "nothing (it had finished)"
    if '"op": "commit"' in text:
        return "commit"
    return "moves" if '"state": "begin"' in text else "start-up"


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
