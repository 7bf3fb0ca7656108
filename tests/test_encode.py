"""vae-encode: the location of q(z|x) of each data point of the chosen splits, as vae-sample's
fitted samplers compute it, with the split's labels, written to one .npz (plain arrays) and
described in a .json; bad options are refused by key before anything is loaded."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from compose import command_config, compose_train, mnist_like
from hydra.utils import instantiate

from vae_lightning import samplers
from vae_lightning.errors import ConfigError
from vae_lightning.train import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def encode_config(overrides: list[str]):
    """vae-encode's ``Encoding`` for ``overrides``, as the command builds it."""
    return command_config("encode", overrides)


def _trained(tmp_path_factory, *model):
    """A model (``model``'s overrides) trained for an epoch on small MNIST-format files (150
    train, 50 val, 50 test images), on one thread: its checkpoint, its training config (the
    data module to read the splits with directly) and the data's folder."""
    root = mnist_like(tmp_path_factory.mktemp("data"), train=200, test=50)
    cfg = compose_train(["data=mnist", f"data.root={root}", "data.val_size=50", *model,
                         "model.encoder.net.hidden=[16]", "model.decoder.net.hidden=[16]",
                         "trainer.max_epochs=1", "logger=none", "callbacks.figures.n_points=0",
                         "trainer.enable_progress_bar=false"], tmp_path_factory.mktemp("run"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        checkpoint = Path(train(cfg)["checkpoint"])
    finally:
        torch.set_num_threads(threads)
    return checkpoint, cfg, root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A conditional VAE (its q(z|x, y) reads the label): ``_trained``."""
    return _trained(tmp_path_factory, "model=cvae", "model.latent=3")


def test_the_locations_are_q_of_each_point_given_its_label(trained, tmp_path):
    """x_<split> is Encoder.location(q(z|x, y)) of the split's points, bit for bit in one batch
    and to rounding in batches of 7; y_<split> the split's labels; the sizes the data module's."""
    checkpoint, cfg, root = trained
    args = [f"ckpt_path={checkpoint}", f"data_root={root}", "device=cpu"]
    record = encode_config([*args, f"out={tmp_path / 'one.npz'}"])()
    batched = encode_config([*args, f"out={tmp_path / 'seven.npz'}", "batch_size=7"])()
    one, seven = np.load(record["locations"]), np.load(batched["locations"])

    from vae_lightning.module import VAE

    model = VAE.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    for split in ("train", "val", "test"):
        x, y = datamodule.evaluation_data(split), datamodule.evaluation_labels(split)
        with torch.no_grad():
            q = model.encode(x, y)
            z, std = model.encoder.location(q).numpy(), q.stddev.numpy()
            other = model.encoder.location(model.encode(x, (y + 1) % 10)).numpy()
        assert one[f"x_{split}"].dtype == np.float32 and one[f"x_{split}"].shape == (len(x), 3)
        np.testing.assert_array_equal(one[f"x_{split}"], z)
        np.testing.assert_array_equal(one[f"s_{split}"], std)  # q's standard deviation
        np.testing.assert_allclose(seven[f"x_{split}"], z, rtol=1e-5, atol=1e-6)
        assert not np.allclose(other, z)  # the label matters: each point was given its own
        assert one[f"y_{split}"].dtype == np.int64
        np.testing.assert_array_equal(one[f"y_{split}"], y.numpy())
        assert record["splits"][split]["size"] == len(x)
    assert [len(one[f"x_{s}"]) for s in ("train", "val", "test")] == [150, 50, 50]
    assert record["arrays"]["x_train"] == [150, 3] and record["arrays"]["y_test"] == [50]


def test_the_file_holds_plain_arrays_and_the_json_says_what_they_are(trained, tmp_path):
    checkpoint, _, root = trained
    out = tmp_path / "features.npz"
    encode_config([f"ckpt_path={checkpoint}", f"data_root={root}", "device=cpu",
                   "splits=[test,train]", f"out={out}"])()
    with np.load(out, allow_pickle=False) as saved:
        assert sorted(saved.files) == ["s_test", "s_train", "x_test", "x_train", "y_test",
                                       "y_train"]
        sizes = {name: saved[name].shape for name in saved.files}
    described = json.loads((tmp_path / "features.json").read_text())
    assert list(described["splits"]) == ["test", "train"]
    assert {s: v["size"] for s, v in described["splits"].items()} == {"test": 50, "train": 150}
    assert all(v["data_matches_checkpoint"] for v in described["splits"].values())
    assert sizes["x_train"] == (150, described["latent"]) == (150, 3)
    assert described["checkpoint_sha256"] == samplers.digest(checkpoint)
    assert described["checkpoint"] == str(checkpoint.resolve())
    assert "location of q(z|x)" in described["x"] and "standard deviation" in described["s"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic


def test_the_default_file_is_in_the_run_directory(trained):
    checkpoint, _, root = trained
    record = encode_config([f"ckpt_path={checkpoint}", f"data_root={root}", "device=cpu",
                            "splits=[val]"])()
    run = checkpoint.parent.parent
    assert record["locations"] == str(run / "locations.npz")
    assert record["record"] == str(run / "locations.json")
    assert np.load(run / "locations.npz").files == ["x_val", "y_val", "s_val"]


@pytest.mark.parametrize("splits, bad", [("[train,nope]", "['train', 'nope']"), ("[]", "[]"),
                                         ("[test,test]", "['test', 'test']")])
def test_splits_other_than_distinct_train_val_test_are_refused_by_key(splits, bad, trained):
    checkpoint, _, _ = trained
    words = rf"splits={re.escape(bad)} is not allowed: .*distinct .* train, val, test"
    with pytest.raises(ConfigError, match=words):
        encode_config([f"ckpt_path={checkpoint}", f"splits={splits}"])


def test_an_out_that_cannot_be_written_is_refused_before_the_model_is_loaded(trained,
                                                                           tmp_path):
    checkpoint, _, _ = trained
    with pytest.raises(ConfigError, match=r"out=.*\.txt' is not allowed: .*ending in \.npz"):
        encode_config([f"ckpt_path={checkpoint}", f"out={tmp_path / 'x.txt'}"])
    missing = tmp_path / "missing" / "x.npz"
    with pytest.raises(ConfigError, match=rf"out={missing}: the folder .*missing does not exist"):
        encode_config(["ckpt_path=/no/such.ckpt", f"out={missing}"])()
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        encode_config([f"ckpt_path={checkpoint}", f"out={tmp_path / 'file' / 'x.npz'}"])()
    assert not (tmp_path / "missing").exists()


def test_only_an_earlier_vae_encode_s_output_is_replaced(trained, tmp_path):
    """out=<run>/results.npz replaced the run's results.json by the locations' record, and
    out=<the data's .npz> the data themselves: a file that is not an earlier vae-encode's
    output (its .json record beside it) is refused before the model is loaded; an earlier
    output is replaced."""
    checkpoint, _, root = trained
    results = checkpoint.parent.parent / "results.json"
    before = results.read_text()
    data = tmp_path / "data.npz"
    np.savez(data, x=np.zeros((3, 2, 2), np.uint8))
    for out, found in ((results.with_suffix(".npz"), results), (data, data)):
        with pytest.raises(ConfigError, match=rf"out={out}: {found} exists and is not the "
                                              r"output of an earlier vae-encode"):
            encode_config([f"ckpt_path={checkpoint}", f"out={out}"])()
    assert results.read_text() == before and np.load(data).files == ["x"]
    out = tmp_path / "again.npz"
    for _ in range(2):
        encode_config([f"ckpt_path={checkpoint}", f"data_root={root}", "device=cpu",
                       "splits=[test]", f"out={out}"])()
    assert np.load(out).files == ["x_test", "y_test", "s_test"]


def test_a_failed_write_leaves_no_file_and_is_an_unwritable_error(trained, tmp_path,
                                                                 monkeypatch):
    """A full disk while the .npz is written: exit code 74's error, nothing under either name."""
    import errno

    from vae_lightning.errors import UnwritableError

    checkpoint, _, root = trained

    def full(*_, **__):
        raise OSError(errno.ENOSPC, "No space left on device")

    encoding = encode_config([f"ckpt_path={checkpoint}", f"data_root={root}", "device=cpu",
                              "splits=[test]", f"out={tmp_path / 'x.npz'}"])
    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(UnwritableError, match="No space left on device"):
        encoding()
    assert list(tmp_path.iterdir()) == []


def test_units_active_keeps_the_units_whose_location_varies_over_the_training_points(
        trained, tmp_path):
    """units=active: the columns of x_ and s_ of every split are those of the units whose
    location's variance over the training points exceeds 0.01 (Burda et al.'s criterion, as
    Kingma et al.'s M1+M2 code keeps M1's units); the .json lists them. Refused by key without
    the train split, and where no unit is active."""
    checkpoint, _, root = trained
    common = [f"ckpt_path={checkpoint}", f"data_root={root}", "device=cpu"]
    encode_config([*common, f"out={tmp_path / 'all.npz'}"])()
    record = encode_config([*common, "units=active", f"out={tmp_path / 'active.npz'}"])()
    every, active = np.load(tmp_path / "all.npz"), np.load(tmp_path / "active.npz")
    variance = np.var(every["x_train"].astype(np.float64), axis=0, ddof=1)
    kept = np.flatnonzero(variance > 0.01)
    assert record["units"] == kept.tolist() and 0 < len(kept)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(active[f"x_{split}"], every[f"x_{split}"][:, kept])
        np.testing.assert_array_equal(active[f"s_{split}"], every[f"s_{split}"][:, kept])
        np.testing.assert_array_equal(active[f"y_{split}"], every[f"y_{split}"])
    with pytest.raises(ConfigError, match=r"units='active' is not allowed: all, or active with "
                                          "the train split among splits"):
        encode_config([*common, "units=active", "splits=[test]"])
    import vae_lightning.log_likelihood as log_likelihood_module

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(log_likelihood_module, "ACTIVE", 1e9)
        with pytest.raises(ConfigError, match="units=active: no latent unit .* is active"):
            encode_config([*common, "units=active", f"out={tmp_path / 'none.npz'}"])()


def test_the_active_units_are_those_vae_eval_counts(trained, tmp_path, monkeypatch):
    """units=active takes vae-eval's variance over the points, the unbiased one (torch's var,
    log_likelihood.evaluate), not NumPy's default (1/N): a unit whose variance lies between
    0.01 (N - 1) / N and 0.01 was active for vae-eval and dropped by vae-encode."""
    import math

    import vae_lightning.encode as encode_module
    from vae_lightning.log_likelihood import ACTIVE

    checkpoint, _, root = trained

    def statistics(model, batches, means=False):  # +-1, +-sqrt(0.00995) (mean 0 over 150), 0
        n = sum(len(x) for x, _ in batches)
        sign = torch.tensor([1.0, -1.0]).repeat(n // 2 + 1)[:n]
        locations = torch.stack([sign, sign * math.sqrt(0.00995), torch.zeros(n)], 1)
        return locations, torch.ones(n, 3), locations.double() if means else None

    monkeypatch.setattr(encode_module, "posterior_statistics", statistics)
    record = encode_config([f"ckpt_path={checkpoint}", f"data_root={root}", "device=cpu",
                            "units=active", "splits=[train]", f"out={tmp_path / 'a.npz'}"])()
    x = statistics(None, [(torch.zeros(150), None)])[0].double()
    assert record["units"] == torch.nonzero(x.var(0) > ACTIVE).flatten().tolist() == [0, 1]


@pytest.fixture(scope="module")
def trained_svae(tmp_path_factory):
    """A hyperspherical VAE (a von Mises-Fisher q on S^9): ``_trained``."""
    return _trained(tmp_path_factory, "model=svae", "model.latent=10")


@pytest.mark.parametrize("kappa", ["near_uniform", "concentrated"])
def test_the_active_units_of_a_von_mises_fisher_are_those_of_its_mean(trained_svae, tmp_path,
                                                                      kappa):
    """units=active counts by E_q[z] (a vMF's A_m(kappa) mu), as vae-eval does, not by the
    location mu: the directions of a near-uniform q (kappa = 1 on S^9, A_m about 0.1) vary over
    the points while q carries no information. vae-eval counts none active there, and
    vae-encode kept the units whose direction varied; a concentrated q (kappa = 1e4) keeps the
    units of both. The encoder's last layer is set so (directions spread, kappa fixed)."""
    from vae_lightning.log_likelihood import evaluate, posterior_mean
    from vae_lightning.module import VAE

    checkpoint, cfg, root = trained_svae
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    weight, bias = state["state_dict"]["encoder.net.2.weight"], \
        state["state_dict"]["encoder.net.2.bias"]
    weight[:10] *= 10
    weight[10] = 0.0
    bias[10] = -50.0 if kappa == "near_uniform" else 1e4  # kappa = 1 + softplus(bias)
    edited = tmp_path / "run" / "checkpoints" / "edited.ckpt"
    edited.parent.mkdir(parents=True)
    torch.save(state, edited)

    model = VAE.load_from_checkpoint(edited, map_location="cpu").eval()
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    batches = list(datamodule.evaluation_batches("train", 500))
    with torch.no_grad():
        qs = [model.encode(x) for x, _ in batches]
        means = torch.cat([posterior_mean(model.encoder, q) for q in qs]).double()
        locations = torch.cat([model.encoder.location(q) for q in qs]).double()
        counted = evaluate(model, batches, k=1)["active_units"]  # vae-eval's count
    by_mean = torch.nonzero(means.var(0) > 0.01).flatten().tolist()
    by_location = torch.nonzero(locations.var(0) > 0.01).flatten().tolist()
    assert len(by_mean) == counted
    args = [f"ckpt_path={edited}", f"data_root={root}", "device=cpu", "units=active",
            "splits=[train]", f"out={tmp_path / 'a.npz'}"]
    if kappa == "near_uniform":
        assert counted == 0 and len(by_location) > 0
        with pytest.raises(ConfigError, match="units=active: no latent unit .* is active"):
            encode_config(args)()
    else:
        assert counted > 0 and by_mean == by_location
        assert encode_config(args)()["units"] == by_mean


def test_a_split_without_points_is_encoded_as_no_rows(tmp_path):
    """A run trained with data.val_size=0 has no validation points: vae-encode with its
    default splits (all three) ended in torch.cat's "expected a non-empty list of Tensors"
    (a traceback, exit code 1). Its x_val, s_val (beside the others' s_) and y_val now have no
    rows, and the record says size 0; the other splits are as ever."""
    root = mnist_like(tmp_path / "data", train=100, test=20)
    cfg = compose_train(["data=mnist", f"data.root={root}", "data.val_size=0", "model.latent=2",
                         "model.encoder.net.hidden=[8]", "model.decoder.net.hidden=[8]",
                         "trainer.max_epochs=1", "logger=none", "callbacks.figures.n_points=0",
                         "trainer.enable_progress_bar=false"], tmp_path / "run")
    checkpoint = Path(train(cfg)["checkpoint"])
    record = encode_config([f"ckpt_path={checkpoint}", f"data_root={root}", "device=cpu",
                            f"out={tmp_path / 'z.npz'}"])()
    arrays = np.load(record["locations"])
    assert arrays["x_val"].shape == (0, 2) and arrays["x_val"].dtype == np.float32
    assert arrays["s_val"].shape == (0, 2) and arrays["y_val"].shape == (0,)
    assert arrays["x_train"].shape == (100, 2) and arrays["s_test"].shape == (20, 2)
    assert {split: v["size"] for split, v in record["splits"].items()} == {
        "train": 100, "val": 0, "test": 20}


def test_replacing_the_locations_of_another_checkpoint_is_said(trained, tmp_path, caplog):
    """vae-encode of best-epochN.ckpt into the out that held last.ckpt's locations (the
    default out of both: <run>/locations.npz; or one out for every job of a sweep) replaced
    them without a word. Now a warning names the checkpoint whose locations were replaced; the
    same checkpoint encoded again replaces its own silently, as before."""
    checkpoint, _, root = trained
    out = tmp_path / "z.npz"
    out.write_bytes(b"an earlier vae-encode's arrays")
    out.with_suffix(".json").write_text(json.dumps({
        "checkpoint": "/elsewhere/best-epoch003.ckpt", "checkpoint_sha256": "ab" * 32,
        "locations": str(out), "splits": {}}))
    args = [f"ckpt_path={checkpoint}", f"data_root={root}", "device=cpu", f"out={out}",
            "splits=[test]"]
    with caplog.at_level("WARNING", logger="vae_lightning.encode"):
        encode_config(args)()
    assert (f"{out} held the locations of another checkpoint (/elsewhere/best-epoch003.ckpt, "
            "SHA-256 abababababab...): replaced by those of") in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="vae_lightning.encode"):
        encode_config(args)()
    assert "held the locations" not in caplog.text
    assert np.load(out)["x_test"].shape == (50, 3)


def test_the_rows_of_one_s_own_data_come_with_their_locations(tmp_path):
    """data=array: which row of one's own file each encoded point is (a cell's barcode, say)
    was said nowhere; i_<split> gives it, and the split's points are the file's rows there
    (their labels, and their locations as of those rows encoded directly). A published data
    set (the first test above) has none."""
    from vae_lightning.data.splits import held_out
    from vae_lightning.module import VAE

    rng = np.random.default_rng(0)
    values = rng.standard_normal((60, 5)).astype(np.float32)
    labels = rng.integers(0, 3, 60)
    np.savez(tmp_path / "cells.npz", x=values, y=labels)
    cfg = compose_train(["data=array", f"data.path={tmp_path / 'cells.npz'}",
                         "data.labels_key=y", "model/likelihood=gaussian",
                         "model.decoder.likelihood.mean_activation=identity", "model.latent=2",
                         "model.encoder.net.hidden=[8]", "model.decoder.net.hidden=[8]",
                         "trainer.max_steps=2", "logger=none", "callbacks.figures=null",
                         "trainer.enable_progress_bar=false"], tmp_path / "run")
    checkpoint = Path(train(cfg)["checkpoint"])
    record = encode_config([f"ckpt_path={checkpoint}", "device=cpu",
                            f"data_path={tmp_path / 'cells.npz'}", f"out={tmp_path / 'z.npz'}"])()
    data = instantiate(cfg.data)  # its sizes as resolved (test_size null: 0.1)
    expected = held_out(60, data.val_size, data.test_size, "")
    model = VAE.load_from_checkpoint(checkpoint)
    with np.load(record["locations"]) as arrays:
        for split in ("train", "val", "test"):
            rows = arrays[f"i_{split}"]
            assert rows.dtype == np.int64 and rows.tolist() == expected[split].tolist()
            assert arrays[f"y_{split}"].tolist() == labels[rows].tolist()
            with torch.no_grad():
                direct = model.encoder.location(model.encode(
                    torch.from_numpy(values[rows]).reshape(-1, 1, 1, 5)))
            torch.testing.assert_close(torch.from_numpy(arrays[f"x_{split}"]), direct)
    assert "rows in the data it was read from" in record["i"]
