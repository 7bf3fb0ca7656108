"""Config composition for every group option, and rejection of bad configs before training."""

import pytest
import torch
from compose import CONF, compose_train
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf.errors import OmegaConfBaseException

from vae_lightning.config import ConfigError, validate
from vae_lightning.train import build, train

GROUPS = ["data", "model", "likelihood", "prior", "posterior", "optimizer", "trainer",
          "logger", "callbacks", "experiment"]
NOT_INSTANTIABLE_HERE = {"trainer", "experiment", "model", "logger"}


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.endswith("schema"))


@pytest.mark.parametrize(
    "group,option", [(g, o) for g in GROUPS for o in _options(g)], ids=lambda v: str(v)
)
def test_every_group_option_composes_and_validates(group, option, tmp_path):
    overrides = [f"{group}={option}"]
    if (group, option) in {("prior", "mog"), ("prior", "vamp"), ("posterior", "student_t")}:
        overrides.append("model.kl=mc")
    cfg = compose_train(overrides, tmp_path)
    validate(cfg)
    if group not in NOT_INSTANTIABLE_HERE and cfg.get(group):
        node = cfg[group]
        targets = [node] if "_target_" in node else list(node.values())
        for target in targets:
            assert instantiate(target) is not None


def test_data_choice_sets_the_default_likelihood(tmp_path):
    assert compose_train(["data=frey"], tmp_path).likelihood._target_.endswith("Gaussian")
    assert compose_train(["data=mnist"], tmp_path).likelihood._target_.endswith("Bernoulli")
    explicit = compose_train(["data=frey", "likelihood=bernoulli"], tmp_path)
    assert explicit.likelihood._target_.endswith("Bernoulli")


@pytest.mark.parametrize("overrides,warned", [
    (["data=frey", "likelihood=bernoulli"], True),
    (["data=mnist", "data.binarize=none"], True),
    (["data=mnist"], False),
    (["data=mnist", "data.binarize=none", "likelihood=continuous_bernoulli"], False),
])
def test_bernoulli_on_grayscale_pixels_is_warned_about(overrides, warned, tmp_path, caplog):
    validate(compose_train(overrides, tmp_path))
    assert ("not normalised" in caplog.text) == warned


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_gpu_trainer_without_a_gpu_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="(?s)Invalid trainer configuration.*gpu"):
        train(compose_train(["trainer=gpu", "logger=none"], tmp_path))


def test_paper_presets(tmp_path):
    frey = compose_train(["experiment=aevb_frey", "model.latent=2"], tmp_path)
    assert frey.model.encoder_hidden == [200] and frey.model.activation == "tanh"
    assert frey.optimizer._target_ == "torch.optim.Adagrad" and frey.data.batch_size == 100
    assert frey.likelihood._target_.endswith("Gaussian") and frey.model.latent == 2
    mnist = compose_train(["experiment=aevb_mnist"], tmp_path)
    assert mnist.model.encoder_hidden == [500] and mnist.likelihood._target_.endswith("Bernoulli")
    assert mnist.model.n_samples == 1


# (overrides, words the message must contain); each is rejected before any training.
BAD_CONFIGS = [
    (["model.latent=0"], ["model.latent=0", "positive integer"]),
    (["model.latent=-3"], ["model.latent=-3"]),
    (["model.latent=abc"], ["model.latent", "abc"]),
    (["optimizer.lr=-0.1"], ["optimizer.lr=-0.1", "positive"]),
    (["optimizer.lr=0"], ["optimizer.lr=0"]),
    (["optimizer.weight_decay=-1"], ["optimizer.weight_decay"]),
    (["model.n_samples=0"], ["model.n_samples=0"]),
    (["model.objective=iwae", "model.k=0"], ["model.k=0"]),
    (["model.kl=exact"], ["model.kl='exact'", "analytic, mc"]),
    (["model.objective=vi"], ["model.objective='vi'", "elbo, iwae"]),
    (["model.activation=swish"], ["model.activation='swish'", "tanh"]),
    (["model.encoder_hidden=[0]"], ["model.encoder_hidden", "positive layer sizes"]),
    (["model.init_std=-0.01"], ["model.init_std"]),
    (["model.beta=-1"], ["model.beta=-1"]),
    (["model.k=5"], ["model.k=5", "objective=iwae"]),
    (["model.objective=iwae", "model.k=5", "model.beta=0.5"], ["model.beta=0.5"]),
    (["data.batch_size=0"], ["data.batch_size=0"]),
    (["trainer.max_epochs=0"], ["trainer.max_epochs=0"]),
    (["seed=1.5"], ["seed=1.5"]),
    (["ckpt_path=/no/such/file.ckpt"], ["ckpt_path", "/no/such/file.ckpt"]),
    (["+trainer.max_epoch=3"], ["trainer.max_epoch", "accepted keys", "max_epochs"]),
    (["+likelihood.min_var=0.1", "likelihood=bernoulli"], ["likelihood.min_var", "Bernoulli"]),
    (["+optimizer.momentum=0.9"], ["optimizer.momentum", "Adam"]),
    (["optimizer.fused=maybe"], ["optimizer.fused", "maybe", "true"]),
    (["trainer.steps_per_batch=0"], ["trainer.steps_per_batch=0", "positive"]),
    (["trainer.steps_per_batch=4", "trainer.gradient_clip_val=1.0"],
     ["trainer.gradient_clip_val=1.0", "steps_per_batch=4", "trainer.steps_per_batch=1"]),
    (["trainer.steps_per_batch=2", "trainer.accumulate_grad_batches=4"],
     ["trainer.accumulate_grad_batches=4", "steps_per_batch=2"]),
    (["+model.latnt=2"], ["latnt"]),
    (["model.latnt=2"], ["model.latnt"]),
    (["data=cifar"], ["data", "cifar", "frey", "mnist"]),
    (["prior=mog"], ["model.kl='analytic'", "prior", "model.kl=mc"]),
    (["posterior=student_t"], ["model.kl='analytic'", "posterior", "model.kl=mc"]),
    (["posterior=student_t", "model.kl=mc", "posterior.df=0"], ["df=0"]),
    (["optimizer=sgdd"], ["sgdd", "adam", "adagrad"]),
    (["+data.val_sise=100"], ["data.val_sise", "val_size", "test_size"]),
]


@pytest.mark.parametrize("overrides,words", BAD_CONFIGS, ids=lambda v: " ".join(v))
def test_bad_config_is_rejected_with_a_message_naming_it(overrides, words, tmp_path):
    with pytest.raises((ConfigError, HydraException, OmegaConfBaseException)) as err:
        build(compose_train(overrides, tmp_path))
    message = str(err.value)
    for word in words:
        assert word in message, f"{word!r} not in: {message}"
