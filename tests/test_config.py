"""Config composition for every group option, the signature-driven check, and rejection of bad
configs before training with a message naming the key, the value and what is accepted."""

import json
import os

import compose
import pytest
import torch
from compose import CONF, SHARED_DATA, compose_train
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vae_lightning import run_checks
from vae_lightning.args import ArgumentError, PositiveInt, Range, accepts, checked, problems
from vae_lightning.config_checks import check
from vae_lightning.errors import ConfigError
from vae_lightning.groups import bundled
from vae_lightning.train import build_run, train

GROUPS = ["data", "model", "model/encoder", "model/decoder", "model/posterior",
          "model/likelihood", "model/prior", "model/objective", "model/optimizer", "trainer",
          "logger", "callbacks", "experiment"]
NOT_BUILT_HERE = {"trainer", "experiment", "logger"}


def _options(group):
    """The options a user chooses (a file starting with ``_`` is a base the others include)."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def _option_overrides(group, option):
    overrides = [f"{group}={option}"]
    if (group, option) == ("model/prior", "vamp"):
        overrides.append("model.prior.n_components=5")
    if (group, option) == ("model/objective", "wake_sleep"):
        overrides.append("data=frey")
    models = bundled(group, option)
    if models:  # a part chosen with the parts it works with by a model option (groups.bundled)
        overrides.append(f"model={models[0]}")
    if option in ("conditional_conv", "class_normal"):  # conditional parts of no model option
        overrides.append("model.classes=10")
    if "vq_vae" in (option if group == "model" else models[:1]):  # a 7 x 7 map that fits latent
        overrides.append("data=mnist")
    return overrides


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS if g.startswith("model/")
                                          for o in _options(g) if bundled(g, o)], ids=str)
def test_a_part_chosen_without_its_model_option_is_refused_naming_it(group, option, tmp_path):
    """A part that a model option chooses with its companions (model/objective=m2 by model=m2),
    chosen under model=vae, either builds (the hierarchy's prior and posterior work with the
    default parts) or is refused (by a companion's check: model.classes=null) with a line
    naming the model option to use, which the companion's error alone did not. An error that is
    not of the model's keys gets no such line."""
    cfg = compose_train([f"{group}={option}", "data=mnist"], tmp_path)
    named = " or ".join(f"model={model}" for model in bundled(group, option))
    hint = f"(this run has model=vae): use {named} instead of {group}={option}."
    try:
        build_run(cfg)
    except ConfigError as refused:
        assert str(refused).endswith(hint), str(refused)
        assert len(str(refused).splitlines()) <= 4
    else:  # it builds: an error of another key is not the model option's to mend
        cfg = compose_train([f"{group}={option}", "data=mnist", "trainer.max_samples=-1"],
                            tmp_path)
        with pytest.raises(ConfigError, match="trainer.max_samples") as refused:
            build_run(cfg)
        assert "instead of" not in str(refused.value)


@pytest.mark.parametrize(
    "group,option", [(g, o) for g in GROUPS for o in _options(g)], ids=lambda v: str(v)
)
def test_every_group_option_composes_checks_and_builds(group, option, tmp_path):
    overrides = _option_overrides(group, option)
    if group == "model/likelihood" and compose.counts_likelihood(option):  # integer vectors
        overrides += compose.counts_data(tmp_path)
    cfg = compose_train(overrides, tmp_path)
    if (group, option) in {("data", "folder"), ("data", "array"),  # your files: data.path=...
                           ("experiment", "m1_m2_mnist")}:  # M1's features (vae-encode)
        with pytest.raises(ConfigError, match="data.path is required"):
            check(cfg)
        return
    check(cfg)
    if group not in NOT_BUILT_HERE:
        run = build_run(cfg)
        assert run.model.data_shape == run.datamodule.shape


def test_the_data_group_picks_the_likelihood(tmp_path):
    def likelihood(overrides):
        return compose_train(overrides, tmp_path).model.decoder.likelihood._target_

    assert likelihood(["data=frey"]).endswith("Gaussian")
    assert likelihood(["data=mnist"]).endswith("Bernoulli")
    assert likelihood(["data=frey", "model/likelihood=bernoulli"]).endswith("Bernoulli")


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_a_prior_without_a_closed_form_kl_needs_no_other_setting(prior, tmp_path):
    """The ELBO's kl=auto asks torch.distributions' registry: Monte Carlo for these priors."""
    cfg = compose_train([f"model/prior={prior}", "model.prior.n_components=5"][
        : 2 if prior == "vamp" else 1], tmp_path)
    assert cfg.model.objective.kl == "auto"
    build_run(cfg)
    refused = compose_train([f"model/prior={prior}", "model.objective.kl=analytic"], tmp_path)
    with pytest.raises(ConfigError, match="(?s)model.*kl='analytic'.*closed form.*kl=auto"):
        build_run(refused)


@pytest.mark.parametrize("overrides,warned", [
    (["data=frey", "model/likelihood=bernoulli"], True),
    (["data=mnist", "data.binarize=none"], True),
    (["data=mnist"], False),
    (["data=mnist", "data.binarize=none", "model/likelihood=continuous_bernoulli"], False),
])
def test_bernoulli_on_grayscale_pixels_is_warned_about(overrides, warned, tmp_path, caplog):
    if "data=mnist" in overrides and not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"MNIST's files are not in {SHARED_DATA / 'mnist'}")
    root = [f"data.root={SHARED_DATA}"] if "data=mnist" in overrides else []
    run = build_run(compose_train([*overrides, *root], tmp_path))
    run.datamodule.prepare_data()
    run.datamodule.setup("fit")  # the pixels decide (binary already: no warning)
    run_checks.warn_about_grey_pixels(run.datamodule, run.model)
    assert ("not normalised" in caplog.text) == warned
    if warned and "data=frey" in overrides:  # Frey Face cannot be binarized: not suggested
        assert "data.binarize=dynamic" not in caplog.text and "gaussian" in caplog.text
    if warned and "data=mnist" in overrides:
        assert "data.binarize=dynamic" in caplog.text


@pytest.mark.parametrize("threads,load,wait_policy,warned", [
    (2, 5.3, None, True),  # two threads on 2 cores that other processes keep busy
    (2, 0.4, None, False),  # idle cores
    (2, 5.3, "PASSIVE", False),  # the threads sleep instead of spinning
    (1, 5.3, None, False),  # one thread: nothing waits for another
])
def test_several_threads_on_busy_cores_are_warned_about(threads, load, wait_policy, warned,
                                                        monkeypatch, caplog):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(run_checks, "available_cores", lambda: 2)
    if wait_policy is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", wait_policy)
    run_checks.warn_about_busy_cores()
    assert ("OMP_WAIT_POLICY=PASSIVE" in caplog.text) == warned
    if warned:
        assert "load average 5.3 on 2 cores" in caplog.text and "2 threads" in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_gpu_trainer_without_a_gpu_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="(?s)trainer.*gpu"):
        train(compose_train(["trainer=gpu", "logger=none"], tmp_path))


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_mps_trainer_without_mps_is_a_config_error_naming_what_there_is(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.accelerator='mps'.*no mps device.*cpu"):
        train(compose_train(["trainer=mps", "logger=none"], tmp_path))


@pytest.mark.parametrize("callbacks", ["[default,early_stopping]", "[default,output_bias]",
                                       "rich"])
def test_callbacks_are_one_file_each_composed_by_a_list(callbacks, tmp_path):
    cfg = compose_train([f"callbacks={callbacks}", "data=mnist"], tmp_path)
    check(cfg)
    default = compose_train([], tmp_path).callbacks
    assert set(default) == {"model_checkpoint", "last_checkpoint", "figures", "bound_curve"}
    assert set(default) < set(cfg.callbacks)
    for name in set(cfg.callbacks) - set(default):
        assert (CONF / "callbacks" / f"{name}.yaml").is_file(), name
    if callbacks.endswith("early_stopping]"):
        node = cfg.callbacks.early_stopping
        assert (node.monitor, node.mode) == ("val/elbo", "max")


def test_the_run_settings_and_what_the_search_optimises(tmp_path):
    cfg = compose_train(["tags=[baseline,frey]"], tmp_path)
    assert list(cfg.tags) == ["baseline", "frey"] and cfg.extras.ignore_warnings is True
    check(cfg)
    search = compose_train(["hparams_search=optuna"], tmp_path)
    assert search.optimized_metric == "val/elbo"
    check(compose_train(["hparams_search=optuna", "optimized_metric=test/elbo"], tmp_path))


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "model" / "objective").glob(
    "*.yaml")))
def test_the_search_preset_searches_keys_every_objective_has(option, tmp_path):
    """``hparams_search=optuna`` runs with any objective: each key it searches exists in the
    composed config (a key such as model.objective.beta, which most objectives lack, stopped
    every trial; the sweeper's params cannot be removed from the command line)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=optuna",
                                          *_option_overrides("model/objective", option)],
                      return_hydra_config=True)
    for key in cfg.hydra.sweeper.params:
        parent, _, name = key.rpartition(".")
        assert name in OmegaConf.select(cfg, parent), (key, option)


def test_paper_presets(tmp_path):
    frey = compose_train(["experiment=aevb_frey", "model.latent=2"], tmp_path)
    assert frey.model.encoder.net.hidden == [200] and frey.model.encoder.net.activation == "tanh"
    # the same network both ways (the encoder's reads its input as it is: log_input=false)
    assert frey.model.decoder.net == {k: v for k, v in frey.model.encoder.net.items()
                                      if k != "log_input"}
    assert frey.model.encoder.net.log_input is False
    assert frey.model.optimizer._target_ == "torch.optim.Adagrad" and frey.data.batch_size == 100
    assert frey.model.decoder.likelihood._target_.endswith("Gaussian") and frey.model.latent == 2
    assert frey.model.objective.kl == "analytic" and frey.model.objective.n_samples == 1
    mnist = compose_train(["experiment=aevb_mnist"], tmp_path)
    assert mnist.model.encoder.net.hidden == [500]
    assert mnist.model.decoder.likelihood._target_.endswith("Bernoulli")
    assert (mnist.model.optimizer.lr, mnist.model.optimizer.weight_decay) == (0.02, 2e-5)
    sleep = compose_train(["experiment=wake_sleep_mnist"], tmp_path)
    assert sleep.model.objective._target_.endswith("WakeSleep")
    assert sleep.model.optimizer.lr == 0.01 and sleep.model.encoder.net.hidden == [500]


# (overrides, words the message must contain); each is rejected before any training.
BAD_CONFIGS = [
    (["model.latent=0"], ["model.latent=0", "integer >= 1"]),
    (["model.latent=-3"], ["model.latent=-3"]),
    (["model.latent=abc"], ["model.latent", "abc"]),
    (["model.optimizer.lr=-0.1"], ["model.optimizer", "-0.1", "learning rate"]),
    (["model.optimizer.lr=0"], ["model.optimizer", "lr=0", "learning rate must be above 0"]),
    (["model.optimizer.weight_decay=-1"], ["model.optimizer", "weight_decay", "-1"]),
    (["model.objective.n_samples=0"], ["model.objective.n_samples=0", "integer >= 1"]),
    (["model/objective=iwae", "model.objective.k=0"], ["model.objective.k=0", ">= 1"]),
    (["model.objective.kl=exact"], ["model.objective.kl='exact'", "auto, analytic, mc"]),
    (["model/objective=vi"], ["model/objective", "vi", "elbo", "iwae"]),
    (["model.encoder.net.activation=swish"],
     ["model.encoder.net.activation='swish'", "tanh", "relu"]),
    (["model.encoder.net.hidden=[0]"], ["model.encoder.net.hidden=[0]", "integers >= 1"]),
    (["model.decoder.net.init_std=-0.01"], ["model.decoder.net.init_std=-0.01", "> 0"]),
    (["model.objective.beta=-1"], ["model.objective.beta=-1", ">= 0"]),
    (["+model.objective.k=5"], ["model.objective.k", "accepted", "n_samples"]),
    (["model/objective=iwae", "+model.objective.beta=0.5"], ["model.objective.beta"]),
    (["data.batch_size=0"], ["data.batch_size=0"]),
    (["trainer.max_epochs=0"], ["trainer.max_epochs=0", "integer >= 1", "-1"]),
    (["trainer.max_samples=0"], ["trainer.max_samples=0", ">= 1"]),
    # Lightning divided by these at the first step (ZeroDivisionError, exit 1): refused first.
    (["trainer.val_check_interval=0"], ["trainer.val_check_interval=0", "integer >= 1",
                                        "a number > 0 and <= 1"]),
    (["trainer.val_check_interval=0.0"], ["trainer.val_check_interval=0.0", "> 0 and <= 1"]),
    (["trainer.check_val_every_n_epoch=0"], ["trainer.check_val_every_n_epoch=0",
                                             "integer >= 1 or null"]),
    (["seed=1.5"], ["seed", "1.5"]),
    # Indexing an empty list was OmegaConf's "Interpolation key ... layers.0 not found".
    (["model=hierarchy", "model.encoder.posterior.layers=[]"],
     ["model.encoder.posterior.layers=[] is empty, and model.decoder.latent is its first item",
      "e.g. [100, 50]"]),
    # ${sum:...} and ${first:...} of a list that is none ("'int' object is not iterable",
    # "unsupported operand type(s) for +: 'int' and 'str'"): the layers' own check names them.
    (["model=hierarchy", "model.encoder.posterior.layers=5"],
     ["model.encoder.posterior.layers=5 is not allowed", "a list of integers >= 1"]),
    (["model=hierarchy", "model.encoder.posterior.layers=null"],
     ["model.encoder.posterior.layers=null is not allowed", "a list of integers >= 1"]),
    (["model=hierarchy", "model.encoder.posterior.layers=[a,b]"],
     ["model.encoder.posterior.layers=['a', 'b'] is not allowed", "a list of integers >= 1"]),
    (["seed=-1"], ["seed=-1", "as data.seed", ">= 0"]),
    (["ckpt_path=/no/such/file.ckpt"], ["/no/such/file.ckpt", "does not exist"]),
    (["+trainer.max_epoch=3"], ["trainer.max_epoch", "accepted", "max_epochs"]),
    (["+model.decoder.likelihood.min_var=0.1", "model/likelihood=bernoulli"],
     ["model.decoder.likelihood.min_var", "Bernoulli"]),
    (["+model.optimizer.momentum=0.9"], ["model.optimizer.momentum", "Adam"]),
    (["model.optimizer.fused=maybe"], ["model.optimizer.fused", "maybe", "true or false"]),
    (["data.steps_per_batch=0"], ["data.steps_per_batch=0", "integer >= 1"]),
    (["model/objective=factor_vae", "trainer.accumulate_grad_batches=4"],
     ["trainer.accumulate_grad_batches=4", "updates of its own", "set it to 1"]),
    (["+model.latnt=2"], ["latnt"]),
    (["model.latnt=2"], ["model.latnt"]),
    (["data=cifar"], ["data", "cifar", "frey", "mnist"]),
    (["data=frey", "data.binarize=dynamic"], ["data.binarize='dynamic'", "one of none"]),
    (["data=frey", "data.val_size=1000", "data.test_size=1000"],
     ["data", "test_size", "1965"]),
    (["model/posterior=student_t", "model.encoder.posterior.df=0"],
     ["model.encoder.posterior.df=0", "> 0"]),
    (["model/prior=mog", "model.prior.n_components=0"], ["model.prior.n_components=0"]),
    (["model/optimizer=sgdd"], ["sgdd", "adam", "adagrad"]),
    (["+data.val_sise=100"], ["data.val_sise", "val_size", "test_size"]),
    (["callbacks.bound_curve.splits=[]"], ["splits", "train, val, test"]),
    (["tags=oops"], ["tags='oops'", "a list of strings"]),
    (["tags=[1,2]"], ["tags=[1, 2]", "a list of strings"]),
    (["extras.print_config=maybe"], ["extras.print_config='maybe'", "true or false"]),
    (["+extras.bogus=1"], ["extras.bogus", "ignore_warnings, print_config"]),
    (["+optimized_metric=elbo"], ["optimized_metric='elbo'", "val/elbo"]),
    (["+prior=vamp"], ["model/prior=vamp", "mog, normal, ", ", vamp"]),
    (["model.prior=null"], ["model.prior=null", "model/prior=<option>"]),
    (["model.encoder=3"], ["model.encoder=3", "model/encoder=<option>"]),
    (["model.encoder.posterior=laplace"], ["model.encoder.posterior='laplace'",
                                           "model/posterior=<option>"]),
    (["callbacks.figures=4"], ["callbacks.figures=4", "_target_"]),
    (["+callbacks.mine.every=2"], ["callbacks.mine", "_target_"]),
    (["data.val_size=0", "callbacks=[default,early_stopping]"],
     ["callbacks.early_stopping", "val/elbo", "data.val_size=0"]),
    (["trainer.limit_val_batches=0", "callbacks=[default,early_stopping]"],
     ["callbacks.early_stopping", "trainer.limit_val_batches=0"]),
]


@pytest.mark.parametrize("overrides,words", BAD_CONFIGS, ids=lambda v: " ".join(v))
def test_bad_config_is_rejected_with_a_message_naming_it(overrides, words, tmp_path):
    with pytest.raises((ConfigError, HydraException, OmegaConfBaseException)) as err:
        train(compose_train([*overrides, "logger=none"], tmp_path))
    message = str(err.value)
    for word in words:
        assert word in message, f"{word!r} not in: {message}"
    assert not (tmp_path / "checkpoints").exists()


def test_every_problem_of_a_config_is_listed_at_once(tmp_path):
    cfg = compose_train(["model.latent=0", "model.encoder.net.hidden=[0]", "data.batch_size=0",
                         "model.objective.kl=exact"], tmp_path)
    with pytest.raises(ConfigError) as err:
        check(cfg)
    message = str(err.value)
    for key in ("model.latent=0", "model.encoder.net.hidden", "data.batch_size=0",
                "model.objective.kl"):
        assert key in message


class _Typed:
    @checked
    def __init__(self, n: PositiveInt = 1, rate: float | None = None,
                 mode: str = "a", sizes: list[int] = (), p: "float" = 0.5) -> None:
        self.n = n


def test_annotations_are_the_schema():
    assert accepts(PositiveInt, 3) and not accepts(PositiveInt, 0) and not accepts(
        PositiveInt, True)
    assert accepts(float | None, None) and accepts(float | None, 2) and not accepts(float, "2")
    assert accepts(list[PositiveInt], [1, 2]) and not accepts(list[PositiveInt], [1, 0])
    assert Range(gt=0, lt=0.5)(0.25) and not Range(gt=0, lt=0.5)(0.5)
    assert problems(_Typed, {"n": 0, "sizes": ["x"], "oops": 1}) == [
        ("n", 0, "expected an integer >= 1"),
        ("sizes", ["x"], "expected a list of integers"),
        ("oops", 1, "not an argument; accepted: n, rate, mode, sizes, p"),
    ]
    with pytest.raises(ArgumentError, match=r"n=0 is not allowed: expected an integer >= 1 "
                                            r"\(_Typed\)"):
        _Typed(n=0)
    assert _Typed(n=2).n == 2


@pytest.mark.parametrize("override, says, not_said", [
    ("model.latnt=3", ["model.latnt=3: model has no key latnt. Did you mean model.latent?",
                       "model has encoder, decoder"], ["_target_"]),
    ("trainer.max_epoch=3", ["Did you mean trainer.max_epochs"], []),
    ("lattent=3", ["there is no top-level key lattent.", "The top level has", "model, data"], []),
    ("data=mnsit", ["Available options in 'data'", "Did you mean data=mnist?"],
     ["_common", "_idx"]),
    ("model/objective=iwea", ["Did you mean model/objective=iwae"], ["of your own"]),
    # No near option: an option of one's own whose folder is not on Hydra's search path.
    ("model/objective=sigmoid_beta", ["An option of your own: put its file at <folder>/model/"
                                      "objective/sigmoid_beta.yaml and add the folder with "
                                      "hydra.searchpath=[file://<folder>]"], ["Did you mean"]),
    ("experiment=svae", ["Did you mean experiment=svae_mnist?"], ["_two_layer"]),
    # A group's path mistyped: the closest group (it was "no top-level key", "+... would add").
    ("model/objectiv=iwae", ["model/objectiv=iwae: there is no config group model/objectiv. "
                             "Did you mean model/objective=iwae?"], ["top-level", "+model"]),
    ("model/encoder/net=conv", ["Did you mean model/encoder=conv?"], ["has conv"]),
    ("modl/prior=flw", ["Did you mean model/prior=flw? (model/prior has", "vamp"], []),
    ("foo/bar=1", ["there is no config group foo/bar. The config groups are", "model/prior"], []),
    # A mapping merged into a node, with a key the node lacks: the whole value, and that key.
    # A key deeper down (it was "Did you mean extras?"), an option in another case (no guess).
    ("beta=4", ["beta=4: there is no top-level key beta. Did you mean model.objective.beta?"],
     ["extras?"]),
    ("data=MNIST", ["Did you mean data=mnist?"], ["of your own"]),
    # Not an override at all: Hydra's grammar error named neither the word nor what to write
    # (newcomer walkthrough eleven).
    ("data", ["'data' is not an override: each override is key=value in one word, with no "
              "spaces around '=' (data=mnist) (Hydra: missing EQUAL"], ["See https"]),
    ("model.objective.beta=0.5,", ["'model.objective.beta=0.5,' is not an override: a sweep's "
                                   "values are one word, with no space after a comma"], []),
    ("runs/a/checkpoints/last.ckpt", ["a checkpoint is named with "
                                      "ckpt_path=runs/a/checkpoints/last.ckpt"], []),
    ("model.optimizer={lr: 0.1, momentm: 3}",
     ["model.optimizer={lr: 0.1, momentm: 3}: model.optimizer has no key momentm (a mapping "
      "given on the command line is merged into the node", "model.optimizer.<key>=..."],
     ["has no key optimizer"]),
])
def test_a_mistyped_key_or_option_is_named_with_the_closest_ones(override, says, not_said):
    """One line: the key the config lacks and its parent's keys, or the group's options without
    the bases they include (``_common``), with the closest named first."""
    from vae_lightning.hydra_errors import hydra_message

    with pytest.raises((HydraException, OmegaConfBaseException)) as caught:
        compose_train([override])
    message = hydra_message(caught.value)
    assert "\n" not in message
    for words in says:
        assert words in message, message
    for words in not_said:
        assert words not in message, message


def test_sweeper_params_given_as_a_mapping_get_the_sweeper_s_syntax():
    """``hydra.sweeper.params={...}`` with a key the search lacks: the override whole (it was
    cut at its first space) and how to add a parameter (it said hydra.sweeper has no params)."""
    from vae_lightning.hydra_errors import hydra_message

    value = ('{model.optimizer.lr: "tag(log, interval(1e-4, 1e-2))", '
             'model.objective.k: "choice(1, 5)"}')
    with pytest.raises((HydraException, OmegaConfBaseException)) as caught:
        compose_train(["hparams_search=optuna", f"hydra.sweeper.params={value}"])
    assert hydra_message(caught.value) == (
        f"hydra.sweeper.params={value}: hydra.sweeper.params has no key model.objective.k (a "
        "mapping given on the command line is merged into the node, which takes only its own "
        "keys: model.optimizer.lr, model.latent); each search parameter is its own override in "
        "the sweeper's syntax, e.g. 'model.objective.k=choice(1,5)'.")


def test_a_network_swapped_by_its_target_alone_gets_the_way_to_swap_the_node(tmp_path):
    """``model.encoder.net._target_=<another network>`` keeps the old network's keys (Hydra
    merges; a null key cannot be deleted): besides naming each key the new network does not
    take, the error says to replace the whole node, and that way composes and checks."""
    resnet = "vae_lightning.conv_nets.ResNetEncoder"
    cfg = compose_train(["data=frey", f"model.encoder.net._target_={resnet}"], tmp_path)
    with pytest.raises(ConfigError) as err:
        check(cfg)
    assert ("model.encoder.net._target_ was changed on the command line, so model.encoder.net "
            "keeps the keys of the target it replaced: replace the whole node instead, "
            f"model.encoder.net=null 'model.encoder.net={{_target_: {resnet}, _partial_: true"
            ) in str(err.value)
    check(compose_train(["data=frey", "model.encoder.net=null",
                         f"model.encoder.net={{_target_: {resnet}, _partial_: true}}"], tmp_path))
    with pytest.raises(ConfigError) as err:  # a misspelt key alone: no such hint
        check(compose_train(["data=frey", "+model.encoder.net.hiden=[3]"], tmp_path))
    assert "was changed on the command line" not in str(err.value)


def test_a_key_an_experiment_set_for_a_replaced_part_says_how_to_drop_it(tmp_path):
    """experiment=conv_ladder_mnist model/objective=iwae: the preset's warm-up steps stay in the
    node, which IWAE does not take; the error names where the key came from and how to drop
    it, and that way composes and checks. A key the command itself gave gets no such hint."""
    base = ["experiment=conv_ladder_mnist", "model/objective=iwae"]
    with pytest.raises(ConfigError) as err:
        check(compose_train(base, tmp_path))
    assert ("model.objective.warmup_steps=10000 is not allowed: not an argument" in str(err.value)
            and "It comes from experiment=conv_ladder_mnist, which set it for the part this "
            "command replaced: drop it with ~model.objective.warmup_steps." in str(err.value))
    check(compose_train([*base, "~model.objective.warmup_steps"], tmp_path))
    with pytest.raises(ConfigError) as err:
        check(compose_train([*base, "~model.objective.warmup_steps",
                             "+model.objective.warmup=3"], tmp_path))
    assert "It comes from experiment" not in str(err.value)


@pytest.mark.parametrize("target, words", [
    # A module of one's own not on the path (PYTHONPATH forgotten): said so, not "spelling".
    ("my_parts.objective.Mine", "there is no module my_parts: check its spelling, or, for a "
     "module of your own, put the folder that holds it on PYTHONPATH (PYTHONPATH=<folder> "
     "vae-train ...)"),
    ("vae_lightning.nets.MLPP", "vae_lightning.nets has no MLPP; check its spelling"),
    ("vae_lightning.netz.MLP", "vae_lightning has no netz; check its spelling"),
])
def test_a_target_that_cannot_be_imported_is_refused_with_its_cause(tmp_path, target, words,
                                                                    caplog):
    cfg = compose_train([f"model.encoder.net._target_={target}"], tmp_path)
    with caplog.at_level("ERROR"), pytest.raises(ConfigError) as err:
        check(cfg)
    assert f"model.encoder.net._target_='{target}' cannot be imported: {words}." in str(err.value)
    assert "Error getting object" not in caplog.text  # Hydra's own log line, before ours


def test_a_module_of_ones_own_that_fails_to_import_is_refused_with_its_error(tmp_path,
                                                                           monkeypatch):
    (tmp_path / "broken_parts.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose_train(["model.encoder.net._target_=broken_parts.Net"], tmp_path)
    with pytest.raises(ConfigError, match="broken_parts.Net' cannot be imported: importing "
                       "broken_parts raised ModuleNotFoundError: No module named "
                       "'no_such_dependency_xyz'"):
        check(cfg)


def test_images_binary_already_take_the_bernoulli_likelihood_as_a_probability(tmp_path, caplog):
    """A uint8 array of 0 and 255 with data.binarize=none: no "not normalised" warning, and bits
    per dimension logged (they are a code length), as with data.binarize=static, which gives the
    same numbers; grey levels in the array are still warned about."""
    import numpy as np

    from vae_lightning.likelihoods import code_length

    rng = np.random.default_rng(0)
    binary = (rng.random((60, 8, 8)) < 0.3).astype(np.uint8) * 255
    np.save(tmp_path / "binary.npy", binary)
    grey = binary.copy()
    grey[-1, 0, 0] = 128  # one grey pixel, in the last image
    np.save(tmp_path / "grey.npy", grey)
    common = ["data=array", "model/likelihood=bernoulli", "model.latent=2"]

    def checked(name, folder):
        run = build_run(compose_train([*common, f"data.path={tmp_path / name}"], folder))
        run.datamodule.setup("fit")
        run_checks.warn_about_grey_pixels(run.datamodule, run.model)
        return run

    run = checked("binary.npy", tmp_path / "a")
    assert "not normalised" not in caplog.text
    assert run.datamodule.binary_pixels()
    assert code_length(run.model.decoder.likelihood, run.datamodule)
    caplog.clear()
    run = checked("grey.npy", tmp_path / "b")
    assert "not normalised" in caplog.text
    assert not code_length(run.model.decoder.likelihood, run.datamodule)
    # Through the command's path (train): the binary images trained with no such warning.
    caplog.clear()
    train(compose_train([*common, f"data.path={tmp_path / 'binary.npy'}", "trainer.max_steps=2",
                         "logger=none", "trainer.enable_progress_bar=false"], tmp_path / "c"))
    assert "not normalised" not in caplog.text
    results = json.loads((tmp_path / "c" / "results.json").read_text())
    assert "test/bits_per_dim" in results
    # A bits-per-dimension metric is judged once the pixels are read: taken for the binary
    # images (they log it), refused before training for the grey ones (none is logged).
    metric = ["+optimized_metric=val/bits_per_dim", "trainer.max_steps=2", "logger=none",
              "trainer.enable_progress_bar=false"]
    train(compose_train([*common, f"data.path={tmp_path / 'binary.npy'}", *metric],
                        tmp_path / "d"))
    assert "val/bits_per_dim" in json.loads((tmp_path / "d" / "results.json").read_text())
    with pytest.raises(ConfigError, match="optimized_metric=val/bits_per_dim: this run logs no "
                                          "bits per dimension"):
        train(compose_train([*common, f"data.path={tmp_path / 'grey.npy'}", *metric],
                            tmp_path / "e"))
    assert not (tmp_path / "e" / "checkpoints").exists()


@pytest.mark.parametrize("override, says", [
    ("model.latent=${oc.env:UNSET_VAR_FOR_A_TEST}",
     "model.latent=${oc.env:UNSET_VAR_FOR_A_TEST} cannot be resolved: \"Environment variable "
     "'UNSET_VAR_FOR_A_TEST' not found\""),
    ("~model.latent", "model.encoder.latent=${..latent} cannot be resolved: Interpolation key "
                      "'latent' not found"),
    ("data.batch_size=${nothere}", "data.batch_size=${nothere} cannot be resolved: "
                                   "Interpolation key 'nothere' not found"),
])
def test_an_interpolation_that_cannot_be_resolved_is_named_with_its_key(override, says,
                                                                      tmp_path, monkeypatch):
    """OmegaConf's error named no key for a resolver's failure and named the interpolating key
    only in a later line, which the one-line error dropped."""
    monkeypatch.delenv("UNSET_VAR_FOR_A_TEST", raising=False)
    with pytest.raises(ConfigError) as err:
        check(compose_train([override], tmp_path))
    assert str(err.value) == f"Invalid configuration: {says}"
