"""Hostile round twenty (/work/notes/hostile20.md): FactorVAE's own updates under DDP, parts of
one's own built where the meta device cannot build them, and the report tools' files. Each test
fails on the code before its fix."""

import json
import math

import lightning as L
import pytest
import torch
from compose import compose_train
from torch import distributions as D
from torch import nn

from vae_lightning.priors import Prior
from vae_lightning.train import build_run

pytestmark = pytest.mark.usefixtures("one_thread")

FACTOR = ["data=frey", "model.latent=2", "model.encoder.net.hidden=[16]",
          "model.decoder.net.hidden=[16]", "model/objective=factor_vae",
          "model.objective.hidden=[32]", "logger=none"]


@pytest.mark.slow  # a spawned rank: half a minute on busy cores
def test_factor_vae_trains_under_ddp_on_one_rank(tmp_path):
    """``trainer=ddp trainer.devices=1`` (a DDP run on one process, as a SLURM script sized down
    for a test) wraps the model in DDP as two ranks do, and FactorVAE's discriminator update went
    through Lightning's manual_backward, which re-armed DDP's reducer for the whole model: the
    second step stopped with "parameters that were not used in producing the loss" (exit 1, a
    traceback). The DDP wrapper, not the number of ranks, decides the discriminator's backward."""
    run = build_run(compose_train(FACTOR, tmp_path))
    start = {k: v.clone() for k, v in run.model.objective.state_dict().items()}
    trainer = L.Trainer(strategy="ddp_spawn", accelerator="cpu", devices=1, max_steps=3,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(run.model, run.datamodule)
    # ddp_spawn hands the trained weights back to this process's model
    moved = [k for k, v in start.items() if not torch.equal(run.model.objective.state_dict()[k], v)]
    assert moved == list(start), "every discriminator weight moves"


class UniquePrior(Prior):
    """N(0, diag(s^2)), its learned log-scale started at log of the number of distinct values of
    a tensor: ``torch.unique`` has no meta kernel, and PyTorch's error names the device "Meta"."""

    features = frozenset({"factorized"})

    def __init__(self, latent: int) -> None:
        super().__init__(latent)
        start = math.log(len(torch.unique(torch.tensor([1.0, 1.0, 2.0]))))
        self.log_scale = nn.Parameter(torch.full((latent,), start))

    def distribution(self):
        return D.Independent(D.Normal(torch.zeros_like(self.log_scale), self.log_scale.exp()), 1)


def test_a_part_whose_constructor_has_no_meta_kernel_trains(tmp_path):
    """build_on_meta builds on the CPU a part that the meta device cannot build, but looked for
    "meta" in the error case-sensitively: an operator without a meta kernel ("attempted to run
    this operator with Meta tensors") refused a valid part before training, "Invalid
    configuration: model.prior: aten::_unique2: ...", exit 2."""
    cfg = compose_train([*FACTOR[:4], "logger=none", "trainer.max_steps=1",
                         f"model.prior._target_={__name__}.UniquePrior"], tmp_path)
    run = build_run(cfg)
    assert torch.equal(run.model.prior.log_scale, torch.full((2,), math.log(2)))


def _curve_runs(tmp_path):
    from test_reproduction import AEVB, WAKE_SLEEP, write_run

    write_run(tmp_path / "runs" / "aevb", "aevb", AEVB)
    write_run(tmp_path / "runs" / "ws", "wake_sleep", WAKE_SLEEP)
    return tmp_path / "runs"


def _one_error(main, args, capsys, path):
    """``main(args)`` ends with exit code 2 (returned or raised) and one error line naming
    ``path``; returns the line."""
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err[-1500:]
    assert err.count("\n") == 1 and str(path) in err, err[-1500:]
    return err


def test_a_deeply_nested_json_file_is_one_error_in_every_report_tool(tmp_path, capsys):
    """json's decoder recurses once per level of nesting: a curve.json (results.json, eval.json,
    a bench record) holding [[[...]]] 10^5 deep was a RecursionError traceback (exit 1) from
    json_files.read, which every report tool reads its files with. One error naming the file."""
    from vae_lightning.reports.reproduction import main

    runs = _curve_runs(tmp_path)
    path = runs / "aevb" / "curve.json"
    curve = json.loads(path.read_text())
    depth = 100_000
    path.write_text(json.dumps(curve)[:-1] + ', "extra": ' + "[" * depth + "]" * depth + "}")
    err = _one_error(main, [str(runs), "--out", str(tmp_path / "page.md")], capsys, path)
    assert "nested deeper" in err
    assert not (tmp_path / "page.md").exists()


@pytest.mark.parametrize("seed", [[1], {"a": 1}, True, "0"])
def test_a_curve_json_whose_seed_is_not_an_integer_is_one_error(seed, tmp_path, capsys):
    """vae-reproduction --seeds pairs each seed's AEVB and wake-sleep runs by config.seed, a
    dict key: a list there was "TypeError: unhashable type: 'list'" (exit 1) after the page's
    runs were read; True paired with seed 1 and "0" stood apart from 0. Refused with the file."""
    from vae_lightning.reports.reproduction import main

    runs = _curve_runs(tmp_path)
    path = runs / "ws" / "curve.json"
    curve = json.loads(path.read_text())
    curve["config"] = {**curve["config"], "seed": seed}
    path.write_text(json.dumps(curve))
    err = _one_error(main, [str(runs / "aevb"), "--seeds", str(runs), "--out",
                            str(tmp_path / "page.md")], capsys, path)
    assert "config.seed=" in err and "an integer, or null" in err


@pytest.mark.parametrize("seed", [[1], {"a": 1}, True])
def test_a_results_json_whose_seed_is_not_an_integer_is_one_summary_error(seed, tmp_path, capsys):
    """vae-summarize counts each setting's distinct seeds in a set: a results.json whose seed
    was a list was "TypeError: unhashable type: 'list'" (exit 1), and true counted as seed 1.
    One error naming the file and the key, exit code 2, nothing written."""
    from test_summarize import JOBS

    from vae_lightning.reports.summarize import main

    for num, results in enumerate(JOBS):
        (tmp_path / str(num)).mkdir()
        (tmp_path / str(num) / "results.json").write_text(json.dumps({**results, "seed": 0}))
    path = tmp_path / "1" / "results.json"
    path.write_text(json.dumps({**JOBS[1], "seed": seed}))
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}") and len(err.strip().splitlines()) == 1, err
    assert "seed=" in err and "an integer or null" in err
    assert not (tmp_path / "summary.md").exists()


def _eval_json(directory, iw):
    directory.mkdir()
    n = len(iw)
    (directory / "eval.json").write_text(json.dumps({
        "split": "test", "k": 5, "n": n, "bound_of": "log p(x)",
        "iw": {"nats": -90.0, "nats_se": 1.0}, "elbo": {"nats": -95.0, "nats_se": 1.0},
        "per_point": {"iw": iw, "elbo": [-95.0] * n},
        "points": {"split_sha256": "0" * 64, "binarize": "dynamic"}}))
    return directory / "eval.json"


@pytest.mark.parametrize("first, second", [([0.0] * 4, [1e308] * 4),
                                           ([1e308, -1e308] * 2, [-1e308, 1e308] * 2)])
def test_per_point_estimates_too_large_to_difference_are_one_compare_error(first, second,
                                                                          tmp_path, capsys):
    """vae-compare checked each point's estimate finite, but the paired differences of finite
    values (1e308 against 0, or against -1e308) overflowed math.fsum: an OverflowError or
    "-inf + inf in fsum" traceback (exit 1). Values beyond any model's are refused with the
    file, as vae-reproduction refuses its bounds."""
    from vae_lightning.reports.compare import main

    a, b = _eval_json(tmp_path / "a", first), _eval_json(tmp_path / "b", second)
    err = _one_error(main, [str(tmp_path / "a"), str(tmp_path / "b")], capsys,
                     a if first[0] else b)
    assert "finite numbers under 1e+12 in size" in err


def test_the_optuna_sweeper_without_an_optimized_metric_is_refused_before_any_trial(tmp_path):
    """-m hydra/sweeper=optuna (here with the grid sampler of 8ab6e30's message) without
    hparams_search: each trial returned None to the study, and the first ended, after its
    training, in "Return value must be float-castable. Got 'None'" then Optuna's "Study.stop
    is supposed to be invoked inside an objective function" traceback (exit 1). Refused by the
    sweeper check before anything runs; with an optimized_metric it passes as before."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from compose import CONF
    from hydra import compose, initialize_config_dir

    from vae_lightning import sweeps
    from vae_lightning.errors import ConfigError

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/sweeper=optuna", "hydra/sweeper/sampler=grid"],
                      return_hydra_config=True)
    with pytest.raises(ConfigError, match="none is given: use hparams_search=optuna"):
        sweeps.check_sweeper(cfg.hydra.sweeper, cfg.get("optimized_metric"))
    sweeps.check_sweeper(cfg.hydra.sweeper, "val/kl")


def test_a_count_of_samples_beyond_any_run_is_one_reproduction_error(tmp_path, capsys):
    """e1b1932 refused a bound of 1e308, which overflowed the figure's axis; a samples_seen of
    1e308 (finite and positive, as checked) did the same on the logarithmic x-axis: a matplotlib
    "overflow encountered in exp" warning and a page drawn with it, exit 0. A count is below
    2**63, the run's int64 counter."""
    from vae_lightning.reports.reproduction import main

    runs = _curve_runs(tmp_path)
    path = runs / "aevb" / "curve.json"
    curve = json.loads(path.read_text())
    curve["points"][-1]["samples_seen"] = 1e308
    path.write_text(json.dumps(curve))
    err = _one_error(main, [str(runs), "--out", str(tmp_path / "page.md")], capsys, path)
    assert "samples_seen=1e+308 is not allowed: expected a positive number below 2**63" in err
    assert not (tmp_path / "page.md").exists()
