"""Hostile round twelve (/work/notes/hostile12.md): each test fails on the code before its fix."""

from __future__ import annotations

import pytest
from test_hostile import TINY, no_traceback, run

from vae_lightning import cli
from vae_lightning.args import ArgumentError


@pytest.mark.parametrize("override, key", [
    ("model.objective.beta=inf", "model.objective.beta=inf"),
    ("model/likelihood=gaussian_fixed model.decoder.likelihood.sigma=inf",
     "model.decoder.likelihood.sigma=inf"),
    ("trainer.max_samples=inf", "trainer.max_samples=inf"),
    ("model/posterior=student_t model.encoder.posterior.df=inf",
     "model.encoder.posterior.df=inf"),
])
def test_an_infinite_number_is_refused_by_the_config_check(override, key, tmp_path, monkeypatch,
                                                           capsys):
    """'a number > 0' took inf: model.objective.beta=inf (or a Gaussian's sigma, a Student-t's df)
    trained and died at step 0 as a non-finite loss (exit 3, a checkpoint written, the message
    pointing at the data), and trainer.max_samples=inf ended as 'trainer: cannot convert float
    infinity to integer' without its key."""
    result = run(cli.train, [*TINY, "data=frey", *override.split(),
                             f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys, tmp_path)
    no_traceback(result)
    assert result.code == 2, result
    assert result.err.startswith("error: Invalid configuration"), result.err
    assert f"{key} is not allowed: expected a number" in result.err, result.err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_infinite_or_overflowing_traversal_span_is_refused_before_any_work(
        tmp_path, monkeypatch, capsys):
    """vae-sample traverse=true traverse_span=inf (or 1e300, beyond float32) drew the samples,
    then ended in a ValueError / RuntimeError traceback from decode / torch.linspace (exit 1)."""
    for span in ("inf", "1e300"):
        result = run(cli.sample, [f"ckpt_path={tmp_path / 'none.ckpt'}", "traverse=true",
                                  f"traverse_span={span}", f"output_dir={tmp_path / 'out'}",
                                  f"hydra.run.dir={tmp_path / 'log'}"], monkeypatch, capsys,
                     tmp_path)
        no_traceback(result)
        assert result.code == 2, result
        assert "traverse_span=" in result.err and "<= 1e+38" in result.err, result.err
        assert not (tmp_path / "out").exists()
    from vae_lightning.sample import Sampling

    with pytest.raises(ArgumentError, match="traverse_span"):
        Sampling("none.ckpt", traverse=True, traverse_span=float("inf"))
    # The figures callback's traversals take the same range (1e300 reached torch.linspace at
    # the end of training).
    from vae_lightning.callbacks.figures import Figures

    with pytest.raises(ArgumentError, match=r"traversal_span=1e\+300 .*<= 1e\+38"):
        Figures(traversals=True, traversal_span=1e300)


@pytest.mark.parametrize("override, says", [
    ("model.encoder.nett.hidden=[3]",
     "model.encoder.nett.hidden=[3]: model.encoder has no key nett. Did you mean "
     "model.encoder.net?"),
    ("model.likelihood.sigma=0.5",
     "model.likelihood.sigma=0.5: model has no key likelihood. Did you mean "
     "model.decoder.likelihood?"),
])
def test_a_mistyped_key_on_the_way_to_a_setting_is_named_with_its_node(override, says, tmp_path,
                                                                       monkeypatch, capsys):
    """A typo in a dotted key's middle (model.encoder.nett.hidden) was reported as a mapping merged
    into the whole key: 'model.encoder.nett.hidden has no key nett (a mapping given on the command
    line is merged into the node ...); set its keys one by one
    (model.encoder.nett.hidden.<key>=...)', advice that cannot work, and no 'Did you mean'."""
    result = run(cli.train, [*TINY, override, f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch,
                 capsys, tmp_path)
    no_traceback(result)
    assert result.code == 2, result
    assert says in result.err, result.err
    assert "merged into the node" not in result.err and "<key>" not in result.err, result.err


@pytest.mark.parametrize("override, says", [
    ("ckpt_path=''", "ckpt_path='' is not allowed: expected a checkpoint file's path"),
    ("output_dir=''", "output_dir='' is not allowed: expected the run's directory"),
    ("output_dir=null", "output_dir=null is not allowed: expected the run's directory"),
])
def test_an_empty_checkpoint_or_run_directory_is_refused_in_one_line(override, says, tmp_path,
                                                                     monkeypatch, capsys):
    """ckpt_path='' trained nothing and ended in Lightning's ValueError traceback (exit 1);
    output_dir=null in a TypeError traceback; output_dir='' trained and wrote its csv/,
    checkpoints and results.json into the current directory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = run(cli.train, [*TINY, "data=frey", "trainer.max_steps=1", override,
                             f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys, cwd)
    no_traceback(result)
    assert result.code == 2, result
    assert result.err.strip().splitlines()[-1].endswith("."), result.err
    assert says in result.err, result.err
    assert list(cwd.iterdir()) == []
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_vae_eval_names_an_empty_checkpoint_path(tmp_path, monkeypatch, capsys):
    """vae-eval ckpt_path='' said 'Checkpoint . is a directory' (the current one)."""
    result = run(cli.evaluate, ["ckpt_path=''", f"hydra.run.dir={tmp_path / 'log'}"],
                 monkeypatch, capsys, tmp_path)
    no_traceback(result)
    assert result.code == 2, result
    assert "ckpt_path='' is not allowed" in result.err, result.err


@pytest.mark.parametrize("override", ["trainer.limit_train_batches=1.5",
                                      "trainer.limit_val_batches=-1",
                                      "+trainer.overfit_batches=2.5"])
def test_a_batch_limit_out_of_range_is_named_as_a_key(override, tmp_path, monkeypatch, capsys):
    """Lightning's own refusal began 'trainer: You have passed invalid value 1.5 for
    limit_train_batches': now the key, the value and what is accepted, before anything is
    written."""
    result = run(cli.train, [*TINY, "data=frey", override, f"hydra.run.dir={tmp_path / 'run'}"],
                 monkeypatch, capsys, tmp_path)
    no_traceback(result)
    assert result.code == 2, result
    assert f"{override.lstrip('+')} is not allowed: expected an integer >= 0 or a number >= 0 " \
        "and <= 1" in result.err, result.err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_several_nodes_without_a_cluster_are_refused_before_waiting_forever(
        tmp_path, monkeypatch, capsys):
    """+trainer.num_nodes=2 on one machine (no SLURM, no torchrun, NODE_RANK and MASTER_ADDR
    unset): rank 0 waited for the second node's processes until killed; now one line naming the
    key and what to set. With NODE_RANK and MASTER_ADDR set (Lightning's general cluster) the
    setting is Lightning's, as before."""
    from vae_lightning.trainer import Trainer

    for name in ("NODE_RANK", "MASTER_ADDR", "SLURM_NTASKS", "SLURM_JOB_NAME",
                 "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    result = run(cli.train, [*TINY, "data=frey", "+trainer.num_nodes=2",
                             f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys, tmp_path)
    no_traceback(result)
    assert result.code == 2, result
    assert "trainer.num_nodes=2 is not allowed: expected 1 here: no cluster environment" \
        in result.err and "NODE_RANK and MASTER_ADDR are not set" in result.err, result.err
    monkeypatch.setenv("NODE_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert Trainer(num_nodes=2, accelerator="cpu", devices=1, logger=False).num_nodes == 2
