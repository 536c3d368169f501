"""Where the code runs: the device, mixed precision, notebooks, Kaggle, and where outputs go."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

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


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype to use by default on `device`, or None for full precision.

    bf16 needs compute capability 8.0 (Ampere) to be fast. `torch.cuda.is_bf16_supported()` says
    True on a T4 through emulation, which is slower than fp32, so the capability decides here.
    The CPU stays in fp32 by default: bf16 is only faster on CPUs with AMX, and it costs accuracy.
    """
    if device.type != "cuda":
        return None
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, Notebook, VS Code, Colab, Kaggle)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ip = shell.get_ipython()  # type: ignore[attr-defined]
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def is_kaggle() -> bool:
    """True inside a Kaggle kernel; Kaggle sets KAGGLE_KERNEL_RUN_TYPE in every notebook."""
    return "KAGGLE_KERNEL_RUN_TYPE" in os.environ or "KAGGLE_URL_BASE" in os.environ


def is_read_only_location(path: Path) -> bool:
    """True for data under Kaggle's read-only input mount, or on any read-only file system."""
    path = Path(path).absolute()
    if path == KAGGLE_INPUT or KAGGLE_INPUT in path.parents:
        return True
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def output_dir(data_path: Path | str | None, model_dir: str = "models") -> Path:
    """Where models, logs and journals go for a dataset at `data_path`.

    Next to the data, as fastai does, unless the data cannot be written (Kaggle's /kaggle/input):
    then under /kaggle/working when it exists, else the current folder.
    """
    base = Path(data_path) if data_path is not None else Path(".")
    if is_read_only_location(base):
        working = KAGGLE_WORKING if KAGGLE_WORKING.exists() else Path.cwd()
        return working / model_dir
    return base / model_dir


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
