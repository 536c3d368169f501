"""Kill `apply_actions` with SIGKILL at random points, resume or undo, and count the files lost.

Each trial writes 30 real PNG files (three classes with the same names, so relabels collide), runs an
apply of 8 deletes, 12 relabels (some onto taken names, some into a new class folder), 2 own-class
choices and 1 missing file in a child process slowed between the steps of every file operation, kills
it at a random moment, then resumes (even trials) or undoes (odd trials), in one trial in three after
killing the recovery too. Half the trials use trash=True. Every file is then checked by sha256 at its
expected final place (resume) or original place (undo).

    python bench/faults_apply.py                 # 100 trials
    python bench/faults_apply.py --trials 20 --seed 3

"files lost" counts files not where they should be or with other bytes; "extra" counts files that
should not be there. An undo after the commit of an apply without trash cannot bring back the files
that commit unlinked; it names them, and they are counted apart as "unlinked as asked".
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # nbtrain and testkit from this checkout

from testkit.fileops_child import crash_trial  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    results, start = [], time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for t in range(args.trials):
            results.append(
                crash_trial(
                    Path(tmp) / f"trial{t}",
                    seed=args.seed * 100_000 + t,
                    recovery="resume" if t % 2 == 0 else "undo",
                    trash=t % 4 >= 2,
                )
            )
    resumes = sum(r.recovery == "resume" for r in results)
    print(
        "| trials | resumes | undos | recoveries also killed | files checked | files lost | extra files "
        "| unlinked as asked |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {len(results)} | {resumes} | {len(results) - resumes} | {sum(r.recovery_killed for r in results)} "
        f"| {sum(r.checked for r in results)} | {sum(r.lost for r in results)} | {sum(r.extra for r in results)} "
        f"| {sum(r.unrecoverable for r in results)} |"
    )
    phases = Counter(r.killed_during for r in results)
    print("\nWhere the apply was when killed: " + ", ".join(f"{phase}: {n}" for phase, n in phases.most_common()))
    print(f"{time.time() - start:.0f} s in all")
    if any(r.lost or r.extra for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
