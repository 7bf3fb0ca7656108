"""Runs stopped and resumed several times train exactly the uninterrupted run: stops at an
epoch's end under ``trainer.max_steps``, and, with ``data.steps_per_batch`` K > 1, stops inside
an epoch's last batch of K minibatches, with gradient accumulation and an epoch schedule."""

from __future__ import annotations

import copy
import csv

import numpy as np
import pytest
import torch
from test_hostile import TINY, run

from vae_lightning import cli
from vae_lightning.checkpoints import read_checkpoint, run_config
from vae_lightning.data.sampling import ShardedBatchSampler
from vae_lightning.errors import CheckpointError
from vae_lightning.resume import GROUP_LEFT, check_epoch_continues

# lr x 0.5 at each epoch's end: a resume that stepped it once too often or too few shows.
HALVING = ["+model.schedule._target_=vae_lightning.schedules.StagedDecay",
           "+model.schedule.base=1", "+model.schedule.decay=0.5"]


def _given(tmp_path, steps_per_batch: int, extra: list[str]) -> list[str]:
    """Grey images binarized afresh at every step (the noise must be drawn as uninterrupted):
    500 training images of the 600 in batches of 50, so 10 minibatches an epoch."""
    images = tmp_path / "images.npy"
    np.save(images, np.random.default_rng(0).integers(0, 256, (600, 28, 28), np.uint8))
    return [*TINY, "data=array", f"data.path={images}", "data.binarize=dynamic",
            "model/likelihood=bernoulli", "data.batch_size=50",
            f"data.steps_per_batch={steps_per_batch}", *HALVING, *extra]


@pytest.mark.parametrize("steps_per_batch, extra, stops, end", [
    # max_steps=10 ends epoch 0 exactly: Lightning restarted the epoch "at its end" and counted
    # the next one processed twice, and the checkpoint at step 12 was refused as altered.
    (1, [], [10, 12], 20),
    # K = 4 and windows of 3 minibatches (4 steps an epoch): step 3 falls inside epoch 0's
    # last batch (minibatches 8 and 9), whose minibatch 9 Lightning never trained (it went on
    # with epoch 1); step 4 then stops right after it, the schedule stepped at its epoch's end.
    (4, ["trainer.accumulate_grad_batches=3"], [3, 4], 12),
])
def test_a_run_stopped_and_resumed_again_trains_the_uninterrupted_run(
        steps_per_batch, extra, stops, end, tmp_path, monkeypatch, capsys):
    given = _given(tmp_path, steps_per_batch, extra)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    last = cut / "checkpoints" / "last.ckpt"
    runs = [[*given, f"trainer.max_steps={end}", f"hydra.run.dir={whole}"],
            [*given, f"trainer.max_steps={stops[0]}", f"hydra.run.dir={cut}"],
            *([*given, f"trainer.max_steps={steps}", f"hydra.run.dir={cut}", f"ckpt_path={last}"]
              for steps in [*stops[1:], end])]
    for i, args in enumerate(runs):
        result = run(cli.train, args, monkeypatch, capsys, tmp_path)
        assert result.code == 0, result.err[-3000:]
        if i == 1 and steps_per_batch > 1:
            # Its epoch's last minibatch is still to train: not with another batch size.
            checkpoint = read_checkpoint(last)
            assert checkpoint[GROUP_LEFT] == 1
            config = copy.deepcopy(run_config(checkpoint, last))
            config["data"]["batch_size"] = 25
            with pytest.raises(CheckpointError, match="last batch of minibatches"):
                check_epoch_continues(config, checkpoint, last)
    expected = read_checkpoint(whole / "checkpoints" / "last.ckpt")
    got = read_checkpoint(last)
    assert got["global_step"] == expected["global_step"] == end
    assert [key for key in expected["state_dict"]
            if not torch.equal(expected["state_dict"][key], got["state_dict"][key])] == []
    lr = [state["optimizer_states"][0]["param_groups"][0]["lr"] for state in (expected, got)]
    assert lr[0] == lr[1] < 1e-3
    # The loop counters go on as an uninterrupted run's: a further resume is taken.
    assert (got["loops"]["fit_loop"]["epoch_progress"]
            == expected["loops"]["fit_loop"]["epoch_progress"])


def test_the_sampler_serves_the_previous_epoch_s_untrained_minibatches_first():
    """A stop inside epoch 0's last batch of 3 left its last minibatch untrained (``left`` 1):
    epoch 1's first batch is that minibatch, then epoch 1's first 3; a count the epochs'
    orders do not hold (an altered checkpoint) is refused."""
    n, size, group = 500, 50, 3
    plain = ShardedBatchSampler(n, size, True, seed=2)
    plain.set_epoch(0)
    epoch0 = list(plain)
    plain.set_epoch(1)
    epoch1 = list(plain)
    left = 1
    sampler = ShardedBatchSampler(n, size, True, seed=2, group=group,
                                  current_epoch=lambda: 1, done=lambda: 0, left=lambda: left)
    first, *rest = list(sampler)
    assert [m.tolist() for m in first] == [m.tolist() for m in [epoch0[-1], *epoch1[:group]]]
    assert [m.tolist() for batch in rest for m in batch] == [m.tolist() for m in epoch1[group:]]
    left = 11  # more than epoch 0's 10 minibatches
    with pytest.raises(CheckpointError, match="steps_per_batch_left"):
        list(sampler)


def test_a_run_resumed_from_an_epoch_s_end_under_max_steps_trains_every_epoch(
        tmp_path, monkeypatch, capsys):
    """A run killed after the checkpoint at epoch 0's end, resumed with trainer.max_steps given
    (max_epochs=3 binding): Lightning restarted epoch 0 "at its end", counted it processed twice
    and stopped one epoch early (20 steps of 30), silently."""
    import shutil

    given = [*(o if o != "logger=none" else "logger=csv" for o in _given(tmp_path, 1, [])),
             "trainer.max_epochs=3", "trainer.max_steps=1000", "trainer.log_every_n_steps=5"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    result = run(cli.train, [*given, f"hydra.run.dir={whole}",
                             "callbacks.last_checkpoint.filename='e{epoch}'",
                             "callbacks.last_checkpoint.save_top_k=-1"],
                 monkeypatch, capsys, tmp_path)
    assert result.code == 0, result.err[-3000:]
    (cut / "checkpoints").mkdir(parents=True)
    shutil.copytree(whole / ".hydra", cut / ".hydra")
    last = cut / "checkpoints" / "last.ckpt"
    shutil.copy(whole / "checkpoints" / "eepoch=0.ckpt", last)  # as the kill left it
    result = run(cli.train, [*given, f"hydra.run.dir={cut}", f"ckpt_path={last}"],
                 monkeypatch, capsys, tmp_path)
    assert result.code == 0, result.err[-3000:]
    expected, got = (read_checkpoint(path) for path in
                     (whole / "checkpoints" / "eepoch=2.ckpt", last))
    assert got["global_step"] == expected["global_step"] == 30
    assert [key for key in expected["state_dict"]
            if not torch.equal(expected["state_dict"][key], got["state_dict"][key])] == []

    # The loggers' steps too: Lightning counted one batch more on the restart, and epoch 1's
    # and 2's rows were logged one step later than the uninterrupted run's.
    def rows(run_dir):
        with open(run_dir / "csv" / "metrics.csv") as file:
            return [(row["step"], row["epoch"], sorted(k for k, v in row.items() if v))
                    for row in csv.DictReader(file)]

    assert rows(cut) == [row for row in rows(whole) if int(row[0]) >= 10]
