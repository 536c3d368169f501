"""Data-parallel training with 2 real processes (gloo on the CPU), against one process.

Tolerances, measured on this 2-core CPU: with SGD the weights of a 2-process run differ from a
1-process run by at most 6e-7 of their largest value (the float rounding of summing the gradient
in two halves; one process with 1 thread instead of 2 differs as much), so the test allows 1e-5.
Adam divides by the root of tiny second moments, which magnifies that rounding: with AdamW and the
one-cycle schedule the weights differ by up to 4e-3 relative (valid loss by 7e-6), so that test
allows 2e-2 on the weights and 1e-4 on the validation loss.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import nbtrain
from nbtrain import ImageDataLoaders, Learner, Resize, distributed
from nbtrain.distributed import DistributedError
from nbtrain.models import VisionModel

pytestmark = pytest.mark.filterwarnings("ignore:No GPU")


class TinyCNN(nn.Module):
    """No BatchNorm: each process would normalise with its own half of the batch."""

    def __init__(self, c: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, c)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def tiny_vision_model(c: int) -> VisionModel:
    """A body and a head, as vision_learner makes, without BatchNorm."""
    body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    head = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, c))
    return VisionModel(body, head, "tiny")


def make_learner(path: Path, model_fn=TinyCNN, **kwargs) -> Learner:
    dls = ImageDataLoaders.from_folder(path, item_tfms=Resize(16), bs=32, seed=0, num_workers=0)
    torch.manual_seed(0)
    return Learner(dls, model_fn(dls.c), metrics=nbtrain.error_rate, **kwargs)


def max_rel_diff(a: nn.Module, b: nn.Module) -> float:
    return max(
        float((v - w).abs().max() / v.abs().max().clamp_min(1e-12))
        for v, w in zip(a.state_dict().values(), b.state_dict().values())
    )


def test_two_processes_train_as_one_with_sgd(mnist_small):
    one = make_learner(mnist_small, opt_func=torch.optim.SGD)
    one.fit(2, lr=0.1)
    two = make_learner(mnist_small, opt_func=torch.optim.SGD)
    two.fit(2, lr=0.1, n_gpus=2)
    assert max_rel_diff(one.model, two.model) < 1e-5
    assert len(two.recorder.losses) == len(one.recorder.losses) == 2 * len(one.dls.train)
    assert two.recorder.losses == pytest.approx(one.recorder.losses, rel=1e-5)
    assert sum(two.recorder.values, []) == pytest.approx(sum(one.recorder.values, []), rel=1e-5)
    assert two.epochs_trained == 2 and two.opt is not None
    # The notebook's learner goes on from where the processes ended: same shuffling, same optimizer state.
    one.fit(1, lr=0.1)
    two.fit(1, lr=0.1)
    assert max_rel_diff(one.model, two.model) < 1e-5


def test_fit_one_cycle_with_adamw_matches_one_process(mnist_small, capfd):
    one = make_learner(mnist_small)
    one.fit_one_cycle(2, 1e-2)
    capfd.readouterr()
    two = make_learner(mnist_small)
    two.fit_one_cycle(2, 1e-2, n_gpus=2)
    out = capfd.readouterr().out
    assert out.count("train_loss") == 1  # only process 0 prints the table
    assert max_rel_diff(one.model, two.model) < 2e-2
    assert two.recorder.lrs == pytest.approx(one.recorder.lrs)
    assert two.validate()[0] == pytest.approx(one.validate()[0], abs=1e-4)


def test_fine_tune_freezes_then_unfreezes_in_the_same_processes(mnist_small):
    one = make_learner(mnist_small, model_fn=tiny_vision_model)
    body_before = one.model.body[0].weight.detach().clone()
    one.fine_tune(1, freeze_epochs=1)
    two = make_learner(mnist_small, model_fn=tiny_vision_model)
    two.fine_tune(1, freeze_epochs=1, n_gpus=2)
    assert not two.model.body_frozen and all(p.requires_grad for p in two.model.parameters())
    assert not torch.equal(two.model.body[0].weight, body_before)
    assert max_rel_diff(one.model, two.model) < 2e-2
    assert two.recorder.values[-1] == pytest.approx(one.recorder.values[-1], abs=1e-3)


def test_a_frozen_body_stays_frozen_under_ddp(mnist_small):
    learn = make_learner(mnist_small, model_fn=tiny_vision_model)
    learn.freeze()
    body, head = (learn.model.body[0].weight.detach().clone(), learn.model.head[2].weight.detach().clone())
    learn.fit(1, lr=1e-2, n_gpus=2)
    assert learn.model.body_frozen
    assert torch.equal(learn.model.body[0].weight, body) and not torch.equal(learn.model.head[2].weight, head)


def _ranks() -> dict:
    return {"rank": distributed.rank(), "world": distributed.world_size(), "main": distributed.is_main()}


def _fail() -> None:
    if distributed.rank() == 1:
        raise ValueError("the images of process 1 are gone")
    torch.distributed.barrier()


def _gather_with_padding() -> dict:
    # 3 items over 2 processes: the short last batch is padded, and the gathered result keeps each item once.
    from nbtrain.data import DataLoader, ImageDataset

    ds = ImageDataset([Path(f"{i}.png") for i in range(3)], ["a", "b", "a"], ["a", "b"])
    dl = DataLoader(ds, bs=2, device="cpu", num_workers=0)
    part = dl.sharded(distributed.rank(), distributed.world_size())
    idx = torch.tensor([i for b in part.batch_indices() for i in b], dtype=torch.long)
    out = idx.float()[:, None].repeat(1, 2)
    out, targ, idx = distributed.gather_outputs(out, ds.targets[idx], idx, torch.device("cpu"))
    return {"idx": idx, "out": out[:, 0], "targ": targ}


def test_launch_runs_real_processes_and_returns_rank_0s_result():
    assert distributed.launch(_ranks, 2) == {"rank": 0, "world": 2, "main": True}
    assert _ranks() == {"rank": 0, "world": 1, "main": True}  # outside: one process
    res = distributed.launch(_gather_with_padding, 2)
    assert (
        res["idx"].tolist() == [0, 1, 2]
        and res["out"].tolist() == [0.0, 1.0, 2.0]
        and res["targ"].tolist() == [0, 1, 0]
    )


def test_an_error_in_a_process_is_raised_in_the_notebook_with_its_message():
    with pytest.raises(DistributedError, match="Process 1 of 2 failed: ValueError: the images of process 1 are gone"):
        distributed.launch(_fail, 2)


def test_each_process_takes_its_part_of_every_batch(mnist_small):
    dl = make_learner(mnist_small).dls.train
    state = dl.rng_state()
    whole = dl.batch_indices()
    parts = []
    for r in range(2):
        dl.set_rng_state(state)
        parts.append(dl.sharded(r, 2).batch_indices())
    assert len(parts[0]) == len(parts[1]) == len(whole)
    for b, p0, p1 in zip(whole, *parts):
        assert sorted(p0 + p1) == sorted(b) and len(p0) == len(p1) == len(b) // 2
    # A last batch of 2 items over 3 processes: padded with its own items, so each process gets one.
    short = dl.new(bs=7, shuffle=False, drop_last=False)
    n = len(short.dataset)
    tails = []
    for r in range(3):
        tails.append(short.sharded(r, 3).batch_indices()[-1])
    assert n % 7 == 2 and [len(t) for t in tails] == [1, 1, 1] and {i for t in tails for i in t} == {n - 2, n - 1}


def test_unpicklable_parts_are_named_before_any_process_starts(mnist_small):
    learn = make_learner(mnist_small)
    learn.loss_func = lambda out, targ: nn.functional.cross_entropy(out, targ)
    with pytest.raises(DistributedError, match=r"learn\.loss_func is a lambda .*top level of a \.py module"):
        learn.fit(1, n_gpus=2, start_method="spawn")

    def my_metric(out, targ):
        return (out.argmax(1) == targ).float().mean()

    learn = make_learner(mnist_small)
    learn.metrics = [nbtrain.error_rate, my_metric]
    with pytest.raises(DistributedError, match=r"learn\.metrics\[1\] is .*local my_metric"):
        learn.fine_tune(1, n_gpus=2, start_method="spawn")
    assert learn.model.net[0].weight.device.type == "cpu" and learn.epochs_trained == 0


def test_fork_is_refused_on_gpus_and_missing_gpus_get_a_clear_error():
    with pytest.raises(DistributedError, match="cannot train on GPUs"):
        distributed.start_method_for(torch.device("cuda"), "fork")
    assert distributed.start_method_for(torch.device("cuda"), None) == "spawn"
    assert distributed.start_method_for(torch.device("cpu"), None) == "fork"
    with pytest.raises(DistributedError, match="GPU T4 x2"):
        distributed.check_devices(torch.device("cuda"), 2)


@pytest.mark.slow
def test_spawned_processes_give_the_same_result_as_forked_ones(mnist_small):
    forked = make_learner(mnist_small, opt_func=torch.optim.SGD)
    forked.fit(1, lr=0.1, n_gpus=2, start_method="fork")
    spawned = make_learner(mnist_small, opt_func=torch.optim.SGD)
    spawned.fit(1, lr=0.1, n_gpus=2, start_method="spawn")
    assert max_rel_diff(forked.model, spawned.model) < 1e-6


TORCHRUN_SCRIPT = """
import sys, torch
import nbtrain
sys.path.insert(0, {tests!r})
from test_distributed import make_learner
learn = make_learner({data!r}, opt_func=torch.optim.SGD)
learn.fit(2, lr=0.1)  # RANK and WORLD_SIZE are set: joins torchrun's group instead of spawning
learn.save("torchrun")
# One write per line: both processes share the pipe, and print() writes its pieces one by one.
sys.stdout.write("rank %d of %d done\\n" % (nbtrain.distributed.rank(), nbtrain.distributed.world_size()))
sys.stdout.flush()
"""


@pytest.mark.slow
def test_the_same_code_runs_under_torchrun(mnist_copy, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TORCHRUN_SCRIPT.format(tests=str(Path(__file__).parent), data=str(mnist_copy)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "rank 0 of 2 done" in run.stdout and "rank 1 of 2 done" in run.stdout
    assert run.stdout.count("train_loss") == 1
    one = make_learner(mnist_copy, opt_func=torch.optim.SGD)
    one.fit(2, lr=0.1)
    two = make_learner(mnist_copy, opt_func=torch.optim.SGD).load(str(mnist_copy / "models" / "torchrun.pth"))
    assert max_rel_diff(one.model, two.model) < 1e-5
