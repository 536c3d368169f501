"""Training speed against the compute limit and against fastai, on the same data in the same run.

Recipe (fastai's own): mobilenet_v2 IMAGENET1K_V1, 64 px, batch 64, fine_tune(1), on MNIST-5k
written as PNG files with 10% of the training labels flipped. The validation labels are true, so
the validation error is measured against the truth.

    python bench/train_speed.py                      # nbtrain, bare limit, and fastai when installed
    python bench/train_speed.py --arch resnet50 --size 224 --epochs 3 --precisions fp32,amp,amp_cl   # on a GPU

A precision is "fp32" or "amp" (bf16 from compute capability 8.0, fp16 with a scaler before it), and a
"_cl" suffix runs nbtrain and the bare loop in channels_last (nbtrain's default on CPU and CUDA).

images/s counts training images (epochs x training set) over the whole fine_tune wall time,
validation included. The bare limit is a plain PyTorch train step (forward, backward, AdamW) of the
same network and head on random tensors of the same shape, already on the device. fine_tune's first
epoch trains the head alone, which costs less than a full step, so "time / schedule limit" also
compares with bare steps in that schedule (one frozen epoch, then `--epochs` unfrozen ones).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastai_setup import fastai_vision  # noqa: E402

import nbtrain  # noqa: E402
from nbtrain.models import create_vision_model  # noqa: E402
from nbtrain.samples import make_mnist_sample  # noqa: E402


def bare_limit(
    arch: str,
    size: int,
    bs: int,
    steps: int,
    device: torch.device,
    amp: torch.dtype | None,
    channels_last: bool,
    frozen: bool = False,
) -> float:
    """Images per second of bare train steps on random tensors: the most any library can reach."""
    model, _ = create_vision_model(arch, 10, pretrained=False)
    if frozen:  # fine_tune's first epoch: no gradients for the body
        model.body.requires_grad_(False)
    model.to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(bs, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (bs,), device=device)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None

    def step():
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    model.train()
    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * bs / (time.perf_counter() - start)


def true_error(probs: torch.Tensor, items, truth: dict[str, int], root: Path) -> float:
    pred = probs.argmax(1)
    true = torch.tensor([truth[str(Path(p).relative_to(root))] for p in items])
    return float((pred != true).float().mean())


def run_nbtrain(path: Path, arch: str, size: int, bs: int, epochs: int, truth: dict, precision: str) -> dict:
    dls = nbtrain.ImageDataLoaders.from_folder(
        path, item_tfms=nbtrain.Resize(size), batch_tfms=nbtrain.aug_transforms(), bs=bs, seed=0
    )
    try:
        learn = nbtrain.vision_learner(dls, arch, metrics=nbtrain.error_rate, channels_last=precision.endswith("_cl"))
    except nbtrain.WeightsUnavailableError:
        print(f"No offline {arch} weights: timing it from random weights (the speed is the same).")
        learn = nbtrain.vision_learner(
            dls, arch, metrics=nbtrain.error_rate, channels_last=precision.endswith("_cl"), pretrained=False
        )
        learn.freeze()
    if precision.startswith("fp32"):
        learn.to_fp32()
    start = time.perf_counter()
    learn.fine_tune(epochs)
    wall = time.perf_counter() - start
    probs, _ = learn.get_preds(ds_idx=1)
    n_images = (epochs + 1) * len(dls.train) * bs
    return {
        "images/s": n_images / wall,
        "wall_s": wall,
        "valid_error_true": true_error(probs, dls.valid_ds.items, truth, path),
    }


def run_fastai(path: Path, size: int, bs: int, epochs: int, truth: dict) -> dict | None:
    fv = fastai_vision()
    if fv is None:
        return None
    from torchvision.models import mobilenet_v2

    dls = fv.ImageDataLoaders.from_folder(
        path,
        item_tfms=fv.Resize(size),
        batch_tfms=fv.aug_transforms(),
        bs=bs,
        seed=0,
        num_workers=nbtrain.environment.default_num_workers(),
    )
    learn = fv.vision_learner(dls, mobilenet_v2, metrics=fv.error_rate)
    with learn.no_bar():
        start = time.perf_counter()
        learn.fine_tune(epochs)
        wall = time.perf_counter() - start
        probs, _ = learn.get_preds(ds_idx=1)
    n_images = (epochs + 1) * len(dls.train) * bs
    items = [Path(p) for p in dls.valid_ds.items]
    return {"images/s": n_images / wall, "wall_s": wall, "valid_error_true": true_error(probs, items, truth, path)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="mobilenet_v2")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--noise", type=float, default=0.10)
    ap.add_argument("--precisions", default="fp32_cl", help="comma list of fp32, amp, fp32_cl, amp_cl")
    ap.add_argument("--no-fastai", action="store_true")
    ap.add_argument("--data", default=None, help="where to write the dataset (default: a temp folder)")
    args = ap.parse_args()

    device = nbtrain.default_device()
    root = Path(args.data or tempfile.mkdtemp(prefix="nbtrain-bench-"))
    sample = make_mnist_sample(root / "mnist5k", noise=args.noise, seed=0)
    labels = sample.labels
    truth = dict(zip(labels["fname"], labels["true_label"].astype(int)))
    rows = []
    steps = 50 if device.type == "cpu" else 200
    for precision in args.precisions.split(","):
        amp = nbtrain.environment.autocast_dtype(device) if precision.startswith("amp") else None
        limit = bare_limit(args.arch, args.size, args.bs, steps, device, amp, precision.endswith("_cl"))
        # fine_tune(n) trains one epoch with the body frozen, then n with it unfrozen: the limit for
        # that schedule weighs a frozen and an unfrozen bare step by their epochs.
        frozen = bare_limit(args.arch, args.size, args.bs, steps, device, amp, precision.endswith("_cl"), True)
        schedule = (1 + args.epochs) / (1 / frozen + args.epochs / limit)
        res = run_nbtrain(sample.path, args.arch, args.size, args.bs, args.epochs, truth, precision)
        rows.append((f"bare PyTorch step ({precision})", limit, None, None, None))
        rows.append(("bare, fine_tune's schedule", schedule, None, None, None))
        rows.append(
            (
                f"nbtrain ({precision})",
                res["images/s"],
                res["valid_error_true"],
                limit / res["images/s"],
                schedule / res["images/s"],
            )
        )
        if args.arch == "mobilenet_v2" and not args.no_fastai and precision == args.precisions.split(",")[0]:
            fa = run_fastai(sample.path, args.size, args.bs, args.epochs, truth)
            if fa is None:
                print("fastai is not installed: pip install fastai to compare with it.")
            else:
                rows.append(
                    (
                        "fastai",
                        fa["images/s"],
                        fa["valid_error_true"],
                        limit / fa["images/s"],
                        schedule / fa["images/s"],
                    )
                )

    print(
        f"\ndevice: {device}, torch {torch.__version__}, {os.cpu_count()} CPU cores; {args.arch} {args.size}px "
        f"bs {args.bs}, fine_tune({args.epochs}), MNIST-5k with {args.noise:.0%} of training labels flipped"
    )
    print(f"{'run':<34}{'images/s':>10}{'valid err (true)':>18}{'time / limit':>14}{'time / schedule limit':>23}")
    for name, ips, err, ratio, sched_ratio in rows:
        print(
            f"{name:<34}{ips:>10.1f}{'' if err is None else f'{err:.4f}':>18}"
            f"{'' if ratio is None else f'{ratio:.2f}x':>14}{'' if sched_ratio is None else f'{sched_ratio:.2f}x':>23}"
        )


if __name__ == "__main__":
    main()
