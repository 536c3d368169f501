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
from typing import Sequence

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


class Resize:
    """Resize to `size` (an int for a square, or `(height, width)`).

    method: "crop" resizes the short side then centre-crops, "squish" stretches to the size, "pad"
    fits the long side and pads with black. The crop is centred on the training set too, which keeps
    this transform deterministic (so its output can be cached); use `RandomResizedCrop` for random crops.
    """

    deterministic = True

    def __init__(self, size: int | Sequence[int], method: str = "crop"):
        if method not in ("crop", "squish", "pad"):
            raise ValueError(f"Resize method must be 'crop', 'squish' or 'pad', not {method!r}.")
        self.size, self.method = _pair(size), method

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
        return TF.pad(img, [left, top, w - new[1] - left, h - new[0] - top], fill=0)

    def spec(self) -> dict:
        """Plain metadata that `load_learner` can rebuild this transform from."""
        return {"name": "Resize", "size": list(self.size), "method": self.method}

    def __repr__(self) -> str:
        return f"Resize(size={self.size}, method={self.method!r})"


class RandomResizedCrop:
    """A random crop of at least `min_scale` of the area, resized to `size`, on the training set;
    a centre crop on the validation set and at inference."""

    deterministic = False

    def __init__(self, size: int | Sequence[int], min_scale: float = 0.35, ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        self.size, self.min_scale, self.ratio = _pair(size), min_scale, ratio
        self._random = v2.RandomResizedCrop(self.size, scale=(min_scale, 1.0), ratio=ratio, antialias=True)
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
        return Resize(spec["size"], spec["method"])
    if spec["name"] == "RandomResizedCrop":
        return RandomResizedCrop(spec["size"], spec["min_scale"])
    raise ValueError(f"Unknown item transform {spec['name']!r} in the exported file.")


class BatchTransform:
    """A transform of a float batch `(B, C, H, W)` in [0, 1], applied to the training set only."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


def _uniform(n: int, lo: float, hi: float, device: torch.device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(lo, hi)


class AffineWarp(BatchTransform):
    """Flips, rotation, zoom and a perspective warp, as one projective matrix per image.

    Composing them costs a single `grid_sample` per batch, and each image gets its own draw.
    """

    def __init__(self, do_flip: bool = True, flip_vert: bool = False, max_rotate: float = 10.0,
                 min_zoom: float = 1.0, max_zoom: float = 1.1, max_warp: float = 0.2, p_affine: float = 0.75):
        self.do_flip, self.flip_vert = do_flip, flip_vert
        self.max_rotate, self.min_zoom, self.max_zoom = max_rotate, min_zoom, max_zoom
        self.max_warp, self.p_affine = max_warp, p_affine

    def matrices(self, n: int, device: torch.device) -> torch.Tensor:
        """`(n, 3, 3)` matrices that map output coordinates to input coordinates, in [-1, 1]."""
        eye = torch.eye(3, device=device).repeat(n, 1, 1)
        flip = eye.clone()
        if self.do_flip:
            flip[:, 0, 0] = torch.where(torch.rand(n, device=device) < 0.5, -1.0, 1.0)
        if self.flip_vert:
            flip[:, 1, 1] = torch.where(torch.rand(n, device=device) < 0.5, -1.0, 1.0)
        on = (torch.rand(n, device=device) < self.p_affine).float()
        angle = _uniform(n, -self.max_rotate, self.max_rotate, device) * math.pi / 180 * on
        # Zooming in by s samples a region 1/s as wide.
        zoom = 1 + (_uniform(n, self.min_zoom, self.max_zoom, device) - 1) * on
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        affine = eye.clone()
        affine[:, 0, 0], affine[:, 0, 1], affine[:, 1, 0], affine[:, 1, 1] = cos, -sin, sin, cos
        persp = eye.clone()
        persp[:, 2, 0] = _uniform(n, -self.max_warp, self.max_warp, device) * on
        persp[:, 2, 1] = _uniform(n, -self.max_warp, self.max_warp, device) * on
        return persp @ affine @ flip

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        m = self.matrices(n, x.device).to(x.dtype)
        ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=x.device, dtype=x.dtype)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        base = torch.stack([gx, gy, torch.ones_like(gx)], -1).reshape(1, h * w, 3)
        pts = base @ m.transpose(1, 2)
        grid = (pts[..., :2] / pts[..., 2:].clamp(min=1e-3)).reshape(n, h, w, 2)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def __repr__(self) -> str:
        return (f"AffineWarp(do_flip={self.do_flip}, flip_vert={self.flip_vert}, max_rotate={self.max_rotate}, "
                f"zoom=({self.min_zoom}, {self.max_zoom}), max_warp={self.max_warp}, p_affine={self.p_affine})")


class Lighting(BatchTransform):
    """Random brightness and contrast, each image its own, with probability `p`."""

    def __init__(self, max_lighting: float = 0.2, p: float = 0.75):
        self.max_lighting, self.p = max_lighting, p

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, m = x.shape[0], self.max_lighting
        on = (torch.rand(n, device=x.device) < self.p).to(x.dtype)
        brightness = _uniform(n, -m / 2, m / 2, x.device).to(x.dtype) * on
        # Contrast is drawn on a log scale so that halving and doubling are equally likely.
        log_c = _uniform(n, math.log(1 - m), -math.log(1 - m), x.device).to(x.dtype) * on if m < 1 else 0 * on
        contrast = torch.exp(log_c)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        out = (x - mean) * contrast.view(n, 1, 1, 1) + mean + brightness.view(n, 1, 1, 1)
        return out.clamp_(0, 1)

    def __repr__(self) -> str:
        return f"Lighting(max_lighting={self.max_lighting}, p={self.p})"


def aug_transforms(do_flip: bool = True, flip_vert: bool = False, max_rotate: float = 10.0, min_zoom: float = 1.0,
                   max_zoom: float = 1.1, max_lighting: float = 0.2, max_warp: float = 0.2, p_affine: float = 0.75,
                   p_lighting: float = 0.75) -> list[BatchTransform]:
    """fastai's default data augmentation: flips, rotation, zoom, perspective warp, brightness and contrast."""
    tfms: list[BatchTransform] = []
    if do_flip or flip_vert or max_rotate or max_zoom > 1 or min_zoom < 1 or max_warp:
        tfms.append(AffineWarp(do_flip, flip_vert, max_rotate, min_zoom, max_zoom, max_warp, p_affine))
    if max_lighting:
        tfms.append(Lighting(max_lighting, p_lighting))
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
