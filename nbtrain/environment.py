"""Where the code runs: the device, mixed precision, notebooks, decoding workers and memory."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

SHARED_MEMORY = Path("/dev/shm")
_said: set[str] = set()  # notes already printed by this process: each once


class UnsupportedGPUError(RuntimeError):
    """CUDA was asked for, and the installed torch has no kernels for this GPU."""


class LoaderWorkerError(RuntimeError):
    """A loader's worker process died (out of shared memory, or out of memory)."""


def default_device() -> torch.device:
    """CUDA first, then Apple's MPS, then the CPU; `NBTRAIN_DEVICE` overrides.

    Under torchrun (LOCAL_RANK set) it is this process's own GPU, so that nothing, the model, an
    optimizer loaded before the first fit or a CUDA context, lands on GPU 0 by default.
    A GPU that the installed torch has no kernels for (a P100 under a recent torch) is passed over
    with one note; asked for with NBTRAIN_DEVICE=cuda, it stops with `UnsupportedGPUError`.
    """
    forced = os.environ.get("NBTRAIN_DEVICE")
    if forced:
        return check_device(torch.device(forced))
    if torch.cuda.is_available():
        local = os.environ.get("LOCAL_RANK")
        gpu = torch.device("cuda", int(local) % torch.cuda.device_count() if local is not None else None)
        problem = gpu_problem(gpu)
        if problem is None:
            return gpu
        _say_once(f"{problem} Training runs on the CPU instead.", warn=True)
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


def mixed_precision(
    device: torch.device, requested: str | torch.dtype | None = "auto", capability: tuple[int, int] | None = None
) -> tuple[torch.dtype | None, bool]:
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


# ---------------------------------------------------------------------------------------------
# GPUs the installed torch can run


def arch_runs_on(arch: str, capability: tuple[int, int]) -> bool:
    """Whether one entry of `torch.cuda.get_arch_list()` runs on a GPU of compute `capability`.

    Compiled kernels (`sm_75`) run on the same major version at an equal or higher minor one;
    `sm_90a` only on 9.0 itself. PTX (`compute_80`) is compiled by the driver for any GPU at or
    above its version, so it carries a build forward to newer GPUs, never back to older ones.
    """
    kind, _, version = arch.partition("_")
    digits = "".join(ch for ch in version if ch.isdigit())
    if kind not in ("sm", "compute") or len(digits) < 2:
        return True  # not a CUDA arch (a ROCm gfx name): nothing to judge here
    built = (int(digits[:-1]), int(digits[-1]))
    if kind == "compute":
        return built <= tuple(capability)
    if version != digits:  # arch-specific features (sm_90a): that exact GPU only
        return built == tuple(capability)
    return built[0] == capability[0] and built[1] <= capability[1]


def gpu_problem(
    device: torch.device,
    capability: tuple[int, int] | None = None,
    arch_list: Iterable[str] | None = None,
    name: str | None = None,
) -> str | None:
    """Why the installed torch cannot run on the GPU `device`, or None when it can.

    `torch.cuda.is_available()` is True on such a GPU, and the first real operation then fails with
    "no kernel image is available"; the build's arch list says so before anything runs.
    `capability`, `arch_list` and `name` stand in for what the GPU and the build report.
    """
    arch_list = list(torch.cuda.get_arch_list() if arch_list is None else arch_list)
    if not arch_list:
        return None  # torch reports no list: let CUDA itself decide
    if capability is None:
        try:
            capability = torch.cuda.get_device_capability(device)
        except (RuntimeError, AssertionError):  # no driver to ask: let CUDA itself decide
            return None
    capability = tuple(capability)
    if any(arch_runs_on(a, capability) for a in arch_list):
        return None
    name = name if name is not None else torch.cuda.get_device_name(device)
    major, minor = capability
    hint = (
        "a torch built with CUDA 12.6 or older still has them: pip install torch torchvision --index-url "
        "https://download.pytorch.org/whl/cu126"
        if (5, 0) <= capability < (7, 5)
        else f"install a torch whose torch.cuda.get_arch_list() includes sm_{major}{minor}"
    )
    return (
        f"The GPU {name} (compute capability {major}.{minor}) cannot run torch {torch.__version__}, which has "
        f"kernels for {', '.join(arch_list)} only; {hint}. On Kaggle, choose 'GPU T4 x2' under "
        "Settings > Accelerator."
    )


def check_device(device: torch.device) -> torch.device:
    """`device`, once it is known that torch can run on it: a CUDA GPU without kernels in this
    torch raises `UnsupportedGPUError` with what to install, rather than failing at the first batch."""
    if device.type == "cuda" and torch.cuda.is_available():
        problem = gpu_problem(device)
        if problem is not None:
            raise UnsupportedGPUError(f"{problem} Or leave NBTRAIN_DEVICE and device= unset to train on the CPU.")
    return device


def describe_gpus() -> str:
    """The GPUs this process sees, e.g. "2 GPUs: 0: Tesla T4 (7.5, float16), 1: Tesla T4 (7.5, float16)"."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count:
        return "no CUDA GPU"
    parts = []
    for i in range(count):
        capability = torch.cuda.get_device_capability(i)
        dtype = autocast_dtype(torch.device("cuda", i), capability)
        precision = str(dtype).replace("torch.", "") if dtype is not None else "float32"
        parts.append(f"{i}: {torch.cuda.get_device_name(i)} ({capability[0]}.{capability[1]}, {precision})")
    return f"{count} GPU{'s' if count > 1 else ''}: " + ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Loader workers and shared memory


def shared_memory_bytes(path: Path | str = SHARED_MEMORY) -> int | None:
    """Free bytes in `path` (/dev/shm), where loader workers hand their batches to the training
    process; None where there is no such folder (macOS, Windows): nothing to plan for there."""
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def worker_plan(
    num_workers: int, batch_bytes: int | Callable[[], int], prefetch: int = 2, free: int | None = None
) -> int:
    """How many of `num_workers` loader workers the shared memory holds, with a one-line note when fewer.

    Each worker keeps up to `prefetch` batches of `batch_bytes` in /dev/shm, and a Docker container
    gets 64 MB there by default (Colab, Binder and some Kaggle images are small too): past that,
    workers die with "Bus error". torch's 'file_system' sharing strategy would not help, as its
    files live in /dev/shm as well; fewer workers do. Half of the free space is left to others.
    `batch_bytes` may be a function, called only where there is shared memory to plan for.
    """
    free = shared_memory_bytes() if free is None else free
    if not num_workers or free is None:
        return num_workers
    per_worker = max(1, prefetch * (batch_bytes() if callable(batch_bytes) else batch_bytes))
    fit = min(num_workers, int(free // 2 // per_worker))
    if fit < num_workers:
        _say_once(
            f"Shared memory (/dev/shm) has {free / 2**20:.0f} MB free, room for {fit} loader worker(s) "
            f"rather than {num_workers}; give the container more (docker run --shm-size=2g) for full speed."
        )
    return fit


def guard_workers(batches: Iterable) -> Iterator:
    """The items of `batches` (a torch DataLoader's iterator), where a worker that dies raises
    `LoaderWorkerError` saying what happened and what to set, instead of torch's bare message."""
    try:
        yield from batches
    except RuntimeError as e:
        text = str(e)
        if "DataLoader worker" not in text:
            raise
        cause = (
            "it ran out of shared memory (/dev/shm)"
            if "Bus error" in text or "shared memory" in text
            else "the machine ran out of memory"
            if "Killed" in text
            else "most often it ran out of shared memory (/dev/shm) or the machine out of memory"
        )
        free = shared_memory_bytes()
        room = f" (/dev/shm has {free / 2**20:.0f} MB free)" if free is not None else ""
        raise LoaderWorkerError(
            f"A loader worker process died: {cause}{room}. Decode in this process instead with "
            f"NBTRAIN_NUM_WORKERS=0 (or num_workers=0), or use a smaller bs or image size; in Docker, start "
            f"the container with --shm-size=2g. torch said: {text.splitlines()[0]}"
        ) from e


def _say_once(note: str, warn: bool = False) -> None:
    """Print (or warn) `note` the first time this process has it to say."""
    if note in _said:
        return
    _said.add(note)
    if warn:
        warnings.warn(note, stacklevel=3)
    else:
        print(note)
