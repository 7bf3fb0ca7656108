"""Exact resume under dynamic binarization: the binarization generators' states travel in the
checkpoint (``VAEDataModule.state_dict``), and a tampered one is refused in one line."""

import json

import pytest
import torch
from compose import mnist_like
from test_hostile import no_traceback, run

from vae_lightning import cli
from vae_lightning.data.mnist import MNISTDataModule
from vae_lightning.errors import CheckpointError

# 250 training images, batches of 50: 5 steps an epoch (step 3 is mid-way through the first).
TINY = ["data=mnist", "data.val_size=50", "data.batch_size=50", "data.binarize=dynamic",
        "model.latent=2", "model.encoder.net.hidden=[16]", "model.decoder.net.hidden=[16]",
        "logger=none", "callbacks.figures=null", "callbacks.bound_curve=null",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
KEYS = ("val/elbo", "test/elbo", "train/elbo")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return mnist_like(tmp_path_factory.mktemp("data"), train=300, test=50)


def _train(args, cwd, monkeypatch, capsys):
    result = run(cli.train, args, monkeypatch, capsys, cwd)
    assert result.code == 0, result.err[-2000:]


def _results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.parametrize(("cut", "full"), [(3, 4), (3, 7)])  # within the epoch; across its end
def test_a_dynamically_binarized_run_continues_exactly(tmp_path, monkeypatch, capsys, one_thread,
                                                       data, cut, full):
    common = [*TINY, f"data.root={data}"]
    run_dir = tmp_path / "run"
    _train([*common, f"trainer.max_steps={cut}", f"hydra.run.dir={run_dir}"], tmp_path,
           monkeypatch, capsys)
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == cut
    saved = checkpoint.get("MNISTDataModule")
    _train([*common, f"trainer.max_steps={full}", f"ckpt_path={last}"], tmp_path, monkeypatch,
           capsys)
    _train([*common, f"trainer.max_steps={full}", f"hydra.run.dir={tmp_path / 'ref'}"],
           tmp_path, monkeypatch, capsys)
    continued, reference = _results(run_dir), _results(tmp_path / "ref")
    assert continued["steps"] == reference["steps"] == full
    for key in KEYS:
        assert continued[key] == pytest.approx(reference[key], rel=1e-6), key
    assert saved["rank"] == 0 and set(saved["binarization"]) == {"cpu"}


def test_the_generator_continues_from_the_saved_state():
    saving, loading = MNISTDataModule(binarize="dynamic"), MNISTDataModule(binarize="dynamic")
    assert saving.state_dict() == {}  # no batch drawn: nothing for Lightning to save
    before = saving._generator(torch.device("cpu")).get_state()
    torch.rand(5, generator=saving._generator(torch.device("cpu")))
    state = saving.state_dict()
    assert not torch.equal(state["binarization"]["cpu"], before)
    loading._generator(torch.device("cpu"))  # created before the restore: replaced
    loading.load_state_dict(state)
    draw = torch.rand(5, generator=loading._generator(torch.device("cpu")))
    assert torch.equal(draw, torch.rand(5, generator=saving._generator(torch.device("cpu"))))
    # A GPU's state, restored where there is none, is kept (never drawn from here).
    if not torch.cuda.is_available():
        gpu = torch.zeros(16, dtype=torch.uint8)
        loading.load_state_dict({"rank": 0, "binarization": {**state["binarization"],
                                                             "cuda:0": gpu}})
        assert torch.equal(loading.state_dict()["binarization"]["cuda:0"], gpu)
    # Another rank's states (DDP: rank 0 writes the checkpoint) leave this rank's stream alone.
    other = MNISTDataModule(binarize="dynamic")
    other.load_state_dict({"rank": 1, "binarization": state["binarization"]})
    assert other.state_dict() == {}


def test_each_ddp_rank_goes_on_with_its_own_saved_stream(monkeypatch):
    """A checkpoint of a 2-rank run holds every rank's states (``ranks``); on resume each rank
    takes its own; from a checkpoint of another number of ranks, rank 0 those it wrote and the
    others their seeds' streams."""
    def drawn(seed):
        generator = torch.Generator().manual_seed(seed)
        torch.rand(7, generator=generator)
        return generator.get_state()

    saved = {"rank": 0, "binarization": {"cpu": drawn(1)},
             "ranks": [{"cpu": drawn(1)}, {"cpu": drawn(2)}]}
    for rank, seed in ((0, 1), (1, 2)):
        module = MNISTDataModule(binarize="dynamic")
        monkeypatch.setattr(module, "_rank_world", lambda rank=rank: (rank, 2))
        module.load_state_dict(saved)
        assert torch.equal(module.state_dict()["binarization"]["cpu"], drawn(seed))
    three = MNISTDataModule(binarize="dynamic")  # rank 2 of 3: its own stream from the seed
    monkeypatch.setattr(three, "_rank_world", lambda: (2, 3))
    three.load_state_dict(saved)
    assert three.state_dict() == {}
    with pytest.raises(CheckpointError, match="binarization state .* was altered"):
        MNISTDataModule(binarize="dynamic").load_state_dict({**saved, "ranks": [{"cpu": 5}]})


CPU = torch.Generator().get_state()
TAMPERED = {
    "not a mapping": torch.zeros(3),
    "no rank": {"binarization": {"cpu": CPU}},
    "rank not an int": {"rank": "0", "binarization": {"cpu": CPU}},
    "generators not a mapping": {"rank": 0, "binarization": [CPU]},
    "wrong size": {"rank": 0, "binarization": {"cpu": CPU[:100]}},
    "wrong dtype": {"rank": 0, "binarization": {"cpu": CPU.long()}},
    "not a tensor": {"rank": 0, "binarization": {"cpu": 12345}},
    "two-dimensional": {"rank": 0, "binarization": {"cpu": CPU.reshape(2, -1)}},
    "invalid state": {"rank": 0, "binarization": {"cpu": torch.zeros_like(CPU)}},
    "no device": {"rank": 0, "binarization": {"gpu7": CPU}},
    "key not a name": {"rank": 0, "binarization": {0: CPU}},
    "ranks not a list": {"rank": 0, "binarization": {"cpu": CPU}, "ranks": {"cpu": CPU}},
    "a rank's states not a mapping": {"rank": 0, "binarization": {"cpu": CPU}, "ranks": [CPU]},
    "a rank's state invalid": {"rank": 0, "binarization": {"cpu": CPU},
                               "ranks": [{"cpu": torch.zeros_like(CPU)}]},
}


@pytest.mark.parametrize("state", TAMPERED.values(), ids=TAMPERED)
def test_a_tampered_state_is_a_checkpoint_error(state):
    datamodule = MNISTDataModule(binarize="dynamic")
    with pytest.raises(CheckpointError, match="binarization state .* was altered"):
        datamodule.load_state_dict(state)
    assert datamodule.state_dict() == {}  # nothing half-restored


def _two_steps(common, tmp_path, monkeypatch, capsys):
    """A run of two steps: its last.ckpt, and what it holds."""
    run_dir = tmp_path / "run"
    _train([*common, "trainer.max_steps=2", f"hydra.run.dir={run_dir}"], tmp_path, monkeypatch,
           capsys)
    last = run_dir / "checkpoints" / "last.ckpt"
    return last, torch.load(last, weights_only=True)


def test_resuming_from_a_tampered_checkpoint_is_one_line(tmp_path, monkeypatch, capsys,
                                                         one_thread, data):
    common = [*TINY, f"data.root={data}"]
    last, checkpoint = _two_steps(common, tmp_path, monkeypatch, capsys)
    checkpoint["MNISTDataModule"]["binarization"]["cpu"] = CPU[:-1]
    torch.save(checkpoint, last)
    result = run(cli.train, [*common, "trainer.max_steps=4", f"ckpt_path={last}"], monkeypatch,
                 capsys, tmp_path)
    no_traceback(result)
    assert result.code == 2, result.err[-2000:]
    lines = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "binarization state for cpu holds 5055 bytes" in lines[0], \
        result.err[-2000:]


def test_a_checkpoint_without_the_state_still_resumes(tmp_path, monkeypatch, capsys, one_thread,
                                                      data):
    """As written before the state was saved: the generators start from the seed."""
    common = [*TINY, f"data.root={data}"]
    last, checkpoint = _two_steps(common, tmp_path, monkeypatch, capsys)
    del checkpoint["MNISTDataModule"]
    torch.save(checkpoint, last)
    _train([*common, "trainer.max_steps=4", f"ckpt_path={last}"], tmp_path, monkeypatch, capsys)
    assert _results(last.parents[1])["steps"] == 4
