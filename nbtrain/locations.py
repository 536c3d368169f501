"""Where things are and go: Kaggle's folders, read-only data, outputs, and nbtrain's own data folders.

The one home of these paths. It imports nothing heavy (no torch), so the file operations that
depend on it stay light.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_WORKING = Path("/kaggle/working")
# What a saved Kaggle version keeps of /kaggle/working: 20 GB, and about 500 files listed as output.
KAGGLE_OUTPUT_BYTES = 20 * 1000**3
KAGGLE_OUTPUT_FILES = 500


def is_loopback(host: str) -> bool:
    """True for this machine's own addresses, which a proxy from the environment cannot reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_kaggle() -> bool:
    """True inside a Kaggle kernel; Kaggle sets KAGGLE_KERNEL_RUN_TYPE in every notebook."""
    return "KAGGLE_KERNEL_RUN_TYPE" in os.environ or "KAGGLE_URL_BASE" in os.environ


def is_colab() -> bool:
    """True inside a Google Colab runtime, which sets COLAB_RELEASE_TAG (older ones COLAB_GPU)."""
    return "COLAB_RELEASE_TAG" in os.environ or "COLAB_GPU" in os.environ


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


def output_dir(
    data_path: Path | str | None,
    model_dir: str = "models",
    kaggle_input: Path = KAGGLE_INPUT,
    kaggle_working: Path = KAGGLE_WORKING,
) -> Path:
    """Where models, logs and exports go for a dataset at `data_path`.

    Next to the data, as fastai does, unless the data cannot be written (Kaggle's /kaggle/input):
    then under `working_dir()`. The cleaner's journals need no such rule: it refuses read-only
    data, and a copy made with `copy_to_working` is writable, so they live in the copy.
    """
    base = Path(data_path) if data_path is not None else Path(".")
    if is_read_only_location(base, kaggle_input):
        return working_dir(kaggle_working) / model_dir
    return base / model_dir


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
