"""Item transforms (one PIL image at a time, on the CPU) and batch transforms (a whole batch, on its device).

Item transforms bring every image to one size. `Resize` is deterministic, so the loaders can keep the
resized images in memory after the first epoch. Randomness belongs in the batch transforms, which
draw their own parameters for every image of the batch and run where the batch lives, the GPU
included. torchvision's `transforms.v2` draws one set of parameters per call, which would give every
image of a batch the same rotation; so the geometric batch augmentation is one per-image projective
matrix and one `grid_sample` here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NoReturn

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

IMAGENET_STATS = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


class ResizeMethod:
    """fastai's names for `Resize`'s methods."""

    Crop, Squish, Pad = "crop", "squish", "pad"


class PadMode:
    """fastai's names for how `Resize(method="pad")` and the batch augmentation fill the border."""

    Zeros, Border, Reflection = "zeros", "border", "reflection"


_PIL_PAD = {"zeros": "constant", "border": "edge", "reflection": "reflect"}


class Resize:
    """Resize to `size` (an int for a square, or `(height, width)`).

    method: "crop" resizes the short side then centre-crops, "squish" stretches to the size, "pad"
    fits the long side and pads the rest, with `pad_mode` "reflection" (fastai's default), "zeros"
    (black) or "border" (the edge pixels repeated). The crop is centred on the training set too, which keeps this
    transform deterministic (so its output can be cached); use `RandomResizedCrop` for random crops.
    """

    deterministic = True

    def __init__(
        self, size: int | Sequence[int], method: str = "crop", pad_mode: str = "reflection", resamples: object = None
    ):
        if resamples is not None:
            raise ValueError(
                "Resize's resamples= cannot be honoured: nbtrain resizes with antialiased bilinear "
                "filtering. Leave it out."
            )
        if method not in ("crop", "squish", "pad"):
            raise ValueError(
                f"Resize method must be 'crop', 'squish' or 'pad' (ResizeMethod.Crop, .Squish, .Pad), not {method!r}."
            )
        if pad_mode not in _PIL_PAD:
            raise ValueError(
                f"pad_mode must be 'zeros', 'border' or 'reflection' (PadMode.Zeros, ...), not {pad_mode!r}."
            )
        self.size, self.method, self.pad_mode = _pair(size), method, pad_mode

    def __call__(self, img: Image.Image, train: bool = False) -> Image.Image:
        h, w = self.size
        if img.size == (w, h):
            return img
        if self.method == "squish":
            return TF.resize(img, [h, w], antialias=True)
        scale = (max if self.method == "crop" else min)(h / img.height, w / img.width)
        new = [max(1, round(img.height * scale)), max(1, round(img.width * scale))]
        img = TF.resize(img, new, antialias=True)
        if self.method == "crop":
            return TF.center_crop(img, [h, w])
        top, left = (h - new[0]) // 2, (w - new[1]) // 2
        pad = [left, top, w - new[1] - left, h - new[0] - top]
        if self.pad_mode == "reflection" and any(p >= d for p, d in zip(pad, [new[1], new[0]] * 2)):
            # Reflection cannot pad by more than the image's own size: pad with the border beyond that.
            return TF.pad(img, pad, padding_mode="edge")
        return TF.pad(img, pad, fill=0, padding_mode=_PIL_PAD[self.pad_mode])

    def spec(self) -> dict:
        """Plain metadata that `load_learner` can rebuild this transform from."""
        return {"name": "Resize", "size": list(self.size), "method": self.method, "pad_mode": self.pad_mode}

    def __repr__(self) -> str:
        extra = f", pad_mode={self.pad_mode!r}" if self.method == "pad" else ""
        return f"Resize(size={self.size}, method={self.method!r}{extra})"


class RandomResizedCrop:
    """A random crop of at least `min_scale` of the area, resized to `size`, on the training set;
    a centre crop on the validation set and at inference."""

    deterministic = False

    def __init__(
        self,
        size: int | Sequence[int],
        min_scale: float = 0.35,
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        resamples: object = None,
        val_xtra: float | None = None,
        max_scale: float = 1.0,
    ):
        if resamples is not None or val_xtra is not None:
            raise ValueError(
                "RandomResizedCrop's resamples= and val_xtra= cannot be honoured: nbtrain resizes with "
                "antialiased bilinear filtering and centre-crops the validation images to `size`. "
                "Leave them out."
            )
        if not 0 < min_scale <= max_scale <= 1:
            raise ValueError(f"RandomResizedCrop needs 0 < min_scale <= max_scale <= 1; got {min_scale}, {max_scale}.")
        self.size, self.min_scale, self.max_scale, self.ratio = _pair(size), min_scale, max_scale, ratio
        self._random = v2.RandomResizedCrop(self.size, scale=(min_scale, max_scale), ratio=ratio, antialias=True)
        self._valid = Resize(self.size, "crop")

    def __call__(self, img: Image.Image, train: bool = False) -> Image.Image:
        return self._random(img) if train else self._valid(img)

    def spec(self) -> dict:
        return {"name": "RandomResizedCrop", "size": list(self.size), "min_scale": self.min_scale}

    def __repr__(self) -> str:
        return f"RandomResizedCrop(size={self.size}, min_scale={self.min_scale})"


def item_tfm_from_spec(spec: dict) -> Resize | RandomResizedCrop:
    """Rebuild an item transform from the metadata that `spec()` wrote."""
    if spec["name"] == "Resize":
        return Resize(spec["size"], spec["method"], spec.get("pad_mode", "zeros"))
    if spec["name"] == "RandomResizedCrop":
        return RandomResizedCrop(spec["size"], spec["min_scale"])
    raise ValueError(f"Unknown item transform {spec['name']!r} in the exported file.")


class BatchTransform:
    """A transform of a float batch `(B, C, H, W)` in [0, 1]: `__call__` on the training set,
    `valid` on the validation set and at inference (unchanged, unless it sets the size)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def valid(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _uniform(n: int, lo: float, hi: float, device: torch.device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(lo, hi)


_MODES = ("bilinear", "nearest", "bicubic")


class AffineWarp(BatchTransform):
    """Flips, rotation, zoom, a perspective warp and (with `size`) a random crop resized to `size`,
    as one projective matrix per image.

    Composing them costs a single `grid_sample` per batch, and each image gets its own draw (the
    whole batch shares one with `batch=True`). With `size`, the validation set is resized too: its
    images centre-cropped to a square when `min_scale < 1`, as fastai's `RandomResizedCropGPU`.
    """

    def __init__(
        self,
        do_flip: bool = True,
        flip_vert: bool = False,
        max_rotate: float = 10.0,
        min_zoom: float = 1.0,
        max_zoom: float = 1.1,
        max_warp: float = 0.2,
        p_affine: float = 0.75,
        size: int | Sequence[int] | None = None,
        min_scale: float = 1.0,
        mode: str = "bilinear",
        pad_mode: str = "reflection",
        align_corners: bool = True,
        batch: bool = False,
    ):
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, not {mode!r}.")
        if pad_mode not in _PIL_PAD:
            raise ValueError(f"pad_mode must be 'zeros', 'border' or 'reflection', not {pad_mode!r}.")
        if not 0 < min_scale <= 1:
            raise ValueError(
                f"min_scale is the smallest fraction of the image a random crop keeps, in (0, 1]; got {min_scale}."
            )
        self.do_flip, self.flip_vert = do_flip, flip_vert
        self.max_rotate, self.min_zoom, self.max_zoom = max_rotate, min_zoom, max_zoom
        self.max_warp, self.p_affine = max_warp, p_affine
        self.size = None if size is None else _pair(size)
        self.min_scale, self.mode, self.pad_mode = min_scale, mode, pad_mode
        self.align_corners, self.batch = align_corners, batch

    def _draw(self, n: int, device: torch.device, lo: float, hi: float) -> torch.Tensor:
        return _uniform(1 if self.batch else n, lo, hi, device).expand(n)

    def _rand(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.rand(1 if self.batch else n, device=device).expand(n)

    def matrices(self, n: int, device: torch.device) -> torch.Tensor:
        """`(n, 3, 3)` matrices that map output coordinates to input coordinates, in [-1, 1]."""
        eye = torch.eye(3, device=device).repeat(n, 1, 1)
        flip = eye.clone()
        if self.do_flip:
            flip[:, 0, 0] = torch.where(self._rand(n, device) < 0.5, -1.0, 1.0)
        if self.flip_vert:
            flip[:, 1, 1] = torch.where(self._rand(n, device) < 0.5, -1.0, 1.0)
        on = (self._rand(n, device) < self.p_affine).float()
        angle = self._draw(n, device, -self.max_rotate, self.max_rotate) * math.pi / 180 * on
        # Zooming in by s samples a region 1/s as wide.
        zoom = 1 + (self._draw(n, device, self.min_zoom, self.max_zoom) - 1) * on
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        affine = eye.clone()
        affine[:, 0, 0], affine[:, 0, 1], affine[:, 1, 0], affine[:, 1, 1] = cos, -sin, sin, cos
        persp = eye.clone()
        persp[:, 2, 0] = self._draw(n, device, -self.max_warp, self.max_warp) * on
        persp[:, 2, 1] = self._draw(n, device, -self.max_warp, self.max_warp) * on
        return self._crop(n, device) @ persp @ affine @ flip

    def _crop(self, n: int, device: torch.device) -> torch.Tensor:
        """A random crop of a fraction in [min_scale, 1] of the area, anywhere in the image."""
        crop = torch.eye(3, device=device).repeat(n, 1, 1)
        if self.min_scale < 1:
            side = self._draw(n, device, self.min_scale, 1.0).sqrt()
            crop[:, 0, 0], crop[:, 1, 1] = side, side
            crop[:, 0, 2] = self._draw(n, device, -1.0, 1.0) * (1 - side)
            crop[:, 1, 2] = self._draw(n, device, -1.0, 1.0) * (1 - side)
        return crop

    def _sample(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        oh, ow = self.size or (h, w)
        if self.align_corners:
            ys = torch.linspace(-1, 1, oh, device=x.device, dtype=x.dtype)
            xs = torch.linspace(-1, 1, ow, device=x.device, dtype=x.dtype)
        else:
            ys = torch.linspace(-1 + 1 / oh, 1 - 1 / oh, oh, device=x.device, dtype=x.dtype)
            xs = torch.linspace(-1 + 1 / ow, 1 - 1 / ow, ow, device=x.device, dtype=x.dtype)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        base = torch.stack([gx, gy, torch.ones_like(gx)], -1).reshape(1, oh * ow, 3)
        pts = base @ m.transpose(1, 2)
        grid = (pts[..., :2] / pts[..., 2:].clamp(min=1e-3)).reshape(n, oh, ow, 2)
        out = F.grid_sample(x, grid, mode=self.mode, padding_mode=self.pad_mode, align_corners=self.align_corners)
        return out.clamp_(0, 1) if self.mode == "bicubic" else out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._sample(x, self.matrices(x.shape[0], x.device).to(x.dtype))

    def valid(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is None or tuple(x.shape[-2:]) == self.size:
            return x
        h, w = x.shape[-2:]
        if self.min_scale < 1:  # the centre square, as the random crops are square
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
            x = x[..., top : top + side, left : left + side]
        return F.interpolate(
            x,
            size=self.size,
            mode=self.mode,
            align_corners=None if self.mode == "nearest" else self.align_corners,
            antialias=self.mode != "nearest",
        ).clamp_(0, 1)

    def __repr__(self) -> str:
        extra = f", size={self.size}, min_scale={self.min_scale}" if self.size else ""
        return (
            f"AffineWarp(do_flip={self.do_flip}, flip_vert={self.flip_vert}, max_rotate={self.max_rotate}, "
            f"zoom=({self.min_zoom}, {self.max_zoom}), max_warp={self.max_warp}, p_affine={self.p_affine}{extra})"
        )


class Lighting(BatchTransform):
    """Random brightness and contrast, each image its own (the whole batch one with `batch=True`),
    with probability `p`."""

    def __init__(self, max_lighting: float = 0.2, p: float = 0.75, batch: bool = False):
        self.max_lighting, self.p, self.batch = max_lighting, p, batch

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, m = x.shape[0], self.max_lighting
        k = 1 if self.batch else n
        on = (torch.rand(k, device=x.device) < self.p).to(x.dtype).expand(n)
        brightness = _uniform(k, -m / 2, m / 2, x.device).to(x.dtype).expand(n) * on
        # Contrast is drawn on a log scale so that halving and doubling are equally likely.
        log_c = _uniform(k, math.log(1 - m), -math.log(1 - m), x.device).to(x.dtype).expand(n) * on if m < 1 else 0 * on
        contrast = torch.exp(log_c)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        out = (x - mean) * contrast.view(n, 1, 1, 1) + mean + brightness.view(n, 1, 1, 1)
        return out.clamp_(0, 1)

    def __repr__(self) -> str:
        return f"Lighting(max_lighting={self.max_lighting}, p={self.p})"


def aug_transforms(
    mult: float = 1.0,
    do_flip: bool = True,
    flip_vert: bool = False,
    max_rotate: float = 10.0,
    min_zoom: float = 1.0,
    max_zoom: float = 1.1,
    max_lighting: float = 0.2,
    max_warp: float = 0.2,
    p_affine: float = 0.75,
    p_lighting: float = 0.75,
    xtra_tfms: Sequence | None = None,
    size: int | Sequence[int] | None = None,
    mode: str = "bilinear",
    pad_mode: str = "reflection",
    align_corners: bool = True,
    batch: bool = False,
    min_scale: float = 1.0,
) -> list:
    """fastai's default data augmentation: flips, rotation, zoom, perspective warp, brightness and contrast.

    As fastai's: `mult` scales the rotation, lighting and warp; `size` resizes every batch (a random
    crop of at least `min_scale` of the image on the training set); `batch=True` gives the whole
    batch one draw; `xtra_tfms` (callables on a float batch) run after the others, on the training set.
    """
    if min_scale != 1 and size is None:
        raise ValueError(
            f"min_scale={min_scale} sets how small a random crop may be, and a crop needs a size to "
            "be resized to: pass size= too (e.g. aug_transforms(size=224, min_scale=0.75))."
        )
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, not {mode!r}.")
    max_rotate, max_lighting, max_warp = max_rotate * mult, max_lighting * mult, max_warp * mult
    if max_lighting >= 1:
        raise ValueError(
            f"max_lighting * mult = {max_lighting:g}, but it must stay below 1 (contrast would reach 0): "
            "lower mult or max_lighting."
        )
    tfms: list = []
    if do_flip or flip_vert or max_rotate or max_zoom > 1 or min_zoom < 1 or max_warp or size is not None:
        tfms.append(
            AffineWarp(
                do_flip,
                flip_vert,
                max_rotate,
                min_zoom,
                max_zoom,
                max_warp,
                p_affine,
                size=size,
                min_scale=min_scale,
                mode=mode,
                pad_mode=pad_mode,
                align_corners=align_corners,
                batch=batch,
            )
        )
    if max_lighting:
        tfms.append(Lighting(max_lighting, p_lighting, batch=batch))
    for t in xtra_tfms or []:
        if not callable(t):
            raise TypeError(
                f"xtra_tfms holds {t!r}, which is not callable: give functions (or BatchTransforms) "
                "that take a float batch (B, C, H, W) and return one."
            )
        tfms.append(t)
    return tfms


class Normalize:
    """Subtract the mean and divide by the standard deviation of the pretrained model's data."""

    def __init__(self, mean: Sequence[float] = IMAGENET_STATS[0], std: Sequence[float] = IMAGENET_STATS[1]):
        self.mean, self.std = list(mean), list(std)
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (x.device, x.dtype)
        if key not in self._cache:
            mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
            self._cache[key] = (mean, std)
        return self._cache[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(x)
        return (x - mean) / std

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(x)
        return (x * std + mean).clamp(0, 1)

    def __getstate__(self) -> dict:
        return {"mean": self.mean, "std": self.std, "_cache": {}}

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


# ---------------------------------------------------------------------------------------------
# fastai's transform internals, which nbtrain does not have


def _not_in_nbtrain(name: str, instead: str) -> Callable:
    """A stand-in for a fastai name that says it is unsupported and what to do, when used."""

    def unsupported(*args: object, **kwargs: object) -> NoReturn:
        raise NotImplementedError(f"{name} is a fastai internal that nbtrain does not have: {instead}")

    unsupported.__name__ = unsupported.__qualname__ = name
    return unsupported


_SEE_AUGMENTATION = (
    "nbtrain's batches are plain tensors, and its augmentation is applied by the loaders. To see "
    "what it does to an image, use dls.train.show_batch(unique=True); to change it, pass "
    "batch_tfms=aug_transforms(...) (max_rotate, max_zoom, max_warp, ...)."
)
TensorImage = _not_in_nbtrain("TensorImage", _SEE_AUGMENTATION)
setup_aug_tfms = _not_in_nbtrain("setup_aug_tfms", _SEE_AUGMENTATION)
Pipeline = _not_in_nbtrain("Pipeline", _SEE_AUGMENTATION)
