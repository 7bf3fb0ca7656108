"""A resumed checkpoint's training state is untrusted input: the checkpoint callbacks' records
of their files (Lightning deletes and tests by them), the random states and the optimizer's
moments are checked before training; a tampered one is one error line, exit code 2, and nothing
outside the run is read or deleted."""

import json

import pytest
import torch
from test_hostile import run
from test_reliability import SMALL

from vae_lightning import cli

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(args, tmp_path, monkeypatch, capsys):
    return run(cli.train, args, monkeypatch, capsys, tmp_path)


@pytest.fixture
def stopped(tmp_path, monkeypatch, capsys):
    """A Frey run stopped after 16 steps (one epoch): its directory and last.ckpt."""
    run_dir = tmp_path / "run"
    done = _train([*SMALL, "trainer.max_steps=16", f"hydra.run.dir={run_dir}"], tmp_path,
                  monkeypatch, capsys)
    assert done.code == 0, done.err[-2000:]
    return run_dir, run_dir / "checkpoints" / "last.ckpt"


def _tamper(path, change):
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, path)


def _best_state(checkpoint):
    return next(state for key, state in checkpoint["callbacks"].items()
                if key.startswith("ModelCheckpoint") and "val/elbo" in key)


def _resume(run_dir, last, tmp_path, monkeypatch, capsys):
    return _train([*SMALL, "trainer.max_steps=32", f"ckpt_path={last}",
                   f"hydra.run.dir={run_dir}"], tmp_path, monkeypatch, capsys)


@pytest.mark.parametrize("field", ["best_k_models", "best_model_path"])
def test_a_record_naming_a_file_outside_its_folder_is_refused_and_deletes_nothing(
        stopped, tmp_path, monkeypatch, capsys, field):
    """Lightning would delete the worst of best_k_models (here a file outside the run) when a
    better checkpoint comes, and test best_model_path (here another file) for results.json."""
    run_dir, last = stopped
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")

    def point_at_the_victim(checkpoint):
        state = _best_state(checkpoint)
        outside = f"{state['dirpath']}/../../victim.txt"
        if field == "best_k_models":
            state["best_k_models"] = {outside: torch.tensor(-1e30)}
            state["kth_best_model_path"] = outside
        else:
            state["best_model_path"] = outside
            state["best_model_score"] = torch.tensor(1e30)

    _tamper(last, point_at_the_victim)
    refused = _resume(run_dir, last, tmp_path, monkeypatch, capsys)
    assert refused.code == 2 and "names the file" in refused.err and "outside its folder" \
        in refused.err, refused.err[-2000:]
    assert victim.read_text() == "keep me"


def test_a_best_file_recorded_elsewhere_is_never_the_model_tested(stopped, tmp_path,
                                                                  monkeypatch, capsys):
    """A record consistent with another folder (as a moved run's is) passes the check, and
    Lightning reloads its best_model_path: results.json tests a best file of the run's own
    folder only (else the weights as trained), never the other one."""
    run_dir, last = stopped
    other = tmp_path / "other"
    other.mkdir()
    (other / "best-epoch000.ckpt").write_bytes((run_dir / "checkpoints" / "last.ckpt")
                                               .read_bytes())

    def elsewhere(checkpoint):
        state = _best_state(checkpoint)
        state["dirpath"] = str(other)
        state["best_model_path"] = state["kth_best_model_path"] = str(
            other / "best-epoch000.ckpt")
        state["last_model_path"] = ""
        state["best_k_models"] = {str(other / "best-epoch000.ckpt"): torch.tensor(1e30)}
        state["best_model_score"] = torch.tensor(1e30)

    _tamper(last, elsewhere)
    resumed = _resume(run_dir, last, tmp_path, monkeypatch, capsys)
    assert resumed.code == 0, resumed.err[-2000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert str(other) not in str(results["checkpoint"])


@pytest.mark.parametrize("change, words", [
    (lambda c: c["optimizer_states"][0]["state"][0].update(exp_avg=torch.zeros(7)),
     "its optimizer state 'exp_avg' of a parameter of shape"),
    (lambda c: c["optimizer_states"][0]["state"][0]["exp_avg_sq"].fill_(float("nan")),
     "or not finite"),
    (lambda c: c["optimizer_states"].append(c["optimizer_states"][0]),
     "2 optimizer states for the model's 1 optimizer"),
    (lambda c: c["callbacks"]["ResumeState"].update(torch=torch.zeros(3, dtype=torch.uint8)),
     "its random states"),
    (lambda c: c["callbacks"]["ResumeState"].update(python=(3, (1, 2), None)),
     "its random states"),
])
def test_tampered_training_states_are_refused_before_training(stopped, tmp_path, monkeypatch,
                                                              capsys, change, words):
    run_dir, last = stopped
    _tamper(last, change)
    refused = _resume(run_dir, last, tmp_path, monkeypatch, capsys)
    assert refused.code == 2 and words in refused.err, refused.err[-2000:]
    assert "Traceback" not in refused.err


def test_an_objective_s_networks_are_sized_on_the_meta_device_before_they_are_built(tmp_path):
    """The objective owns networks (FactorVAE's discriminator): a checkpoint whose config asks
    for larger ones than its weights is refused by check_sizes, which builds on the meta device
    (before, only the encoder, decoder and prior were: the objective was built at full size)."""
    import copy

    from compose import compose_train

    from vae_lightning.errors import CheckpointError
    from vae_lightning.rebuild import check_sizes
    from vae_lightning.train import build_run

    run = build_run(compose_train([*SMALL, "model/objective=factor_vae"], tmp_path))
    check_sizes(run.record, run.model.state_dict(), "as.ckpt")  # its own config fits
    config = copy.deepcopy(run.record)
    config["model"]["objective"]["hidden"] = [12000, 12000]
    with pytest.raises(CheckpointError, match=r"objective\..* has shape"):
        check_sizes(config, run.model.state_dict(), "tampered.ckpt")


def test_a_run_stopped_at_an_epoch_s_last_batch_counts_its_epochs_once(stopped, tmp_path,
                                                                      monkeypatch, capsys):
    """Stopped by max_steps at the last batch of its first epoch (16 of Frey's), then continued
    to 20 steps: results.json's epochs is 1, as an uninterrupted 20-step run's (Lightning's
    processed count takes the finished epoch twice: it said 2)."""
    run_dir, last = stopped
    assert json.loads((run_dir / "results.json").read_text())["epochs"] == 1
    resumed = _train([*SMALL, "trainer.max_steps=20", f"ckpt_path={last}",
                      f"hydra.run.dir={run_dir}"], tmp_path, monkeypatch, capsys)
    assert resumed.code == 0, resumed.err[-2000:]
    reference = _train([*SMALL, "trainer.max_steps=20", f"hydra.run.dir={tmp_path / 'ref'}"],
                       tmp_path, monkeypatch, capsys)
    assert reference.code == 0
    continued = json.loads((run_dir / "results.json").read_text())
    uninterrupted = json.loads((tmp_path / "ref" / "results.json").read_text())
    assert continued["epochs"] == uninterrupted["epochs"] == 1
    assert continued["train/elbo"] == pytest.approx(uninterrupted["train/elbo"], rel=1e-6)


@pytest.mark.parametrize("change, words", [
    (lambda state: state.update(exp_avg=torch.tensor(0.0)), "'exp_avg' of a parameter of shape"),
    (lambda state: state.update(step=torch.zeros(3)), "'step' of a parameter of shape"),
    (lambda state: state.update(step=torch.tensor(-1.0)),
     "where it is a step count, one number >= 0"),
])
def test_an_optimizer_state_of_one_number_for_a_moment_is_refused(stopped, change, words):
    """Checked on the state itself (a resume of it crashed the process): a 0-d exp_avg passed
    the shape check, which skipped every 0-d value, and fused Adam then read past it (the
    resumed run's parameters reached 1e29, then a segmentation fault); a step count below 0
    (Adam divides by 1 - beta^step) passed too. A step count of three numbers stays refused."""
    from vae_lightning.errors import CheckpointError
    from vae_lightning.module import VAE
    from vae_lightning.rebuild import load_model
    from vae_lightning.resume import check_states

    _, last = stopped
    model, _, checkpoint = load_model(last, VAE)
    check_states(checkpoint, last, model)  # as written: resumable
    change(checkpoint["optimizer_states"][0]["state"][0])
    with pytest.raises(CheckpointError, match=words):
        check_states(checkpoint, last, model)


@pytest.fixture
def mid_epoch(tmp_path, monkeypatch, capsys):
    """A Frey run stopped by max_steps after 40 steps, 8 batches into its third epoch of 16: its
    directory and last.ckpt."""
    run_dir = tmp_path / "run"
    done = _train([*SMALL, "trainer.max_steps=40", f"hydra.run.dir={run_dir}"], tmp_path,
                  monkeypatch, capsys)
    assert done.code == 0, done.err[-2000:]
    return run_dir, run_dir / "checkpoints" / "last.ckpt"


def _set_batches(**counts):
    """A change setting the epoch's batch counters (all four, or those named) and more."""
    def change(checkpoint):
        batches = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
        for name, value in counts.items():
            if name == "is_last_batch":
                batches[name] = value
            elif name == "epoch_batches":
                del checkpoint["callbacks"]["ResumeState"][name]
            else:
                for key in ((name,) if name != "all" else
                            ("ready", "started", "processed", "completed")):
                    batches["current"][key] = value
    return change


def _set_epochs(checkpoint):
    checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] = 10**6


@pytest.mark.parametrize("change, words", [
    # Lightning took the epoch for done: its last 8 batches were skipped, silently.
    (_set_batches(all=10**6), "current <= total"),
    (_set_batches(all=16), "say 16 batches of its epoch trained, its last batch not yet, "
     "where the epoch it records has 16"),
    (_set_batches(is_last_batch=True), "its last batch among them, where the epoch it records "
     "has 16"),
    # A checkpoint from before the epoch's length was recorded: checked by this run's epoch.
    (_set_batches(all=16, epoch_batches=None), "where this run's epoch has 16"),
    (_set_batches(completed=-1, processed=-1, started=-1, ready=-1), "whole numbers >= 0"),
    (_set_batches(ready=8.5), "whole numbers >= 0"),
    (_set_batches(completed=9), "ready >= started >= processed >= completed"),
    (_set_batches(is_last_batch="yes"), "is_last_batch is 'yes', not true or false"),
    (_set_epochs, "loops.fit_loop['epoch_progress']"),
])
def test_tampered_loop_counters_are_refused_before_a_step(mid_epoch, tmp_path, monkeypatch,
                                                          capsys, change, words):
    """The loop counters say how much of the epoch was trained: ones that put training at the
    epoch's end (or past it) made a resume skip the rest of the epoch without a word, others
    (negative, fractions, out of Lightning's order) resumed as well. Refused in one line before
    a step: the checkpoint is not rewritten."""
    run_dir, last = mid_epoch
    _tamper(last, change)
    tampered = last.read_bytes()
    refused = _train([*SMALL, "trainer.max_steps=48", f"ckpt_path={last}",
                      f"hydra.run.dir={run_dir}"], tmp_path, monkeypatch, capsys)
    assert refused.code == 2 and words in refused.err, refused.err[-2000:]
    assert "Traceback" not in refused.err and refused.err.count("error:") == 1
    assert last.read_bytes() == tampered


def test_a_mid_epoch_resume_with_shorter_epochs_is_not_refused(mid_epoch, tmp_path,
                                                               monkeypatch, capsys):
    """8 batches of an epoch of 16 trained, resumed with trainer.limit_train_batches=4: the
    counters lie past this run's epoch, which the checkpoint's own epoch length (16) allows."""
    run_dir, last = mid_epoch
    resumed = _train([*SMALL, "trainer.max_steps=48", "trainer.limit_train_batches=4",
                      f"ckpt_path={last}", f"hydra.run.dir={run_dir}"], tmp_path, monkeypatch,
                     capsys)
    assert resumed.code == 0, resumed.err[-2000:]


@pytest.mark.parametrize("size, resumable", [(16, True), (8, False), (17, False), (0, False)])
def test_a_cuda_random_state_must_have_the_size_of_one(stopped, size, resumable):
    """A CUDA generator's state is its Philox seed and offset, 16 bytes (torch's
    CUDAGeneratorImpl): another size passed the check on a machine without a GPU, and was set
    only when a GPU's run resumed from it."""
    from vae_lightning.errors import CheckpointError
    from vae_lightning.module import VAE
    from vae_lightning.rebuild import load_model
    from vae_lightning.resume import check_states

    _, last = stopped
    model, _, checkpoint = load_model(last, VAE)
    checkpoint["callbacks"]["ResumeState"]["cuda"] = [torch.zeros(size, dtype=torch.uint8)]
    if resumable:
        check_states(checkpoint, last, model)
    else:
        with pytest.raises(CheckpointError, match="its random states"):
            check_states(checkpoint, last, model)


def test_the_cuda_states_of_gpus_this_machine_lacks_are_not_restored(monkeypatch):
    """A checkpoint saved on a machine with two GPUs, resumed on one with one GPU: the first
    state is restored to it, the second is not asked for (torch.cuda.set_rng_state_all set each
    saved state on the GPU of its index: one this machine lacks)."""
    from types import SimpleNamespace

    from vae_lightning.resume import ResumeState

    callback = ResumeState()
    saved = callback.state_dict()  # this process's states (before CUDA is faked below)
    saved["cuda"] = [torch.full((16,), 7, dtype=torch.uint8),
                     torch.full((16,), 9, dtype=torch.uint8)]
    set_states = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device: set_states.append((state[0].item(), device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: set_states.extend(
        (s[0].item(), i) for i, s in enumerate(states)))
    callback.load_state_dict(saved)
    trainer = SimpleNamespace(ckpt_path=None, loggers=[])
    callback.on_train_start(trainer, None)
    assert set_states == [(7, 0)]


def test_a_moved_run_resumes_with_its_record_of_the_best_checkpoint(stopped, tmp_path,
                                                                     monkeypatch, capsys):
    """A run directory moved (or copied) before its resume: the checkpoint callbacks' record was
    written for the old folder, which Lightning would not reload, so its best score was forgotten
    (the next epoch's file became the best whatever its val/elbo, and the old best file stayed
    beside it). The record's files are now found by name in the new folder."""
    import shutil

    run_dir, _ = stopped
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    shutil.rmtree(run_dir)  # the old folder is gone
    before = _best_state(torch.load(moved / "checkpoints" / "last.ckpt", weights_only=True))
    done = _resume(moved, moved / "checkpoints" / "last.ckpt", tmp_path, monkeypatch, capsys)
    assert done.code == 0, done.err[-2000:]
    best_files = sorted((moved / "checkpoints").glob("best-*.ckpt"))
    assert len(best_files) == 1, best_files  # save_top_k: 1, the worse one deleted
    after = _best_state(torch.load(moved / "checkpoints" / "last.ckpt", weights_only=True))
    assert after["dirpath"] == str(moved / "checkpoints")
    assert after["best_model_path"] == str(best_files[0])
    assert after["best_model_score"] >= before["best_model_score"]  # never a worse best
    assert set(after["best_k_models"]) == {str(best_files[0])}
    assert not run_dir.exists()  # nothing written where the run was


@pytest.mark.parametrize("field", ["best_model_score", "kth_value", "best_k_models"])
def test_a_record_whose_scores_are_not_numbers_is_refused(stopped, field):
    """Lightning compares each new checkpoint's score with the record's (best_model_score,
    kth_value, best_k_models' values): a tampered score that is not one number resumed, then
    ended the run after its first validation with a TypeError traceback (exit 1). Refused
    before training; the scores Lightning writes (a tensor, inf, None) stay resumable."""
    from vae_lightning.errors import CheckpointError
    from vae_lightning.module import VAE
    from vae_lightning.rebuild import load_model
    from vae_lightning.resume import check_states

    _, last = stopped
    model, _, checkpoint = load_model(last, VAE)
    check_states(checkpoint, last, model)  # as written: resumable
    state = _best_state(checkpoint)
    if field == "best_k_models":
        state[field] = {name: "x" for name in state[field]}
        assert state[field]
    else:
        state[field] = "x"
    with pytest.raises(CheckpointError, match=rf"{field}.* is 'x', not one number"):
        check_states(checkpoint, last, model)
    state["best_k_models"] = {name: torch.tensor(-1.5) for name in state["best_k_models"]}
    state["best_model_score"], state["kth_value"] = None, torch.tensor(float("inf"))
    check_states(checkpoint, last, model)


def test_a_resume_mid_epoch_with_another_number_of_processes_is_refused(tmp_path, monkeypatch,
                                                                       capsys):
    """Each DDP rank's share of the epoch (n // world) and its batches done are counted per
    rank: a checkpoint taken mid-epoch by 2 processes, resumed by 1, would train some points
    twice and leave others out. The checkpoint records its number of processes (1 here),
    and a mid-epoch resume with another is refused before the first step."""
    run_dir = tmp_path / "run"
    done = _train([*SMALL, "trainer.max_steps=5", f"hydra.run.dir={run_dir}"], tmp_path,
                  monkeypatch, capsys)
    assert done.code == 0, done.err[-2000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["callbacks"]["ResumeState"]["world_size"] == 1
    _tamper(last, lambda c: c["callbacks"]["ResumeState"].update(world_size=2))
    result = _resume(run_dir, last, tmp_path, monkeypatch, capsys)
    assert result.code == 2, result.err[-2000:]
    assert (f"Checkpoint {last} was taken part-way through an epoch (5 batches trained on each "
            "of 2 processes), and this run has 1") in result.err
    assert json.loads((run_dir / "results.json").read_text())["train_samples_seen"] == \
        checkpoint["samples_seen"]  # nothing trained
