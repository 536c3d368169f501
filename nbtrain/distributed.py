"""Data-parallel training with torch.distributed: processes started from a notebook cell, or torchrun's.

This module knows processes, not learners: `launch(fn, n, *args)` runs a function in `n` processes
joined in a group (NCCL between GPUs, gloo between CPU processes, where it serves testing), and the
collectives here (`wrap`, `mean_across`, `gather_outputs`, `union_across`, `broadcast`, `any_across`)
are what a training loop needs in each process; each is a no-op outside a group. The learner uses
them for `fit(..., n_gpus=2)`: see the README for what a user sees.

How the processes start: "spawn" on GPUs, always (fresh Python processes: everything sent must be
importable, so a lambda or a function or class defined in a notebook cell cannot be sent, and the
error names it: put it in a .py file, e.g. a cell starting with `%%writefile mycode.py`). "fork" on
the CPU, where it sends nothing. Fork is refused on GPUs: even asking whether CUDA is available starts
the driver, and a forked copy of such a process cannot use CUDA.

Under torchrun (one or several machines) nothing is started: with RANK and WORLD_SIZE set, a process
joins the group from the environment (`init_from_env`), and `default_device()` is its own GPU.
Interrupting the kernel stops every process started here.
"""

from __future__ import annotations

import atexit
import io
import os
import pickle
import signal
import socket
import sys
import tempfile
import time
import traceback
import types
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


class DistributedError(RuntimeError):
    """Training on several processes cannot start, or one of them failed; the message says why."""


# ---------------------------------------------------------------------------------------------
# Where this process stands


def is_distributed() -> bool:
    """True in a process of a running group of two or more."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's number in the group, 0 outside one (torchrun's RANK before the group starts)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    """How many processes train together; 1 outside a group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    """This process's number on its machine, which is the GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", rank()))


def is_main() -> bool:
    """True in the process that prints, saves and logs (rank 0), and outside distributed training."""
    return rank() == 0


def env_configured() -> bool:
    """True when torchrun (or another launcher) has set RANK and WORLD_SIZE for a group of two or more."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", 1)) > 1


def should_launch(n_gpus: int | None) -> bool:
    """Whether `fit(..., n_gpus=n_gpus)` must start processes: more than one asked for, and this
    process is not already one of a group (launched here, or by torchrun, which decides the count)."""
    return n_gpus is not None and n_gpus > 1 and not is_distributed() and not env_configured()


def default_backend(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


def rank_device(device: torch.device) -> torch.device:
    """The device this process trains on: its own GPU (`local_rank`), or the CPU."""
    return torch.device("cuda", local_rank()) if device.type == "cuda" else device


def init_from_env(device: torch.device) -> bool:
    """Join the process group that torchrun's environment describes, once; True when in a group."""
    if dist.is_available() and dist.is_initialized():
        return True
    if not env_configured():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(default_backend(device), init_method="env://")
    atexit.register(_destroy)
    return True


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (a no-op outside distributed training)."""
    if is_distributed():
        # NCCL wants to know the GPU; otherwise it guesses and warns.
        dist.barrier(device_ids=[local_rank()] if dist.get_backend() == "nccl" else None)


# ---------------------------------------------------------------------------------------------
# Collectives the training loop needs (each a no-op outside distributed training)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP around `model` on `device`. DDP registers only the parameters that require gradients now,
    so a frozen body is left out; a model with nothing to train is returned as it is."""
    if not is_distributed() or not any(p.requires_grad for p in model.parameters()):
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def union_across(items: set) -> set:
    """The union of every process's `items` (e.g. the files each found broken)."""
    if not is_distributed():
        return set(items)
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, sorted(items))
    return set().union(*gathered)


def broadcast(obj: Any) -> Any:
    """Process 0's `obj`, in every process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_across(flag: bool) -> bool:
    """True in every process when it is True in any (e.g. a callback asked to stop)."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0])
    return bool(mean_across(t).item() > 0)


def mean_across(t: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of `t` over the processes; `t` itself outside distributed training."""
    if not is_distributed():
        return t
    device = t.device
    # A copy: all_reduce works in place. NCCL reduces only tensors on the GPU.
    t = t.to(rank_device(torch.device("cuda")) if dist.get_backend() == "nccl" else device, copy=True)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / world_size()).to(device)


def training_model(model: nn.Module, dls: Any, device: torch.device) -> nn.Module:
    """What runs the forward pass: DDP around `model` in a process group (joined here under torchrun),
    moving it and the loaders `dls` to this process's device; `model` itself outside a group."""
    init_from_env(device)
    if not is_distributed():
        return model
    own = rank_device(device)
    if own != device:
        dls.to(own)
        model.to(own)
    return wrap(model, own)


def process_part(dl: Any) -> Any:
    """This process's part of every batch of the DataLoader `dl`; `dl` itself outside distributed training.

    The processes first agree on the files found broken and on the shuffling generator, so they
    build the same batches and take the same number of steps.
    """
    if not is_distributed():
        return dl
    dl.dataset.mark_bad(union_across(dl.bad_indices()))
    dl.set_rng_state(broadcast(dl.rng_state()))
    return dl.sharded(rank(), world_size())


def gather_outputs(
    out: torch.Tensor, targ: torch.Tensor, idx: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every process's outputs, targets and dataset indices, each item once, in dataset order, on
    `device`; the arguments themselves outside distributed training."""
    if not is_distributed():
        return out, targ, idx
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, (out.cpu(), targ.cpu(), idx.cpu()))
    parts = [p for p in parts if len(p[2])]
    if not parts:
        return out, targ, idx
    out, targ, idx = (torch.cat([p[k] for p in parts]) for k in range(3))
    idx, order = idx.sort(stable=True)
    # A batch shorter than the number of processes was padded with repeats; keep each item once.
    first = torch.ones_like(idx, dtype=torch.bool)
    first[1:] = idx[1:] != idx[:-1]
    order, idx = order[first], idx[first]
    return out[order].to(device), targ[order].to(device), idx


# ---------------------------------------------------------------------------------------------
# Starting processes from a notebook


def launch(
    fn: Callable[..., Any], n_procs: int, *args: Any, backend: str | None = None, start_method: str | None = None
) -> Any:
    """Run `fn(*args)` in `n_procs` new processes joined in a process group; return what it
    returned in process 0 (tensors and plain data: it comes back through `torch.save` and is read
    with `weights_only=True`).

    `backend` defaults to NCCL when CUDA is available (process i uses GPU i), else gloo.
    `start_method` defaults to "spawn" with NCCL and "fork" with gloo; see the module's docstring.
    Interrupting the kernel stops every process.
    """
    if n_procs < 1:
        raise ValueError(f"n_procs must be at least 1, not {n_procs}.")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    start_method = start_method_for(torch.device("cuda" if backend == "nccl" else "cpu"), start_method)
    if backend == "nccl" and n_procs > torch.cuda.device_count():
        raise DistributedError(
            f"{n_procs} processes need {n_procs} GPUs, and this machine has "
            f"{torch.cuda.device_count()}. On Kaggle, pick 'GPU T4 x2' as the accelerator."
        )
    # Fork copies the objects; spawn must pickle them, and says which one cannot be.
    job = (fn, args) if start_method == "fork" else dumps((fn, args), "the job")
    with tempfile.TemporaryDirectory(prefix="nbtrain-ddp-") as tmp:
        result = Path(tmp) / "rank0.pth"
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        context = mp.start_processes(
            _worker,
            args=(n_procs, backend, init_method, job, str(result)),
            nprocs=n_procs,
            join=False,
            start_method=start_method,
        )
        try:
            while not context.join():
                pass
        except KeyboardInterrupt:
            _stop(context.processes)
            raise KeyboardInterrupt("Training stopped by the user; every process was ended.") from None
        except mp.ProcessRaisedException as e:
            _stop(context.processes)
            # join() reports whichever process it polls first; often a peer whose collective broke
            # because the real culprit died. Each process wrote down when it failed: name the first.
            index, text = _first_failure(result, n_procs) or (e.error_index, str(e))
            last = text.strip().splitlines()[-1]
            raise DistributedError(f"Process {index} of {n_procs} failed: {last}\n\n{text}") from None
        except mp.ProcessExitedException as e:
            _stop(context.processes)
            raise DistributedError(
                f"Process {e.error_index} of {n_procs} ended with exit code {e.exit_code}{_signal_hint(e.exit_code)}."
            ) from None
        if not result.exists():
            return None
        try:
            return torch.load(result, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise DistributedError(
                "launch() returns what process 0 returned only when it is tensors and plain "
                f"data (dicts, lists, numbers, strings): {str(e).splitlines()[0]}"
            ) from None


def _worker(i: int, n: int, backend: str, init_method: str, job: Any, result: str) -> None:
    # The notebook's process handles Ctrl-C / "interrupt kernel" and ends the group; a process
    # stopped on its own would leave the others waiting for it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(RANK=str(i), LOCAL_RANK=str(i), WORLD_SIZE=str(n), LOCAL_WORLD_SIZE=str(n))
    if backend == "nccl":
        torch.cuda.set_device(i)
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // n))  # the processes share the cores
    fn, args = pickle.loads(job) if isinstance(job, bytes) else job
    dist.init_process_group(backend, init_method=init_method, rank=i, world_size=n)
    try:
        out = fn(*args)
        if i == 0 and out is not None:
            torch.save(out, result)
    except BaseException:
        # Written before the group is torn down, so it predates the errors this causes in the peers.
        Path(f"{result}.failed{i}").write_text(f"{time.time()!r}\n{traceback.format_exc()}")
        raise
    finally:
        dist.destroy_process_group()


def _first_failure(result: Path, n: int) -> tuple[int, str] | None:
    """(rank, traceback) of the process that failed first, from the notes `_worker` leaves."""
    found = []
    for i in range(n):
        note = Path(f"{result}.failed{i}")
        if note.exists():
            when, _, text = note.read_text().partition("\n")
            found.append((float(when), i, text))
    return min(found)[1:] if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(processes: Sequence[Any], grace: float = 5.0) -> None:
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(grace)
        if p.is_alive():
            p.kill()


def _signal_hint(code: int | None) -> str:
    if code is None or code >= 0:
        return ""
    name = signal.Signals(-code).name
    why = " (often the system ending it for lack of memory: use a smaller bs or fewer workers)" if -code == 9 else ""
    return f" ({name}){why}"


# -- sending objects to spawned processes ------------------------------------------------------


class _Unsendable(pickle.PicklingError):
    def __init__(self, obj: object, why: str):
        super().__init__(why)
        self.obj, self.why = obj, why


class _CheckingPickler(pickle.Pickler):
    """Pickles as spawn will unpickle: functions and classes by reference, so those a fresh
    process cannot import are refused here, in the notebook, with their name."""

    def reducer_override(self, obj: object) -> Any:
        if isinstance(obj, (types.FunctionType, type)):
            qualname = getattr(obj, "__qualname__", "")
            module = getattr(obj, "__module__", "")
            if "<lambda>" in qualname:
                raise _Unsendable(obj, f"a lambda ({module}.{qualname})")
            if "<locals>" in qualname:
                raise _Unsendable(obj, f"{qualname.split('.<locals>')[0]}'s local {qualname.rsplit('.', 1)[-1]}")
            if module == "__main__" and not hasattr(sys.modules.get("__main__"), "__file__"):
                kind = "class" if isinstance(obj, type) else "function"
                raise _Unsendable(obj, f"the {kind} {qualname}, defined in the notebook")
        return NotImplemented


def _checked_dumps(obj: object) -> bytes:
    buf = io.BytesIO()
    _CheckingPickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def dumps(obj: object, label: str) -> bytes:
    """`obj` pickled for processes started with spawn; a DistributedError names what cannot be sent."""
    try:
        return _checked_dumps(obj)
    except Exception as e:  # pickling raises PicklingError, TypeError or AttributeError
        where = _locate(obj, label)
        fix = (
            "Define it with `def` or `class` at the top level of a .py module and import it from there (in a "
            "notebook: a cell starting with `%%writefile mycode.py`, then `from mycode import ...`). "
            "Or, on the CPU, or before any cell uses CUDA, pass start_method='fork', which sends nothing."
        )
        what = e.why if isinstance(e, _Unsendable) else f"an object that cannot be pickled ({type(e).__name__}: {e})"
        raise DistributedError(
            f"{where} is {what}, which the processes started with spawn cannot import. {fix}"
        ) from None


def _public_name(cls: type, attr: str) -> str:
    """`metrics` for `_metrics` when the class shows it as the property `metrics`: the name a user wrote."""
    public = attr.lstrip("_")
    return public if attr != public and isinstance(getattr(cls, public, None), property) else attr


def _locate(obj: object, label: str, depth: int = 4) -> str:
    """The attribute path, from `label`, of the first part of `obj` that cannot be pickled."""
    if isinstance(obj, dict):
        children = [(f"{label}[{k!r}]", v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        children = [(f"{label}[{i}]", v) for i, v in enumerate(obj)]
    elif hasattr(obj, "__dict__") and not isinstance(obj, (type, types.FunctionType, types.ModuleType)):
        fields = obj.__dict__
        if isinstance(obj, nn.Module):  # name submodules as one would write them: model.head, not model._modules
            fields = {**{k: v for k, v in fields.items() if not k.startswith("_")}, **dict(obj.named_children())}
        children = [(f"{label}.{_public_name(type(obj), k)}", v) for k, v in fields.items()]
    else:
        return label
    for sub, child in children:
        try:
            _checked_dumps(child)
        except Exception:
            return _locate(child, sub, depth - 1) if depth else sub
    return label


# -- choosing how to start ------------------------------------------------------------------------


def check_devices(device: torch.device, n_procs: int) -> None:
    """Refuse a number of GPUs this machine cannot give, with what to do instead."""
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if n_procs > count:
            raise DistributedError(
                f"n_gpus={n_procs}, but this machine has {count} GPU(s). On Kaggle, pick "
                "'GPU T4 x2' under Settings > Accelerator; elsewhere leave n_gpus out."
            )
    elif device.type == "cpu":
        warnings.warn(
            f"No GPU: n_gpus={n_procs} runs {n_procs} processes that share the CPU. That tests "
            "the distributed code; it is not faster.",
            stacklevel=3,
        )
    else:
        raise DistributedError(
            f"Training on several devices needs CUDA GPUs (or the CPU); this learner is on "
            f"{device.type}. Leave n_gpus out."
        )


def start_method_for(device: torch.device, requested: str | None) -> str:
    """Spawn on GPUs, always: even `torch.cuda.is_available()` starts the driver, and a forked copy of
    a process that did cannot use CUDA. Fork on the CPU, where it sends nothing and starts at once."""
    methods = mp.get_all_start_methods()
    if requested is not None and requested not in methods:
        raise ValueError(f"start_method must be one of {methods}, not {requested!r}.")
    if device.type == "cuda":
        if requested == "fork":
            raise DistributedError(
                "start_method='fork' cannot train on GPUs: the processes would inherit this "
                "process's CUDA state, which a forked process cannot use. Leave start_method out "
                "(spawn is used), and define custom losses, metrics or models in a .py file."
            )
        return "spawn"
    return requested or ("fork" if "fork" in methods else "spawn")
