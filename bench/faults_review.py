"""Kill a review with SIGKILL while it writes its decisions log, and count acknowledged decisions lost.

Each kill is one child (testkit/review_child.py) on the same log: it takes up what the log holds, as a new
cleaner does, makes random decisions (choices, deletions, accepted predictions, bulk deletions, undos),
each appended and fsynced before it returns, and is killed at a random moment. One child in three mostly
undoes, so that restores also rewrite a log that has become mostly history. After each kill the log
is read back as a new review reads it. One kill in four also leaves half a record at the log's end, as a
power cut mid-write would.

    python bench/faults_review.py              # 50 kills
    python bench/faults_review.py --kills 10 --seed 1

Exits 1 if any acknowledged decision is lost or a restore differs from what the log holds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # nbtrain and testkit from this checkout

from testkit.review_child import kill_trials  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        results = kill_trials(Path(tmp), args.kills, seed=args.seed)
    acked = sum(r.acknowledged for r in results)
    lost_runs = sum(not r.kept for r in results)
    bad_restores = sum(not r.restored_ok for r in results)
    unacked = sum(r.records_after - r.acknowledged for r in results)
    torn = sum(r.torn_tail for r in results)
    compacted = sum(r.compacted for r in results)
    print(f"## The review's decisions log, its writer killed with SIGKILL ({args.kills} kills, seed {args.seed})\n")
    print(
        "| kills | decisions acknowledged before the kills | kills that lost an acknowledged decision | "
        "written but not yet acknowledged | half records planted | restores that rewrote the log smaller | "
        "restores that differed from the log |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {len(results)} | {acked} | {lost_runs} | {unacked} | {torn} | {compacted} | {bad_restores} |")
    print(f"\n{time.time() - start:.0f} s.")
    sys.exit(1 if lost_runs or bad_restores else 0)


if __name__ == "__main__":
    main()
