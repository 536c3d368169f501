"""Feed the zoo of bad files to every entry point, kill saves and applies with SIGKILL, and count files lost.

Three parts:

1. Every case of testkit/badzoo.py (truncated, empty, non-image, odd-mode, bomb, EXIF-rotated, odd names,
   symlink loops and escapes, unsafe labels) planted in a fresh dataset and fed to each entry point it can
   enter: `ImageDataLoaders.from_folder` (bad_files="error" and "skip"), `verify_images`, `learn.predict`,
   the cleaner's thumbnails, and `fileops.apply_actions` (delete and relabel). Every file under the trial's
   folder (the dataset and a folder outside it that links point at) is hashed before and after: "lost"
   counts files not where they should be with the same bytes (links: the same target).
2. `learn.save` killed with SIGKILL at random moments (a resnet50, pretrained=False: a 98 MB file): the
   checkpoint must be the old one byte for byte or a complete new one.
3. bench/faults_apply.py: `apply_actions` killed at random points, then resumed or undone.

    python bench/faults.py                      # all three
    python bench/faults.py --save-trials 20 --apply-trials 20
    python bench/faults.py --apply-trials 0     # skip part 3
    python bench/faults.py --compact            # part 1 as one row per case

Exits 1 if any outcome differs from the decided one (badzoo.EXPECTED) or any file is lost.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # nbtrain and testkit from this checkout
os.environ.setdefault("NBTRAIN_NUM_WORKERS", "0")

from testkit import badzoo  # noqa: E402


def zoo_table(compact: bool = False) -> bool:
    ok, results = True, []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        learn = badzoo.tiny_learner(tmp / "learner")
        for case in badzoo.CASES:
            for entry in badzoo.ENTRIES:
                if badzoo.EXPECTED[case.name][entry] != "n/a":
                    results.append(badzoo.run(case, entry, tmp / f"t{len(results)}", learn))
    print(f"## Bad inputs at every entry point ({len(badzoo.CASES)} cases, {len(results)} runs)\n")
    if compact:  # one row per case
        print("| case | " + " | ".join(badzoo.ENTRIES) + " | files lost |")
        print("|---" * (len(badzoo.ENTRIES) + 2) + "|")
    else:
        print("| case | entered through | outcome | as decided | files before → after | files lost |")
        print("|---|---|---|:-:|---:|---:|")
    for case in badzoo.CASES:
        rows = [r for r in results if r.case == case.name]
        cells, lost_case = {}, 0
        for r in rows:
            good = r.outcome == r.expected and not r.lost and not r.extra
            ok &= good
            lost = len(r.lost) + len(r.extra)
            lost_case += lost
            outcome = r.outcome if r.outcome == r.expected else f"**{r.outcome}** (decided: {r.expected})"
            cells[r.entry] = outcome
            if not compact:
                print(
                    f"| {case.name} | {r.entry} | {outcome} | {'✓' if good else '✗'} | "
                    f"{r.files_before} → {r.files_after} | {lost if lost == 0 else f'**{lost}**'} |"
                )
        if compact:
            print(f"| {case.name} | " + " | ".join(cells.get(e, "–") for e in badzoo.ENTRIES) + f" | {lost_case} |")
    return ok


def save_trials(n: int) -> bool:
    print(f"\n## learn.save killed with SIGKILL ({n} trials, resnet50 pretrained=False)\n")
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        trials = badzoo.kill_during_save(Path(tmp), trials=n, seed=0, arch="resnet50")
    found = Counter(t.found for t in trials)
    mid = sum(t.mid_save for t in trials)
    bad = [t for t in trials if t.found not in ("old", "new") or t.other_files or t.child != "killed"]
    print(
        "| trials | cut off mid-save | old checkpoint intact (same sha256) | complete new version | "
        "torn or missing | partial files under the name | temp files left |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {n} | {mid} | {found['old']} | {found['new']} | {n - found['old'] - found['new']} | "
        f"{sum(bool(t.other_files) for t in trials)} | {trials[-1].temp_files if trials else 0} |"
    )
    print(
        f"\n{time.time() - start:.0f} s. A save killed mid-way leaves its hidden `.ckpt.pth.<pid>.*.tmp` file; the "
        "next save removes it (its writer is dead), so at most one is ever left."
    )
    return not bad


def apply_trials(n: int) -> bool:
    script = HERE / "faults_apply.py"
    print(f"\n## apply_actions killed with SIGKILL ({n} trials, {script.name})\n")
    if not script.exists():
        print(f"{script} is not there; skipped.")
        return True
    done = subprocess.run([sys.executable, str(script), "--trials", str(n)], capture_output=True, text=True)
    print(done.stdout.strip())
    if done.returncode:
        print(done.stderr.strip()[-2000:])
    return done.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save-trials", type=int, default=10)
    parser.add_argument("--apply-trials", type=int, default=100)
    parser.add_argument("--compact", action="store_true", help="one row per case, a column per entry point")
    args = parser.parse_args()
    start = time.time()
    ok = zoo_table(args.compact)
    if args.save_trials:
        ok &= save_trials(args.save_trials)
    if args.apply_trials:
        ok &= apply_trials(args.apply_trials)
    print(f"\n{time.time() - start:.0f} s in all; {'everything as decided, no file lost' if ok else 'FAILURES above'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
