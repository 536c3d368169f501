"""fastai, set up to run offline on the same mobilenet_v2 weights as nbtrain, for side-by-side benches.

fastai is a bench-only dependency (`pip install fastai`); nbtrain never imports it.
"""

from __future__ import annotations

import shutil

from nbtrain.models import checkpoint_dir, offline_candidates

MOBILENET_FILE = "mobilenet_v2-b0353104.pth"


def fastai_vision():
    """`fastai.vision.all` with torchvision's mobilenet_v2 registered, or None when fastai is not installed."""
    try:
        from fastai.vision import all as fv
        from torchvision.models import mobilenet_v2
    except ImportError:
        return None
    # fastai has no metadata for torchvision's mobilenet_v2 (and 2.8 ignores `cut=`): its users register
    # it so that `features` is the body and ImageNet statistics normalise the inputs. With no 'weights'
    # entry fastai calls `mobilenet_v2(pretrained=True)`, which is IMAGENET1K_V1.
    fv.model_meta[mobilenet_v2] = {"cut": -1, "split": fv.default_split, "stats": fv.imagenet_stats}
    _weights_in_hub_cache()
    return fv


def _weights_in_hub_cache() -> None:
    """fastai loads torchvision weights only through the hub cache; put the offline file there."""
    cache = checkpoint_dir()
    if (cache / MOBILENET_FILE).exists():
        return
    found = offline_candidates(MOBILENET_FILE)
    if found:
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copy(found[0], cache / MOBILENET_FILE)
