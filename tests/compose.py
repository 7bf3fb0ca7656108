"""Compose the training config in-process, as `python train.py <overrides>` would."""

from __future__ import annotations

import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import vae_lightning.config  # noqa: F401  (registers the model schema)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_DATA = REPO.parent / "shared" / "data"


def compose_train(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """The composed config with Hydra's runtime set, so `${hydra:...}` and choices resolve."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def counts_likelihood(option: str) -> bool:
    """Whether ``model/likelihood=<option>`` is a distribution of counts, whose only data are
    data=array's integer feature vectors (``counts_data``)."""
    import yaml
    from hydra.utils import get_class

    node = yaml.safe_load((CONF / "model/likelihood" / f"{option}.yaml").read_text())
    return get_class(node["_target_"])().counts


def counts_data(directory: Path, n: int = 60, d: int = 12, seed: int = 0) -> list[str]:
    """The overrides for data=array on ``n`` vectors of ``d`` overdispersed counts (negative
    binomial, inverse dispersion 2, around one of three means), written into ``directory``
    with their classes under ``y``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    mean = rng.gamma(1.0, 3.0, (3, d))[y]
    x = rng.poisson(rng.gamma(2.0, mean / 2.0)).astype(np.int64)
    path = Path(directory) / "counts.npz"
    np.savez(path, x=x, y=y)
    return ["data=array", f"data.path={path}", "data.labels_key=y"]


# Options whose parts depend on a class label (a conditional VAE's, vae_lightning.conditional):
# they need data with labels (MNIST's, not Frey Face's) and model.classes.
LABELLED = {"class_normal"}


def small_prior(prior: str) -> list[str]:
    """The overrides choosing ``prior`` at a size a test trains in a moment (stochastic layers:
    two, in the tests' 2-d latent space)."""
    small = {"mog": ["model.prior.n_components=4"], "vamp": ["model.prior.n_components=4"],
             "flow": ["model.prior.length=2", "model.prior.hidden=[8]"],
             "hierarchy": ["model.prior.layers=[1,1]", "model.prior.net.hidden=[4]"],
             "class_normal": ["model.classes=10"]}
    return [f"model/prior={prior}", *small.get(prior, [])]


def small_posterior(posterior: str) -> list[str]:
    """The overrides choosing ``posterior`` at a size that fits a test's 2-d latent space."""
    small = {"sylvester_orthogonal": ["model.encoder.posterior.vectors=2"],
             "iaf": ["model.encoder.posterior.hidden=[8]", "model.encoder.posterior.context=4"],
             "hierarchy": ["model.encoder.posterior.layers=[1,1]",
                           "model.encoder.posterior.net.hidden=[4]"],
             # with the prior it infers with (model=ladder), over the same two layers
             "ladder": ["model=ladder", "model.encoder.posterior.layers=[1,1]"],
             # with its objective and code prior (model=vq_vae), on MLPs: 2 codes of size 1
             "vq": ["model=vq_vae", "model/encoder=mlp", "model/decoder=mlp",
                    "model.encoder.posterior.codes=4", "model.encoder.posterior.code_dim=1"],
             # with its prior (model=gumbel): one block of 2 categories
             "relaxed_categorical": ["model=gumbel", "model.encoder.posterior.categories=2"],
             # with its prior (model=svae): the circle S^1 of the 2-d latent space
             "von_mises_fisher": ["model=svae"]}
    return [f"model/posterior={posterior}", *small.get(posterior, [])]


def posterior_features(posterior: str) -> frozenset[str]:
    """What the posterior family of ``conf/model/posterior/<posterior>.yaml`` offers (its
    class's features; a Student-t's defaults keep them)."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    node = OmegaConf.load(CONF / "model/posterior" / f"{posterior}.yaml")
    return get_class(node._target_).features


# Priors and posteriors that work only with each other: the VQ-VAE's codebook and its prior over
# codes; relaxed categorical latents and their uniform categorical prior; the von Mises-Fisher
# posterior and the uniform prior on the sphere.
ONLY_TOGETHER = {"uniform_codes": "vq", "uniform_categorical": "relaxed_categorical",
                 "hyperspherical_uniform": "von_mises_fisher"}
# The model config that chooses such a pair (the VQ-VAE's also sets its objective and data).
PAIR_MODEL = {"uniform_categorical": "gumbel", "relaxed_categorical": "gumbel",
              "hyperspherical_uniform": "svae", "von_mises_fisher": "svae"}


def only_apart(prior: str, posterior: str) -> bool:
    """Whether one of an only-together pair (``ONLY_TOGETHER``) is chosen without the other."""
    return any((prior == p) != (posterior == q) for p, q in ONLY_TOGETHER.items()
               if p == prior or q == posterior)


def pair_composes(prior: str, posterior: str) -> bool:
    """Whether the model composes with these ``model/prior`` and ``model/posterior`` options
    (the others are refused when composed, tests/test_combinations.py): the VampPrior needs q's
    density anywhere, which some flows lack; the Ladder VAE infers with the prior's top-down
    networks (model/prior=hierarchy)."""
    if prior == "vamp" and "density" not in posterior_features(posterior):
        return False
    if only_apart(prior, posterior):
        return False
    return posterior != "ladder" or prior == "hierarchy"


def command_config(name: str, overrides: list[str]):
    """The object a command whose config is ``conf/<name>.yaml`` (``sample``: vae-sample's
    ``Sampling``, ``encode``: vae-encode's ``Encoding``) builds for ``overrides``, built
    in-process from the composed and checked config, as the command builds it (its options are
    top-level keys)."""
    from vae_lightning.config import instantiate_node
    from vae_lightning.config_checks import check

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(name, overrides=overrides)
    check(cfg)
    return instantiate_node(cfg, "")


def sample_config(overrides: list[str]):
    """vae-sample's ``Sampling`` for ``overrides`` (``command_config``)."""
    return command_config("sample", overrides)


def copy_run(run_dir: Path, target: Path) -> Path:
    """A copy of the run directory ``run_dir`` at ``target``."""
    import shutil

    shutil.copytree(run_dir, target)
    return target


def mnist_like(root: Path, train: int = 200, test: int = 50) -> Path:
    """Small MNIST-format files (random pixels and labels 0..9) under ``root/mnist``, so that
    data=mnist with ``data.root=<root>`` builds without the real files; returns ``root``."""
    import numpy as np

    from vae_lightning.data.idx import write_idx

    (root / "mnist").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", train), ("t10k", test)):
        write_idx(root / "mnist" / f"{prefix}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, (n, 28, 28), np.uint8))
        write_idx(root / "mnist" / f"{prefix}-labels-idx1-ubyte.gz",
                  rng.integers(0, 10, n).astype(np.uint8))
    return root


def short_mnist_run(overrides: list[str], directory: Path) -> list[dict[str, str]]:
    """``overrides`` trained in-process on the real MNIST (../shared/data) for 300 steps with 5
    validation and test batches, logged to csv in ``directory``: the rows of its metrics.csv."""
    import csv

    from vae_lightning.train import train

    train(compose_train([*overrides, f"data.root={SHARED_DATA}", "trainer.max_epochs=1",
                         "+trainer.limit_train_batches=300", "+trainer.limit_val_batches=5",
                         "+trainer.limit_test_batches=5", "trainer.enable_progress_bar=false",
                         "logger=csv"], directory))
    return list(csv.DictReader(open(directory / "csv" / "metrics.csv")))


def open_paths() -> list[str]:
    """What this process's open file descriptors point to (a claim or lock left open shows)."""
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # closed meanwhile (the listing's own descriptor)
            pass
    return paths


def train_briefly(overrides: list[str], run: Path, steps: int):
    """A checkpoint of vae-train's ``overrides`` trained ``steps`` steps in ``run`` (no
    callbacks, logger or validation: what a test of a trained model's evaluation needs), and
    the ``build_run`` result whose model was trained: ``(run/checkpoints/last.ckpt, built)``."""
    import lightning as L
    import torch

    from vae_lightning.checkpoints import RunConfig
    from vae_lightning.train import build_run

    cfg = compose_train([*overrides, "callbacks=none", "logger=none"], run)
    torch.manual_seed(0)
    built = build_run(cfg)
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, limit_val_batches=0,
                        callbacks=[RunConfig(built.record)])
    trainer.fit(built.model, datamodule=built.datamodule)
    path = run / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(path)
    return path, built


def eval_config(overrides: list[str]) -> DictConfig:
    """vae-eval's composed config for ``overrides``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("eval", overrides=overrides)


def run_eval(cfg: DictConfig | list[str]):
    """What vae-eval runs for the composed config ``cfg`` (or for its overrides): its results."""
    from vae_lightning.config import instantiate_node

    if isinstance(cfg, list):
        cfg = eval_config(cfg)
    return instantiate_node(cfg.eval, "eval")(cfg.ckpt_path, cfg.seed, cfg.output_dir)
