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
    """True for data under Kaggle's read-only input mount (`kaggle_input`), or wherever `is_read_only` says."""
    path = Path(path).absolute()
    if path == kaggle_input or kaggle_input in path.parents:
        return True
    return is_read_only(path)


def is_read_only(path: Path | str) -> bool:
    """Whether files in `path` (or its nearest existing parent) cannot be created, moved or removed.

    Root ignores permissions, so a folder with no write bits counts as read-only even when the
    system would let root write it: the data's owner meant it not to change.
    """
    path = Path(path).absolute()
    if path == KAGGLE_INPUT or KAGGLE_INPUT in path.parents:
        return True
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return True
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not os.access(path, os.W_OK) or mode & 0o222 == 0


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


# ---------------------------------------------------------------------------------------------
# Where nbtrain keeps data

def nbtrain_home() -> Path:
    """The cache root: `$NBTRAIN_HOME`, or `~/.nbtrain`."""
    return Path(os.environ.get("NBTRAIN_HOME") or Path.home() / ".nbtrain").expanduser()


def sample_data_dir() -> Path:
    """The folder for datasets: `$NBTRAIN_DATA`, or the `data` folder of `nbtrain_home()` (`~/.nbtrain/data`)."""
    env = os.environ.get("NBTRAIN_DATA")
    return Path(env).expanduser() if env else nbtrain_home() / "data"


def data_dir(base: Path | str | None = None) -> Path:
    """Where `untar_data` puts extracted datasets: `base/data`, or `sample_data_dir()` when no base is given."""
    return Path(base).expanduser() / "data" if base is not None else sample_data_dir()


def archive_dir(base: Path | str | None = None) -> Path:
    """Where `untar_data` keeps downloaded archives: the `archive` folder of `base` (default `nbtrain_home()`)."""
    return (Path(base).expanduser() if base is not None else nbtrain_home()) / "archive"
