"""Interrupting the kernel (the notebook's stop button) ends the whole call, in a real Jupyter kernel.

`fine_tune`'s second stage never starts after an interrupt in its first; `find_label_issues` starts no
further fold. The learner stays usable, and the notebook shows one line instead of a traceback.
"""

from __future__ import annotations

import os
import queue
import sys
import time
from pathlib import Path

import pytest

jupyter_client = pytest.importorskip("jupyter_client")

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def kernel():
    km = jupyter_client.KernelManager(kernel_name="python3")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "MPLBACKEND": "Agg"}
    km.kernel_cmd = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    km.start_kernel(env=env)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=120)
    yield km, kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def run(kc, code: str, timeout: float = 300) -> list[dict]:
    """Execute `code` and return its iopub messages up to the kernel's going idle."""
    msg_id = kc.execute(code)
    return collect(kc, msg_id, timeout)


def collect(kc, msg_id: str, timeout: float) -> list[dict]:
    out, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        out.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return out
    raise TimeoutError(f"no answer from the kernel in {timeout} s: {out[-3:]}")


def errors(msgs: list[dict]) -> list[dict]:
    return [m["content"] for m in msgs if m["msg_type"] == "error"]


def wait_for(path: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


SETUP = """
import time
from pathlib import Path
from nbtrain import ImageDataLoaders, Resize, vision_learner
from nbtrain.callbacks import Callback
marks = Path({marks!r})

class Slow(Callback):
    '''Marks each stage as it starts, and slows batches so that an interrupt lands inside one.'''
    def before_fit(self):
        (marks / ("frozen" if self.learn.model.body_frozen else "unfrozen")).touch()
    def after_batch(self):
        (marks / "batch").touch()
        time.sleep(0.2)

dls = ImageDataLoaders.from_folder({data!r}, item_tfms=Resize(16), bs=16, seed=0, num_workers=0)
"""


def test_interrupting_fine_tunes_first_stage_never_starts_the_second(kernel, mnist_small, tmp_path):
    km, kc = kernel
    marks = tmp_path / "marks"
    marks.mkdir()
    assert errors(run(kc, SETUP.format(marks=str(marks), data=str(mnist_small)))) == []
    msg_id = kc.execute(
        "learn = vision_learner(dls, 'mobilenet_v2', pretrained=False)\n"
        "learn.fine_tune(2, freeze_epochs=20, cbs=Slow())"
    )
    wait_for(marks / "batch")
    km.interrupt_kernel()
    errs = errors(collect(kc, msg_id, 120))
    assert [e["ename"] for e in errs] == ["TrainingInterrupted"]
    assert len(errs[0]["traceback"]) == 1 and "stopped by the user" in errs[0]["traceback"][0]
    time.sleep(1)
    assert (marks / "frozen").exists() and not (marks / "unfrozen").exists()
    # The learner is usable: it predicts, and trains on.
    after = run(kc, "print(learn.model.body_frozen, learn.predict(dls.valid_ds.items[0])[0] in dls.vocab)")
    assert errors(after) == []
    printed = "".join(m["content"].get("text", "") for m in after if m["msg_type"] == "stream")
    assert printed.strip() == "True True"


def test_interrupting_find_label_issues_starts_no_further_fold(kernel, mnist_small, tmp_path):
    km, kc = kernel
    marks = tmp_path / "marks"
    marks.mkdir()
    assert errors(run(kc, SETUP.format(marks=str(marks), data=str(mnist_small)))) == []
    # Counting the fold models as they start (a test may wrap a method; the package never does).
    code = """
import nbtrain.learner as L
from nbtrain.label_issues import find_label_issues
_fine_tune = L.Learner.fine_tune
def counted(self, *args, **kwargs):
    n = len(list(marks.glob("fold*")))
    (marks / "batch").unlink(missing_ok=True)
    (marks / f"fold{n + 1}").touch()
    return _fine_tune(self, *args, cbs=Slow(), **kwargs)
L.Learner.fine_tune = counted
table = find_label_issues(dls, arch="mobilenet_v2", pretrained=False, folds=4, epochs=1, min_steps=1,
                          size=16, with_bar=False)
"""
    msg_id = kc.execute(code)
    wait_for(marks / "fold2")
    wait_for(marks / "batch")
    km.interrupt_kernel()
    errs = errors(collect(kc, msg_id, 120))
    assert [e["ename"] for e in errs] == ["TrainingInterrupted"]
    time.sleep(2)
    assert sorted(p.name for p in marks.glob("fold*")) == ["fold1", "fold2"]
    after = run(kc, "print('table' in globals())")
    assert "".join(m["content"].get("text", "") for m in after if m["msg_type"] == "stream").strip() == "False"
