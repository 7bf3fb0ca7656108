"""Hostile round fourteen (/work/notes/hostile14.md): each test fails on the code before its fix."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from vae_lightning.reports import bench


def _wait_for(path, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} was not written"
        time.sleep(0.1)
    return path.read_text().strip()


def test_a_killed_vae_bench_leaves_its_row_held_while_the_row_s_command_runs(tmp_path):
    """vae-bench killed outright (SIGKILL, the OOM killer) left its row's training running on,
    orphaned, and the row's lock (held by the dead process only) free: a second
    `vae-bench run` took the row and trained into the same folder at the same time."""
    log, child_pid = tmp_path / "vae.log", tmp_path / "child.pid"
    driver = textwrap.dedent(f"""
        import os, pathlib, time
        from vae_lightning.reports import bench
        # The row's command: a stand-in that records its pid and runs a while.
        bench.COMMAND = ("import os, pathlib, time; "
                         "pathlib.Path({str(child_pid)!r}).write_text(str(os.getpid())); "
                         "time.sleep(60)  # {{0}}")
        with bench._row_lock(pathlib.Path({str(log)!r}), "vae"):
            bench._run("train", [], pathlib.Path({str(log)!r}))
    """)
    parent = subprocess.Popen([sys.executable, "-c", driver])
    pid = None
    try:
        pid = int(_wait_for(child_pid))
        parent.kill()  # vae-bench dies; its row's command goes on
        parent.wait(timeout=30)
        os.kill(pid, 0)  # still running
        with pytest.raises(bench.Busy, match="row vae is being run"):
            with bench._row_lock(log, "vae"):
                pass
    finally:
        parent.kill()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    with bench._row_lock(log, "vae"):  # free once the command has ended
        pass


def _quantize_on_rank(rank: int, world: int, init_file: str, out: str, ema: bool) -> None:
    import torch.distributed as dist

    from vae_lightning.posteriors.vq import VectorQuantizer

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        torch.manual_seed(rank)  # each rank its own minibatch and its own draws, as under DDP
        quantizer = VectorQuantizer(codes=8, code_dim=2, ema=ema).train()
        for _ in range(3):
            with torch.enable_grad():
                quantizer(torch.randn(16, 4))
        torch.save({k: v.detach().clone() for k, v in quantizer.state_dict().items()},
                   f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("ema", [False, True])
def test_the_vq_codebook_is_one_codebook_on_every_ddp_rank(ema, tmp_path):
    """Under DDP (trainer=ddp trainer.devices=2) the VQ-VAE's data-dependent start drew each
    rank's codebook from its own minibatch, and the EMA codebook averaged each rank's own codes:
    the ranks' codebooks differed after training (the checkpoint rank 0's), silently."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "codebook")
    mp.spawn(_quantize_on_rank, args=(2, str(tmp_path / "init"), out, ema), nprocs=2)
    first, second = (torch.load(f"{out}.{rank}") for rank in (0, 1))
    assert [key for key in first if not torch.equal(first[key], second[key])] == []


@pytest.mark.slow  # a two-rank DDP run of train.py
def test_factor_vae_under_ddp_trains_and_writes_its_results(tmp_path):
    """FactorVAE (an objective with its own optimizer) under `trainer=ddp trainer.devices=2`
    started both ranks, then each stopped at its first step with Lightning's traceback
    ("parameters that were not used in producing the loss"), exit code 1; then it was refused
    before the ranks started. Its discriminator's gradients are now averaged over the ranks
    (optimization.auxiliary_backward; tests/test_factor_vae.py checks the ranks agree): the
    command trains and ends as any run."""
    from compose import REPO
    from test_hostile import TINY

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *TINY, "data=frey",
         "model/objective=factor_vae", "model.objective.hidden=[32]", "trainer=ddp",
         "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=4",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "completed" and results["objective"] == "factor_vae"
    assert math.isfinite(results["test/elbo"])


def _weights(directory):
    from vae_lightning.checkpoints import read_checkpoint

    checkpoint = read_checkpoint(directory / "checkpoints" / "last.ckpt")
    return checkpoint["global_step"], checkpoint["state_dict"]


@pytest.mark.parametrize("binarized", [False, True])
def test_a_resume_after_a_stop_part_way_through_a_batch_of_steps_is_exact(
        binarized, tmp_path, monkeypatch, capsys):
    """With data.steps_per_batch=2, trainer.max_steps=3 stops after the first of batch 1's two
    minibatches (max_steps acts at the exact step); Lightning counts the batch as trained, so
    the run resumed from that checkpoint skipped its second minibatch (minibatch 3 never trained
    that epoch, every later step one minibatch ahead): other weights than the uninterrupted run's,
    silently. With dynamic binarization the batch's noise was drawn for both minibatches
    before the stop: the checkpoint's generator state was past the untrained one's."""
    from test_hostile import TINY, run

    from vae_lightning import cli

    data = ["data=frey"]
    if binarized:  # grey images, binarized afresh at every step
        import numpy as np

        images = tmp_path / "images.npy"
        np.save(images, np.random.default_rng(0).integers(0, 256, (600, 28, 28), np.uint8))
        data = ["data=array", f"data.path={images}", "data.binarize=dynamic",
                "model/likelihood=bernoulli", "data.batch_size=50"]
    given = [*TINY, *data, "data.steps_per_batch=2"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for args in ([*given, "trainer.max_steps=6", f"hydra.run.dir={whole}"],
                 [*given, "trainer.max_steps=3", f"hydra.run.dir={cut}"],
                 [*given, "trainer.max_steps=6", f"hydra.run.dir={cut}",
                  f"ckpt_path={cut / 'checkpoints' / 'last.ckpt'}"]):
        result = run(cli.train, args, monkeypatch, capsys, tmp_path)
        assert result.code == 0, result.err[-3000:]
    (step, expected), (resumed_step, got) = _weights(whole), _weights(cut)
    assert step == resumed_step == 6
    assert [key for key in expected if not torch.equal(expected[key], got[key])] == []


def test_a_record_with_a_null_row_or_config_shows_no_word_none(tmp_path):
    """The record's schema accepts null for bench.row and bench.config ("a string or null"), and
    `vae-bench page` printed them as the words None and `None` in the page and the README."""
    import json

    records = tmp_path / "records"
    records.mkdir()
    (records / "vae.json").write_text(json.dumps({
        "bench": {"row": None, "config": None, "paper": None, "pythae": None},
        "iw": {"nats": -90.1, "nats_se": 0.3}, "elbo": {"nats": -95.0}, "latent": 50,
        "status": "completed", "k": 5000, "n": 10000, "train_samples_seen": 1e7}))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{bench.BEGIN}\n{bench.END}\n")
    assert bench.main(["page", "--records", str(records), "--out", str(tmp_path / "page.md"),
                       "--readme", str(readme), "--long", str(tmp_path / "none")]) == 0
    page = (tmp_path / "page.md").read_text()
    assert "| vae | `` |" in page and "None" not in page
    assert "| vae (``) |" in readme.read_text() and "None" not in readme.read_text()


def test_the_pixelcnn_prior_finds_codes_a_chunk_of_points_at_a_time(monkeypatch):
    """vae-sample sampler=pixelcnn on MNIST's VQ-VAE found the codes of all 50,000 training maps
    in one torch.cdist ([50000, 49, 512] distances and a copy of the codebook per point): killed
    for memory at 21 GB. The codes are the same, found a chunk of points at a time."""
    from vae_lightning import pixelcnn

    sampler = pixelcnn.PixelCNNSampler(shape=[2, 3])
    sampler._codebook = torch.randn(16, 4)
    codes = torch.randint(16, (2500, 6))
    z = sampler._codebook[codes].transpose(1, 2).flatten(1)  # channel-major, as vq.py lays out
    sizes, cdist = [], torch.cdist

    def counting(x1, x2, *args, **kwargs):
        sizes.append(len(x1))
        return cdist(x1, x2, *args, **kwargs)

    monkeypatch.setattr(torch, "cdist", counting)
    assert torch.equal(sampler.codes(z), codes.reshape(-1, 2, 3))
    assert max(sizes) <= 1024 < 2500


@pytest.mark.parametrize("override", ["output_dir=/tmp/elsewhere", "ckpt_path=other.ckpt",
                                      "+output_dir=x"])
def test_an_eval_override_of_the_row_s_folder_or_checkpoint_is_refused(override, tmp_path,
                                                                       capsys, monkeypatch):
    """`--eval-override output_dir=...` made vae-eval write its eval.json elsewhere, and
    vae-bench made the row's record from the row's own eval.json: an earlier evaluation's
    numbers, silently, or a FileNotFoundError traceback where there was none
    (`ckpt_path=` evaluated another checkpoint under the row's name)."""
    def trained(*args, **kwargs):
        raise AssertionError("the row was run")

    monkeypatch.setattr(bench, "run", trained)
    code = bench.main(["run", "vae", "--runs", str(tmp_path / "runs"), "--records",
                       str(tmp_path / "records"), "--eval-override", override])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: --eval-override ") and "vae-bench sets" in err
    assert not (tmp_path / "runs").exists()
