"""Where the code runs: the device, mixed precision, notebooks, decoding workers and memory."""
from __future__ import annotations

import os
import sys

import torch

def default_device() -> torch.device:
    """CUDA first, then Apple's MPS, then the CPU; `NBTRAIN_DEVICE` overrides.

    Under torchrun (LOCAL_RANK set) it is this process's own GPU, so that nothing, the model, an
    optimizer loaded before the first fit or a CUDA context, lands on GPU 0 by default.
    """
    forced = os.environ.get("NBTRAIN_DEVICE")
    if forced:
        return torch.device(forced)
    if torch.cuda.is_available():
        local = os.environ.get("LOCAL_RANK")
        return torch.device("cuda", int(local) % torch.cuda.device_count()) if local is not None else torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def release_device_memory(device: torch.device) -> None:
    """Give the GPU memory that PyTorch keeps cached back to the driver (other processes need it)."""
    if device.type == "cuda" and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


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
    bf16 has fp32's range, and torch's CPU autocast is used for bf16. fp16 off CUDA gives fp32:
    torch's CPU float16 kernels are emulated (measured: 30x slower than fp32 for a ResNet-18).
    """
    dtype = autocast_dtype(device, capability) if requested == "auto" else requested
    if dtype == torch.float16 and device.type != "cuda":
        return None, False
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
