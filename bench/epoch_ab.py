"""One unfrozen training epoch, timed in two checkouts side by side: does a change slow the loop?

Each checkout trains in its own process, the two alternating, so drift of the machine falls on both.
mobilenet_v2 at 64 px, batch 64, `fit_one_cycle(1)` of the whole network on MNIST-5k written as PNG
files, after one head-only epoch that also fills the image cache.

    python bench/epoch_ab.py /path/to/baseline/checkout .        # baseline first
    python bench/epoch_ab.py A B --runs 5

Prints the seconds per epoch of each run and each checkout's mean as a ratio to the first.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import sys, time
sys.path.insert(0, sys.argv[1])
import torch, nbtrain
from nbtrain import ImageDataLoaders, Resize, vision_learner
torch.manual_seed(0)
dls = ImageDataLoaders.from_folder(sys.argv[2], item_tfms=Resize(64), bs=64, seed=0)
learn = vision_learner(dls, "mobilenet_v2", metrics=nbtrain.error_rate)
learn.fit_one_cycle(1, 1e-3)
learn.unfreeze()
t = time.perf_counter()
learn.fit_one_cycle(1, 1e-3)
print("SECONDS", time.perf_counter() - t, nbtrain.__file__)
"""


def one_epoch(repo: Path, data: Path) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, str(repo), str(data)], capture_output=True, text=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("SECONDS")), None)
    if line is None:
        raise SystemExit(f"{repo}: the run failed:\n{out.stderr[-2000:]}")
    _, seconds, module = line.split()
    if not Path(module).resolve().is_relative_to(repo.resolve()):
        raise SystemExit(f"{repo}: imported nbtrain from {module}, not from the checkout")
    return float(seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repos", nargs="+", type=Path, help="checkouts to compare; the first is the baseline")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--data", type=Path, default=None, help="where the MNIST sample is (written if missing)")
    args = ap.parse_args()
    sys.path.insert(0, str(args.repos[0]))
    from nbtrain.samples import make_mnist_sample

    root = args.data or Path(tempfile.gettempdir()) / "nbtrain-bench-epoch"
    data = make_mnist_sample(root / "mnist5k", n=5000, noise=0.1, seed=0).path
    times: dict[Path, list[float]] = {r: [] for r in args.repos}
    for _ in range(args.runs):
        for repo in args.repos:
            times[repo].append(one_epoch(repo, data))
    base = statistics.mean(times[args.repos[0]])
    print("| checkout | seconds per epoch (each run) | mean | ratio to the first |")
    print("|---|---|---:|---:|")
    for repo, ts in times.items():
        runs = ", ".join(f"{t:.2f}" for t in ts)
        print(f"| {repo} | {runs} | {statistics.mean(ts):.2f} | {statistics.mean(ts) / base:.3f} |")


if __name__ == "__main__":
    main()
