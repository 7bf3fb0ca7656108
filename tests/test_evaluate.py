"""The IW estimate of log p(x) and eval.py: k = 1 is the ELBO, chunking changes nothing, the
estimate is >= the ELBO and rises with k, and eval.py writes eval.json from a real checkpoint."""

import copy
import json
import math
import os
import tempfile
from functools import partial
from pathlib import Path

import pytest
import torch
from compose import compose_train, eval_config, open_paths, run_eval, train_briefly
from test_hostile import no_traceback, run

from vae_lightning import cli, log_likelihood, rundir
from vae_lightning.checkpoints import CONFIG_KEY
from vae_lightning.errors import CheckpointError, ConfigError
from vae_lightning.log_likelihood import Estimate
from vae_lightning.module import VAE
from vae_lightning.objectives import auto_chunk, base, draw, importance_weighted, iw_bound
from vae_lightning.rebuild import load_model
from vae_lightning.train import build_run

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def _build(cfg_or_overrides, tmp_path=None):
    cfg = cfg_or_overrides if not isinstance(cfg_or_overrides, list) else compose_train(
        cfg_or_overrides, tmp_path)
    run = build_run(cfg)
    return run.datamodule, run.model


@pytest.fixture(scope="module")
def trained():
    """A VAE with a 2-d latent space trained for an epoch on Frey Face, and 20 validation faces."""
    torch.manual_seed(0)
    datamodule, model = _build(["data=frey", "model.latent=2"], Path(tempfile.mkdtemp()))
    datamodule.setup("fit")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for batch in datamodule.train_dataloader():
        x, _ = datamodule.to_inputs(batch)
        loss = -model.bound(x).elbo.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, _ = datamodule.to_inputs(next(iter(datamodule.val_dataloader())))
    return model.eval(), x[:20]


def _estimate(model, x, k, chunk, seed=0):
    torch.manual_seed(seed)
    return importance_weighted(model, x, k, chunk)


def test_k1_is_the_elbo_of_estimator_a(trained):
    model, x = trained
    elbo, iw = _estimate(model, x, k=1, chunk=1)
    torch.manual_seed(0)
    with torch.no_grad():
        samples = draw(model, x, model.encoder(x), model.prior.distribution(), 1)
    torch.testing.assert_close(iw, samples.bound().elbo)
    torch.testing.assert_close(iw, iw_bound(samples.log_w))
    torch.testing.assert_close(elbo, iw)


def test_the_model_s_log_likelihood_is_the_iw_estimate(trained):
    model, x = trained
    torch.manual_seed(4)
    ours = model.log_likelihood(x, k=30, chunk=7)
    torch.testing.assert_close(ours, _estimate(model, x, k=30, chunk=30, seed=4)[1],
                               rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("chunk", [1, 7, 32])
def test_chunking_over_k_gives_the_one_pass_estimate(trained, chunk):
    model, x = trained
    one_pass = _estimate(model, x, k=64, chunk=64)
    chunked = _estimate(model, x, k=64, chunk=chunk)
    for a, b in zip(one_pass, chunked):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-3)


def test_the_automatic_chunk_fills_its_budget_and_changes_nothing(trained, monkeypatch):
    model, x = trained
    per_sample = x.numel()  # values of one sample for the whole batch
    budget = base.CPU_CHUNK_VALUES
    chunk = auto_chunk(x, 10**9)
    assert chunk * per_sample <= budget < (chunk + 1) * per_sample
    assert auto_chunk(x, 3) == 3  # never more than k
    assert auto_chunk(torch.zeros(budget + 1), 10) == 1  # never less than 1
    on_gpu = torch.zeros(100, 1, 28, 28, device="meta")  # any device but the CPU
    assert auto_chunk(on_gpu, 10**9) == base.ACCELERATOR_CHUNK_VALUES // on_gpu.numel()
    monkeypatch.setattr(base, "CPU_CHUNK_VALUES", 5 * per_sample)  # five samples per pass
    assert auto_chunk(x, 64) == 5
    for a, b in zip(_estimate(model, x, k=64, chunk=None), _estimate(model, x, k=64, chunk=64)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-3)


def test_iw_estimate_is_above_the_elbo_and_rises_with_k(trained):
    model, x = trained
    means = []
    for k in (1, 10, 100):
        elbo, iw = _estimate(model, x, k=k, chunk=25)
        assert (iw >= elbo - 1e-3).all()  # Jensen, on the same samples
        means.append(iw.mean().item())
    assert means[0] < means[1] < means[2], means
    assert means[2] - means[0] > 1.0, means  # nats per data point


def test_estimate_reports_nats_bits_per_dim_and_standard_error():
    values = torch.tensor([1.0, 2.0, 3.0, 6.0])
    est = Estimate.of(values, dims=10)
    assert est.nats == pytest.approx(3.0)
    assert est.nats_se == pytest.approx(values.std().item() / 2)
    assert est.bits_per_dim == pytest.approx(-3.0 / (10 * math.log(2)))
    assert est.bits_per_dim_se == pytest.approx(est.nats_se / (10 * math.log(2)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real Lightning checkpoint of a Frey Face VAE trained for a few steps."""
    run = tmp_path_factory.mktemp("run")
    return train_briefly(["data=frey", "model.latent=2"], run, 5)[0]


def test_eval_writes_eval_json_from_a_checkpoint(checkpoint):
    model, config, raw = load_model(checkpoint, VAE)
    assert config["model"]["latent"] == 2 and raw["samples_seen"] == 5 * 100
    assert model.latent == 2 and not model.training
    results = run_eval([f"ckpt_path={checkpoint}", "eval.k=50", "eval.chunk=16",
                        "eval.device=cpu"])
    saved = json.loads((rundir.of_checkpoint(checkpoint) / "eval.json").read_text())
    assert rundir.of_checkpoint(checkpoint) == checkpoint.parent.parent
    assert saved["k"] == 50 and saved["split"] == "test" and saved["n"] == 200
    assert saved["checkpoint"] == str(checkpoint.resolve())
    for name in ("elbo", "iw"):
        assert math.isfinite(saved[name]["nats"]) and math.isfinite(saved[name]["nats_se"])
        # Frey Face is continuous: a log density, no code length, so no bits/dim.
        assert saved[name]["bits_per_dim"] is None and saved[name]["bits_per_dim_se"] is None
    assert "log densities" in saved["units"] and saved["data_matches_checkpoint"] is True
    assert saved["iw"]["nats"] >= saved["elbo"]["nats"] - 1e-3
    assert results["iw"] == saved["iw"]
    assert saved["proposal"] == "q(z|x): elbo is q's ELBO"


def test_bad_checkpoints_raise_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.ckpt", VAE)
    (tmp_path / "bad.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or truncated") as err:
        load_model(tmp_path / "bad.ckpt", VAE)
    assert "weights_only=False" not in str(err.value)  # never advise running the file's code
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="no vae-lightning run configuration"):
        load_model(tmp_path / "foreign.ckpt", VAE)
    old = {"model": {"_target_": "vae_lightning.wake_sleep.WakeSleep", "latent": 3,
                     "encoder_hidden": [500]}, "prior": {"_target_": "vae_lightning.priors.X"}}
    torch.save({"state_dict": {}, "hyper_parameters": {"latent": 3, "config": old}},
               tmp_path / "before-the-composer.ckpt")
    with pytest.raises(CheckpointError, match="an early vae-lightning") as err:
        load_model(tmp_path / "before-the-composer.ckpt", VAE)
    assert "the version of vae-lightning that wrote it" in str(err.value)  # where to turn
    torch.save({"state_dict": {}, CONFIG_KEY: {"model": {"latent": 2}}}, tmp_path / "odd.ckpt")
    with pytest.raises(CheckpointError, match="model without a _target_"):
        load_model(tmp_path / "odd.ckpt", VAE)


def test_eval_cli_reports_a_corrupt_checkpoint_without_traceback(tmp_path, monkeypatch, capsys):
    """vae-eval (= python eval.py) in this process."""
    (tmp_path / "bad.ckpt").write_bytes(b"\x00" * 100)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the command sets it: restored after the test
    proc = run(cli.evaluate, [f"ckpt_path={tmp_path / 'bad.ckpt'}",
                              f"hydra.run.dir={tmp_path / 'eval'}"], monkeypatch, capsys, tmp_path)
    assert proc.code == 2
    assert "corrupt" in proc.err, proc.err
    no_traceback(proc)


def test_the_eval_command_warns_about_threads_on_busy_cores(checkpoint, tmp_path, monkeypatch,
                                                             capsys):
    """vae-eval, like vae-train, says in one line before it starts that torch's threads will
    spin on busy cores (run_checks.warn_about_busy_cores), and evaluates as usual."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (6.0, 6.0, 6.0))
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    proc = run(cli.evaluate, [f"ckpt_path={checkpoint}", "eval.k=2", "eval.limit=20",
                              "eval.device=cpu", f"output_dir={tmp_path}",
                              f"hydra.run.dir={tmp_path / 'log'}"], monkeypatch, capsys, tmp_path)
    assert proc.code == 0, proc.err[-2000:]
    shown = proc.out + proc.err
    assert shown.count("The cores are busy (load average 6.0") == 1
    assert "OMP_WAIT_POLICY=PASSIVE" in shown and "test   iw:" in shown


def test_active_units_count_the_latent_dimensions_whose_posterior_mean_varies(trained):
    from vae_lightning.log_likelihood import evaluate

    model, x = trained
    torch.manual_seed(0)
    results = evaluate(model, [x], k=2, chunk=2)
    with torch.no_grad():
        activity = model.encoder(x).mean.double().var(0)
    assert results["latent"] == 2
    assert results["active_units"] == int((activity > 1e-2).sum())
    model = copy.deepcopy(model)
    with torch.no_grad():  # an encoder whose means do not depend on x: no unit is active
        model.encoder.net[-1].weight[:2].zero_()
    assert evaluate(model, [x], k=2, chunk=2)["active_units"] == 0


def test_one_point_leaves_the_active_units_undefined_not_zero(trained):
    """A unit's variance over one point is not defined: eval.json's active_units is null (it
    was 0, every unit read as collapsed, from a NaN variance), and vae-eval prints so; the
    latent size is still given. Two points count them."""
    import warnings

    from vae_lightning.log_likelihood import active_units, evaluate

    model, x = trained
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "degrees of freedom <= 0" of var() was one
        one = evaluate(model, [x[:1]], k=2, chunk=2)
    assert one["active_units"] is None and one["latent"] == 2 and one["n"] == 1
    assert evaluate(model, [x[:2]], k=2, chunk=2)["active_units"] in (0, 1, 2)
    assert active_units(torch.zeros(1, 3)) is None  # vae-encode units=active refuses it
    assert cli._active(None, 2) == "? (one point: undefined) of 2"  # what vae-eval prints
    assert cli._active(0, 2) == "0 of 2"


def test_eval_limit_scores_the_first_points_of_the_split(checkpoint, tmp_path):
    """eval.limit=n estimates on the split's first n points; 30 is not a multiple of the batch
    size (16), so the last batch is cut. A limit above the split's size scores all of it; the
    same limit and seed give the same numbers; 0 is refused naming the key."""
    base = [f"ckpt_path={checkpoint}", "eval.k=20", "eval.chunk=8", "eval.device=cpu",
            "eval.batch_size=16"]
    part = run_eval([*base, "eval.limit=30", f"output_dir={tmp_path / 'part'}"])
    assert part["n"] == 30
    again = run_eval([*base, "eval.limit=30", f"output_dir={tmp_path / 'again'}"])
    assert again["iw"] == part["iw"] and again["elbo"] == part["elbo"]
    full = run_eval([*base, "eval.limit=1000", f"output_dir={tmp_path / 'all'}"])
    assert full["n"] == 200 and full["iw"] != part["iw"]
    with pytest.raises(Exception, match="eval.limit"):
        run_eval([*base, "eval.limit=0"])


def test_eval_json_is_strict_json_with_null_for_the_standard_error_of_one_point(checkpoint,
                                                                               tmp_path):
    """One point has no standard error: eval.json says null, not NaN, which JSON does not
    have (jq and JavaScript refuse the file)."""
    out = tmp_path / "one"
    run_eval([f"ckpt_path={checkpoint}", "eval.k=2", "eval.device=cpu",
              "eval.limit=1", f"output_dir={out}"])

    def refuse(constant):
        raise AssertionError(f"{constant} in eval.json")

    written = json.loads((out / "eval.json").read_text(), parse_constant=refuse)
    assert written["n"] == 1 and written["iw"]["nats_se"] is None
    assert written["active_units"] is None and written["latent"] == 2  # not 0: undefined
    assert math.isfinite(written["iw"]["nats"])


def test_an_evaluation_of_another_split_or_k_is_kept_beside_the_new_one(checkpoint, tmp_path,
                                                                         caplog):
    """eval.json is the newest evaluation; one of another split, k or size it replaces is kept
    as eval-<split>-k<k>-n<n>.json (a quick check cost a k = 5000 estimate before), and said;
    an earlier file whose values are not vae-eval's names nothing: eval-earlier.json."""
    out = tmp_path / "both"
    base = [f"ckpt_path={checkpoint}", "eval.k=2", "eval.device=cpu", f"output_dir={out}"]
    run_eval([*base, "eval.limit=10"])
    first = (out / "eval.json").read_text()
    with caplog.at_level("WARNING"):
        run_eval([*base, "eval.limit=10"])  # the same again: replaced, nothing kept
        assert "kept as" not in caplog.text and sorted(os.listdir(out)) == ["eval.json"]
        run_eval([*base, "eval.limit=10", "eval.split=val"])
    assert ("split=test, k=2 (10 points): kept as eval-test-k2-n10.json; eval.json now holds "
            "this one (split=val") in caplog.text
    assert json.loads((out / "eval.json").read_text())["split"] == "val"
    assert json.loads((out / "eval-test-k2-n10.json").read_text())["split"] == "test"
    kept = json.loads((out / "eval-test-k2-n10.json").read_text())
    assert kept["iw"] == json.loads(first)["iw"]  # kept as it was (the same seed's estimate)
    (out / "eval.json").write_text(json.dumps({"split": "../../escape", "k": 2, "n": 10}))
    run_eval([*base, "eval.limit=10"])
    assert json.loads((out / "eval-earlier.json").read_text())["split"] == "../../escape"
    assert sorted(os.listdir(out)) == ["eval-earlier.json", "eval-test-k2-n10.json", "eval.json"]


def test_an_evaluation_of_another_checkpoint_is_kept_and_no_kept_file_is_replaced(
        checkpoint, tmp_path, caplog):
    """vae-eval of best-epochN.ckpt replaced eval.json of last.ckpt (the same run directory,
    split, k and points): an hours-long k = 5000 estimate lost. Now another checkpoint's
    evaluation is kept, and a kept file of another evaluation is never replaced (a number is
    added); one of the same evaluation is."""
    import shutil

    other = tmp_path / "other.ckpt"
    shutil.copyfile(checkpoint, other)
    out = tmp_path / "two"
    base = ["eval.k=2", "eval.device=cpu", "eval.limit=10", f"output_dir={out}"]
    with caplog.at_level("WARNING"):
        for ckpt in (checkpoint, other, checkpoint, other):
            run_eval([f"ckpt_path={ckpt}", *base])
    assert f"held the evaluation of {other}, split=test, k=2 (10 points): kept as " \
           "eval-test-k2-n10-2.json" in caplog.text
    held = {name: json.loads((out / name).read_text())["checkpoint"]
            for name in os.listdir(out)}
    assert held == {"eval.json": str(other), "eval-test-k2-n10.json": str(checkpoint),
                    "eval-test-k2-n10-2.json": str(other)}


def test_eval_out_of_memory_names_the_chunk_and_writes_nothing(checkpoint, tmp_path, monkeypatch):
    """An evaluation that runs out of memory (on a GPU, a chunk too large for the decoder) ends
    with one error naming the chunk it used and what to lower, and writes no eval.json."""
    from vae_lightning import log_likelihood

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(log_likelihood, "importance_weighted", out_of_memory)
    out = tmp_path / "oom"
    cfg = eval_config([f"ckpt_path={checkpoint}", "eval.device=cpu", "eval.batch_size=50",
                       f"output_dir={out}"])
    with pytest.raises(ConfigError) as err:
        run_eval(cfg)
    message = str(err.value)
    chunk = base.CPU_CHUNK_VALUES // (50 * 28 * 20)  # the automatic chunk for 50 Frey faces
    assert f"eval.chunk={chunk} " in message and "eval.batch_size=50" in message
    assert "smaller eval.chunk" in message
    assert not (out / "eval.json").exists()


def test_the_mutual_information_of_a_linear_gaussian_encoder_is_its_closed_form():
    """q(z|x) = N(W x, s^2 I) over x ~ N(0, I_D): the aggregate posterior is N(0, W W^T + s^2 I),
    so I(x; z) = 1/2 log det(W W^T + s^2 I) - d log s; the estimate over N points is within
    its Monte-Carlo error (and the O(1/N) bias of the aggregate's own-point term)."""
    from vae_lightning.log_likelihood import mutual_information
    from vae_lightning.posteriors import Gaussian

    g = torch.Generator().manual_seed(0)
    n, s = 4000, 0.5
    w = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]])
    x = torch.randn(n, 3, generator=g)
    params = torch.cat([x @ w.T, torch.full((n, 2), 2 * math.log(s))], 1)
    closed = 0.5 * torch.logdet(w @ w.T + s**2 * torch.eye(2)).item() - 2 * math.log(s)
    torch.manual_seed(1)
    assert mutual_information(Gaussian(), params) == pytest.approx(closed, abs=0.05)
    # Its terms, one a point: their mean is the estimate (the same draws), their spread its
    # standard error (eval.json's mi_se), within which the closed form lies.
    from vae_lightning.log_likelihood import mutual_information_terms

    torch.manual_seed(1)
    terms = mutual_information_terms(Gaussian(), params)
    assert terms.shape == (n,) and terms.dtype == torch.float64
    torch.manual_seed(1)
    assert terms.mean().item() == mutual_information(Gaussian(), params)
    se = (terms.std() / math.sqrt(n)).item()
    assert 0 < se < 0.05 and abs(terms.mean().item() - closed) < 4 * se + 0.01
    # A posterior that does not depend on x (posterior collapse): no information, exactly.
    same = torch.cat([torch.zeros(n, 2), torch.zeros(n, 2)], 1)
    assert mutual_information(Gaussian(), same) == pytest.approx(0.0, abs=1e-6)


def test_the_pairwise_density_of_gaussian_posteriors_is_the_broadcast_one_in_closed_form():
    """mutual_information_terms scores every draw under every point's q(z|x): for diagonal
    Gaussians by three matrix products in float64 (a 10,000-point evaluation spent minutes
    broadcasting [500, 500, d] blocks), equal to the float64 broadcast log_prob to 1e-8 nats
    over scales from 1e-3 to 20; other families keep their own log_prob, as before. The
    estimate from the closed form equals the broadcast one's to float32 rounding."""
    from torch.distributions import Independent, Laplace, Normal

    from vae_lightning.log_likelihood import mutual_information_terms, pairwise_log_prob
    from vae_lightning.posteriors import Gaussian

    g = torch.Generator().manual_seed(0)
    loc = 3 * torch.randn(300, 7, generator=g)
    scale = torch.exp(torch.empty(300, 7).uniform_(math.log(1e-3), math.log(20), generator=g))
    z = 3 * torch.randn(50, 7, generator=g)
    fast = pairwise_log_prob(Independent(Normal(loc, scale), 1), z)
    exact = Independent(Normal(loc.double(), scale.double()), 1).log_prob(z.double()[:, None])
    assert fast.shape == (50, 300) and fast.dtype == torch.float64
    assert (fast - exact).abs().max().item() < 1e-8 * max(1.0, exact.abs().max().item())
    laplace = Independent(Laplace(loc, scale), 1)
    assert torch.equal(pairwise_log_prob(laplace, z), laplace.log_prob(z[:, None]))
    params = torch.cat([loc, 2 * scale.clamp(min=0.05).log()], 1)
    torch.manual_seed(3)
    terms = mutual_information_terms(Gaussian(), params, batch=128)
    torch.manual_seed(3)  # the same draws, scored by broadcasting
    family, n = Gaussian(), len(params)
    reference = []
    for start in range(0, n, 128):
        own = family(params[start:start + 128])
        draws = own.rsample()
        log_q = family(params).log_prob(draws[:, None, :]).double()
        reference.append(own.log_prob(draws).double()
                         - (torch.logsumexp(log_q, 1) - math.log(n)))
    assert torch.allclose(terms, torch.cat(reference), atol=1e-4)


@pytest.mark.parametrize("prior", ["normal", "mog"])
def test_the_kl_and_mi_diagnostics_leave_the_estimates_as_they_were(prior, tmp_path):
    """evaluate() reports E_x KL(q(z|x) || p(z)) (analytic for N(0, I), Monte Carlo for the
    mixture, in a forked random stream) and I(x; z) <= that KL and <= log N, while its ELBO and
    IW estimates are the draws of importance_weighted alone, from the same seed."""
    from vae_lightning.log_likelihood import evaluate

    datamodule, model = _build(["data=frey", "model.latent=2", f"model/prior={prior}"],
                               tmp_path)
    datamodule.setup("fit")
    x, _ = datamodule.to_inputs(next(iter(datamodule.val_dataloader())))
    model.eval()
    batches = [x[:30], x[30:60]]
    torch.manual_seed(0)
    results = evaluate(model, batches, k=4, chunk=4)
    torch.manual_seed(0)
    alone = [importance_weighted(model, b, 4, 4)[1] for b in batches]
    assert results["iw"].nats == pytest.approx(torch.cat(alone).double().mean().item(), rel=1e-12)
    assert -0.05 < results["mi"] <= results["kl"] + 0.05 and results["mi"] <= math.log(60)
    assert 0 < results["mi_se"] < 1  # its standard error over the 60 points
    if prior == "normal":
        with torch.no_grad():
            kl = torch.distributions.kl_divergence(model.encoder(x[:60]),
                                                   model.prior.distribution())
        assert results["kl"] == pytest.approx(kl.double().mean().item(), rel=1e-6)


def test_the_mutual_information_covers_every_posterior_with_a_pointwise_density():
    """vMF posteriors (and any family whose density is closed form per point) get I(x; z):
    0 for a collapsed posterior, log N for N concentrated posteriors at distinct directions
    (each draw names its point); flows and chains of layers, whose density at another point's
    draw costs an inverse pass per pair, do not."""
    from vae_lightning.log_likelihood import mutual_information, pairwise_density
    from vae_lightning.nets import MLP
    from vae_lightning.posteriors import Gaussian
    from vae_lightning.posteriors.hierarchy import BottomUp
    from vae_lightning.posteriors.planar import Planar
    from vae_lightning.posteriors.von_mises_fisher import VonMisesFisher

    family, n = VonMisesFisher(), 40
    g = torch.Generator().manual_seed(0)
    directions = torch.randn(n, 3, generator=g)
    sharp = torch.cat([directions, torch.full((n, 1), 2000.0)], 1)  # kappa ~ 2000
    collapsed = torch.cat([directions[:1].expand(n, 3), torch.zeros(n, 1)], 1)
    assert pairwise_density(family, sharp)
    torch.manual_seed(0)
    assert mutual_information(family, sharp) == pytest.approx(math.log(n), abs=0.02)
    assert mutual_information(family, collapsed) == pytest.approx(0.0, abs=1e-5)
    assert pairwise_density(Gaussian(), torch.zeros(2, 4))
    planar = Planar(length=2)
    assert not pairwise_density(planar, torch.zeros(2, planar.n_params(2)))
    chain = BottomUp(layers=[2, 2], net=partial(MLP, hidden=[4]))
    assert not pairwise_density(chain, torch.zeros(2, chain.n_params(4)))
    assert chain.informative() is chain.family and planar.informative() is planar


def test_a_bottom_up_chain_s_information_is_its_first_layer_s():
    """q(z|x) = q(z_1|x) q(z_2|z_1): given z_1, z_2 does not depend on x, so I(x; z) =
    I(x; z_1). Scored with the whole chain's density at every point's draw of z = [z_1, z_2],
    the estimator's terms log q(z_2|z_1) cancel between a point's own density and the
    aggregate's, leaving the first layer's estimate from the same z_1 draws."""
    from vae_lightning.log_likelihood import mutual_information
    from vae_lightning.nets import MLP
    from vae_lightning.posteriors.hierarchy import BottomUp

    torch.manual_seed(0)
    chain, n = BottomUp(layers=[2, 3], net=partial(MLP, hidden=[8])), 60
    params = torch.randn(n, chain.n_params(5)) * 1.5
    q = chain(params)
    z = q.sample()  # one draw of [z_1, z_2] per point
    log_q = chain(params[None].expand(n, n, -1).reshape(n * n, -1)).log_prob(
        z.repeat_interleave(n, 0)).reshape(n, n)  # [i, m]: log q(z_i | x_m), whole chain
    whole = (log_q.diagonal() - (torch.logsumexp(log_q, 1) - math.log(n))).double().mean()
    first = chain.informative()
    torch.manual_seed(1)
    with torch.no_grad():
        own = first(params)
    log_q1 = own.log_prob(z[:, None, :2].expand(n, n, 2))  # z_1 under every point's q(z_1|x)
    layer = (log_q1.diagonal() - (torch.logsumexp(log_q1, 1) - math.log(n))).double().mean()
    assert whole.item() == pytest.approx(layer.item(), abs=1e-4)
    assert 0.5 < layer.item() <= math.log(n)  # informative, below the estimator's ceiling
    # And the estimator vae-eval runs on the first layer draws its own z_1 the same way.
    torch.manual_seed(2)
    estimate = mutual_information(first, params)
    assert abs(estimate - layer.item()) < 1.0  # another draw of z_1: the same quantity


class _Killed(BaseException):
    """Stands for the process being killed (not an error the evaluation could catch)."""


def _killed_after(monkeypatch, batches):
    """Make the evaluation stop, as a killed process would, once ``batches`` are saved."""
    from vae_lightning import log_likelihood

    save = log_likelihood.Progress.save

    def save_then_stop(self, done, parts, device, seconds=0.0):
        save(self, done, parts, device, seconds)
        if done == batches:
            raise _Killed

    monkeypatch.setattr(log_likelihood.Progress, "save", save_then_stop)


def _same_estimates(a, b):
    keys = ("elbo", "iw", "n", "active_units", "kl", "mi")
    assert {key: a[key] for key in keys} == {key: b[key] for key in keys}


def test_a_stopped_evaluation_goes_on_where_it_stopped_to_the_same_numbers(
        checkpoint, tmp_path, monkeypatch, caplog):
    """Killed after 2 of its 4 batches, vae-eval run again with the same checkpoint and
    settings scores only the last 2 (the random state after batch 2 restored) and gives the
    numbers of an uninterrupted run; the progress file is gone once eval.json is written."""
    base = [f"ckpt_path={checkpoint}", "eval.k=20", "eval.chunk=8", "eval.device=cpu",
            "eval.batch_size=50"]
    whole = run_eval([*base, f"output_dir={tmp_path / 'whole'}"])
    out = tmp_path / "stopped"
    with monkeypatch.context() as patched:
        _killed_after(patched, 2)
        with pytest.raises(_Killed):
            run_eval([*base, f"output_dir={out}"])
    assert (out / "eval.progress.pt").is_file() and not (out / "eval.json").exists()
    saved = torch.load(out / "eval.progress.pt", weights_only=True)["seconds"]
    assert saved > 0
    with caplog.at_level("INFO"):
        resumed = run_eval([*base, f"output_dir={out}"])
    assert "after its first 2 batches" in caplog.text
    _same_estimates(resumed, whole)
    assert not (out / "eval.progress.pt").exists() and (out / "eval.json").is_file()
    # The time is reported whole: the stopped run's seconds and this run's.
    assert whole["seconds_of_earlier_runs"] == 0 and whole["seconds"] > 0
    assert resumed["seconds_of_earlier_runs"] == round(saved, 1)
    assert resumed["seconds"] >= resumed["seconds_of_earlier_runs"]


def test_the_time_check_of_a_stopped_evaluation_counts_only_what_is_left(
        checkpoint, tmp_path, monkeypatch):
    """eval.max_hours is checked against the points still to score: a stopped evaluation whose
    batches were all saved goes on under any limit (nothing is left to time), one with half of
    them saved is refused naming the half that is left (it counted every point)."""
    base = [f"ckpt_path={checkpoint}", "eval.k=20", "eval.chunk=8", "eval.device=cpu",
            "eval.batch_size=50"]
    whole = run_eval([*base, f"output_dir={tmp_path / 'whole'}"])
    for done in (4, 2):
        out = tmp_path / f"stopped{done}"
        with monkeypatch.context() as patched:
            _killed_after(patched, done)
            with pytest.raises(_Killed):
                run_eval([*base, f"output_dir={out}"])
        again = [*base, f"output_dir={out}", "eval.max_hours=1e-12"]
        if done == 4:
            _same_estimates(run_eval(again), whole)
        else:
            with pytest.raises(ConfigError, match=r"eval.k=20 on 100 points \(the other 100 "
                               r"scored by a stopped run\) would take about"):
                run_eval(again)


def test_a_quick_evaluation_between_two_runs_of_a_stopped_one_keeps_its_progress(
        checkpoint, tmp_path, monkeypatch, caplog):
    """A k = 20 evaluation killed after 2 of its 4 batches, then a quick k = 10 check into the
    same output directory (the run's, by default): the check's first batch replaced the k = 20
    progress file ("starting over, and replacing it"), and the k = 20 evaluation run again
    started over: hours of a k = 5000 estimate lost to a quick look. The file is now kept
    aside (eval.progress-2.pt), the check completes, and the k = 20 run goes on from the kept
    batches to the numbers of an uninterrupted run."""
    base = [f"ckpt_path={checkpoint}", "eval.chunk=8", "eval.device=cpu", "eval.batch_size=50"]
    whole = run_eval([*base, "eval.k=20", f"output_dir={tmp_path / 'whole'}"])
    out = tmp_path / "out"
    with monkeypatch.context() as patched:
        _killed_after(patched, 2)
        with pytest.raises(_Killed):
            run_eval([*base, "eval.k=20", f"output_dir={out}"])
    stopped = (out / "eval.progress.pt").read_bytes()
    with caplog.at_level("INFO"):
        run_eval([*base, "eval.k=10", "eval.limit=50", f"output_dir={out}"])
    assert "kept as eval.progress-2.pt" in caplog.text
    assert (out / "eval.progress-2.pt").read_bytes() == stopped
    assert not (out / "eval.progress.pt").exists()  # the check's own, removed at its end
    caplog.clear()
    with caplog.at_level("INFO"):
        resumed = run_eval([*base, "eval.k=20", f"output_dir={out}"])
    assert "set aside in" in caplog.text and "after its first 2 batches" in caplog.text
    _same_estimates(resumed, whole)
    assert sorted(p.name for p in out.glob("eval*")) == ["eval-test-k10-n50.json", "eval.json"]


def _sigterm_after_first_batch(monkeypatch, progress):
    """SIGTERM to this process once ``progress`` (a ``Progress`` class) has saved a batch."""
    import signal

    save = progress.save

    def save_then_signal(self, done, *args, **kwargs):
        save(self, done, *args, **kwargs)
        if done == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(progress, "save", save_then_signal)


@pytest.mark.parametrize("during", ["iw", "ais"])
def test_a_signal_during_vae_eval_says_its_progress_is_kept_and_running_again_goes_on(
        during, checkpoint, tmp_path, monkeypatch, capsys):
    """SIGTERM after the first batch of the IW estimate, or of AIS: one line naming the progress
    file (before: "nothing more was written", though the batches done were kept), and AIS's
    beside it, exit code 143; the same command then goes on from them and writes eval.json."""
    from vae_lightning import ais as ais_module

    out = tmp_path / "out"
    command = [f"ckpt_path={checkpoint}", "eval.device=cpu", f"output_dir={out}",
               f"hydra.run.dir={tmp_path / 'log'}",
               *(["eval.k=20", "eval.batch_size=50"] if during == "iw" else
                 ["eval.k=5", "eval.batch_size=6", "eval.limit=12", "eval.ais_steps=3",
                  "eval.ais_chains=2", "eval.ais_leapfrog=1"])]
    with monkeypatch.context() as patched:
        _sigterm_after_first_batch(patched, {"iw": log_likelihood.Progress,
                                             "ais": ais_module.Progress}[during])
        stopped = run(cli.evaluate, command, monkeypatch, capsys, tmp_path)
    assert stopped.code == 143, stopped
    no_traceback(stopped)
    progress, annealed = out / "eval.progress.pt", out / "eval.ais-progress.pt"
    assert progress.is_file() and not (out / "eval.json").exists()
    also = f" (and AIS's in {annealed})" if during == "ais" else ""
    assert (f"error: Stopped by SIGTERM; the batches evaluated so far are kept in {progress}"
            f"{also}: the same command goes on from them.") in stopped.err
    again = run(cli.evaluate, command, monkeypatch, capsys, tmp_path)
    assert again.code == 0, again.err[-3000:]
    assert (out / "eval.json").is_file() and not progress.exists() and not annealed.exists()


def test_a_progress_file_without_seconds_is_still_taken_up(checkpoint, tmp_path, monkeypatch):
    """A progress file written before the seconds were kept goes on as well, counting its
    batches' time as 0."""
    base = [f"ckpt_path={checkpoint}", "eval.k=20", "eval.chunk=8", "eval.device=cpu",
            "eval.batch_size=50", f"output_dir={tmp_path}"]
    with monkeypatch.context() as patched:
        _killed_after(patched, 2)
        with pytest.raises(_Killed):
            run_eval(base)
    path = tmp_path / "eval.progress.pt"
    state = torch.load(path, weights_only=True)
    del state["seconds"]
    torch.save(state, path)
    resumed = run_eval(base)
    assert resumed["seconds_of_earlier_runs"] == 0 and resumed["n"] == 200


@pytest.mark.parametrize("other", ["k", "garbage"])
def test_progress_of_another_evaluation_is_set_aside(checkpoint, tmp_path, monkeypatch, caplog,
                                                     other):
    """A progress file from other settings (here k), or one that does not parse, is not
    continued: a warning says so and the evaluation starts over, to a fresh run's numbers."""
    base = [f"ckpt_path={checkpoint}", "eval.chunk=8", "eval.device=cpu", "eval.batch_size=50"]
    out = tmp_path / "out"
    if other == "k":
        with monkeypatch.context() as patched:
            _killed_after(patched, 2)
            with pytest.raises(_Killed):
                run_eval([*base, "eval.k=10", f"output_dir={out}"])
    else:
        out.mkdir()
        (out / "eval.progress.pt").write_bytes(b"not a torch file")
    with caplog.at_level("INFO"):
        got = run_eval([*base, "eval.k=20", f"output_dir={out}"])
    assert "holds no part of this evaluation" in caplog.text
    assert "Going on with" not in caplog.text
    _same_estimates(got, run_eval([*base, "eval.k=20",
                                   f"output_dir={tmp_path / 'fresh'}"]))


@pytest.mark.parametrize("data, bits", [(["data=frey"], False),
                                        (["data=mnist", "data.val_size=50"], True)])
def test_training_logs_bits_per_dim_only_where_they_are_a_code_length(data, bits, tmp_path):
    """A Bernoulli likelihood on Frey Face's grey levels (not binarized) bounds no probability:
    its run logged bits/dim all the same, which vae-eval on the same checkpoint leaves out
    (likelihoods.code_length, one rule for both); on binarized MNIST they are logged."""
    from compose import mnist_like

    from vae_lightning.train import train

    root = mnist_like(tmp_path / "data")
    results = train(compose_train([*data, f"data.root={root}", "model/likelihood=bernoulli",
                                   "model.latent=2", "trainer.max_steps=2", *QUIET],
                                  tmp_path / "run"))
    assert ("test/bits_per_dim" in results) == bits and "test/elbo" in results


def test_a_failing_job_of_a_vae_eval_sweep_does_not_end_it(checkpoint, tmp_path, monkeypatch,
                                                           capsys):
    """`vae-eval -m eval.k=2,3 ckpt_path=<it>,<a missing file>`: the job whose checkpoint is
    missing is refused (an error only the job finds: a value its config checks refuse stops
    the sweep before any job, test_sweeps), and the sweep went no further (exit code 2, k = 3
    never evaluated, no count), where a sweep of vae-train goes on. Now the sweep goes on, its
    last line counts the jobs by status, and it exits with code 5."""
    sweep = tmp_path / "sweep"
    out = tmp_path / "out"
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    proc = run(cli.evaluate, ["-m", "eval.k=2,3", f"ckpt_path={checkpoint},{tmp_path / 'no.ckpt'}",
                              "eval.limit=10", "eval.device=cpu", f"output_dir={out}",
                              f"hydra.sweep.dir={sweep}"], monkeypatch, capsys, tmp_path)
    assert proc.code == 5, proc.err[-2000:]
    assert f"{tmp_path / 'no.ckpt'} does not exist" in proc.err, proc.err[-2000:]
    no_traceback(proc)
    assert json.loads((out / "eval.json").read_text())["k"] == 3  # the job after the bad one ran
    assert json.loads((out / "eval-test-k2-n10.json").read_text())["k"] == 2
    assert proc.out.strip().splitlines()[-1] == (
        f"sweep {sweep}: 4 jobs: 2 completed, 2 error; failed: job 1 (error), job 3 (error)")
    assert not (sweep / ".job-status").exists()  # the sweep's notes of its jobs are gone
    # Each job's directory lock (Hydra's record claims it) ends with the job, as vae-train's:
    # a sweep of a thousand evaluations does not hold a thousand descriptors.
    assert not [fd for fd in open_paths() if fd.startswith(str(sweep))]
    again = run(cli.evaluate, ["-m", f"ckpt_path={checkpoint}", "eval.k=2", "eval.limit=10",
                               "eval.device=cpu", f"output_dir={out}",
                               f"hydra.sweep.dir={tmp_path / 'sweep2'}"], monkeypatch, capsys,
                tmp_path)
    assert again.code == 0 and again.out.strip().splitlines()[-1] == (
        f"sweep {tmp_path / 'sweep2'}: 1 jobs: 1 completed")


@pytest.mark.parametrize("content", [b'{"split": "test", "k": 5000, "iw": {"nats": -8',
                                     b"[1, 2]", b"\xff\xfe not text"])
def test_an_eval_json_that_does_not_parse_is_kept_not_replaced(content, checkpoint, tmp_path,
                                                               caplog):
    """An eval.json that is not a JSON object (cut short by a full disk, edited by hand) was
    replaced by the next evaluation without a copy: the only record of its numbers lost. Now it
    is kept as eval-earlier.json (a number added where that name is taken, never replaced)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "eval.json").write_bytes(content)
    (out / "eval-earlier.json").write_bytes(b"an earlier kept file")
    base = [f"ckpt_path={checkpoint}", "eval.k=2", "eval.device=cpu", "eval.limit=10",
            f"output_dir={out}"]
    with caplog.at_level("WARNING"):
        run_eval(base)
    assert (out / "eval-earlier-2.json").read_bytes() == content
    assert (out / "eval-earlier.json").read_bytes() == b"an earlier kept file"
    assert json.loads((out / "eval.json").read_text())["k"] == 2
    assert "could not be read as an evaluation (it is not a JSON object): kept as " \
           "eval-earlier-2.json" in caplog.text


def test_vae_eval_adds_the_ais_estimate_on_the_same_points(checkpoint, tmp_path, monkeypatch,
                                                          caplog):
    """eval.ais_steps > 0: eval.json's ``ais`` (the estimate over the points, its standard error
    and its settings), the same for the same seed; off by default; an estimate over
    eval.max_hours is refused before anything runs; an evaluation without AIS does not replace
    one with it (the earlier is kept beside it)."""
    import logging

    from vae_lightning import ais as ais_module

    base = [f"ckpt_path={checkpoint}", "eval.k=20", "eval.device=cpu", "eval.limit=12",
            "eval.batch_size=6"]
    annealed = [*base, "eval.ais_steps=20", "eval.ais_chains=2", "eval.ais_leapfrog=3"]
    out = tmp_path / "a"
    first = run_eval([*annealed, f"output_dir={out}"])
    saved = json.loads((out / "eval.json").read_text())["ais"]
    assert saved == first["ais"]
    assert (saved["n"], saved["steps"], saved["chains"], saved["leapfrog"]) == (12, 20, 2, 3)
    assert saved["start"] == "posterior"  # auto: a Gaussian q has a density
    assert math.isfinite(saved["nats"]) and math.isfinite(saved["nats_se"])
    assert saved["bits_per_dim"] is None  # Frey Face: a density, no code length
    assert 1 <= saved["ess_min"] <= 2 and 0 < saved["acceptance"] <= 1
    # AIS minus IW point by point: its mean is the estimates' difference, its standard error
    # that of the differences (not the points' spread, the estimates' own).
    assert saved["minus_iw"]["nats"] == pytest.approx(saved["nats"] - first["iw"]["nats"],
                                                      abs=1e-6)
    assert 0 < saved["minus_iw"]["nats_se"]
    again = run_eval([*annealed, f"output_dir={tmp_path / 'b'}"])
    assert again["ais"]["nats"] == saved["nats"]
    with caplog.at_level(logging.WARNING, logger="vae_lightning.evaluate"):
        plain = run_eval([*base, f"output_dir={out}"])
    assert "ais" not in plain
    # The kept file's line says what each ran (they differ only in it).
    assert ("points, AIS 20 steps x 2 chains from the posterior): kept as" in caplog.text
            and "12 points, no AIS)." in caplog.text), caplog.text
    kept = [json.loads(p.read_text()) for p in out.glob("eval-*.json")]
    assert [k["ais"]["nats"] for k in kept] == [saved["nats"]]
    monkeypatch.setattr(ais_module, "hours", lambda *args, **kwargs: 100.0)
    with pytest.raises(ConfigError, match=r"eval.ais_steps=20 .* 100 hours"):
        run_eval([*annealed, f"output_dir={tmp_path / 'c'}"])
    assert not (tmp_path / "c" / "eval.json").exists()


def test_a_stopped_ais_goes_on_where_it_stopped_to_the_same_numbers(checkpoint, tmp_path,
                                                                   monkeypatch, caplog):
    """vae-eval with AIS killed after 1 of its 2 AIS batches (the IW estimate done): run again,
    it takes up the IW estimate's batches and AIS's first, runs AIS on the second only and gives
    the numbers of an uninterrupted run, its time whole; both progress files are gone once
    eval.json is written. A tampered AIS progress file is set aside and AIS starts over."""
    from vae_lightning import ais as ais_module

    base = [f"ckpt_path={checkpoint}", "eval.k=10", "eval.device=cpu", "eval.limit=12",
            "eval.batch_size=6", "eval.ais_steps=10", "eval.ais_chains=2",
            "eval.ais_leapfrog=2"]
    whole = run_eval([*base, f"output_dir={tmp_path / 'whole'}"])
    out = tmp_path / "stopped"
    save = ais_module.Progress.save

    def save_then_stop(self, done, parts, device, seconds=0.0):
        save(self, done, parts, device, seconds)
        raise _Killed

    with monkeypatch.context() as patched:
        patched.setattr(ais_module.Progress, "save", save_then_stop)
        with pytest.raises(_Killed):
            run_eval([*base, f"output_dir={out}"])
    progress = out / "eval.ais-progress.pt"
    assert progress.is_file() and (out / "eval.progress.pt").is_file()
    saved = torch.load(progress, weights_only=True)
    assert saved["done"] == 1 and saved["seconds"] > 0
    # The time check counts only what is left: AIS on the second batch (the IW estimate done).
    with pytest.raises(ConfigError, match=r"on 6 points \(the other 6 scored by a stopped run\)"
                       r" would take about [0-9.e-]+ hours on cpu, above"):
        run_eval([*base, f"output_dir={out}", "eval.max_hours=1e-12"])
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for name in ("eval.progress.pt", "eval.ais-progress.pt"):
        (tampered / name).write_bytes((out / name).read_bytes())
    calls, anneal = [], ais_module.ais
    with monkeypatch.context() as patched:
        patched.setattr(ais_module, "ais",  # the batches annealed (not the 3-step timing)
                        lambda *a, **k: calls.append(k["steps"]) or anneal(*a, **k))
        with caplog.at_level("INFO"):
            resumed = run_eval([*base, f"output_dir={out}"])
    assert calls.count(10) == 1 and "Going on with AIS after its first 1 batches" in caplog.text
    assert resumed["ais"]["nats"] == whole["ais"]["nats"]
    assert resumed["ais"]["minus_iw"] == whole["ais"]["minus_iw"]
    assert (resumed["ais"]["ess_min"], resumed["ais"]["acceptance"]) == (
        whole["ais"]["ess_min"], whole["ais"]["acceptance"])
    assert resumed["ais"]["seconds"] >= saved["seconds"]
    assert not progress.exists() and not (out / "eval.progress.pt").exists()
    # One whose acceptance rate is not a rate: kept aside, AIS from the start, the same numbers.
    saved["parts"]["acceptance"][0] = 2.0
    torch.save(saved, tampered / "eval.ais-progress.pt")
    caplog.clear()
    with caplog.at_level("WARNING"):
        again = run_eval([*base, f"output_dir={tampered}"])
    assert "acceptance rate" in caplog.text and (tampered / "eval.ais-progress-2.pt").is_file()
    assert again["ais"]["nats"] == whole["ais"]["nats"]


def test_the_ais_time_is_counted_with_the_iw_estimates_against_max_hours(checkpoint, tmp_path,
                                                                         monkeypatch):
    """eval.max_hours bounds the evaluation: an IW estimate of 15 hours and AIS of 15 hours
    are 30, refused under eval.max_hours=24 before anything runs, though each alone is under
    it; with eval.max_hours=40 both run."""
    from vae_lightning import ais as ais_module

    monkeypatch.setattr(log_likelihood, "refuse_unfinishable", lambda *args, **kwargs: 15.0)
    monkeypatch.setattr(ais_module, "hours", lambda *args, **kwargs: 15.0)
    args = [f"ckpt_path={checkpoint}", "eval.k=5", "eval.device=cpu", "eval.limit=4",
            "eval.ais_steps=2", "eval.ais_chains=1", "eval.ais_leapfrog=1"]
    with pytest.raises(ConfigError, match=r"eval.ais_steps=2 .* 15 hours on cpu \(with the "
                                          r"IW estimate's 15: 30\), above eval.max_hours=24"):
        run_eval([*args, "eval.max_hours=24", f"output_dir={tmp_path / 'a'}"])
    assert not (tmp_path / "a" / "eval.json").exists()
    done = run_eval([*args, "eval.max_hours=40", f"output_dir={tmp_path / 'b'}"])
    assert done["ais"]["n"] == 4


def test_ais_out_of_memory_is_one_error_naming_its_settings(checkpoint, tmp_path, monkeypatch):
    """AIS that runs out of memory (its chains x points at once, on a GPU): one ConfigError
    naming eval.ais_chains and eval.batch_size, not torch's traceback, nor the IW estimate's
    advice about eval.chunk; no eval.json."""
    from vae_lightning import ais as ais_module

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    args = [f"ckpt_path={checkpoint}", "eval.k=5", "eval.device=cpu", "eval.limit=4",
            "eval.ais_steps=2", "eval.ais_chains=3"]
    monkeypatch.setattr(ais_module, "over_batches", out_of_memory)
    with pytest.raises(ConfigError, match=r"AIS \(eval.ais_steps=2\) ran out of memory .* "
                                          r"eval.ais_chains=3 .* eval.batch_size"):
        run_eval([*args, f"output_dir={tmp_path / 'a'}"])
    assert not (tmp_path / "a" / "eval.json").exists()
    monkeypatch.setattr(ais_module, "hours", out_of_memory)  # its timed run
    with pytest.raises(ConfigError, match=r"AIS .* ran out of memory") as refused:
        run_eval([*args, f"output_dir={tmp_path / 'b'}"])
    assert "eval.chunk" not in str(refused.value)


def test_ais_below_the_iw_estimate_is_said_with_what_to_do(checkpoint, tmp_path, monkeypatch,
                                                          caplog):
    """Too few annealing steps leave AIS below the IW estimate (both lower bounds): a warning
    says so and what to raise, instead of a reader taking the AIS row for the better number."""
    import logging

    from vae_lightning import ais as ais_module

    def below(model, batches, *args, **kwargs):
        points = sum(len(x) for x, _ in batches)
        return {"log_px": torch.full((points,), -1e4), "ess_min": 1.0, "acceptance": 0.5,
                "seconds": 0.0}

    monkeypatch.setattr(ais_module, "over_batches", below)
    with caplog.at_level(logging.WARNING, logger="vae_lightning.evaluate"):
        results = run_eval([f"ckpt_path={checkpoint}", "eval.k=5", "eval.device=cpu",
                            "eval.limit=6", "eval.ais_steps=3",
                            f"output_dir={tmp_path}"])
    assert results["ais"]["minus_iw"]["nats"] < -1000
    assert "below the IW estimate" in caplog.text and "eval.ais_steps=3: raise it" in caplog.text


def test_a_second_evaluation_into_a_directory_being_evaluated_into_is_refused(checkpoint,
                                                                            tmp_path):
    """Two vae-eval runs into one directory at once saved to one eval.progress.pt in turn, and
    the first to end removed it (a stopped long evaluation lost its batches): the second is
    refused while the first holds the directory; the lock is gone once an evaluation ends."""
    out = tmp_path / "out"
    args = [f"ckpt_path={checkpoint}", "eval.k=5", "eval.device=cpu", "eval.limit=20",
            f"output_dir={out}"]
    with rundir.evaluating(out):  # another vae-eval, running
        with pytest.raises(ConfigError, match=f"output_dir={out}: another vae-eval is "
                           "evaluating into it now"):
            run_eval(args)
    assert not (out / "eval.json").exists() and not (out / "eval.progress.pt").exists()
    assert not (out / "eval.lock").exists()
    run_eval(args)
    assert (out / "eval.json").is_file() and not (out / "eval.lock").exists()
    with rundir.evaluating(out):  # released: it can be held again
        pass


def test_an_evaluation_lock_removed_while_it_was_taken_is_taken_again(tmp_path, monkeypatch):
    """A vae-eval that opened eval.lock just before its holder ended (and removed it) locked a
    file no longer in the directory, and a third vae-eval then created and locked a new one:
    two evaluations held "the" lock at once. The lock is taken again on the file at its path."""
    import fcntl

    out = tmp_path / "out"
    real_flock = fcntl.flock
    removed = []

    def holder_ends_between_open_and_lock(fd, operation):
        if not removed:  # the holder releases: removes the file this process has just opened
            (out / "eval.lock").unlink()
            removed.append(True)
        return real_flock(fd, operation)

    monkeypatch.setattr(rundir.fcntl, "flock", holder_ends_between_open_and_lock)
    with rundir.evaluating(out):
        assert removed and (out / "eval.lock").exists()
        with pytest.raises(ConfigError, match="another vae-eval is evaluating into it now"):
            with rundir.evaluating(out):  # the third: must find the lock held
                pass


def test_the_evaluation_shows_one_progress_bar_not_the_timing_pass_s_too(checkpoint, tmp_path,
                                                                        capsys):
    """The timed pass over the first batch (max_hours) opened a bar of its own, left at 0 %: a
    log showed the bar's first line two or three times before it moved."""
    run_eval([f"ckpt_path={checkpoint}", "eval.k=3", "eval.device=cpu",
              "eval.limit=20", f"output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert err.count("eval k=3 on test:   0%") == 1, err
