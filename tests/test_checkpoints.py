"""A trained model from its checkpoint: VAE.load_from_checkpoint rebuilds every posterior x
likelihood x prior and every objective from the run config the checkpoint carries; nothing in a
checkpoint chooses what code runs."""

import itertools
import re

import compose
import lightning as L
import pytest
import torch
from compose import (
    CONF,
    LABELLED,
    compose_train,
    pair_composes,
    small_posterior,
    small_prior,
)
from test_hostile import no_traceback, run

from vae_lightning import VAE, cli
from vae_lightning.checkpoints import CONFIG_KEY, RunConfig, read_checkpoint
from vae_lightning.errors import CheckpointError
from vae_lightning.rebuild import load_model
from vae_lightning.train import build_run

OPTIONS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml"))
           for g in ("model/prior", "model/likelihood", "model/posterior", "model/objective")}
SMALL = ["data=frey", "model.latent=2", "model.encoder.net.hidden=[8]",
         "model.decoder.net.hidden=[8]"]
# Every prior with every posterior (their KL pairs meet), every likelihood once (it meets
# neither), every objective once: the sum of the groups' sizes, not their product.
CASES = [
    *[(prior, "gaussian", posterior, "vq_vae" if posterior == "vq" else "elbo")
      for prior, posterior in itertools.product(
        OPTIONS["model/prior"], OPTIONS["model/posterior"])
      if pair_composes(prior, posterior) and prior not in LABELLED],  # Frey Face has no labels
    *[("normal", likelihood, "gaussian", "elbo") for likelihood in OPTIONS["model/likelihood"]
      if likelihood != "gaussian"],
    *[("normal", "gaussian", "gaussian", objective) for objective in OPTIONS["model/objective"]
      # the VQ-VAE's: with its posterior, above; M2 needs labelled data (tests/test_m2.py)
      if objective not in ("elbo", "vq_vae", "m2")],
    ("mog", "gaussian", "laplace", "wake_sleep"), ("vamp", "bernoulli", "student_t", "dreg"),
]


def _saved(overrides, path):
    """Train ``overrides`` for two steps with Lightning and save a checkpoint at ``path``."""
    cfg = compose_train(overrides, path.parent)
    run = build_run(cfg)
    trainer = L.Trainer(max_steps=2, limit_val_batches=0, logger=False, accelerator="cpu",
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False,
                        callbacks=[RunConfig(run.record)])
    trainer.fit(run.model, datamodule=run.datamodule)
    trainer.save_checkpoint(path)
    run.datamodule.setup("test")
    return run.model, run.datamodule.evaluation_data("test")[:8]


@pytest.mark.parametrize("prior, likelihood, posterior, objective", CASES, ids=str)
def test_load_from_checkpoint_gives_the_trained_model(prior, likelihood, posterior, objective,
                                                      tmp_path):
    overrides = [*SMALL, *small_prior(prior), f"model/likelihood={likelihood}",
                 *small_posterior(posterior), f"model/objective={objective}"]
    counts = compose.counts_likelihood(likelihood)  # of counts: on integer vectors, not faces
    if counts:
        overrides += compose.counts_data(tmp_path, n=300)

    torch.manual_seed(0)
    trained, x = _saved(overrides, tmp_path / "model.ckpt")
    loaded = VAE.load_from_checkpoint(tmp_path / "model.ckpt")
    assert type(loaded.objective) is type(trained.objective) and not loaded.training
    assert type(loaded.prior) is type(trained.prior)
    assert loaded.latent == 2 and loaded.data_shape == ((1, 1, 12) if counts else (1, 28, 20))
    assert loaded.samples_seen == trained.samples_seen == 200
    for name, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    trained.eval()
    bounds = []
    for model in (trained, loaded):
        torch.manual_seed(1)
        bounds.append(model.bound(x).elbo)
    torch.testing.assert_close(*bounds)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """A checkpoint of SMALL trained for two steps, which the tests below only read (each writes
    its altered copy to its own directory)."""
    path = tmp_path_factory.mktemp("small") / "m.ckpt"
    _saved(SMALL, path)
    return path


def test_eval_loads_through_the_same_path(tmp_path, monkeypatch, capsys):
    """vae-eval (eval.py calls cli.evaluate), run in this process: the command's path, not the
    process boundary, is what is checked here."""
    _saved([*SMALL, "model/prior=mog", "model.prior.n_components=3"], tmp_path / "m.ckpt")
    result = run(cli.evaluate, [f"ckpt_path={tmp_path / 'm.ckpt'}", "eval.k=5",
                                f"hydra.run.dir={tmp_path / 'eval'}"], monkeypatch, capsys,
                 tmp_path)
    assert result.code == 0, result.err[-2000:]
    assert "test   iw:" in result.out


SIDE_EFFECTS = {
    "builtins.open": {"file": "{marker}", "mode": "w"},
    "pathlib.Path.touch": {"self": "{marker}"},
    "os.makedirs": {"name": "{marker}"},
}


@pytest.mark.parametrize("target", sorted(SIDE_EFFECTS))
@pytest.mark.parametrize("where", ["model", "model.encoder.net", "model.prior", "data"])
def test_a_checkpoint_naming_other_code_is_refused_and_nothing_runs(target, where, tmp_path,
                                                                   small_checkpoint,
                                                                   monkeypatch, capsys):
    checkpoint = read_checkpoint(small_checkpoint)
    marker = tmp_path / "made-by-the-checkpoint"
    node = checkpoint[CONFIG_KEY]
    for part in where.split("."):
        node = node[part]
    node["_target_"] = target
    node.update({k: v.format(marker=marker) for k, v in SIDE_EFFECTS[target].items()})
    torch.save(checkpoint, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match=f"{target}.*untrusted input") as err:
        if where == "data":  # vae-eval (eval.py's cli.evaluate), in this process
            result = run(cli.evaluate, [f"ckpt_path={tmp_path / 'evil.ckpt'}", "eval.k=2",
                                        f"hydra.run.dir={tmp_path / 'eval'}"], monkeypatch,
                         capsys, tmp_path)
            assert result.code == 2, result.err
            no_traceback(result)
            raise CheckpointError(result.err)
        load_model(tmp_path / "evil.ckpt", VAE)
    assert "weights_only=False" not in str(err.value)
    assert not marker.exists()


def test_interpolations_in_a_checkpoint_are_refused(tmp_path, small_checkpoint):
    checkpoint = read_checkpoint(small_checkpoint)
    checkpoint[CONFIG_KEY]["model"]["latent"] = "${oc.env:HOME}"
    torch.save(checkpoint, tmp_path / "odd.ckpt")
    with pytest.raises(CheckpointError, match="interpolation"):
        load_model(tmp_path / "odd.ckpt", VAE)


def test_your_own_classes_load_when_you_trust_them(tmp_path, small_checkpoint):
    """Every own class of the model is named in the one refusal, in the list to pass (they
    were refused part by part: two classes took two refused runs to learn)."""
    checkpoint = read_checkpoint(small_checkpoint)
    checkpoint[CONFIG_KEY]["model"]["prior"]["_target_"] = "models.NamedPrior"
    checkpoint[CONFIG_KEY]["model"]["encoder"]["net"]["_target_"] = "models.NamedNet"
    torch.save(checkpoint, tmp_path / "mine.ckpt")
    with pytest.raises(CheckpointError, match="models.NamedPrior") as err:
        load_model(tmp_path / "mine.ckpt", VAE)
    listed = "[models.NamedNet,models.NamedPrior]"
    # Each entry point's own key (vae-sample's and vae-encode's is top-level, not eval.*).
    # Python's list quotes the names (a copy of it ran into a NameError; newcomer seven).
    for way in ("VAE.load_from_checkpoint(path, trusted=['models.NamedNet', "
                "'models.NamedPrior'])",
                f"eval.trusted={listed} with vae-eval",
                f"trusted={listed} with vae-sample and vae-encode",
                "model.encoder.net._target_='models.NamedNet'",
                "model.prior._target_='models.NamedPrior'",
                # and what trusting a name does, before the names to pass (newcomer eight: a
                # student pasted the line to make a stranger's checkpoint load)
                "Trusting a name runs that code when the file is loaded: a checkpoint you did "
                "not train that asks for code outside vae-lightning may be hostile"):
        assert way in str(err.value)
    checkpoint[CONFIG_KEY]["model"]["encoder"]["net"]["_target_"] = "vae_lightning.nets.MLP"
    torch.save(checkpoint, tmp_path / "mine.ckpt")
    loaded = VAE.load_from_checkpoint(tmp_path / "mine.ckpt", trusted=["models.NamedPrior"])
    assert type(loaded.prior).__name__ == "NamedPrior"
    # Trusted, but its module is not importable here (PYTHONPATH not set as when it trained).
    checkpoint[CONFIG_KEY]["model"]["prior"]["_target_"] = "elsewhere_parts.NamedPrior"
    torch.save(checkpoint, tmp_path / "mine.ckpt")
    with pytest.raises(CheckpointError, match="No module named 'elsewhere_parts' \\(a module of "
                       "your own must be importable here: put the folder that holds it on "
                       "PYTHONPATH\\)"):
        load_model(tmp_path / "mine.ckpt", VAE, trusted=["elsewhere_parts.NamedPrior"])


def test_a_checkpoint_naming_a_class_where_it_was_before_a_move_loads(tmp_path):
    """ConvEncoder/ConvDecoder moved from nets to conv_nets (the same class and parameters): a
    checkpoint written before names the old path and still loads, the same model; the old
    module's other names stay refused."""
    path = tmp_path / "m.ckpt"
    model, x = _saved(["data=frey", "model.latent=2", "model/encoder=conv", "model/decoder=conv",
                       "model.encoder.net.channels=[4]", "model.decoder.net.channels=[4]"], path)
    checkpoint = read_checkpoint(path)
    for part in ("encoder", "decoder"):
        net = checkpoint[CONFIG_KEY]["model"][part]["net"]
        assert net["_target_"].startswith("vae_lightning.conv_nets.")
        net["_target_"] = net["_target_"].replace("conv_nets", "nets")
    torch.save(checkpoint, tmp_path / "old.ckpt")
    loaded = load_model(tmp_path / "old.ckpt", VAE)[0]
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.encode(x).mean, model.encode(x).mean)
    checkpoint[CONFIG_KEY]["model"]["encoder"]["net"]["_target_"] = "vae_lightning.nets.Other"
    torch.save(checkpoint, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="vae_lightning.nets.Other"):
        load_model(tmp_path / "other.ckpt", VAE)


def test_a_plain_trainer_checkpoint_is_refused_with_the_way_to_load_its_weights(tmp_path):
    """A model composed in Python and saved by a plain Lightning Trainer carries no run
    configuration: VAE.load_from_checkpoint cannot rebuild it, and its refusal gives the way
    that works (the same model composed again, load_state_dict), which this test follows."""
    import functools

    from vae_lightning.likelihoods import Bernoulli, Decoder
    from vae_lightning.nets import MLP
    from vae_lightning.objectives.elbo import ELBO
    from vae_lightning.posteriors import Encoder, Gaussian
    from vae_lightning.priors import StandardNormal

    def compose(seed):
        torch.manual_seed(seed)
        net = functools.partial(MLP, hidden=[8])
        return VAE(Encoder(posterior=Gaussian(), latent=2, data_shape=[1, 4, 4], net=net),
                   Decoder(likelihood=Bernoulli(), latent=2, data_shape=[1, 4, 4], net=net),
                   StandardNormal(2), ELBO())

    trained = compose(0)
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointError, match="no vae-lightning run configuration") as err:
        VAE.load_from_checkpoint(tmp_path / "plain.ckpt")
    assert "compose the same model again and load the weights" in str(err.value)
    again = compose(1)
    again.load_state_dict(torch.load(tmp_path / "plain.ckpt", weights_only=True)["state_dict"])
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(),
                                                  again.state_dict().values()))


@pytest.mark.parametrize("where, words", [
    ("cuda:7", "map_location='cuda:7' is not allowed: "),
    ("meta", "map_location='meta' is not allowed: expected auto, cpu, cuda, cuda:<index> or mps"),
    ("tpu", "map_location='tpu' is not allowed: expected auto"),
])
def test_load_from_checkpoint_refuses_a_device_this_machine_lacks_in_one_line(
        where, words, small_checkpoint):
    """map_location names where the model goes: one this machine lacks (CUDA here, or a GPU
    index beyond its count) or torch's meta device (a model that fails at first use) is one
    ArgumentError naming the argument, before the checkpoint is read (it was torch's
    "Torch not compiled with CUDA enabled"); cpu and auto load."""
    from vae_lightning.args import ArgumentError

    with pytest.raises(ArgumentError, match=re.escape(words)):
        VAE.load_from_checkpoint(small_checkpoint, map_location=where)
    assert VAE.load_from_checkpoint(small_checkpoint, map_location="auto").device.type in (
        "cpu", "cuda")
    assert VAE.load_from_checkpoint(small_checkpoint, map_location=torch.device("cpu")).device \
        == torch.device("cpu")
