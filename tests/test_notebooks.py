"""The notebooks: every `notebooks/*.ipynb` runs top to bottom, offline, on the CPU, and is committed clean.

The notebooks are found with a glob, so one added later is covered without touching this file. They run
with `NBTRAIN_FAST=1` (each notebook shrinks its data and epochs for it) in a fresh temporary working
folder, so whatever they write (datasets, exported models) goes there. A notebook that raises fails.
A few notebooks get extra checks on what they printed or wrote (`EXTRA_CHECKS`).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
CELL_TIMEOUT = 600  # seconds for one cell; a whole FAST notebook takes about a minute on 2 idle cores
# Any attempt to reach the network fails at once (connection refused) instead of hanging: the notebooks
# must need none. The kernel talks to this process over ZeroMQ, which ignores these variables.
OFFLINE_PROXY = "http://127.0.0.1:9"


def _ids(paths):
    return [p.name for p in paths]


def _read(path: Path):
    import nbformat

    return nbformat.read(str(path), as_version=4)


def _outputs_text(nb) -> str:
    """Everything the code cells showed, as one string (HTML tables and widget reprs included)."""
    return json.dumps([c.get("outputs", []) for c in nb.cells if c.cell_type == "code"])


# -- committed clean (fast) ------------------------------------------------------------------------


def test_the_notebooks_are_found():
    names = set(_ids(NOTEBOOKS))
    assert {"01_quickstart.ipynb", "02_clean_your_data.ipynb", "04_kaggle.ipynb"} <= names, names


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_committed_with_outputs_cleared_and_a_kernelspec(nb_path):
    import nbformat

    nb = _read(nb_path)
    nbformat.validate(nb)
    # Without it JupyterLab opens a "Select Kernel" dialog, and nbclient would not know which kernel to start.
    assert nb.metadata.get("kernelspec") == KERNELSPEC, (
        f"{nb_path.name}: metadata.kernelspec must be {KERNELSPEC}, not {nb.metadata.get('kernelspec')}"
    )
    dirty = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{nb_path.name}: code cells {dirty} have outputs or execution counts; clear them "
        "(JupyterLab: Edit > Clear Outputs of All Cells) before committing"
    )
    assert "widgets" not in nb.metadata, f"{nb_path.name}: saved widget state in the metadata; clear it"
    assert any(c.cell_type == "code" for c in nb.cells), f"{nb_path.name} has no code"


# -- run top to bottom (slow) ------------------------------------------------------------------------


def _check_01(nb, workdir: Path) -> None:
    out = _outputs_text(nb)
    assert "error_rate" in out and "train_loss" in out  # the epoch table
    assert (workdir / "nbtrain-demo" / "quickstart" / "digits" / "export.pkl").is_file()
    assert "The loaded model says" in out


def _check_02(nb, workdir: Path) -> None:
    out = _outputs_text(nb)
    assert "Validation error before cleaning" in out and "Validation error after cleaning" in out
    applied = re.search(r"(\d+) deleted, (\d+) relabelled", out)
    assert applied, "the apply() report is missing"
    assert int(applied[1]) + int(applied[2]) > 0, "in FAST mode the notebook marks images itself; nothing was applied"
    assert list((workdir / "nbtrain-demo" / "clean" / "digits" / ".nbtrain").glob("journal-*.jsonl"))


def _check_04(nb, workdir: Path) -> None:
    out = _outputs_text(nb)
    assert "error_rate" in out and "0 deleted, 0 relabelled" in out  # nobody clicked: nothing changes
    assert (workdir / "nbtrain-kaggle-demo" / "working" / "export.pkl").is_file()
    assert (workdir / "nbtrain-kaggle-demo" / "working" / "digits" / "train").is_dir()
    assert "Better model found at epoch 0" in out  # SaveModelCallback saved the best epoch
    assert (workdir / "nbtrain-kaggle-demo" / "working" / "digits" / "models" / "model.pth").is_file()


def _check_07(nb, workdir: Path) -> None:
    out = _outputs_text(nb)
    assert "error_rate" in out and "accuracy_thresh" in out and "fbeta" in out  # the epoch tables
    digits = workdir / "data" / "digits"
    cleaned = (digits / "cleaned.csv").read_text().splitlines()
    n_images = len(list(digits.glob("*/*/*.png")))
    assert len(cleaned) == n_images, "cleaned.csv: a header and every image but the one deleted"  # files kept
    assert (digits / "export.pkl").is_file()


def _check_06(nb, workdir: Path) -> None:
    out = _outputs_text(nb)
    digits = workdir / "nbtrain-demo" / "get_data" / "digits"
    for reason in ("HTML page", "not a complete image", "HTTP 404", "duplicate"):
        assert reason in out, f"the download report does not show the planted fault: {reason}"
    assert "0 could not be decoded" in out
    assert (digits / "three" / ".nbtrain-downloads.jsonl").is_file()
    assert list(workdir.rglob("export.pkl")) and "the loaded model says" in out


EXTRA_CHECKS = {
    "01_quickstart.ipynb": _check_01,
    "02_clean_your_data.ipynb": _check_02,
    "04_kaggle.ipynb": _check_04,
    "06_get_data.ipynb": _check_06,
    "07_course_v1.ipynb": _check_07,
}


@pytest.mark.slow
@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_top_to_bottom_offline_on_the_cpu(nb_path, tmp_path, monkeypatch):
    import nbclient
    from nbclient.exceptions import CellExecutionError

    workdir = tmp_path / "work"
    workdir.mkdir()
    # The kernel inherits this process's environment.
    monkeypatch.setenv("NBTRAIN_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("NBTRAIN_NUM_WORKERS", os.environ.get("NBTRAIN_NUM_WORKERS", "1"))
    monkeypatch.setenv("NBTRAIN_HOME", str(tmp_path / "nbtrain_home"))  # no cache in the real home folder
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the CPU, even where a GPU is
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, OFFLINE_PROXY)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    # The kernel imports nbtrain from this checkout, installed or not.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p))

    nb = _read(nb_path)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    start = time.monotonic()
    try:
        client.execute()
    except CellExecutionError as exc:
        saved = _save_failed(nb, nb_path.name)
        pytest.fail(f"{nb_path.name} raised in a cell (executed copy: {saved}):\n{exc}", pytrace=False)
    finally:
        took = time.monotonic() - start
        sys.stderr.write(f"\n{nb_path.name}: {took:.0f} s with NBTRAIN_FAST=1\n")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, f"{nb_path.name}: error outputs {errors}"
    check = EXTRA_CHECKS.get(nb_path.name)
    if check is not None:
        check(nb, workdir)


def _save_failed(nb, name: str) -> Path | None:
    """Keep the executed notebook, outputs and all, in artifacts/ to read what went wrong."""
    import nbformat

    try:
        dest = REPO_ROOT / "artifacts" / f"FAILED-{name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(dest))
        return dest
    except OSError:
        return None
