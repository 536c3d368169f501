"""Where the code runs: the device, mixed precision, notebooks, Kaggle, and where outputs go."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from . import fileops

KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_WORKING = Path("/kaggle/working")


def default_device() -> torch.device:
    """CUDA first, then Apple's MPS, then the CPU; `NBTRAIN_DEVICE` overrides."""
    forced = os.environ.get("NBTRAIN_DEVICE")
    if forced:
        return torch.device(forced)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_dtype(device: torch.device, capability: tuple[int, int] | None = None) -> torch.dtype | None:
    """The mixed-precision dtype to use by default on `device`, or None for full precision.

    bf16 needs compute capability 8.0 (Ampere) to be fast. `torch.cuda.is_bf16_supported()` says
    True on a T4 through emulation, which is slower than fp32, so the capability decides here.
    fp16 is fast from 7.0 (tensor cores: T4, V100) and on the P100 (6.0); the other Pascal cards
    (6.1: GTX 10x0) run it at a small fraction of their fp32 speed, so they stay in fp32.
    The CPU stays in fp32 by default: bf16 is only faster on CPUs with AMX, and it costs accuracy.
    `capability` stands in for the GPU's own, e.g. (7, 5) for a T4.
    """
    if device.type != "cuda":
        return None
    major, minor = capability if capability is not None else torch.cuda.get_device_capability(device)
    if major >= 8:
        return torch.bfloat16
    if major >= 7 or (major, minor) == (6, 0):
        return torch.float16
    return None


def mixed_precision(device: torch.device, requested: str | torch.dtype | None = "auto",
                    capability: tuple[int, int] | None = None) -> tuple[torch.dtype | None, bool]:
    """The autocast dtype for `requested` ("auto", a dtype, or None for fp32) on `device`, and
    whether the gradients need a GradScaler.

    Only fp16 on CUDA needs the scaler: its narrow range lets small gradients underflow to zero.
    bf16 has fp32's range, and torch's CPU autocast is used for bf16.
    """
    dtype = autocast_dtype(device, capability) if requested == "auto" else requested
    return dtype, dtype == torch.float16 and device.type == "cuda"  # type: ignore[return-value]


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, Notebook, VS Code, Colab, Kaggle).

    False in the processes of distributed training, forked from a kernel or not: they have no
    channel to the notebook of their own, so they print plain text.
    """
    shell = sys.modules.get("IPython")
    if shell is None or (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    ip = shell.get_ipython()  # type: ignore[attr-defined]
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def is_kaggle() -> bool:
    """True inside a Kaggle kernel; Kaggle sets KAGGLE_KERNEL_RUN_TYPE in every notebook."""
    return "KAGGLE_KERNEL_RUN_TYPE" in os.environ or "KAGGLE_URL_BASE" in os.environ


def is_read_only_location(path: Path | str, kaggle_input: Path = KAGGLE_INPUT) -> bool:
    """True for data under Kaggle's read-only input mount (`kaggle_input`), on a read-only file
    system, or in a folder without write permission (see `fileops.is_read_only`)."""
    path = Path(path).absolute()
    if path == kaggle_input or kaggle_input in path.parents:
        return True
    return fileops.is_read_only(path)


def working_dir(kaggle_working: Path = KAGGLE_WORKING) -> Path:
    """Where outputs go when the data cannot be written: Kaggle's /kaggle/working (what a notebook
    version keeps) when it exists, else the current folder."""
    return kaggle_working if kaggle_working.is_dir() else Path.cwd()


def output_dir(data_path: Path | str | None, model_dir: str = "models", kaggle_input: Path = KAGGLE_INPUT,
               kaggle_working: Path = KAGGLE_WORKING) -> Path:
    """Where models, logs and exports go for a dataset at `data_path`.

    Next to the data, as fastai does, unless the data cannot be written (Kaggle's /kaggle/input):
    then under `working_dir()`. The cleaner's journals need no such rule: it refuses read-only
    data, and a copy made with `copy_to_working` is writable, so they live in the copy.
    """
    base = Path(data_path) if data_path is not None else Path(".")
    if is_read_only_location(base, kaggle_input):
        return working_dir(kaggle_working) / model_dir
    return base / model_dir


def copy_to_working(src: Path | str, working: Path | str | None = None) -> Path:
    """Copy a read-only dataset (one under /kaggle/input) into the working folder, where it can be
    cleaned, and return the copy's path; `working` defaults to `working_dir()`.

    Run again, it returns the copy already there, with whatever cleaning was applied to it, rather
    than failing or copying afresh: delete that folder to start again from the original.
    """
    src = Path(src)
    dest = Path(working if working is not None else working_dir()) / src.name
    if dest.is_dir() and any(dest.iterdir()):
        print(f"Using the copy already at {dest} (delete it to copy {src} afresh).")
        return dest
    return fileops.copy_dataset(src, dest)


def default_num_workers() -> int:
    """Decoding workers for a loader: every core but one for the training loop, at most 8."""
    if os.environ.get("NBTRAIN_NUM_WORKERS"):
        return int(os.environ["NBTRAIN_NUM_WORKERS"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores - 1))


def available_memory() -> int:
    """Bytes of memory the process may still use, read from /proc/meminfo where there is one."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 1024**3
