"""Model files: `save`/`load` of checkpoints, `export` and what `load_learner` reads back.

Every file is written by one atomic write (`fileops.atomic_write`): a save that is cut off leaves
the previous file intact. Files hold tensors and plain metadata only and are read with
`torch.load(weights_only=True)`, so opening one cannot run code. The functions take the learner
as their first argument; they read its public attributes and call its public methods.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from . import distributed
from .augmentation import Normalize, item_tfm_from_spec
from .data import DataLoader, DataLoaders, ImageDataset
from .environment import default_device
from .fileops import atomic_write
from .locations import output_dir
from .models import VisionModel, arch_name, create_vision_model

if TYPE_CHECKING:
    from .learner import Learner

EXPORT_FORMAT = "nbtrain-export"
CHECKPOINT_FORMAT = "nbtrain-checkpoint"


class CheckpointMismatchError(ValueError):
    """A saved model that does not fit this learner's architecture or classes."""


def atomic_torch_save(obj: object, path: Path) -> None:
    """torch.save through `atomic_write`: the file at `path` is the old one or the complete new one."""
    atomic_write(path, lambda f: torch.save(obj, f))


def safe_load(path: Path | str, map_location: str | torch.device = "cpu") -> object:
    """torch.load that refuses anything but tensors and plain data, with a message that says why."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
        # torch.save writes a zip archive ("PK"), or in its legacy format a pickle (protocol 2+: 0x80).
        # Anything else (text, an HTML error page, an image) is refused here, not called a pickle.
        if not head.startswith((b"PK", b"\x80")):
            raise ValueError("it is empty" if not head else f"it starts with {head!r}, not as torch.save writes")
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's own first line is about its options (with terminal colour codes); name what the file needs.
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        detail = f"it needs {found.group(1)}" if found else re.sub(r"\x1b\[[0-9;]*m", "", str(e).splitlines()[0])
        raise ValueError(
            f"{path} holds pickled Python objects, not just weights, and nbtrain does not unpickle "
            "them because that can run any code. If it is a fastai export, load it with fastai and "
            f"save the model's state_dict. ({detail})"
        ) from None
    except Exception as e:  # torn zip: RuntimeError; empty: EOFError; text or an HTML page: KeyError, ...
        raise ValueError(f"{path} is not a readable model file ({type(e).__name__}: {e}).") from None


def _check_fits(model: nn.Module, weights: dict, saved: dict | None, current: dict, path: Path) -> None:
    if not isinstance(weights, dict):
        raise CheckpointMismatchError(f"{path} does not hold a state dict.")
    if saved:
        if saved.get("arch") != current["arch"] or saved.get("n_out") != current["n_out"]:
            raise CheckpointMismatchError(
                f"{path} was saved from {saved.get('arch')} with {saved.get('n_out')} classes "
                f"{saved.get('vocab')}, but this learner is {current['arch']} with {current['n_out']} classes "
                f"{current['vocab']}. Build the learner with the same architecture and data, or use another file."
            )
    own = model.state_dict()
    wrong = [k for k, v in weights.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    missing = [k for k in own if k not in weights]
    if wrong or missing:
        detail = (
            f"{len(wrong)} tensors of another shape (e.g. {wrong[0]})" if wrong else f"{len(missing)} missing tensors"
        )
        raise CheckpointMismatchError(
            f"{path} does not fit this model: {detail}. It was probably saved from "
            "another architecture or number of classes."
        )


def _meta(learn: Learner) -> dict:
    model = learn.model
    return {
        "arch": model.arch if isinstance(model, VisionModel) else type(model).__name__,
        "n_out": learn.dls.c,
        "vocab": list(learn.dls.vocab),
        "multi_label": bool(learn.dls.multi_label),
    }


def _write_from_main(state: dict, path: Path) -> Path:
    if distributed.is_main():  # in distributed training the processes hold the same weights
        atomic_torch_save(state, path)
    distributed.barrier()  # the others may load it next
    return path


def save(learn: Learner, name: str, with_opt: bool = True) -> Path:
    """`Learner.save`: the model (and optimizer) in `learn.output_path/name.pth`."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "meta": _meta(learn),
        "model": learn.model.state_dict(),
        "opt": learn.opt.state_dict() if (with_opt and learn.opt is not None) else None,
    }
    return _write_from_main(state, learn.output_path / f"{name}.pth")


def load(learn: Learner, name: str | Path, with_opt: bool = True, strict: bool = True) -> None:
    """`Learner.load`: the weights (and optimizer) of a file written by `save` into `learn`."""
    path = Path(name)
    if not path.suffix:
        path = learn.output_path / f"{name}.pth"
    if not path.exists():
        raise FileNotFoundError(
            f"No saved model at {path}. Saved models: {sorted(p.stem for p in learn.output_path.glob('*.pth'))}"
        )
    state = safe_load(path)
    weights = state.get("model", state) if isinstance(state, dict) else state
    _check_fits(learn.model, weights, state.get("meta") if isinstance(state, dict) else None, _meta(learn), path)
    learn.model.load_state_dict(weights, strict=strict)
    if with_opt and isinstance(state, dict) and state.get("opt") is not None:
        try:
            learn.create_opt().load_state_dict(state["opt"])
        except ValueError:
            learn.opt = None  # The optimizer's groups changed; it starts afresh, the weights are loaded.


def export(learn: Learner, fname: str | Path = "export.pkl") -> Path:
    """`Learner.export`: weights plus the plain metadata `read_export` rebuilds the learner from."""
    if not isinstance(learn.model, VisionModel):
        raise TypeError(
            "export() needs a model made by vision_learner, so it can be rebuilt by name. "
            "For another model, save its state_dict with learn.save() and rebuild it yourself."
        )
    path = Path(fname)
    if not path.is_absolute():
        path = output_dir(learn.path, ".") / path
    norm = learn.dls.train.normalize  # the loaders' own: fastai v1's ImageDataBunch has a normalize() method
    state = {
        "format": EXPORT_FORMAT,
        "version": 1,
        **_meta(learn),
        "item_tfms": [t.spec() for t in learn.dls.item_tfms],
        "normalize": {"mean": norm.mean, "std": norm.std} if norm is not None else None,
        "loss": "bce" if isinstance(learn.loss_func, nn.BCEWithLogitsLoss) else "ce",
        "thresh": float(learn.thresh),
        "model": learn.model.state_dict(),
    }
    return _write_from_main(state, path)


def read_export(fname: Path | str, cpu: bool = True) -> dict:
    """What `export()`'s file holds, as the arguments of `Learner(...)`: loaders without images, the
    model with its weights, the loss and the threshold (`load_learner` builds the learner from them)."""
    state = safe_load(fname)
    if not isinstance(state, dict) or state.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{fname} is not a file written by Learner.export().")
    model, _ = create_vision_model(arch_name(state["arch"]), state["n_out"], pretrained=False)
    _check_fits(model, state["model"], None, {}, Path(fname))
    model.load_state_dict(state["model"])
    tfms = [item_tfm_from_spec(s) for s in state["item_tfms"]]
    multi = bool(state["multi_label"])
    device = torch.device("cpu") if cpu else default_device()
    empty = [ImageDataset([], [], state["vocab"], multi, tfms, train=flag) for flag in (True, False)]
    norm = Normalize(**state["normalize"]) if state["normalize"] else None
    dls = DataLoaders(
        *[DataLoader(ds, normalize=norm, device=device, num_workers=0) for ds in empty], path=Path(fname).parent
    )
    loss = nn.BCEWithLogitsLoss() if state["loss"] == "bce" else nn.CrossEntropyLoss()
    return {"dls": dls, "model": model, "loss_func": loss, "thresh": state.get("thresh", 0.5)}
