"""Kill a review with SIGKILL while it writes its decisions log, and check that no acknowledged decision is lost.

Run as a script, this is the child that gets killed: it opens a `ReviewState` over a dataset with the
log (taking up what the log holds, as a new cleaner does), prints `restored <digest>`, then makes random
decisions (choices, deletions, accepted predictions, bulk deletions of a page, undos) as fast as it can,
printing `ack <n> <digest>` once the n-th logged decision has returned. One child in three mostly
undoes, so the log becomes mostly history and a later restore rewrites it smaller:

    python testkit/review_child.py ROOT LOG SEED

Imported, it gives the parent side: `make_dataset`, `kill_trials`, used by tests/test_decisions.py and
bench/faults_review.py. Each trial runs a child on the same log, kills it after a random moment, and
checks the log as a new review reads it:
- every decision acknowledged before the kill is in it, and the state it gives is the one the child had
  when it acknowledged its last decision (or one more, written but not yet acknowledged);
- the next child takes up exactly that state.
One trial in four also leaves half a record at the end of the log, as a power cut mid-write would; the
next child must ignore it and append after it cleanly.

The review is loaded from its files without importing the nbtrain package (and torch).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # testkit from this checkout, run as a script

from testkit.fileops_child import load_fileops, make_image  # noqa: E402

CLASSES = ("a", "b", "c")


def load_review():
    """nbtrain.review and nbtrain.decisions, without the nbtrain package's __init__ (and torch)."""
    load_fileops()  # sets up the bare package
    return importlib.import_module("nbtrain.review"), importlib.import_module("nbtrain.decisions")


def make_dataset(root: Path, per_class: int = 6) -> Path:
    """root/train/<class>/<k>.png, real PNGs with pixels unique to each file."""
    for c, cls in enumerate(CLASSES):
        for k in range(per_class):
            make_image(root / "train" / cls / f"{k}.png", seed=c * 1000 + k)
    return root


def score_table(root: Path):
    """A score table as `scores.score_table` makes it, by hand: labels from folders, predictions spread."""
    import pandas as pd

    paths = sorted(root.rglob("*.png"))
    return pd.DataFrame(
        {
            "path": paths,
            "split": "Train",
            "labels": [(p.parent.name,) for p in paths],
            "pred_idx": [i % len(CLASSES) for i in range(len(paths))],
            "loss": [float(len(paths) - i) for i in range(len(paths))],
            "readable": True,
        }
    )


def open_review(root: Path, log: Path):
    review, decisions = load_review()
    state = review.ReviewState(score_table(root), CLASSES, max_n=5, root=root, log=decisions.DecisionLog(log, root))
    state.set_view(state.scores)
    return state


def state_digest(choices: dict) -> str:
    """The pending choices, as a short digest both sides compute the same way."""
    items = sorted((Path(p).as_posix(), c if isinstance(c, str) else sorted(c)) for p, c in choices.items())
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


# -- the child ----------------------------------------------------------------------------------------


def _child(root: Path, log: Path, seed: int) -> int:
    state = open_review(root, log)
    print("restored", state_digest(state.choices), len(complete_records(log)), flush=True)
    rng, paths, n = random.Random(seed), list(state.scores["path"]), 0
    undoing = seed % 3 == 2  # one child in three mostly takes back: the log becomes mostly history
    while True:
        op, path = (0.75 + 0.25 * rng.random() if undoing and rng.random() < 0.8 else rng.random()), rng.choice(paths)
        if op < 0.4:
            done = state.set_choice(path, rng.choice(["<Keep>", "<Delete>", *CLASSES]))
        elif op < 0.55:
            done = state.toggle_delete(path)
        elif op < 0.65:
            done = state.accept_prediction(path)
        elif op < 0.75:
            state.go_to(rng.randrange(state.n_pages))
            done = state.delete_all_shown()
        else:
            done = state.undo()
        if done:  # a decision that changed nothing (an undo with nothing to undo) writes no record
            n += 1
            print("ack", n, state_digest(state.choices), flush=True)


# -- the parent ---------------------------------------------------------------------------------------


@dataclass
class KillResult:
    acknowledged: int  # decisions the child had acknowledged when it was killed
    records_after: int  # records the log gained in this run
    kept: bool  # every acknowledged decision is in the log, and the state it gives is the child's
    restored_ok: bool  # the next review took up that state
    torn_tail: bool  # half a record was left at the end of the log after this kill
    compacted: bool  # the child's restore rewrote the log as its pending decisions alone


def complete_records(log: Path) -> list[bytes]:
    """The log's whole lines (a torn last one left out)."""
    if not log.exists():
        return []
    return log.read_bytes().split(b"\n")[:-1]


def replayed_digest(root: Path, log: Path, n_records: int, scratch: Path) -> str:
    """The pending choices a new review takes up from the log's first `n_records` records."""
    lines = complete_records(log)[:n_records]
    scratch.write_bytes(b"".join(line + b"\n" for line in lines))
    return state_digest(open_review(root, scratch).choices)


def _run_killed(root: Path, log: Path, seed: int, delay: float) -> tuple[str | None, int, list[tuple[int, str]]]:
    """A child killed `delay` seconds after it has restored: what it restored, the log's records then
    (a restore may rewrite a log that is mostly history), and its acks in order."""
    proc = subprocess.Popen(
        [sys.executable, __file__, str(root), str(log), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:  # drain stdout as it comes, so the child never waits on a full pipe
        for line in proc.stdout:
            lines.append(line)
            started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not started.wait(timeout=120):
        proc.kill()
        raise RuntimeError(f"the review child did not start: {proc.stderr.read()[-2000:]}")
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reader.join(timeout=10)
    first = lines[0].split() if lines and lines[0].startswith("restored") else [None, None, "-1"]
    acks = [(int(p[1]), p[2]) for p in (line.split() for line in lines[1:] if line.endswith("\n")) if p[0] == "ack"]
    return first[1], int(first[2]), acks


def kill_trials(workdir: Path, kills: int, seed: int = 0, window: tuple[float, float] = (0.0, 0.4)) -> list[KillResult]:
    """`kills` children in turn on one log, each killed at a random moment; see the module's docstring."""
    rng = random.Random(seed)
    root, log, scratch = make_dataset(workdir / "data"), workdir / "review.jsonl", workdir / "prefix.jsonl"
    results: list[KillResult] = []
    expected = replayed_digest(root, log, 0, scratch)
    for k in range(kills):
        before = len(complete_records(log))
        restored, base, acks = _run_killed(root, log, seed * 1000 + k, rng.uniform(*window))
        if results:
            results[-1].restored_ok = restored == expected
        records = len(complete_records(log)) - base
        n = acks[-1][0] if acks else 0
        kept = n <= records <= n + 1 and replayed_digest(root, log, base + n, scratch) == (
            acks[-1][1] if acks else restored
        )
        expected = replayed_digest(root, log, base + records, scratch)
        torn = rng.random() < 0.25 and records > 0
        if torn:  # half of a record, as a write cut off by a power cut would leave
            last = complete_records(log)[-1]
            with open(log, "ab") as f:
                f.write(last[: len(last) // 2])
        results.append(KillResult(n, records, kept, False, torn, base < before))
    restored, _, _ = _run_killed(root, log, seed * 1000 + kills, 0.0)
    if results:
        results[-1].restored_ok = restored == expected
    return results


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])))
